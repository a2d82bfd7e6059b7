"""The hook request an EHR would send for one patient of the export: an order of the product on the
replay's date, signed with the premedication its label asks for, and every prefetch key the service
declares answered from the patient's resources by the service's own templates (search.py).

The record is the export as it stands, less what is dated after the replay's date: an EHR asked on
that day had not seen it. What the export cannot tell (a status that changed since) is taken as it is.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from ..engine.rulebook import Rulebook
from ..hooks import ServiceDefinition
from .search import Search, clinical_date

USER = "Practitioner/population-replay"
ORDER_ID = "replay-order"
ORDER_HOOKS = ("order-select", "order-sign")


class BadPlan(ValueError):
    """The replay cannot be set up as asked (unknown product or hook); the message says what is allowed."""


@dataclass(frozen=True)
class Plan:
    """What every patient's call asks: the service, the moment and the draft orders."""

    service_id: str
    hook: str
    product: str | None
    at: datetime
    drafts: tuple[dict[str, Any], ...]
    searches: dict[str, Search]

    @classmethod
    def make(cls, book: Rulebook, services: dict[str, ServiceDefinition], hook: str, product: str | None,
             at: datetime) -> "Plan":
        service = next((s for s in services.values() if s.hook == hook), None)
        if service is None:
            raise BadPlan(f"--hook {hook}: the service answers {', '.join(s.hook for s in services.values())}")
        drafts: tuple[dict[str, Any], ...] = ()
        if hook in ORDER_HOOKS:
            if product not in book.products:
                unknown = f"{product} is not a product; " if product else ""
                raise BadPlan(f"--product: {unknown}{hook} needs one of {', '.join(book.products)}")
            drafts = tuple(_order_set(book, product, at))
        searches = {key: Search.compile(template) for key, template in service.prefetch.items()}
        return cls(service.id, hook, product if hook in ORDER_HOOKS else None, at, drafts, searches)

    @property
    def resource_types(self) -> frozenset[str]:
        """The resource types the prefetch reads: the others in an export are never looked at."""
        return frozenset(s.resource_type for s in self.searches.values())

    @property
    def includes_medications(self) -> bool:
        """Whether a search brings the Medications its matches name (the export's are then kept aside)."""
        return any(s.includes_medications for s in self.searches.values())

    def hook_instance(self, patient_hash: str) -> str:
        """Stable per patient and plan, so a patient's cards (their uuids) are the same in every run."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cd20-cds-replay/{patient_hash}/{self.hook}/{self.product}/"
                                                  f"{self.at.isoformat()}"))

    def request(self, patient_id: str, resources: list[dict[str, Any]], hook_instance: str,
                medications: Mapping[str, dict[str, Any]]) -> tuple[dict[str, Any], int]:
        """The request for one patient, and how many of their resources were left out as dated after `at`;
        `medications`: the export's Medications by "Medication/id", for the searches that include them."""
        by_type: dict[str, list[dict[str, Any]]] = {}
        later = 0
        for resource in resources:
            when = clinical_date(resource)
            if when is not None and when > self.at:
                later += 1
                continue
            by_type.setdefault(resource["resourceType"], []).append(resource)
        context: dict[str, Any] = {"userId": USER, "patientId": patient_id}
        if self.drafts:
            subject = {"reference": f"Patient/{patient_id}"}
            context["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                      "entry": [{"resource": {**d, "subject": subject}} for d in self.drafts]}
        if self.hook == "order-select":
            context["selections"] = [f"MedicationRequest/{ORDER_ID}"]
        prefetch = {key: search.run(by_type, medications) for key, search in self.searches.items()}
        return {"hookInstance": hook_instance, "hook": self.hook, "context": context, "prefetch": prefetch}, later


def _order_set(book: Rulebook, key: str, at: datetime) -> list[dict[str, Any]]:
    """The product's order, coded with every code rules/products.yaml knows for it, and one order for each
    premedication group its label asks for (a real order set has them; replay is about the patient)."""
    product, systems = book.products[key], book.valuesets["systems"]
    codings = ([{"system": systems["rxnorm"], "code": c} for c in product["rxnorm"]]
               + [{"system": systems["ndc"], "code": c} for c in product["ndc"]])
    orders = [_draft(ORDER_ID, {"coding": codings, "text": product["name"]}, at, product["route"])]
    for n, group in enumerate(product.get("premedication") or (), start=1):
        drug = book.valuesets["drug_groups"][group]
        concept = {"coding": [{"system": systems["rxnorm"], "code": drug["rxnorm"][0]}], "text": drug["names"][0]}
        orders.append(_draft(f"replay-premedication-{n}", concept, at, None))
    return orders


def _draft(rid: str, medication: dict[str, Any], at: datetime, route: str | None) -> dict[str, Any]:
    draft = {"resourceType": "MedicationRequest", "id": rid, "status": "draft", "intent": "order",
             "medicationCodeableConcept": medication, "authoredOn": at.date().isoformat(), "requester": {"reference": USER}}
    if route:
        draft["dosageInstruction"] = [{"route": {"text": route}}]
    return draft
