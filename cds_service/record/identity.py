"""Only this patient's data: every prefetched or fetched resource must belong to `context.patientId`.

An EHR bug or a wrong prefetch can put another patient's results in the request; used, they become a wrong
clinical answer (another patient's positive HBsAg, or another patient's normal neutrophil count silencing
"neutrophils missing"). A resource names its patient in `subject` or `patient` (relative, absolute or
versioned, or as a Bundle's "urn:uuid:" fullUrl, see references.py); a Patient resource by its own id.
One that names another patient, or a subject that is not a patient, is left out and counted, so that the
call says data was ignored. One that names no patient at all (a Medication, an order without subject) is
kept: nothing says it is someone else's.
"""
from __future__ import annotations

from typing import Any

from . import references

PATIENT_FIELDS = ("subject", "patient")


def belongs_to(resource: dict[str, Any], patient_id: str) -> bool:
    """Whether nothing in the resource says it is about someone other than `patient_id`."""
    return _Patient(patient_id).owns(resource)


def split(resources: list[dict[str, Any]], patient_id: str) -> tuple[list[dict[str, Any]], int]:
    """The resources that belong to this patient, and how many were left out."""
    patient = _Patient(patient_id)
    own = [r for r in resources if patient.owns(r)]
    return own, len(resources) - len(own)


class _Patient:
    def __init__(self, patient_id: str) -> None:
        self.id = patient_id.removeprefix("Patient/")  # some clients send the context id as a reference
        self.usual = {f"Patient/{self.id}", f"urn:uuid:{self.id}"}  # the forms nearly every record uses

    def owns(self, resource: dict[str, Any]) -> bool:
        if resource.get("resourceType") == "Patient":
            return resource.get("id") in (None, self.id)
        for name in PATIENT_FIELDS:
            reference = resource.get(name)
            ref = reference.get("reference") if isinstance(reference, dict) else None
            if isinstance(ref, str) and ref not in self.usual and not _names(ref, self.id):
                return False
        return True


def _names(reference: str, patient_id: str) -> bool:
    if references.uuid_id(reference) is not None:
        return references.uuid_id(reference) == patient_id
    return references.key(reference) == f"Patient/{patient_id}"
