"""FHIR references as they arrive, reduced to the "Type/id" they name, and the Medication a medication
resource names by one.

EHRs write the same reference several ways: relative ("Patient/123"), absolute
("https://ehr.example.org/fhir/Patient/123"), versioned (".../Patient/123/_history/2"), or, inside a
Bundle, the "urn:uuid:..." fullUrl of the entry (Synthea writes every reference so, with the resource's id
equal to the uuid).
"""
from __future__ import annotations

import re
from typing import Any, Iterable

TYPE_ID = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?/?$")
UUID = re.compile(r"urn:uuid:([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$")


def key(reference: str) -> str | None:
    """"Type/id" for a relative, absolute or versioned reference; None for anything else."""
    found = TYPE_ID.search(reference.strip())
    return f"{found.group(1)}/{found.group(2)}" if found else None


def uuid_id(reference: str) -> str | None:
    """The id a "urn:uuid:..." reference stands for (the uuid itself), None if it is not one."""
    found = UUID.match(reference.strip())
    return found.group(1) if found else None


def medication_of(resource: dict[str, Any], bundle: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The CodeableConcept naming the drug of a MedicationRequest/-Administration/-Statement.

    Follows `medicationReference` into contained resources ("#id") or other resources of the same
    request (by reference in any of its forms, or by fullUrl: see `index`); an unresolvable reference
    yields its display, if any.
    """
    concept = resource.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        return concept
    reference = resource.get("medicationReference")
    if not isinstance(reference, dict):
        return None
    target = referenced_medication(resource, bundle)
    if target is not None and isinstance(target.get("code"), dict):
        return target["code"]
    display = reference.get("display")
    return {"text": display} if isinstance(display, str) else None


def referenced_medication(resource: dict[str, Any], bundle: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The Medication a `medicationReference` points to, when it is contained or among `bundle`."""
    reference = resource.get("medicationReference")
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(ref, str):
        return None
    if ref.startswith("#"):
        return next((c for c in as_list(resource.get("contained"))
                     if isinstance(c, dict) and c.get("id") == ref[1:]), None)
    target = bundle.get(ref) or bundle.get(key(ref) or "")
    return target if isinstance(target, dict) else None


def unresolved_reference(resource: dict[str, Any], bundle: dict[str, dict[str, Any]]) -> str | None:
    """The Medication reference (as written) a resource names its drug by, when that Medication is neither
    contained nor in `bundle`, so that it must be fetched; None otherwise."""
    reference = resource.get("medicationReference")
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(ref, str) or ref.startswith("#") or referenced_medication(resource, bundle) is not None:
        return None
    return ref if reference_target(ref) else None


def reference_target(reference: str) -> str | None:
    """"Medication/id" for a reference to a Medication in any form; None for anything else."""
    target = key(reference)
    return target if target and target.startswith("Medication/") else None


def index(resources: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Medications among `resources`, for `medicationReference`: by "Medication/id", and by
    "urn:uuid:<id>" where the id is a uuid (a Bundle's internal references, as Synthea writes them)."""
    found: dict[str, dict[str, Any]] = {}
    for resource in resources:
        rid = resource.get("id")
        if resource.get("resourceType") == "Medication" and isinstance(rid, str):
            found[f"Medication/{rid}"] = resource
            if uuid_id(f"urn:uuid:{rid}"):
                found[f"urn:uuid:{rid}"] = resource
    return found


def as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [value] if isinstance(value, dict) else []
