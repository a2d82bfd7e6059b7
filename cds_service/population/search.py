"""The service's prefetch templates answered from one patient's resources in memory, as the EHR's FHIR
server would answer them when it fills the prefetch.

Only what the templates use is understood: a read of the patient, and searches by patient, code (token:
system|code or code), status, with _sort by date, _count, and `_include` of the Medications the matches
name by `medicationReference` (from the export's Medication resources, which belong to no patient). A
template asking for anything else is refused when the replay starts, so a change to the templates cannot
be answered by half.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping
from urllib.parse import parse_qsl

from ..clinical.labs import as_datetime
from ..record.references import reference_target

PATIENT_TOKEN = "{{context.patientId}}"
CODE_ELEMENTS = {"Observation": "code", "Condition": "code", "AllergyIntolerance": "code",
                 "MedicationAdministration": "medicationCodeableConcept",
                 "MedicationRequest": "medicationCodeableConcept", "Immunization": "vaccineCode"}
NEWEST_FIRST = {"-date", "-effective-time", "-effective"}  # both: by the resource's clinical date (see clinical_date)
DATE_ELEMENTS = ("effectiveDateTime", "effectiveInstant", "effectivePeriod", "occurrenceDateTime",
                 "onsetDateTime", "authoredOn", "recordedDate", "issued")


class UnsupportedSearch(ValueError):
    """A prefetch template asks for a search this module does not evaluate."""


@dataclass(frozen=True)
class Search:
    """One compiled template: `run` gives its answer for one patient."""

    resource_type: str
    read: bool  # Patient/{{context.patientId}}: the resource itself, not a Bundle
    codes: frozenset[tuple[str | None, str]] | None = None  # (system or None for any, code)
    statuses: frozenset[str] | None = None
    newest_first: bool = False
    count: int | None = None
    includes_medications: bool = False  # _include=<type>:medication

    @classmethod
    def compile(cls, template: str) -> "Search":
        path, _, query = template.partition("?")
        if path == f"Patient/{PATIENT_TOKEN}" and not query:
            return cls("Patient", read=True)
        if "/" in path or not query:
            raise UnsupportedSearch(f"{template}: only a read of the patient or a search by patient is evaluated")
        fields: dict[str, Any] = {}
        patient = False
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name == "patient" and value == PATIENT_TOKEN:
                patient = True
            elif name == "code" and path in CODE_ELEMENTS:
                fields["codes"] = frozenset(_token(t) for t in value.split(","))
            elif name == "status":
                fields["statuses"] = frozenset(value.split(","))
            elif name == "_sort" and value in NEWEST_FIRST:
                fields["newest_first"] = True
            elif name == "_count" and value.isdigit():
                fields["count"] = int(value)
            elif name == "_include" and value == f"{path}:medication":
                fields["includes_medications"] = True
            else:
                raise UnsupportedSearch(f"{template}: the search parameter {name}={value} is not evaluated")
        if not patient:
            raise UnsupportedSearch(f"{template}: a search must be by patient={PATIENT_TOKEN}")
        return cls(path, read=False, **fields)

    def run(self, by_type: dict[str, list[dict[str, Any]]], medications: Mapping[str, dict[str, Any]]
            ) -> dict[str, Any] | None:
        """The answer from one patient's resources (grouped by type): the Patient, or a searchset Bundle;
        `medications` are the export's Medications by "Medication/id", for `_include`."""
        found = by_type.get(self.resource_type, [])
        if self.read:
            return found[0] if found else None
        matches = [r for r in found if self._matches(r)]
        if self.newest_first:
            matches.sort(key=_newest_first)
        page = matches[: self.count] if self.count is not None else matches
        entries = [{"resource": r, "search": {"mode": "match"}} for r in page]
        if self.includes_medications:
            named = dict.fromkeys(t for r in page for t in [_medication_named(r)] if t in medications)
            entries += [{"resource": medications[t], "search": {"mode": "include"}} for t in named]
        return {"resourceType": "Bundle", "type": "searchset", "total": len(matches), "entry": entries}

    def _matches(self, resource: dict[str, Any]) -> bool:
        if self.statuses is not None and resource.get("status") not in self.statuses:
            return False
        if self.codes is None:
            return True
        concept = resource.get(CODE_ELEMENTS[self.resource_type])
        codings = concept.get("coding") if isinstance(concept, dict) else None
        for coding in codings if isinstance(codings, list) else ():
            if isinstance(coding, dict) and ((coding.get("system"), coding.get("code")) in self.codes
                                             or (None, coding.get("code")) in self.codes):
                return True
        return False


def _medication_named(resource: dict[str, Any]) -> str | None:
    reference = resource.get("medicationReference")
    ref = reference.get("reference") if isinstance(reference, dict) else None
    return reference_target(ref) if isinstance(ref, str) else None


def clinical_date(resource: dict[str, Any]) -> datetime | None:
    """When the resource happened (or was recorded, if nothing says when it happened); None if unknown."""
    for element in DATE_ELEMENTS:
        value = resource.get(element)
        if isinstance(value, dict):
            value = value.get("start")
        if isinstance(value, str):
            try:
                return as_datetime(value)
            except ValueError:
                return None
    return None


def _newest_first(resource: dict[str, Any]) -> tuple[bool, float]:
    """Sort key: dated resources newest first, undated ones last."""
    when = clinical_date(resource)
    return (when is None, -when.timestamp() if when else 0.0)


def _token(text: str) -> tuple[str | None, str]:
    system, bar, code = text.rpartition("|")
    return (system if bar else None), code
