"""The case put to the rules: from a hook's draft orders and the patient's record, the anchors (one per
ordered anti-CD20 drug or vaccine, or the therapy under way for patient-view) and the record's facts they
are matched against. Pure: the record has been gathered already, and the engine runs afterwards.

Orders are read before the record is gathered (`orders_in`): a call ordering nothing this service checks
is answered without fetching anything.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import deadline
from ..hooks import HookRequest
from ..record import prefetch
from ..record.references import index
from .facts import FactBuilder, foreign_fact, record_gap, unknown_system
from .orders import Anchors, DoseHistory, OrderedDrug, prior_depletion, therapy_fact

log = logging.getLogger(__name__)
ORDER_TYPES = {"MedicationRequest", "MedicationOrder"}
DOSE_HISTORY_KEYS = {"administrations", "statements", "medications"}  # prefetch keys past doses are read from
SKIPPED_STATUS = {"entered-in-error", "cancelled", "revoked"}
FACTS_PER_SUBJECT = 20  # see _bounded


@dataclass
class Orders:
    """The request's draft orders, and the ones the rules are asked about."""

    drafts: list[dict[str, Any]]
    bundle: dict[str, dict[str, Any]]
    drugs: list[OrderedDrug]
    vaccines: list[dict[str, Any]]

    @property
    def checked(self) -> bool:
        """Whether any order is one this service has checks for."""
        return bool(self.drugs or self.vaccines)


@dataclass(frozen=True)
class Case:
    anchors: list[dict[str, Any]]  # what the rules are asked about, each on its own
    facts: list[dict[str, Any]]  # the record, matched against every anchor


def orders_in(request: HookRequest, anchors: Anchors) -> Orders:
    """Draft orders, and among them the ones to check: the selections (order-select) or all (order-sign)."""
    drafts = [r for r in prefetch.resources_in(request.context["draftOrders"])
              if r.get("status") not in SKIPPED_STATUS]
    bundle = _index(request.context["draftOrders"], drafts)
    chosen = drafts
    if request.hook == "order-select":
        selected = set(request.context["selections"])
        chosen = [r for r in drafts if _selected(r, selected)]
        if len(chosen) < len(selected):
            log.info("selections not found in draftOrders were skipped",
                     extra={"fields": {"skipped": len(selected) - len(chosen)}})
    orders = Orders(drafts, bundle, [], [])
    for resource in chosen:
        if resource.get("resourceType") not in ORDER_TYPES:
            continue
        drug = anchors.ordered_drug(resource, bundle)
        if drug:
            orders.drugs.append(drug)
            continue
        vaccine = anchors.vaccine_order(resource, request.hook, bundle)
        if vaccine:
            orders.vaccines.append(vaccine)
    return orders


def build(facts: FactBuilder, anchors: Anchors, hook: str, orders: Orders | None, record: prefetch.PatientRecord,
          now: datetime) -> Case:
    """The case for one call; `orders` is None for patient-view, which asks about the therapy under way."""
    drafts = orders.drafts if orders else []
    bundle = {**index(record.resources), **(orders.bundle if orders else {})}
    exclude = {f"{r.get('resourceType')}/{r.get('id')}" for r in drafts}
    history = anchors.doses(record.resources, bundle, exclude, record.unfetched, now)
    doses = history.doses
    known = _record_facts(facts, record, orders, history, bundle, now)
    if orders is None:
        therapy = anchors.therapy(doses, hook, now)
        return Case([therapy] if therapy else [], known)
    reactions = [f for f in known if f["kind"] == "reaction"]
    history_known = history.complete and not DOSE_HISTORY_KEYS & set(record.gaps)
    draft_groups = anchors.draft_groups(drafts, bundle, orders.drugs)  # once per call, not per order
    asked = []
    for drug in orders.drugs:
        deadline.check()
        asked.append(anchors.order(drug, hook, doses, draft_groups, reactions, history_known, now))
    return Case(asked + orders.vaccines, known)


def _record_facts(builder: FactBuilder, record: prefetch.PatientRecord, orders: Orders | None, history: DoseHistory,
                  bundle: dict[str, dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Everything the rules may match besides their anchor: the record, past therapy and the dose records
    that could not be counted, pending orders."""
    drafts = orders.drafts if orders else []
    facts = builder.record(record.resources + drafts, record.gaps, now)
    facts += prior_depletion(record.resources, builder.products, bundle, now, builder.skew)
    facts += history.problems
    therapy = therapy_fact(history.doses, now)
    if therapy:
        facts.append(therapy)
    if record.ignored:
        facts.append(foreign_fact(record.ignored))
    for drug in orders.drugs if orders else ():
        facts.append({"kind": "pending_order", "short": drug.product.data["short"], "product": drug.product.key,
                      "reference": drug.reference})
        if drug.match.unknown_system:
            facts.append(record_gap("order-code", f"the {drug.product.data['short']} order",
                                    unknown_system(drug.match.text, drug.match.unknown_system)
                                    + f": it was taken to be {drug.product.data['short']} by that code alone",
                                    "is coded under an unknown code system"))
    return _bounded(facts)


def _bounded(facts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most FACTS_PER_SUBJECT facts of one kind about one subject (an analyte, a drug group, a problem
    group), the most recent ones: every fact is matched against every order, and a record can hold
    thousands of them that each differ a little (5000 results in 5000 made-up units). Rules ask whether
    such a fact exists, or exists recently enough, which the most recent ones answer. Lab results are
    already bounded where they are read (clinical/facts.py), so they are left as they are."""
    by_subject: dict[tuple[str, Any], list[int]] = {}
    for n, fact in enumerate(facts):
        if fact["kind"] != "lab":
            subject = (fact.get("analyte") or fact.get("group") or fact.get("live") or fact.get("substance")
                       or fact.get("product"))
            by_subject.setdefault((fact["kind"], subject), []).append(n)
    dropped = {n for numbers in by_subject.values()
               for n in sorted(numbers, key=lambda n: facts[n].get("age_days", 0))[FACTS_PER_SUBJECT:]}
    return [fact for n, fact in enumerate(facts) if n not in dropped]


def _selected(resource: dict[str, Any], selections: set[str]) -> bool:
    """Named by a selection: "MedicationRequest/1" as the spec says, or a bare "1" as some clients send."""
    return f"{resource.get('resourceType')}/{resource.get('id')}" in selections or resource.get("id") in selections


def _index(bundle: Any, resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Resources of the draftOrders Bundle by "Type/id" and by fullUrl, to resolve medicationReference."""
    found = index(resources)
    for entry in (bundle.get("entry") or ()) if isinstance(bundle, dict) else ():
        if isinstance(entry, dict) and isinstance(entry.get("fullUrl"), str) and isinstance(entry.get("resource"), dict):
            found[entry["fullUrl"]] = entry["resource"]
    return found
