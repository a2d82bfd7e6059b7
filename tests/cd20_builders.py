"""Builders for the product and issue-5 rule tests: an order for any anti-CD20 product (dose, route), past
doses, reactions, vaccines, medicines, dated problems and temperatures, and a caller that posts them.

Times are "so long before" the frozen clock (conftest.NOW), like tests/fhir_builders.py, whose lab,
serology and bundle builders these reuse. Every prefetch key the service declares is answered (an empty
searchset unless given), so a data gap never stands in for the finding a test is about.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable

import fhir_builders as fb
from conftest import NOW
from fhir_builders import RXNORM, SNOMED

NDC = "http://hl7.org/fhir/sid/ndc"
CVX = "http://hl7.org/fhir/sid/cvx"
HOOKS = ("order-select", "order-sign")
_ids = itertools.count(1)

# One code per product, as orders carry them: an SBD or SCD, or the NDC where RxNorm has no product code.
OCREVUS = {"system": RXNORM, "code": "1876385", "display": "10 ML ocrelizumab 30 MG/ML Injection [Ocrevus]"}
ZUNOVO = {"system": NDC, "code": "50242-554-01", "display": "Ocrevus Zunovo 920 mg/23 mL vial"}
KESIMPTA = {"system": NDC, "code": "0078-1007-68", "display": "Kesimpta 20 mg/0.4 mL"}
BRIUMVI = {"system": NDC, "code": "73150-150-06", "display": "Briumvi 150 mg/6 mL vial"}
RITUXAN = {"system": RXNORM, "code": "1657864", "display": "10 ML rituximab 10 MG/ML Injection [Rituxan]"}
TRUXIMA = {"system": RXNORM, "code": "2105831", "display": "10 ML rituximab-abbs 10 MG/ML Injection [Truxima]"}
BRANDS = {c["code"]: name for c, name in [(OCREVUS, "Ocrevus"), (ZUNOVO, "Zunovo"), (KESIMPTA, "Kesimpta"),
                                           (BRIUMVI, "Briumvi"), (RITUXAN, "Rituxan"), (TRUXIMA, "Truxima")]}
SUBCUTANEOUS = {"coding": [{"system": SNOMED, "code": "34206005", "display": "Subcutaneous route"}]}
INTRAVENOUS = {"coding": [{"system": SNOMED, "code": "47625008", "display": "Intravenous route"}]}


def concept(coding: dict[str, Any] | None = None, text: str | None = None) -> dict[str, Any]:
    """A medication CodeableConcept: a coding, a text, or both."""
    result: dict[str, Any] = {}
    if coding:
        result["coding"] = [coding]
    if text:
        result["text"] = text
    return result


def named(text: str) -> dict[str, Any]:
    """A medication known only by its name, as free-text orders and many med lists carry it."""
    return concept(text=text)


def order(medication: dict[str, Any], *, rid: str = "order-1", dose: tuple[float, str] | None = None,
          route: dict[str, Any] | None = None) -> dict[str, Any]:
    """A draft MedicationRequest; `dose` as (value, UCUM unit), `route` a CodeableConcept."""
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest", "id": rid, "status": "draft", "intent": "order",
        "medicationCodeableConcept": medication, "subject": {"reference": f"Patient/{fb.PATIENT_ID}"},
        "authoredOn": NOW.date().isoformat(),
    }
    dosage: dict[str, Any] = {}
    if dose is not None:
        value, unit = dose
        dosage["doseAndRate"] = [{"doseQuantity": fb.quantity(value, unit)}]
    if route is not None:
        dosage["route"] = route
    if dosage:
        resource["dosageInstruction"] = [dosage]
    return resource


def given(days_ago: float, medication: dict[str, Any], *, status: str = "completed") -> dict[str, Any]:
    """A past dose: a completed MedicationAdministration `days_ago` days before NOW."""
    return {"resourceType": "MedicationAdministration", "id": f"given-{next(_ids)}", "status": status,
            "medicationCodeableConcept": medication, "subject": {"reference": f"Patient/{fb.PATIENT_ID}"},
            "effectiveDateTime": fb.at(days_ago)}


def medicine(medication: dict[str, Any], *, status: str = "active", days_ago: float = 5) -> dict[str, Any]:
    """A MedicationRequest on the patient's record (not one being ordered now)."""
    return {"resourceType": "MedicationRequest", "id": f"med-{next(_ids)}", "status": status, "intent": "order",
            "medicationCodeableConcept": medication, "subject": {"reference": f"Patient/{fb.PATIENT_ID}"},
            "authoredOn": fb.at(days_ago)}


def reaction(substance: dict[str, Any], *, criticality: str | None = None, severity: str | None = None,
             manifestation: dict[str, Any] | None = None, clinical: str = "active") -> dict[str, Any]:
    """An AllergyIntolerance to `substance`, with the marks that make a reaction severe (or none)."""
    resource: dict[str, Any] = {
        "resourceType": "AllergyIntolerance", "id": f"allergy-{next(_ids)}", "code": substance,
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                                       "code": clinical}]},
        "patient": {"reference": f"Patient/{fb.PATIENT_ID}"},
    }
    if criticality:
        resource["criticality"] = criticality
    if severity or manifestation:
        resource["reaction"] = [{"manifestation": [manifestation or {"text": "infusion reaction"}],
                                 **({"severity": severity} if severity else {})}]
    return resource


def vaccine(cvx: str, days_ago: float, display: str | None = None, *, status: str = "completed") -> dict[str, Any]:
    """An Immunization given `days_ago` days before NOW, coded in CVX."""
    coding = {"system": CVX, "code": cvx, **({"display": display} if display else {})}
    return {"resourceType": "Immunization", "id": f"imm-{next(_ids)}", "status": status,
            "vaccineCode": {"coding": [coding]}, "patient": {"reference": f"Patient/{fb.PATIENT_ID}"},
            "occurrenceDateTime": fb.at(days_ago)}


def problem(code: str, system: str = SNOMED, *, text: str | None = None, onset_days_ago: float | None = None,
            clinical: str = "active") -> dict[str, Any]:
    """A problem-list Condition, named by `text` and dated by `onset_days_ago` when they are given."""
    resource = fb.condition(code, system, clinical=clinical)
    if text is not None:
        resource["code"]["text"] = text
    if onset_days_ago is not None:
        resource["onsetDateTime"] = fb.at(onset_days_ago)
    return resource


def temperature(value: float, unit: str, *, hours_ago: float) -> dict[str, Any]:
    """A body temperature (LOINC 8310-5) taken `hours_ago` hours before NOW."""
    return fb.lab("8310-5", value, unit, days_ago=hours_ago / 24)


def request(*, hook: str = "order-sign", keys: Iterable[str], orders: Iterable[dict[str, Any]] = (),
            selections: Iterable[str] | None = None, labs: Iterable[dict[str, Any]] = (),
            conditions: Iterable[dict[str, Any]] = (), doses: Iterable[dict[str, Any]] = (),
            medications: Iterable[dict[str, Any]] = (), allergies: Iterable[dict[str, Any]] = (),
            immunizations: Iterable[dict[str, Any]] = (), statements: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """A complete hook request; order-select selects every order unless `selections` says which."""
    orders = list(orders)
    context: dict[str, Any] = {"userId": "Practitioner/example", "patientId": fb.PATIENT_ID}
    if hook != "patient-view":
        context["draftOrders"] = fb.bundle(orders, "collection")
    if hook == "order-select":
        context["selections"] = list(selections) if selections is not None else [
            f"{o['resourceType']}/{o['id']}" for o in orders]
    given_data = {"patient": fb.patient("female"), "labs": fb.bundle(labs), "conditions": fb.bundle(conditions),
                  "administrations": fb.bundle(doses), "statements": fb.bundle(statements),
                  "medications": fb.bundle(medications),
                  "allergies": fb.bundle(allergies), "immunizations": fb.bundle(immunizations)}
    prefetch = {key: given_data.get(key, fb.bundle([])) for key in keys}
    return {"hook": hook, "hookInstance": f"hook-{next(_ids)}", "context": context, "prefetch": prefetch}


def caller(client) -> Callable[..., dict[str, dict[str, Any]]]:
    """ask(hook=..., **data) posts a request over HTTP and returns the 200 response's cards by rule id."""
    services = {s["hook"]: s for s in client.get("/cds-services").get_json()["services"]}

    def ask(*, hook: str = "order-sign", **data: Any) -> dict[str, dict[str, Any]]:
        service = services[hook]
        body = request(hook=hook, keys=service["prefetch"], **data)
        response = client.post(f"/cds-services/{service['id']}", json=body)
        assert response.status_code == 200, response.get_data(as_text=True)
        return fb.cards_by_rule(response.get_json())

    return ask


def case_id(value: Any) -> str | None:
    """A readable test id for a product coding (its brand); pytest's own id for anything else."""
    return BRANDS.get(value.get("code")) if isinstance(value, dict) else None


def indicator(cards: dict[str, dict[str, Any]], rule: str) -> str | None:
    """The indicator of the rule's card, None when the rule gave no card."""
    return cards[rule]["indicator"] if rule in cards else None
