"""One hook call, start to finish, without HTTP: the code path shared by the web app and the CLI."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from . import cards, hooks, observability, prefetch, rulebook
from .anchors import Anchors, Dose, OrderedDrug, prior_depletion, therapy_fact
from .engine import Engine, Finding
from .facts import FactBuilder, foreign_fact, record_gap, unknown_system
from .orders import index
from .rulebook import Rulebook

log = logging.getLogger(__name__)
ORDER_TYPES = {"MedicationRequest", "MedicationOrder"}
SKIPPED_STATUS = {"entered-in-error", "cancelled", "revoked"}
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
        return cls(book, Engine(book), facts, Anchors(facts.catalogue, book.thresholds), hooks.services(templates))


@dataclass
class Orders:
    """The request's draft orders, and the ones the rules are asked about."""

    drafts: list[dict[str, Any]]
    bundle: dict[str, dict[str, Any]]
    drugs: list[OrderedDrug]
    vaccines: list[dict[str, Any]]


class CdsService:
    def __init__(self, book: Rulebook, fetcher: prefetch.Fetcher | None = None, clock: Clock = utc_now,
                 max_resources: int = 5000) -> None:
        self.fetcher = fetcher
        self.clock = clock
        self.max_resources = max_resources
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

    def call(self, service_id: str, body: Any, fhir_server_allowed: Callable[[str], bool] | None = None
             ) -> dict[str, Any]:
        """The response body for a hook call; raises InvalidRequest, UnknownService or PreconditionFailed.

        `fhir_server_allowed` says which FHIR servers the authenticated caller may have the service fetch
        from: the EHR's access token is sent to fhirServer, so a caller must not be able to point it anywhere
        the service reaches. A fetch it refuses is a data-unavailable card saying why, never a 412.
        """
        rules = self._ruleset  # one consistent set for the whole call, even if a reload happens meanwhile
        service = rules.services.get(service_id)
        if service is None:
            raise UnknownService(service_id)
        request = hooks.parse(body, service)
        _check_size(request, self.max_resources)
        orders = self._orders(rules, request) if request.hook != "patient-view" else None
        if orders is not None and not orders.drugs and not orders.vaccines:
            return {"cards": []}
        try:
            record = prefetch.gather(request, service.prefetch, self.fetcher, fhir_server_allowed)
        except (prefetch.NoPatientData, prefetch.AccessRefused) as e:
            raise PreconditionFailed(str(e)) from None
        with observability.EVALUATION_SECONDS.time():
            findings = self._evaluate(rules, request, orders, record)
        return {"cards": cards.build(findings, rules.book, request.hookInstance, request.context["patientId"])}

    def _evaluate(self, rules: Ruleset, request: hooks.HookRequest, orders: Orders | None,
                  record: prefetch.PatientRecord) -> list[Finding]:
        now = self.clock()
        drafts = orders.drafts if orders else []
        bundle = {**index(record.resources), **(orders.bundle if orders else {})}
        exclude = {f"{r.get('resourceType')}/{r.get('id')}" for r in drafts}
        doses, dose_problems = rules.anchors.doses(record.resources, bundle, exclude, record.unfetched, now)
        facts = _record_facts(rules, record, orders, doses, bundle, now) + dose_problems
        if orders is None:
            anchor = rules.anchors.therapy(doses, request.hook, now)
            return rules.engine.evaluate(anchor, facts) if anchor else []
        reactions = [f for f in facts if f["kind"] == "reaction"]
        history_known = not {"administrations", "statements"} & set(record.gaps)
        findings: list[Finding] = []
        for drug in orders.drugs:
            anchor = rules.anchors.order(drug, request.hook, doses, drafts, bundle, reactions, history_known, now)
            findings += rules.engine.evaluate(anchor, facts)
        for vaccine in orders.vaccines:
            findings += rules.engine.evaluate(vaccine, facts)
        return findings

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


def _record_facts(rules: Ruleset, record: prefetch.PatientRecord, orders: Orders | None, doses: list[Dose],
                  bundle: dict[str, dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Everything the rules may match besides their anchor: the record, past therapy, pending orders."""
    drafts = orders.drafts if orders else []
    facts = rules.facts.record(record.resources + drafts, record.gaps, now)
    facts += prior_depletion(record.resources, rules.facts.catalogue, bundle, now, rules.facts.skew)
    therapy = therapy_fact(doses, now)
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
    return facts


def _selected(resource: dict[str, Any], selections: set[str]) -> bool:
    """Named by a selection: "MedicationRequest/1" as the spec says, or a bare "1" as some clients send."""
    return f"{resource.get('resourceType')}/{resource.get('id')}" in selections or resource.get("id") in selections


def _check_size(request: hooks.HookRequest, limit: int) -> None:
    """Refuse, before any work, a request bringing more resources than the service reads: the caller picks
    how many it sends, and reading each one takes time every other caller waits for."""
    values = [request.context.get("draftOrders"), *(request.prefetch or {}).values()]
    count = sum(_size(value) for value in values)
    if count > limit:
        raise hooks.InvalidRequest(f"the request carries {count} FHIR resources; this service reads at most {limit}")


def _size(value: Any) -> int:
    """How many resources a context or prefetch value holds, counted without reading them."""
    if not isinstance(value, dict):
        return 0
    entries = value.get("entry")
    return len(entries) if isinstance(entries, list) else 1


def _index(bundle: Any, resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Resources of the draftOrders Bundle by "Type/id" and by fullUrl, to resolve medicationReference."""
    found = index(resources)
    for entry in (bundle.get("entry") or ()) if isinstance(bundle, dict) else ():
        if isinstance(entry, dict) and isinstance(entry.get("fullUrl"), str) and isinstance(entry.get("resource"), dict):
            found[entry["fullUrl"]] = entry["resource"]
    return found
