"""The patient's record as plain facts for the rules engine.

Pure: resources in, dicts out. Every number is already in its analyte's canonical unit, every limit says
where it came from, and every check that cannot run becomes an `unavailable` fact rather than silence.
The facts about what is being ordered (the rules' anchor) are built in orders.py.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, TypeVar

from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.immunization import Immunization
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from .. import deadline
from ..engine.rulebook import Rulebook
from ..record.references import as_list, index, medication_of
from .codesystems import CodeSystems
from .labs import TOO_LARGE, Coded, LabReader, LabResult, Unreadable, as_datetime, invalid_fhir, oversized
from .products import Products, route_text
from .units import Units

ACTIVE_CLINICAL = {"active", "recurrence", "relapse"}
EXCLUDED_VERIFICATION = {"refuted", "entered-in-error"}
ACTIVE_MEDICATION = {"MedicationRequest": {"active", "draft"}, "MedicationStatement": {"active", "intended"}}
EVERY_RESULT_CAP = 50  # most results kept for analytes where any recent one counts (every_result_days)
DEFAULT_LIMITS = {"alt": "high", "ast": "high", "alp": "high", "bilirubin": "high", "igg": "low"}
GAP_SUBJECTS = {"conditions": "the problem list", "administrations": "the dose history",
                "statements": "the medication statements (doses recorded elsewhere)",
                "medications": "the medication list", "allergies": "the allergy list",
                "immunizations": "the immunization history"}
M = TypeVar("M", Patient, Condition, AllergyIntolerance, Immunization)


class FactBuilder:
    def __init__(self, rulebook: Rulebook) -> None:
        self._rulebook = rulebook
        self.products = Products(rulebook.products, rulebook.valuesets)
        self._labs = LabReader(rulebook.valuesets, Units(rulebook.units))
        self._analytes = rulebook.valuesets["analytes"]
        self._systems = CodeSystems(rulebook.valuesets)
        systems = rulebook.valuesets["systems"]
        self._condition_codes = {
            code: (systems[system], group)
            for group, spec in rulebook.valuesets["conditions"].items()
            for system in ("snomed", "icd10cm")
            for code in spec.get(system, ())
        }
        self.skew = skew(rulebook.thresholds)
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
            patient, _ = _validated(Patient, resource)
            if patient is None:
                return "unknown"
            gender = patient.gender
            return gender if gender in ("male", "female") else "unknown"
        return "unknown"

    def _lab_facts(self, observations: list[dict[str, Any]], sex: str, now: datetime) -> list[dict[str, Any]]:
        """The latest readable final result per analyte (every recent one where any counts), the newest
        preliminary result when it is newer than that, and each result newer than it that could not be
        read. Results are read newest first and only as far as needed: a long record's older results are
        never validated."""
        by_analyte: dict[str, list[tuple[dict[str, Any], Coded]]] = {}
        for resource in observations:
            coded = self._labs.analyte_of(resource)
            if coded:
                by_analyte.setdefault(coded.analyte, []).append((resource, coded))
        facts = []
        for analyte, entries in by_analyte.items():
            used, unreadable = self._readings(analyte, entries, now)
            facts += [self._unreadable_fact(bad, resource, now) for bad, resource in unreadable]
            facts += [self._lab_fact(lab, sex, now) for lab in sorted(used, key=lambda r: r.when, reverse=True)]
        return facts

    def _readings(self, analyte: str, entries: list[tuple[dict[str, Any], Coded]], now: datetime
                  ) -> tuple[list[LabResult], list[tuple[Unreadable, dict[str, Any]]]]:
        """The results of one analyte the rules use, and the unreadable ones newer than every final one.

        A preliminary (or other non-final) result newer than the latest final one is used beside it, not
        instead of it: the rules see both, so either one being abnormal gives its card. Today's preliminary
        ANC of 0.3 is not hidden by a normal final count from three weeks ago, and a normal preliminary
        does not silence the abnormal final result it may yet be corrected to confirm; a missed warning
        costs more than a second row in the card's table. The preliminary one is marked as such wherever
        its value is shown (value_text)."""
        days = self._analytes[analyte].get("every_result_days")
        wanted = EVERY_RESULT_CAP if days else 1
        final: list[LabResult] = []
        provisional: LabResult | None = None
        unreadable = []
        for resource, coded in sorted(entries, key=lambda e: _stated_time(e[0]), reverse=True):
            deadline.check()  # validating a result is most of a call's cost: a long record is stopped here
            if final and days and (now - _stated_time(resource)).days > days:
                break
            reading = self._labs.read(resource, coded)
            if isinstance(reading, LabResult) and reading.when > now + self.skew:
                reading = _future(analyte, reading.when)
            if isinstance(reading, Unreadable) and not final:
                unreadable.append((reading, resource))
            elif isinstance(reading, LabResult) and (days or reading.final):
                final.append(reading)
                if len(final) == wanted:
                    break
            elif isinstance(reading, LabResult) and provisional is None:
                provisional = reading
        return final + ([provisional] if provisional else []), unreadable

    def _lab_fact(self, lab: LabResult, sex: str, now: datetime) -> dict[str, Any]:
        fact: dict[str, Any] = {
            "kind": "lab", "analyte": lab.analyte, "label": self._analytes[lab.analyte]["label"],
            **_age(lab.when, now), "status": lab.status,
        }
        marked = "" if lab.final else " (preliminary)" if lab.status == "preliminary" else f" (not final: {lab.status})"
        if lab.result is not None:
            return {**fact, "result": lab.result, "value_text": lab.result + marked}
        low, high, source = lab.low, lab.high, lab.range_source
        default = DEFAULT_LIMITS.get(lab.analyte)
        if default == "high" and high is None:
            high, source = self._rulebook.thresholds["reference_limits"][lab.analyte][sex], _default_source(sex)
        if default == "low" and low is None:
            low, source = self._rulebook.thresholds["igg"]["lln_mg_dl"], "the default limit"
        shown = f"{_num(lab.value)} {lab.unit}"  # lab.unit is the family's display form (units.yaml)
        fact.update(value=round(lab.value, 9), unit=lab.unit, range_source=source,
                    value_text=(f"{shown} (reported as {lab.original})" if lab.original else shown) + marked)
        if high:
            fact.update(uln=high, uln_text=f"{_num(high)} {lab.unit}", x_uln=round(lab.value / high, 9),
                        x_uln_text=f"{lab.value / high:.2f} ×")
        if low is not None:
            fact.update(lln=low, lln_text=f"{_num(low)} {lab.unit}", below_lln=lab.value < low)
        grades = self._analytes[lab.analyte].get("grades")
        if grades:
            fact["grade_text"] = _grade(grades, lab.value, low)
        fact["limit_used"] = default or ""  # which limit the rules compare this analyte with, for the card
        return fact

    def _unreadable_fact(self, bad: Unreadable, resource: dict[str, Any], now: datetime) -> dict[str, Any]:
        """Which result could not be read and why, dated so that each rule counts it only in its own
        window (an undated one counts everywhere: it may be today's)."""
        label = self._analytes[bad.analyte]["label"]
        when = bad.when or _stated(resource)
        dated = _age(when, now) if when else {"date": "", "day": now.toordinal(), "age_days": 0, "age_hours": 0}
        what = f"the {label} result of {dated['date']}" if when else f"the {label} result with no readable date"
        return {"kind": "unavailable", "source": "lab", "analyte": bad.analyte, "what": what, **dated,
                "reason": bad.reason, "brief": bad.brief or bad.reason}

    def _gap_facts(self, key: str, reason: str) -> list[dict[str, Any]]:
        """A prefetch key that could not be had: one fact per check it would have fed."""
        if key == "patient":
            return []  # only sex is read, to pick a default limit; the card says when it was unknown
        if key == "labs":
            what = "the lab results (HBV serology, IgG, liver tests, blood counts)"
            return [{**record_gap(analyte, what, reason, "could not be retrieved"), "source": "lab"}
                    for analyte in self._analytes]
        return [record_gap(f"prefetch:{key}", GAP_SUBJECTS.get(key, key), reason, "could not be retrieved")]

    def _condition_facts(self, conditions: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        facts = []
        for resource in conditions:
            coded = self._condition_group(resource)
            if coded is None:
                continue
            group, problem = coded
            spec = self._rulebook.valuesets["conditions"][group]
            what = f"a {spec['label']} problem-list entry"
            if problem:
                facts.append(record_gap(f"condition:{group}", what, problem, "is coded under an unknown code system"))
                continue
            deadline.check()
            condition, problem = _validated(Condition, resource)
            if condition is None:
                facts.append(record_gap(f"condition:{group}", what, *problem))
                continue
            if not (_is_active(condition) or (spec.get("history_counts", False) and _is_confirmed(condition))):
                continue
            since = condition.onsetDateTime or (condition.onsetPeriod.start if condition.onsetPeriod else None) \
                or condition.recordedDate
            when = as_datetime(since) if since else None
            if when and when > now + self.skew:
                facts.append(record_gap(f"condition:{group}", what, _dated_after_now(when), "is dated after now"))
                continue
            facts.append({"kind": "condition", "group": group, "status": _first_code(condition.clinicalStatus) or "active",
                          "display": condition.code.text or _first_display(condition.code) or spec["label"],
                          **(_age(when, now) if when else {"age_days": 0, "date": "unknown"})})
        return facts

    def _condition_group(self, resource: dict[str, Any]) -> tuple[str, str] | None:
        """The problem-list group of a Condition's code, and a problem when its code system is unknown."""
        code = resource.get("code")
        stray = None
        for coding in as_list(code.get("coding")) if isinstance(code, dict) else ():
            value = coding.get("code") if isinstance(coding, dict) else None
            known = self._condition_codes.get(value.strip()) if isinstance(value, str) else None
            if known is None:
                continue
            system = self._systems.canonical(coding.get("system"))
            if system == known[0]:
                return known[1], ""
            if system is None and stray is None:
                stray = known[1], unknown_system(value.strip(), self._systems.shown(coding.get("system")))
        return stray

    def _reaction_facts(self, allergies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Severe reactions to an anti-CD20 substance (high criticality, severe, or anaphylaxis)."""
        facts = []
        for resource in allergies:
            substance = self.products.substance(resource.get("code")) or next(
                (m for r in as_list(resource.get("reaction")) if isinstance(r, dict)
                 for m in [self.products.substance(r.get("substance"))] if m), None)
            if substance is None:
                continue
            allergy, problem = _validated(AllergyIntolerance, resource)
            if allergy is None:
                facts.append(record_gap("reaction", f"an allergy-list entry for {substance.what}", *problem))
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
        """Active (or just-drafted) medicines by group: anti-infectives, HBV prophylaxis, and so on; and
        the anti-CD20 therapies active on the record (not the drafts being ordered now)."""
        facts = []
        bundle = index(resources)
        for resource in resources:
            statuses = ACTIVE_MEDICATION.get(resource.get("resourceType", ""))
            if not statuses or resource.get("status") not in statuses:
                continue
            concept = medication_of(resource, bundle)
            for group in self.products.groups(concept):
                facts.append({"kind": "medication", "group": group, "display": _concept_text(concept)})
            found = self.products.product(concept, route_text(resource)) if resource.get("status") != "draft" else None
            if found and not found[1].unknown_system:
                facts.append({"kind": "active_therapy", "product": found[0].key, "short": found[0].data["short"],
                              "display": _concept_text(concept)})
        return facts

    def _vaccine_facts(self, immunizations: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        facts = []
        for resource in immunizations:
            if resource.get("status") != "completed":
                continue
            kind = self.products.vaccine(resource.get("vaccineCode"))
            if kind is None:
                continue
            if kind[0] == "unrecognised":
                facts.append(record_gap("vaccine", "a vaccine record", kind[1], "is coded under an unknown code system"))
                continue
            immunization, problem = _validated(Immunization, resource)
            if immunization is None:
                facts.append(record_gap("vaccine", f"a {kind[1]} record", *problem))
                continue
            given = immunization.occurrenceDateTime
            when = as_datetime(given) if given is not None else None
            if when and when > now + self.skew:
                facts.append(record_gap("vaccine", f"a {kind[1]} record", _dated_after_now(when), "is dated after now"))
            elif when:
                facts.append({"kind": "vaccine", "live": kind[0], "display": kind[1], **_age(when, now)})
        return facts


def record_gap(subject: str, what: str, reason: str, brief: str = "") -> dict[str, Any]:
    """A check that could not run for a reason that has no date of its own (a prefetch key that could not
    be had, an entry that is not valid FHIR): it counts for every rule, whatever its window."""
    return {"kind": "unavailable", "source": "record", "analyte": subject, "what": what, "reason": reason,
            "brief": brief or reason, "date": "", "age_days": 0, "age_hours": 0}


def foreign_fact(count: int) -> dict[str, Any]:
    """Resources of another patient were received and left out (record/identity.py)."""
    noun = "resource" if count == 1 else "resources"
    return {"kind": "unavailable", "source": "identity", "analyte": "identity", "count": count,
            "count_text": f"{count} {noun}", "what": "data for another patient",
            "brief": f"was received and ignored ({count} {noun})",
            "reason": f"was received and ignored ({count} {noun} naming another patient): only this patient's "
                      "own record was used. Check what the EHR sends to this service."}


def unknown_system(code: str, system: str) -> str:
    return f"is coded {code} under a code system the service does not recognise ({system})"


def skew(thresholds: dict[str, Any]) -> timedelta:
    """How far after now a record's date may lie and still be taken as now (clocks differ a little)."""
    return timedelta(minutes=thresholds["clock"]["skew_allowance_minutes"])


def _dated_after_now(when: datetime) -> str:
    return f"is dated after now ({when.date().isoformat()}): a data error, not a recent event"


def _future(analyte: str, when: datetime) -> Unreadable:
    return Unreadable(analyte, when, _dated_after_now(when), "is dated after now")


def _validated(model: type[M], resource: dict[str, Any]) -> tuple[M | None, tuple[str, str]]:
    """The resource as `model`, or None and why not (reason, brief): not valid FHIR, or too large to
    validate within a call's budget (labs.MAX_ELEMENTS: validation runs in one go, between deadline checks)."""
    if oversized(json.dumps(resource, separators=(",", ":"))):
        return None, (TOO_LARGE, "is too large to read")
    try:
        return model.model_validate(resource), ("", "")
    except (ValidationError, RecursionError) as e:
        return None, (_invalid(e), "is not valid FHIR")


def _invalid(error: Exception) -> str:
    return invalid_fhir(error) if isinstance(error, ValidationError) else "is not valid FHIR (nested too deeply)"


def _grade(spec: dict[str, Any], value: float, lln: float | None) -> str:
    """The result's grade on the analyte's scale (valuesets.yaml `grades`): the worst band it is below,
    else grade 1 when it is below the lower limit of normal."""
    for bound, grade in spec["below"]:
        if value < bound:
            return f"{spec['scale']} grade {grade}"
    return f"{spec['scale']} grade 1" if lln is not None and value < lln else "not graded"


def _stated(resource: dict[str, Any]) -> datetime | None:
    when = _stated_time(resource)
    return None if when == datetime.max.replace(tzinfo=timezone.utc) else when


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
    """Three significant figures, never in exponent form (a clinician reads "0.00005", not "5e-05")."""
    return format(Decimal(f"{value:.3g}"), "f") if abs(value) < 100 else f"{value:.0f}"
