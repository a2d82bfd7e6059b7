"""The patient's record as plain facts for the rules engine.

Pure: resources in, dicts out. Every number is already in its analyte's canonical unit, every limit says
where it came from, and every check that cannot run becomes an `unavailable` fact rather than silence.
The facts about what is being ordered (the rules' anchor) are built in anchors.py.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.immunization import Immunization
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from . import deadline
from .labs import LabReader, LabResult, Unreadable, as_datetime
from .orders import Catalogue, as_list, medication_of
from .rulebook import Rulebook
from .units import Units

ACTIVE_CLINICAL = {"active", "recurrence", "relapse"}
EXCLUDED_VERIFICATION = {"refuted", "entered-in-error"}
ACTIVE_MEDICATION = {"MedicationRequest": {"active", "draft"}, "MedicationStatement": {"active", "intended"}}
EVERY_RESULT_CAP = 50  # most results kept for analytes where any recent one counts (every_result_days)
DEFAULT_LIMITS = {"alt": "high", "ast": "high", "alp": "high", "bilirubin": "high", "igg": "low"}
GAP_SUBJECTS = {"conditions": "the problem list", "administrations": "the dose history",
                "medications": "the medication list", "allergies": "the allergy list",
                "immunizations": "the immunization history"}


class FactBuilder:
    def __init__(self, rulebook: Rulebook) -> None:
        self._rulebook = rulebook
        self.catalogue = Catalogue(rulebook.products, rulebook.valuesets)
        self._labs = LabReader(rulebook.valuesets, Units(rulebook.units))
        self._analytes = rulebook.valuesets["analytes"]
        systems = rulebook.valuesets["systems"]
        self._condition_codes = {
            (systems[system], code): group
            for group, spec in rulebook.valuesets["conditions"].items()
            for system in ("snomed", "icd10cm")
            for code in spec.get(system, ())
        }
        anaphylaxis = rulebook.valuesets["anaphylaxis"]
        self._anaphylaxis = (set(anaphylaxis["snomed"]), tuple(anaphylaxis["words"]))

    def record(self, resources: list[dict[str, Any]], gaps: dict[str, str], now: datetime) -> list[dict[str, Any]]:
        """Facts about the patient: latest result per analyte, problems, reactions, medicines, vaccines,
        and what could not be read or retrieved."""
        by_type: dict[str, list[dict[str, Any]]] = {}
        for resource in resources:
            by_type.setdefault(resource.get("resourceType", ""), []).append(resource)
        facts = self._lab_facts(by_type.get("Observation", []), self.sex(by_type.get("Patient", [])), now)
        facts += self._condition_facts(by_type.get("Condition", []), now)
        facts += self._reaction_facts(by_type.get("AllergyIntolerance", []))
        facts += self._medication_facts(resources)
        facts += self._vaccine_facts(by_type.get("Immunization", []), now)
        for key, reason in gaps.items():
            facts += self._gap_facts(key, reason)
        return facts

    def sex(self, patients: list[dict[str, Any]]) -> str:
        for resource in patients:
            try:
                gender = Patient.model_validate(resource).gender
            except ValidationError:
                return "unknown"
            return gender if gender in ("male", "female") else "unknown"
        return "unknown"

    def _lab_facts(self, observations: list[dict[str, Any]], sex: str, now: datetime) -> list[dict[str, Any]]:
        """The latest readable result per analyte (every recent one where any counts), and each result
        newer than it that could not be read. Results are read newest first and only as far as needed:
        a long record's older results are never validated."""
        by_analyte: dict[str, list[dict[str, Any]]] = {}
        for resource in observations:
            analyte = self._labs.analyte_of(resource)
            if analyte:
                by_analyte.setdefault(analyte, []).append(resource)
        facts = []
        for analyte, resources in by_analyte.items():
            days = self._analytes[analyte].get("every_result_days")
            wanted = EVERY_RESULT_CAP if days else 1
            usable: list[LabResult] = []
            for resource in sorted(resources, key=_stated_time, reverse=True):
                deadline.check()  # validating a result is most of a call's cost: a long record is stopped here
                if usable and days and (now - _stated_time(resource)).days > days:
                    break
                reading = self._labs.read(resource, analyte)
                if isinstance(reading, Unreadable) and not usable:
                    facts.append(self._unreadable_fact(reading))
                elif isinstance(reading, LabResult):
                    usable.append(reading)
                    if len(usable) == wanted:
                        break
            facts += [self._lab_fact(lab, sex, now) for lab in sorted(usable, key=lambda r: r.when, reverse=True)]
        return facts

    def _lab_fact(self, lab: LabResult, sex: str, now: datetime) -> dict[str, Any]:
        fact: dict[str, Any] = {
            "kind": "lab", "analyte": lab.analyte, "label": self._analytes[lab.analyte]["label"],
            **_age(lab.when, now), "status": lab.status,
        }
        if lab.result is not None:
            return {**fact, "result": lab.result, "value_text": lab.result}
        low, high, source = lab.low, lab.high, lab.range_source
        default = DEFAULT_LIMITS.get(lab.analyte)
        if default == "high" and high is None:
            high, source = self._rulebook.thresholds["reference_limits"][lab.analyte][sex], _default_source(sex)
        if default == "low" and low is None:
            low, source = self._rulebook.thresholds["igg"]["lln_mg_dl"], "the default limit"
        shown = f"{_num(lab.value)} {lab.unit}"  # lab.unit is the family's display form (units.yaml)
        fact.update(value=round(lab.value, 9), unit=lab.unit, range_source=source,
                    value_text=f"{shown} (reported as {lab.original})" if lab.original else shown)
        if high:
            fact.update(uln=high, uln_text=f"{_num(high)} {lab.unit}", x_uln=round(lab.value / high, 9),
                        x_uln_text=f"{lab.value / high:.2f} ×")
        if low is not None:
            fact.update(lln=low, lln_text=f"{_num(low)} {lab.unit}", below_lln=lab.value < low)
        fact["limit_used"] = default or ""  # which limit the rules compare this analyte with, for the card
        return fact

    def _unreadable_fact(self, bad: Unreadable) -> dict[str, Any]:
        label = self._analytes[bad.analyte]["label"]
        when = f" from {bad.when.date().isoformat()}" if bad.when else ""
        return {"kind": "unavailable", "analyte": bad.analyte, "what": f"the latest {label} result{when}",
                "reason": bad.reason, "brief": bad.reason}

    def _gap_facts(self, key: str, reason: str) -> list[dict[str, Any]]:
        """A prefetch key that could not be had: one fact per check it would have fed."""
        if key == "patient":
            return []  # only sex is read, to pick a default limit; the card says when it was unknown
        if key == "labs":
            what = "the lab results (HBV serology, IgG, liver tests, blood counts)"
            return [{"kind": "unavailable", "analyte": analyte, "what": what, "reason": reason,
                     "brief": "could not be retrieved"}
                    for analyte in self._analytes]
        return [{"kind": "unavailable", "analyte": f"prefetch:{key}", "what": GAP_SUBJECTS.get(key, key),
                 "brief": "could not be retrieved",
                 "reason": reason}]

    def _condition_facts(self, conditions: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        facts = []
        for resource in conditions:
            group = self._condition_group(resource)
            if group is None:
                continue
            deadline.check()
            try:
                condition = Condition.model_validate(resource)
            except (ValidationError, RecursionError):
                label = self._rulebook.valuesets["conditions"][group]["label"]
                facts.append({"kind": "unavailable", "analyte": f"condition:{group}",
                              "what": f"a {label} problem-list entry", "reason": "is not valid FHIR", "brief": "is not valid FHIR"})
                continue
            history_counts = self._rulebook.valuesets["conditions"][group].get("history_counts", False)
            if _is_active(condition) or (history_counts and _is_confirmed(condition)):
                since = condition.onsetDateTime or (condition.onsetPeriod.start if condition.onsetPeriod else None) \
                    or condition.recordedDate
                label = self._rulebook.valuesets["conditions"][group]["label"]
                facts.append({"kind": "condition", "group": group, "status": _first_code(condition.clinicalStatus) or "active",
                              "display": condition.code.text or _first_display(condition.code) or label,
                              **(_age(as_datetime(since), now) if since else {"age_days": 0, "date": "unknown"})})
        return facts

    def _condition_group(self, resource: dict[str, Any]) -> str | None:
        code = resource.get("code")
        for coding in as_list(code.get("coding")) if isinstance(code, dict) else ():
            if isinstance(coding, dict):
                group = self._condition_codes.get((coding.get("system"), coding.get("code")))
                if group:
                    return group
        return None

    def _reaction_facts(self, allergies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Severe reactions to an anti-CD20 substance (high criticality, severe, or anaphylaxis)."""
        facts = []
        for resource in allergies:
            substance = self.catalogue.substance(resource.get("code")) or next(
                (m for r in as_list(resource.get("reaction")) if isinstance(r, dict)
                 for m in [self.catalogue.substance(r.get("substance"))] if m), None)
            if substance is None:
                continue
            try:
                allergy = AllergyIntolerance.model_validate(resource)
            except (ValidationError, RecursionError):
                facts.append({"kind": "unavailable", "analyte": "reaction", "reason": "is not valid FHIR", "brief": "is not valid FHIR",
                              "what": f"an allergy-list entry for {substance.what}"})
                continue
            if _first_code(allergy.clinicalStatus) in ("inactive", "resolved") or \
                    _first_code(allergy.verificationStatus) in EXCLUDED_VERIFICATION:
                continue
            if self._severe(allergy):
                display = (allergy.code.text if allergy.code and allergy.code.text else None) \
                    or _first_display(allergy.code) or substance.what
                facts.append({"kind": "reaction", "substance": substance.what, "severe": True, "display": display})
        return facts

    def _severe(self, allergy: AllergyIntolerance) -> bool:
        codes, words = self._anaphylaxis
        if allergy.criticality == "high":
            return True
        for reaction in allergy.reaction or ():
            if reaction.severity == "severe":
                return True
            for manifestation in reaction.manifestation or ():
                if any(c.code in codes for c in manifestation.coding or ()):
                    return True
                texts = [manifestation.text or ""] + [c.display or "" for c in manifestation.coding or ()]
                if any(w in t.lower() for t in texts for w in words):
                    return True
        return False

    def _medication_facts(self, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Active (or just-drafted) medicines by group: anti-infectives, HBV prophylaxis, and so on."""
        facts = []
        bundle = {f"{r.get('resourceType')}/{r.get('id')}": r for r in resources}
        for resource in resources:
            statuses = ACTIVE_MEDICATION.get(resource.get("resourceType", ""))
            if not statuses or resource.get("status") not in statuses:
                continue
            concept = medication_of(resource, bundle)
            for group in self.catalogue.groups(concept):
                facts.append({"kind": "medication", "group": group, "display": _concept_text(concept)})
        return facts

    def _vaccine_facts(self, immunizations: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        facts = []
        for resource in immunizations:
            if resource.get("status") != "completed":
                continue
            kind = self.catalogue.vaccine(resource.get("vaccineCode"))
            if kind is None:
                continue
            try:
                given = Immunization.model_validate(resource).occurrenceDateTime
            except (ValidationError, RecursionError):
                facts.append({"kind": "unavailable", "analyte": "vaccine", "what": f"a {kind[1]} record",
                              "reason": "is not valid FHIR", "brief": "is not valid FHIR"})
                continue
            if given is not None:
                facts.append({"kind": "vaccine", "live": kind[0], "display": kind[1], **_age(as_datetime(given), now)})
        return facts


def _stated_time(resource: dict[str, Any]) -> datetime:
    """When an Observation says it was taken, read cheaply from its JSON to decide the reading order; one
    whose time cannot be read sorts first, so that it is read (and reported) rather than skipped."""
    period = resource.get("effectivePeriod")
    for value in (resource.get("effectiveDateTime"), resource.get("effectiveInstant"),
                  period.get("end") if isinstance(period, dict) else None,
                  period.get("start") if isinstance(period, dict) else None, resource.get("issued")):
        if isinstance(value, str):
            try:
                return as_datetime(value)
            except ValueError:
                break
    return datetime.max.replace(tzinfo=timezone.utc)


def _age(when: datetime, now: datetime) -> dict[str, Any]:
    """Age in whole days (a result from this morning is 0 days old) and in started hours (72 h 30 min is
    73 h, so an hourly window such as fever's 72 h is never overstretched)."""
    seconds = max(0.0, (now - when).total_seconds())
    return {"date": when.date().isoformat(), "day": when.toordinal(), "age_days": int(seconds // 86400),
            "age_hours": math.ceil(seconds / 3600)}


def _is_active(condition: Condition) -> bool:
    clinical = _first_code(condition.clinicalStatus)
    verification = _first_code(condition.verificationStatus)
    return (clinical is None or clinical in ACTIVE_CLINICAL) and verification not in EXCLUDED_VERIFICATION


def _is_confirmed(condition: Condition) -> bool:
    return _first_code(condition.verificationStatus) not in EXCLUDED_VERIFICATION


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


def _concept_text(concept: dict[str, Any] | None) -> str:
    if not isinstance(concept, dict):
        return "a medicine"
    if isinstance(concept.get("text"), str):
        return concept["text"]
    return next((c["display"] for c in as_list(concept.get("coding"))
                 if isinstance(c, dict) and isinstance(c.get("display"), str)), "a medicine")


def _default_source(sex: str) -> str:
    return "the default limit" if sex != "unknown" else "the default limit (sex unknown: the lower one)"


def _num(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
