"""What the rules are asked about (their anchor fact): an anti-CD20 order, a vaccine order, or — for
patient-view — the anti-CD20 therapy on record. Product differences come from rules/products.yaml."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable

from ..record.references import medication_of, referenced_medication, unresolved_reference
from .facts import record_gap, skew, unknown_system
from .labs import as_datetime
from .products import Match, Product, Products, dose, route_text

DOSE_RESOURCES = {"MedicationAdministration": {"completed", "in-progress"},
                  "MedicationStatement": {"active", "completed"},
                  "MedicationRequest": {"completed"}}
HISTORY_STATUS_EXCLUDED = {"entered-in-error", "cancelled", "not-done", "not-taken"}
PRIOR_DEPLETING = ("cladribine", "alemtuzumab")


@dataclass(frozen=True)
class OrderedDrug:
    """An anti-CD20 order found among the request's draft orders."""

    reference: str  # "MedicationRequest/123"
    product: Product
    match: Match
    resource: dict[str, Any]


@dataclass(frozen=True)
class DraftGroups:
    of: dict[int, list[str]]  # each draft order's drug groups, by the order's identity
    counts: Counter[str]  # how many draft orders fall in each group


@dataclass(frozen=True)
class Dose:
    product: Product
    when: datetime


@dataclass(frozen=True)
class DoseHistory:
    """The past doses found, newest first, and the dose records that could not be counted (as
    data-unavailable facts). A record that could not be counted may be a dose given, so with any of them
    the history is not known to be complete: no order is then taken for a known first dose."""

    doses: list[Dose]
    problems: list[dict[str, Any]]

    @property
    def complete(self) -> bool:
        return not self.problems


class Anchors:
    def __init__(self, products: Products, thresholds: dict[str, Any]) -> None:
        self.products = products
        self._reminders = thresholds["reminders"]
        self.skew = skew(thresholds)

    def ordered_drug(self, resource: dict[str, Any], bundle: dict[str, dict[str, Any]]) -> OrderedDrug | None:
        found = self.products.product(medication_of(resource, bundle), route_text(resource))
        if found is None:
            return None
        product, match = found
        return OrderedDrug(f"{resource.get('resourceType')}/{resource.get('id')}", product, match, resource)

    def doses(self, resources: Iterable[dict[str, Any]], bundle: dict[str, dict[str, Any]], exclude: set[str],
              unfetched: dict[str, str], now: datetime) -> DoseHistory:
        """Past anti-CD20 doses on record (administrations, statements, completed orders); and, as
        data-unavailable facts, the dose records that could not be counted: undated or with a date that
        cannot be read, dated after now, coded under a system the service does not recognise, or naming
        their medicine only by a reference that could not be resolved (`unfetched`: why)."""
        found, problems, unidentified = [], [], []
        for resource in resources:
            kind = resource.get("resourceType")
            if kind not in DOSE_RESOURCES or resource.get("status") not in DOSE_RESOURCES[kind]:
                continue
            if f"{kind}/{resource.get('id')}" in exclude:
                continue
            concept = medication_of(resource, bundle)
            why = _unidentified_why(resource, bundle, unfetched) if concept is None else None
            if why:
                unidentified.append(why)
            matched = self.products.product(concept, route_text(resource))
            if not matched:
                continue
            when, stated = _time_of(resource)
            short = matched[0].data["short"]
            if when is None:
                problems.append(record_gap("dose-history", f"a dose record of {short}",
                                           _undated(stated), "has no readable date"))
                continue
            what = f"the {short} dose record of {when.date().isoformat()}"
            if matched[1].unknown_system:
                problems.append(record_gap("dose-history", what, unknown_system(matched[1].text, matched[1].unknown_system),
                                           "is coded under an unknown code system"))
            elif when > now + self.skew:
                problems.append(record_gap("dose-history", what, _dated_after_now(when), "is dated after now"))
            else:
                found.append(Dose(matched[0], when))
        if unidentified:
            problems.append(_unidentified(unidentified))
        return DoseHistory(sorted(found, key=lambda d: d.when, reverse=True), problems)

    def draft_groups(self, drafts: list[dict[str, Any]], bundle: dict[str, dict[str, Any]],
                     drugs: list[OrderedDrug]) -> DraftGroups:
        """The draft orders' drug groups, found once per call: each anti-CD20 order's premedication check
        then costs the same however many orders come with it. A lone anti-CD20 order's own groups are
        not needed (its premedication is looked for among the other orders)."""
        lone = {id(drugs[0].resource)} if len(drugs) == 1 else set()
        of = {id(r): self.products.groups(medication_of(r, bundle)) for r in drafts if id(r) not in lone}
        return DraftGroups(of, Counter(group for groups in of.values() for group in groups))

    def order(self, drug: OrderedDrug, hook: str, doses: list[Dose], draft_groups: DraftGroups,
              reactions: list[dict[str, Any]], history_known: bool, now: datetime) -> dict[str, Any]:
        """The anchor for an anti-CD20 order: product data, phase, dose, interval, premedication."""
        product = drug.product
        same = [d for d in doses if d.product.ingredient == product.ingredient]
        fact = self._product_fact(product, "anti-cd20", hook)
        fact.update(reference=drug.reference, matched_by=drug.match.by, matched_text=drug.match.text,
                    prior_doses_text=_earlier_doses(len(same), history_known))
        if same:
            fact.update(phase="maintenance", phase_text="a maintenance dose", **_since(same[0].when, now))
        else:
            fact.update(phase="first", phase_text="a first dose" if history_known else
                        "a first dose (dose history unavailable, so treated as a first dose)")
        fact.update(_dose_check(drug.resource, product, len(same)))
        if same:
            fact.update(_interval_check(product, len(same), fact["days_since_last_dose"]))
        fact.update(self._premedication(product, drug, draft_groups))
        fact.update(_reaction(product, reactions))
        return fact

    def vaccine_order(self, resource: dict[str, Any], hook: str, bundle: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        kind = self.products.vaccine(medication_of(resource, bundle))
        if kind is None or kind[0] != "live":  # the only vaccine-order rule is about live vaccines
            return None
        return {"kind": "order", "about": "vaccine", "hook": hook, "live": kind[0], "name": kind[1],
                "short": kind[1], "reference": f"{resource.get('resourceType')}/{resource.get('id')}",
                "phase": "n/a", "phase_text": "a vaccine order"}

    def therapy(self, doses: list[Dose], hook: str, now: datetime) -> dict[str, Any] | None:
        """The chart anchor (patient-view): the anti-CD20 therapy the patient last received."""
        if not doses or (now - doses[0].when).days > self._reminders["on_therapy_days"]:
            return None
        last = doses[0]
        fact = self._product_fact(last.product, "chart", hook)
        since = _since(last.when, now)
        fact.update(phase="maintenance", phase_text="ongoing therapy", **since)
        regimen = last.product.data["regimen"]
        given = sum(1 for d in doses if d.product.ingredient == last.product.ingredient)
        due_after = _step(regimen.get("due_after_days") or [None], given)
        if regimen.get("next_dose_reminder") and due_after:
            fact.update(_next_dose(last.when, due_after, _step(regimen.get("late_window_days") or [0], given), now))
        return fact

    def _product_fact(self, product: Product, about: str, hook: str) -> dict[str, Any]:
        data = product.data
        return {"kind": "order", "about": about, "hook": hook, "product": product.key,
                "ingredient": product.ingredient, "name": data["name"], "short": data["short"],
                "route": data["route"], "label_source": data["label"]["source"],
                "irr_contraindication": bool(data.get("infusion_reaction_contraindication")),
                "anc_window_days": data["anc_window_days"],
                "immunoglobulins_before_start": bool(data.get("immunoglobulins_before_start")),
                "premedication_text": data.get("premedication_text", "")}

    def _premedication(self, product: Product, drug: OrderedDrug, draft_groups: DraftGroups) -> dict[str, Any]:
        """Which of the product's premedication groups has no order among the other draft orders."""
        needed = product.data.get("premedication") or []
        own = draft_groups.of.get(id(drug.resource), [])
        missing = [g for g in needed if draft_groups.counts[g] - (g in own) <= 0]
        names = product.data.get("premedication_names") or {}
        return {"premedication_missing": bool(missing),
                "premedication_missing_text": " and ".join(names.get(g) or self.products.group_label(g)
                                                           for g in missing)}


def prior_depletion(resources: Iterable[dict[str, Any]], products: Products, bundle: dict[str, dict[str, Any]],
                    now: datetime, allowance: timedelta) -> list[dict[str, Any]]:
    """Facts for past cladribine or alemtuzumab (any record of it being given or ordered); a record with
    no readable date, or dated more than `allowance` after now, is a data problem instead: whether it was
    given inside the rule's window cannot be told, and passing it over would hide the warning."""
    facts = []
    for resource in resources:
        if resource.get("resourceType") not in ("MedicationAdministration", "MedicationStatement", "MedicationRequest"):
            continue
        if resource.get("status") in HISTORY_STATUS_EXCLUDED:
            continue
        when, stated = _time_of(resource)
        groups = [g for g in products.groups(medication_of(resource, bundle)) if g in PRIOR_DEPLETING]
        if not groups:
            continue
        label = products.group_label(groups[0])
        if when is None:
            facts.append(record_gap("prior-therapy", f"a record of {label}", f"{_unreadable_date(stated)}, so "
                                    "it cannot be told whether it was given recently enough to matter", "has no readable date"))
        elif when > now + allowance:
            facts.append(record_gap("prior-therapy", f"a record of {label}", _dated_after_now(when), "is dated after now"))
        else:
            facts.append({"kind": "prior_therapy", "group": groups[0], "label": label,
                          "date": when.date().isoformat(), "age_days": max(0, (now - when).days)})
    return facts


def therapy_fact(doses: list[Dose], now: datetime) -> dict[str, Any] | None:
    """The patient's last anti-CD20 dose, whatever the product (for vaccine orders)."""
    if not doses:
        return None
    last = doses[0]
    return {"kind": "therapy", "product": last.product.key, "short": last.product.data["short"],
            "day": last.when.toordinal(), **_since(last.when, now)}


def _next_dose(last: datetime, due_after: int, window: int, now: datetime) -> dict[str, Any]:
    """When the next dose is due, in calendar days as the card shows them (a dose given yesterday evening
    is one day ago this morning): due in so many days, or overdue by so many beyond the label's window."""
    due = last.date() + timedelta(days=due_after)
    due_in = (due - now.date()).days
    return {"next_dose_date": due.isoformat(), "next_dose_due_in_days": due_in,
            "next_dose_allowance_days": window, "next_dose_window_end": (due + timedelta(days=window)).isoformat(),
            "next_dose_overdue_days": max(0, -due_in - window)}


def _since(when: datetime, now: datetime) -> dict[str, Any]:
    return {"last_dose": when.date().isoformat(), "days_since_last_dose": max(0, (now - when).days)}


def _earlier_doses(count: int, history_known: bool) -> str:
    said = "no earlier dose" if count == 0 else "1 earlier dose" if count == 1 else f"{count} earlier doses"
    return said if history_known else f"{said} on record (the dose history is incomplete)"


def _dose_check(resource: dict[str, Any], product: Product, prior: int) -> dict[str, Any]:
    expected_doses = product.data["regimen"].get("doses_mg")
    if not expected_doses:
        return {}
    expected = _step(expected_doses, prior)
    mg, unit = dose(resource, product.data["regimen"].get("mg_per_ml"))
    if mg is None and unit is None:
        return {}
    fact: dict[str, Any] = {"expected_dose_mg": expected}
    if mg is None:
        return {**fact, "dose_checkable": False, "dose_text": f"a dose in {unit}"}
    return {**fact, "dose_checkable": True, "dose_mg": mg, "dose_text": f"{mg:g} mg",
            "dose_fits": abs(mg - expected) <= 0.01 * expected}


def _interval_check(product: Product, prior: int, days: int) -> dict[str, Any]:
    minimum = _step(product.data["regimen"].get("min_days") or [None], prior)
    if minimum is None:
        return {}
    return {"min_days_since_last": minimum, "interval_short": days < minimum}


def _step(steps: list[Any], doses_given: int) -> Any:
    """The regimen's value for the dose after `doses_given` earlier ones; the last entry repeats."""
    return steps[min(doses_given, len(steps) - 1)]


def _reaction(product: Product, reactions: list[dict[str, Any]]) -> dict[str, Any]:
    own = set(product.data.get("reaction_substances") or [product.ingredient])
    same = [r for r in reactions if r["substance"] in own]
    other = [r for r in reactions if r["substance"] not in own and r["substance"] != "hyaluronidase"]
    if same:
        return {"severe_reaction": "same-drug", "severe_reaction_text": same[0]["display"]}
    if other:
        return {"severe_reaction": "other-anti-cd20", "severe_reaction_text": other[0]["display"]}
    return {}


def _time_of(resource: dict[str, Any]) -> tuple[datetime | None, str | None]:
    """When a dose was given: its effective time (a period's end, the last dose of a course recorded as
    one statement, else its start), else when the order was written or the statement made; and the date
    as written, which may not be readable (None when the record states none)."""
    period = resource.get("effectivePeriod")
    period = period if isinstance(period, dict) else {}
    for value in (resource.get("effectiveDateTime"), resource.get("occurrenceDateTime"), period.get("end"),
                  period.get("start"), resource.get("authoredOn"), resource.get("dateAsserted")):
        if isinstance(value, str):
            return _parse(value), value
    return None, None


def _undated(stated: str | None) -> str:
    return f"{_unreadable_date(stated)}, so it cannot be placed in the dose history: a dose given may be missing from the checks"


def _unreadable_date(stated: str | None) -> str:
    return f"has a date that cannot be read (\"{stated}\")" if stated is not None else "has no date"


def _dated_after_now(when: datetime) -> str:
    return f"is dated after now ({when.date().isoformat()}): a data error, not a dose given"


def _unidentified_why(resource: dict[str, Any], bundle: dict[str, dict[str, Any]], unfetched: dict[str, str]
                      ) -> str | None:
    """Why a record naming its medicine only by `medicationReference` (no display either) cannot be
    identified: the Medication was not had, has no code, or the reference leads nowhere (a missing
    contained one, a spelling that names no Medication). Any of these may hide a dose given."""
    if not isinstance(resource.get("medicationReference"), dict):
        return None
    fetchable = unresolved_reference(resource, bundle)
    if fetchable:
        return unfetched.get(fetchable, "it could not be retrieved")
    if referenced_medication(resource, bundle) is not None:
        return "the Medication it names has no code"
    return "the reference names no Medication this service can find"


def _unidentified(reasons: list[str]) -> dict[str, Any]:
    count = len(reasons)
    what, names = ("a medication record", "names its") if count == 1 else (f"{count} medication records", "name their")
    return record_gap("dose-history", what, f"{names} medicine only by a reference that could not be resolved "
                      f"({'; '.join(dict.fromkeys(reasons))}), so a dose given may be missing from the history",
                      "could not be identified")


def _parse(value: str) -> datetime | None:
    try:
        return as_datetime(value)
    except ValueError:
        return None
