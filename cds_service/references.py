"""FHIR references as they arrive, reduced to the "Type/id" they name.

EHRs write the same reference several ways: relative ("Patient/123"), absolute
("https://ehr.example.org/fhir/Patient/123"), versioned (".../Patient/123/_history/2"), or, inside a
Bundle, the "urn:uuid:..." fullUrl of the entry (Synthea writes every reference so, with the resource's id
equal to the uuid).
"""
from __future__ import annotations

import re

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
