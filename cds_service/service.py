"""One hook call, start to finish, without HTTP: the code path shared by the web app and the CLI."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from . import deadline, hooks, shadow
from .clinical.facts import FactBuilder, foreign_fact, record_gap, unknown_system
from .clinical.orders import Anchors, DoseHistory, OrderedDrug, prior_depletion, therapy_fact
from .engine import rulebook
from .engine.durable_rules import Engine, Finding
from .engine.rulebook import Rulebook
from .metrics import EVALUATION_SECONDS
from .record import prefetch
from .record.references import index

log = logging.getLogger(__name__)
ORDER_TYPES = {"MedicationRequest", "MedicationOrder"}
DOSE_HISTORY_KEYS = {"administrations", "statements", "medications"}  # prefetch keys past doses are read from
SKIPPED_STATUS = {"entered-in-error", "cancelled", "revoked"}
FACTS_PER_SUBJECT = 20  # see _bounded
Clock = Callable[[], datetime]


class UnknownService(LookupError):
    pass


class PreconditionFailed(Exception):
    """Required patient data could not be had (CDS Hooks: 412)."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Ruleset:
    """Everything derived from one load of rules/: swapped as a whole on reload."""

    book: Rulebook
    engine: Engine
    facts: FactBuilder
    anchors: Anchors
    services: dict[str, hooks.ServiceDefinition]

    @classmethod
    def build(cls, book: Rulebook) -> "Ruleset":
        facts = FactBuilder(book)
        templates = prefetch.templates(book.valuesets)
        return cls(book, Engine(book), facts, Anchors(facts.products, book.thresholds), hooks.services(templates))


@dataclass
class Orders:
    """The request's draft orders, and the ones the rules are asked about."""

    drafts: list[dict[str, Any]]
    bundle: dict[str, dict[str, Any]]
    drugs: list[OrderedDrug]
    vaccines: list[dict[str, Any]]


class CdsService:
    def __init__(self, book: Rulebook, fetcher: prefetch.Fetcher | None = None, clock: Clock = utc_now,
                 max_resources: int = 5000, max_draft_orders: int = 50, budget_seconds: float | None = None) -> None:
        self.fetcher = fetcher
        self.clock = clock
        self.max_resources = max_resources
        self.max_draft_orders = max_draft_orders
        self.budget_seconds = budget_seconds  # a call's deadline (deadline.py); None: none
        self._ruleset = Ruleset.build(book)
        self._reload_lock = threading.Lock()

    @property
    def rulebook(self) -> Rulebook:
        return self._ruleset.book

    @property
    def services(self) -> dict[str, hooks.ServiceDefinition]:
        return self._ruleset.services

    @property
    def engine(self) -> Engine:
        return self._ruleset.engine

    def reload(self) -> Rulebook:
        """Load rules/ and the overrides again; the running set stays if the new one is bad (raises)."""
        with self._reload_lock:
            fresh = Ruleset.build(rulebook.load())
            self._ruleset = fresh
        log.info("rules reloaded", extra={"fields": {"rules": len(fresh.book.rules)}})
        return fresh.book

    def discovery(self) -> dict[str, Any]:
        return {"services": [s.discovery() for s in self.services.values()]}

    def call(self, service_id: str, body: Any, fhir_server_allowed: Callable[[str], bool] | None = None,
             silent: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The response body for a hook call; raises InvalidRequest, UnknownService, PreconditionFailed or
        deadline.DeadlineExceeded (the call ran past its budget).

        `fhir_server_allowed` says which FHIR servers the authenticated caller may have the service fetch
        from: the EHR's access token is sent to fhirServer, so a caller must not be able to point it anywhere
        the service reaches. A fetch it refuses is a data-unavailable card saying why, never a 412.
        Cards of rules in shadow mode are never in the answer; a caller that records them passes a
        `silent` list, and they are appended to it.
        """
        with deadline.budget(self.budget_seconds):
            return self._call(service_id, body, fhir_server_allowed, silent)

    def _call(self, service_id: str, body: Any, fhir_server_allowed: Callable[[str], bool] | None,
              silent: list[dict[str, Any]] | None) -> dict[str, Any]:
        rules = self._ruleset  # one consistent set for the whole call, even if a reload happens meanwhile
        service = rules.services.get(service_id)
        if service is None:
            raise UnknownService(service_id)
        request = hooks.parse(body, service)
        carried = _check_size(request, self.max_resources, self.max_draft_orders)
        orders = self._orders(rules, request) if request.hook != "patient-view" else None
        if orders is not None and not orders.drugs and not orders.vaccines:
            return {"cards": []}
        try:
            record = prefetch.gather(request, service.prefetch, self.fetcher, fhir_server_allowed,
                                     self.max_resources - carried)
        except (prefetch.NoPatientData, prefetch.AccessRefused) as e:
            raise PreconditionFailed(str(e)) from None
        deadline.check()
        with EVALUATION_SECONDS.time():
            findings = self._evaluate(rules, request, orders, record)
        live, unshown = shadow.split(findings, rules.book, service_id, request.hookInstance, request.context["patientId"])
        if silent is not None:
            silent += unshown
        return {"cards": live}

    def _evaluate(self, rules: Ruleset, request: hooks.HookRequest, orders: Orders | None,
                  record: prefetch.PatientRecord) -> list[Finding]:
        now = self.clock()
        drafts = orders.drafts if orders else []
        bundle = {**index(record.resources), **(orders.bundle if orders else {})}
        exclude = {f"{r.get('resourceType')}/{r.get('id')}" for r in drafts}
        history = rules.anchors.doses(record.resources, bundle, exclude, record.unfetched, now)
        doses = history.doses
        facts = _record_facts(rules, record, orders, history, bundle, now)
        if orders is None:
            anchor = rules.anchors.therapy(doses, request.hook, now)
            return rules.engine.evaluate(anchor, facts) if anchor else []
        reactions = [f for f in facts if f["kind"] == "reaction"]
        history_known = history.complete and not DOSE_HISTORY_KEYS & set(record.gaps)
        draft_groups = rules.anchors.draft_groups(drafts, bundle, orders.drugs)  # once per call, not per order
        anchors = []
        for drug in orders.drugs:
            deadline.check()
            anchors.append(rules.anchors.order(drug, request.hook, doses, draft_groups, reactions, history_known, now))
        return rules.engine.evaluate_each(anchors + orders.vaccines, facts)

    def _orders(self, rules: Ruleset, request: hooks.HookRequest) -> Orders:
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
            drug = rules.anchors.ordered_drug(resource, bundle)
            if drug:
                orders.drugs.append(drug)
                continue
            vaccine = rules.anchors.vaccine_order(resource, request.hook, bundle)
            if vaccine:
                orders.vaccines.append(vaccine)
        return orders


def _record_facts(rules: Ruleset, record: prefetch.PatientRecord, orders: Orders | None, history: DoseHistory,
                  bundle: dict[str, dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Everything the rules may match besides their anchor: the record, past therapy and the dose records
    that could not be counted, pending orders."""
    drafts = orders.drafts if orders else []
    facts = rules.facts.record(record.resources + drafts, record.gaps, now)
    facts += prior_depletion(record.resources, rules.facts.products, bundle, now, rules.facts.skew)
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


def _check_size(request: hooks.HookRequest, limit: int, max_draft_orders: int) -> int:
    """Refuse, before any work, a request bringing more resources or draft orders than the service reads:
    the caller picks how many it sends, and reading each one takes time every other caller waits for.
    Returns how many resources the request carries, which fetched ones then add to."""
    draft_orders = request.context.get("draftOrders")
    count = sum(prefetch.resource_count(value) for value in (draft_orders, *(request.prefetch or {}).values()))
    if count > limit:
        raise hooks.InvalidRequest(f"the request carries {count} FHIR resources; this service reads at most {limit}")
    drafts = len(prefetch.resources_in(draft_orders))
    if drafts > max_draft_orders:
        raise hooks.InvalidRequest(f"context.draftOrders holds {drafts} orders; this service checks at most "
                                   f"{max_draft_orders} draft orders in one call")
    return count


def _index(bundle: Any, resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Resources of the draftOrders Bundle by "Type/id" and by fullUrl, to resolve medicationReference."""
    found = index(resources)
    for entry in (bundle.get("entry") or ()) if isinstance(bundle, dict) else ():
        if isinstance(entry, dict) and isinstance(entry.get("fullUrl"), str) and isinstance(entry.get("resource"), dict):
            found[entry["fullUrl"]] = entry["resource"]
    return found
