"""Small builders for the FHIR R4 resources and CDS Hooks requests the rule tests send.

Times are given as days before the tests' frozen clock (conftest.NOW), because every window the rules
use is "how many days before now"; a result `days_ago=N` is exactly N days old at NOW.
"""
from __future__ import annotations

import copy
import itertools
from datetime import datetime, timedelta
from typing import Any, Iterable

from conftest import NOW

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
PATIENT_ID = "p1"
OCRELIZUMAB = {"system": RXNORM, "code": "1876380", "display": "ocrelizumab 30 MG/ML Injectable Solution"}
OFATUMUMAB = {"system": RXNORM, "code": "712566", "display": "ofatumumab"}
RITUXIMAB = {"system": RXNORM, "code": "121191", "display": "rituximab"}
_ids = itertools.count(1)

# LOINC codes by analyte, as labs send them
HBSAG, ANTI_HBC, HBV_DNA = "5196-1", "16933-4", "29615-2"
IGG, ALT, AST, ALP, BILIRUBIN, ANC = "2465-3", "1742-6", "1920-8", "6768-6", "1975-2", "751-8"
NEUTROPHILS_PERCENT = "770-8"


def at(days_ago: float) -> str:
    """The FHIR dateTime `days_ago` days before NOW."""
    return (NOW - timedelta(days=days_ago)).isoformat()


def _observation(code: str, days_ago: float, status: str, **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"obs-{next(_ids)}", "status": status,
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": {"reference": f"Patient/{PATIENT_ID}"}, "effectiveDateTime": at(days_ago), **fields}


def quantity(value: float, unit: str | None, *, ucum: bool = True) -> dict[str, Any]:
    """A Quantity; `ucum=False` gives the unit as display text only, as many lab feeds do."""
    if unit is None:
        return {"value": value}
    if not ucum:
        return {"value": value, "unit": unit}
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def lab(code: str, value: float, unit: str | None, *, days_ago: float = 1, status: str = "final", ucum: bool = True,
        low: float | None = None, high: float | None = None, range_unit: str | None = None) -> dict[str, Any]:
    """A numeric lab result, optionally with its own reference range (in `range_unit`, default `unit`)."""
    fields: dict[str, Any] = {"valueQuantity": quantity(value, unit, ucum=ucum)}
    if low is not None or high is not None:
        limits = {"low": low, "high": high}
        fields["referenceRange"] = [{name: quantity(v, range_unit or unit, ucum=ucum)
                                     for name, v in limits.items() if v is not None}]
    return _observation(code, days_ago, status, **fields)


def serology(code: str, *, days_ago: float = 1, status: str = "final", snomed: str | None = None,
             text: str | None = None, interpretation: str | None = None,
             concept: dict[str, Any] | None = None) -> dict[str, Any]:
    """A qualitative result given as a SNOMED answer, a string, an interpretation flag or a raw concept."""
    fields: dict[str, Any] = {}
    if snomed is not None:
        fields["valueCodeableConcept"] = {"coding": [{"system": SNOMED, "code": snomed}]}
    if concept is not None:
        fields["valueCodeableConcept"] = concept
    if text is not None:
        fields["valueString"] = text
    if interpretation is not None:
        fields["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": interpretation}]}]
    return _observation(code, days_ago, status, **fields)


def condition(code: str, system: str = SNOMED, *, clinical: str = "active",
              verification: str = "confirmed") -> dict[str, Any]:
    return {
        "resourceType": "Condition", "id": f"cond-{next(_ids)}",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": clinical}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                           "code": verification}]},
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
    }


def patient(gender: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Patient", "id": PATIENT_ID}
    if gender is not None:
        resource["gender"] = gender
    return resource


def medication_request(medication: dict[str, Any] | None = None) -> dict[str, Any]:
    """A draft order; ocrelizumab IV (RxNorm) unless another coding is given."""
    return {
        "resourceType": "MedicationRequest", "id": "order-1", "status": "draft", "intent": "order",
        "medicationCodeableConcept": {"coding": [medication or OCRELIZUMAB]},
        "subject": {"reference": f"Patient/{PATIENT_ID}"}, "authoredOn": NOW.date().isoformat(),
    }


def medication_administration(days_ago: float, medication: dict[str, Any] | None = None, *,
                              status: str = "completed") -> dict[str, Any]:
    """A past dose: a completed administration of ocrelizumab makes the order a maintenance dose."""
    return {
        "resourceType": "MedicationAdministration", "id": f"admin-{next(_ids)}", "status": status,
        "medicationCodeableConcept": {"coding": [medication or OCRELIZUMAB]},
        "subject": {"reference": f"Patient/{PATIENT_ID}"}, "effectiveDateTime": at(days_ago),
    }


def bundle(resources: Iterable[dict[str, Any]], kind: str = "searchset") -> dict[str, Any]:
    entries = [{"resource": r} for r in resources]
    return {"resourceType": "Bundle", "type": kind, "total": len(entries), "entry": entries}


def hook_request(*, labs: Iterable[dict[str, Any]] = (), conditions: Iterable[dict[str, Any]] = (),
                 doses: Iterable[dict[str, Any]] = (), gender: str | None = "female",
                 orders: Iterable[dict[str, Any]] | None = None, hook: str = "order-sign",
                 keys: Iterable[str] = ()) -> dict[str, Any]:
    """A complete hook request, every prefetch key in `keys` answered (empty searchset if not given).

    An absent key is a data gap the service reports, which is not what a threshold test is about: pass
    the keys the service declares (`declared_keys`) so that rules added later find their keys too.
    """
    orders = list(orders) if orders is not None else [medication_request()]
    context: dict[str, Any] = {"userId": "Practitioner/example", "patientId": PATIENT_ID,
                               "draftOrders": bundle(orders, "collection")}
    if hook == "order-select":
        context["selections"] = [f"{o['resourceType']}/{o['id']}" for o in orders]
    prefetch: dict[str, Any] = {key: bundle([]) for key in keys}
    prefetch.update(patient=patient(gender) if gender else None, labs=bundle(labs),
                    conditions=bundle(conditions), administrations=bundle(doses))
    return {"hook": hook, "hookInstance": f"hook-{next(_ids)}", "context": context, "prefetch": prefetch}


def declared_keys(discovery: dict[str, Any]) -> set[str]:
    """Every prefetch key the services list in their discovery document."""
    return {key for service in discovery["services"] for key in service.get("prefetch", {})}


def shifted(resource: dict[str, Any], delta: timedelta) -> dict[str, Any]:
    """A copy of a resource with the times the service reads (effective[x], issued) moved by `delta`.

    Used to bring old example data (Synthea, HL7) to a chosen distance from NOW without changing
    anything else about it.
    """
    moved = copy.deepcopy(resource)
    for key in ("effectiveDateTime", "effectiveInstant", "issued"):
        if isinstance(moved.get(key), str):
            moved[key] = _move(moved[key], delta)
    period = moved.get("effectivePeriod")
    for key in ("start", "end") if isinstance(period, dict) else ():
        if isinstance(period.get(key), str):
            period[key] = _move(period[key], delta)
    return moved


def _move(value: str, delta: timedelta) -> str:
    if len(value) == 10:
        return (datetime.fromisoformat(value) + delta).date().isoformat()
    return (datetime.fromisoformat(value.replace("Z", "+00:00")) + delta).isoformat()


def cards_by_rule(response: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The response's cards keyed by rule id (card.source.topic.code): one card per rule."""
    cards = response["cards"]
    by_rule = {c["source"]["topic"]["code"]: c for c in cards}
    assert len(by_rule) == len(cards), "more than one card for the same rule"
    return by_rule


def asker(client: Any) -> Any:
    """ask(**request): POST a built hook request (order-sign unless `hook=`) to the service for its hook,
    answering every prefetch key the service declares; the 200 response's cards by rule id."""
    keys = declared_keys(client.get("/cds-services").get_json())

    def ask(*, hook: str = "order-sign", **request: Any) -> dict[str, Any]:
        response = client.post(f"/cds-services/cd20-{hook}", json=hook_request(hook=hook, keys=keys, **request))
        assert response.status_code == 200, response.get_data(as_text=True)
        return cards_by_rule(response.get_json())

    return ask
