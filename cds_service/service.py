"""One hook call, start to finish, without HTTP: the code path shared by the web app and the CLI."""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Callable

from . import cards, hooks, prefetch
from .engine import Engine, Finding
from .facts import FactBuilder, OrderedDrug
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


class CdsService:
    def __init__(self, rulebook: Rulebook, fetcher: prefetch.Fetcher | None = None, clock: Clock = utc_now) -> None:
        self.rulebook = rulebook
        self.engine = Engine(rulebook)
        self.facts = FactBuilder(rulebook)
        self.fetcher = fetcher
        self.clock = clock
        self.prefetch = prefetch.templates(rulebook.valuesets)
        self.services = hooks.services(self.prefetch)

    def discovery(self) -> dict[str, Any]:
        return {"services": [s.discovery() for s in self.services.values()]}

    def call(self, service_id: str, body: Any) -> dict[str, Any]:
        """The response body for a hook call; raises InvalidRequest, UnknownService or PreconditionFailed."""
        service = self.services.get(service_id)
        if service is None:
            raise UnknownService(service_id)
        request = hooks.parse(body, service)
        drugs, bundle, draft_refs = self._ordered_drugs(request)
        if not drugs:
            return {"cards": []}
        try:
            record = prefetch.gather(request, service.prefetch, self.fetcher)
        except (prefetch.NoPatientData, prefetch.AccessRefused) as e:
            raise PreconditionFailed(str(e)) from None
        now = self.clock()
        facts = self.facts.record(record.resources, record.gaps, now)
        findings: list[Finding] = []
        for drug in drugs:
            order = self.facts.order_fact(drug, record.resources, record.gaps, bundle, now, draft_refs)
            findings += self.engine.evaluate(order, facts)
        return {"cards": cards.build(findings, self.rulebook, request.hookInstance, request.context["patientId"])}

    def _ordered_drugs(self, request: hooks.HookRequest) -> tuple[list[OrderedDrug], dict[str, dict], set[str]]:
        """Anti-CD20 orders to check: the selections (order-select) or every draft order (order-sign)."""
        resources = prefetch.resources_in(request.context["draftOrders"])
        bundle = _index(request.context["draftOrders"], resources)
        refs = {f"{r.get('resourceType')}/{r.get('id')}" for r in resources}
        if request.hook == "order-select":
            chosen = set(request.context["selections"])
            unknown = chosen - refs
            if unknown:
                log.info("%d selection(s) not found in draftOrders; skipped", len(unknown))
            resources = [r for r in resources if f"{r.get('resourceType')}/{r.get('id')}" in chosen]
        drugs = []
        for resource in resources:
            if resource.get("resourceType") in ORDER_TYPES and resource.get("status") not in SKIPPED_STATUS:
                drug = self.facts.ordered_drug(resource, bundle)
                if drug:
                    drugs.append(drug)
        return drugs, bundle, refs


def _index(bundle: Any, resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Resources of the draftOrders Bundle by "Type/id" and by fullUrl, to resolve medicationReference."""
    index = {f"{r.get('resourceType')}/{r.get('id')}": r for r in resources}
    for entry in bundle.get("entry") or () if isinstance(bundle, dict) else ():
        if isinstance(entry, dict) and isinstance(entry.get("fullUrl"), str) and isinstance(entry.get("resource"), dict):
            index[entry["fullUrl"]] = entry["resource"]
    return index
