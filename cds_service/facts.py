"""The patient's record and the ordered products, as plain facts for the rules engine.

Pure: resources in, dicts out. Every number is already in its analyte's canonical unit, every limit says
where it came from, and every check that cannot run becomes an `unavailable` fact rather than silence.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from .labs import LabReader, LabResult, Unreadable, as_datetime
from .orders import Match, ProductCatalogue, medication_of, route_text
from .rulebook import Rulebook
from .units import Units

ACTIVE_CLINICAL = {"active", "recurrence", "relapse"}
EXCLUDED_VERIFICATION = {"refuted", "entered-in-error"}
DOSE_RESOURCES = {"MedicationAdministration": {"completed"},
                  "MedicationStatement": {"active", "completed"},
                  "MedicationRequest": {"completed"}}
DEFAULT_LIMITS = {"alt": "high", "ast": "high", "alp": "high", "bilirubin": "high", "igg": "low"}


@dataclass(frozen=True)
class OrderedDrug:
    """An anti-CD20 order found in the request's draft orders."""

    reference: str  # "MedicationRequest/123"
    match: Match
    resource: dict[str, Any]


class FactBuilder:
    def __init__(self, rulebook: Rulebook) -> None:
        self._rulebook = rulebook
        self.catalogue = ProductCatalogue(rulebook.valuesets)
        self._labs = LabReader(rulebook.valuesets, Units(rulebook.units))
        self._analytes = rulebook.valuesets["analytes"]
        systems = rulebook.valuesets["systems"]
        self._condition_codes = {
            (systems[system], code): group
            for group, spec in rulebook.valuesets["conditions"].items()
            for system in ("snomed", "icd10cm")
            for code in spec.get(system, ())
        }

    def ordered_drug(self, resource: dict[str, Any], bundle: dict[str, dict[str, Any]]) -> OrderedDrug | None:
        match = self.catalogue.match(medication_of(resource, bundle), route_text(resource))
        if match is None:
            return None
        return OrderedDrug(f"{resource.get('resourceType')}/{resource.get('id')}", match, resource)

    def record(self, resources: list[dict[str, Any]], gaps: dict[str, str], now: datetime) -> list[dict[str, Any]]:
        """Facts about the patient: latest lab result per analyte, problems, and what is unavailable."""
        sex = self._sex(resources)
        facts = self._lab_facts(resources, sex, now)
        facts += self._condition_facts(resources, now)
        for key, reason in gaps.items():
            facts += self._gap_facts(key, reason)
        return facts

    def order_fact(self, drug: OrderedDrug, resources: list[dict[str, Any]], gaps: dict[str, str],
                   bundle: dict[str, dict[str, Any]], now: datetime, draft_refs: set[str]) -> dict[str, Any]:
        doses = sorted(self._past_doses(drug, resources, bundle, draft_refs), reverse=True)
        product = drug.match.product
        fact: dict[str, Any] = {
            "kind": "order", "product": product.key, "ingredient": product.ingredient,
            "name": product.name, "short": product.short, "reference": drug.reference,
            "matched_by": drug.match.by, "matched_text": drug.match.text,
            "prior_doses": len(doses),
        }
        if doses:
            fact.update(phase="maintenance", phase_text="a maintenance dose",
                        last_dose=doses[0].date().isoformat(), days_since_last_dose=(now - doses[0]).days)
        else:
            history = "administrations" not in gaps
            fact.update(phase="first", phase_text="a first dose" if history else
                        "a first dose (dose history unavailable, so treated as a first dose)")
        return fact

    def _sex(self, resources: list[dict[str, Any]]) -> str:
        for resource in resources:
            if resource.get("resourceType") == "Patient":
                try:
                    gender = Patient.model_validate(resource).gender
                except ValidationError:
                    return "unknown"
                return gender if gender in ("male", "female") else "unknown"
        return "unknown"

    def _lab_facts(self, resources: list[dict[str, Any]], sex: str, now: datetime) -> list[dict[str, Any]]:
        readings: dict[str, list[LabResult | Unreadable]] = {}
        for resource in resources:
            if resource.get("resourceType") != "Observation":
                continue
            analyte = self._labs.analyte_of(resource)
            reading = self._labs.read(resource, analyte) if analyte else None
            if reading is not None:
                readings.setdefault(analyte, []).append(reading)
        facts = []
        for analyte, found in readings.items():
            usable = sorted((r for r in found if isinstance(r, LabResult)), key=lambda r: r.when, reverse=True)
            latest = usable[0] if usable else None
            for bad in found:
                if isinstance(bad, Unreadable) and (latest is None or bad.when is None or bad.when > latest.when):
                    facts.append(self._unreadable_fact(bad, now))
            if latest:
                facts.append(self._lab_fact(latest, sex, now))
        return facts

    def _lab_fact(self, lab: LabResult, sex: str, now: datetime) -> dict[str, Any]:
        fact: dict[str, Any] = {
            "kind": "lab", "analyte": lab.analyte, "label": self._analytes[lab.analyte]["label"],
            "date": lab.when.date().isoformat(), "age_days": max(0, (now - lab.when).days),
            "day": lab.when.toordinal(), "status": lab.status,
        }
        if lab.result is not None:
            fact["result"] = lab.result
            fact["value_text"] = lab.result
            return fact
        low, high, source = lab.low, lab.high, lab.range_source
        default = DEFAULT_LIMITS.get(lab.analyte)
        if default == "high" and high is None:
            high, source = self._rulebook.thresholds["reference_limits"][lab.analyte][sex], _default_source(sex)
        if default == "low" and low is None:
            low, source = self._rulebook.thresholds["igg"]["lln_mg_dl"], "the default limit"
        shown = f"{_num(lab.value)} {lab.unit}"
        fact.update(value=round(lab.value, 6), unit=lab.unit, range_source=source,
                    value_text=shown if lab.original == shown else f"{shown} (reported as {lab.original})")
        if high:
            fact.update(uln=high, uln_text=f"{_num(high)} {lab.unit}", x_uln=round(lab.value / high, 6),
                        x_uln_text=f"{lab.value / high:.1f} ×")
        if low is not None:
            fact.update(lln=low, lln_text=f"{_num(low)} {lab.unit}", below_lln=lab.value < low)
        return fact

    def _unreadable_fact(self, bad: Unreadable, now: datetime) -> dict[str, Any]:
        label = self._analytes[bad.analyte]["label"]
        when = f" from {bad.when.date().isoformat()}" if bad.when else ""
        return {"kind": "unavailable", "analyte": bad.analyte, "what": f"the latest {label} result{when}",
                "reason": bad.reason}

    def _gap_facts(self, key: str, reason: str) -> list[dict[str, Any]]:
        """A prefetch key that could not be had: one fact per analyte it would have covered."""
        if key == "patient":
            return []  # only sex is read, to pick a default limit; the card says when it was unknown
        if key == "labs":
            return [{"kind": "unavailable", "analyte": analyte, "what": "lab results", "reason": reason}
                    for analyte in self._analytes]
        what = {"conditions": "the problem list", "administrations": "the dose history"}.get(key, key)
        return [{"kind": "unavailable", "analyte": f"prefetch:{key}", "what": what, "reason": reason}]

    def _condition_facts(self, resources: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        facts = []
        for resource in resources:
            if resource.get("resourceType") != "Condition":
                continue
            group = self._condition_group(resource)
            if group is None:
                continue
            try:
                condition = Condition.model_validate(resource)
            except ValidationError:
                facts.append({"kind": "unavailable", "analyte": f"condition:{group}",
                              "what": f"a {group.replace('_', ' ')} problem-list entry", "reason": "is not valid FHIR"})
                continue
            if _is_active(condition):
                facts.append({"kind": "condition", "group": group,
                              "display": (condition.code.text or _first_display(condition.code) or group)})
        return facts

    def _condition_group(self, resource: dict[str, Any]) -> str | None:
        code = resource.get("code")
        for coding in (code.get("coding") or ()) if isinstance(code, dict) else ():
            if isinstance(coding, dict):
                group = self._condition_codes.get((coding.get("system"), coding.get("code")))
                if group:
                    return group
        return None

    def _past_doses(self, drug: OrderedDrug, resources: Iterable[dict[str, Any]],
                    bundle: dict[str, dict[str, Any]], draft_refs: set[str]) -> list[datetime]:
        doses = []
        for resource in resources:
            kind = resource.get("resourceType")
            if kind not in DOSE_RESOURCES or resource.get("status") not in DOSE_RESOURCES[kind]:
                continue
            if f"{kind}/{resource.get('id')}" in draft_refs:
                continue
            match = self.catalogue.match(medication_of(resource, bundle), route_text(resource))
            when = _dose_time(resource)
            if match and match.product.ingredient == drug.match.product.ingredient and when:
                doses.append(when)
        return doses


def _is_active(condition: Condition) -> bool:
    clinical = _first_code(condition.clinicalStatus)
    verification = _first_code(condition.verificationStatus)
    return (clinical is None or clinical in ACTIVE_CLINICAL) and verification not in EXCLUDED_VERIFICATION


def _first_code(concept: Any) -> str | None:
    for coding in (concept.coding or ()) if concept else ():
        if coding.code:
            return coding.code
    return None


def _first_display(concept: Any) -> str | None:
    for coding in (concept.coding or ()) if concept else ():
        if coding.display:
            return coding.display
    return None


def _dose_time(resource: dict[str, Any]) -> datetime | None:
    for key in ("effectiveDateTime", "occurrenceDateTime", "authoredOn", "dateAsserted"):
        value = resource.get(key)
        if isinstance(value, str):
            try:
                return as_datetime(value)
            except ValueError:
                return None
    period = resource.get("effectivePeriod")
    if isinstance(period, dict) and isinstance(period.get("start"), str):
        try:
            return as_datetime(period["start"])
        except ValueError:
            return None
    return None


def _default_source(sex: str) -> str:
    return "the default limit" if sex != "unknown" else "the default limit (sex unknown: the lower one)"


def _num(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
