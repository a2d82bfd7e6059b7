"""One hook call, start to finish, without HTTP: the code path shared by the web app and the CLI."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from . import deadline, hooks, shadow
from .clinical import case
from .clinical.facts import FactBuilder
from .clinical.orders import Anchors
from .engine import rulebook
from .engine.durable_rules import Engine
from .engine.rulebook import Rulebook
from .metrics import EVALUATION_SECONDS
from .record import prefetch

log = logging.getLogger(__name__)
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
        orders = case.orders_in(request, rules.anchors) if request.hook != "patient-view" else None
        if orders is not None and not orders.checked:
            return {"cards": []}
        try:
            record = prefetch.gather(request, service.prefetch, self.fetcher, fhir_server_allowed,
                                     self.max_resources - carried)
        except (prefetch.NoPatientData, prefetch.AccessRefused) as e:
            raise PreconditionFailed(str(e)) from None
        deadline.check()
        with EVALUATION_SECONDS.time():
            asked = case.build(rules.facts, rules.anchors, request.hook, orders, record, self.clock())
            findings = rules.engine.evaluate_each(asked.anchors, asked.facts)
        live, unshown = shadow.split(findings, rules.book, service_id, request.hookInstance, request.context["patientId"])
        if silent is not None:
            silent += unshown
        return {"cards": live}


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
