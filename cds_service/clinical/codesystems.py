"""Code systems as they arrive: the one place that says which canonical system a coding's `system` names.

Real feeds spell the same system several ways: "http://loinc.org/" (older feeds add a slash),
"https://loinc.org", "HTTP://LOINC.ORG", or the HL7 OID form "urn:oid:2.16.840.1.113883.6.1" that
v2- and CDA-derived data carries. Every reader (lab results, the problem list, orders and doses,
vaccines, units) compares systems only through `CodeSystems.canonical`, so a result coded under any of
these spellings is found, and one coded under a system the service does not know can be reported by
name instead of being passed over as if it were absent.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any


class CodeSystems:
    """The systems of rules/valuesets.yaml (`systems`, `system_oids`), by every spelling they arrive in."""

    def __init__(self, valuesets: dict[str, Any]) -> None:
        oids = valuesets.get("system_oids", {})
        self._by_key: dict[str, str] = {}
        for name, uri in valuesets["systems"].items():
            self._by_key[_key(uri)] = uri
            if name in oids:
                self._by_key[_key(f"urn:oid:{oids[name]}")] = uri

    def canonical(self, system: Any) -> str | None:
        """The canonical URI of a system this service knows, in whatever spelling; None if unknown."""
        return self._by_key.get(_key(system)) if isinstance(system, str) else None

    def shown(self, system: Any) -> str:
        """An unrecognised system as a card names it (the text as sent, or that there was none)."""
        return system.strip() if isinstance(system, str) and system.strip() else "no code system given"


@lru_cache(maxsize=512)
def _key(system: str) -> str:
    """Case, surrounding blanks, a trailing slash and http/https do not change the system meant."""
    text = system.strip().lower().rstrip("/")
    return "http://" + text[len("https://"):] if text.startswith("https://") else text
