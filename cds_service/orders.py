"""Which anti-CD20 product an order (or a past administration) is about.

Orders from real clients are often not valid FHIR (the CDS Hooks sandbox sends a MedicationRequest with no
`intent` and a `category` object), so this reads the few fields it needs straight from the JSON instead
of rejecting the resource: codes first, then the drug or brand name in text and display.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

SUBCUTANEOUS = re.compile(r"\b(subcutaneous|subcut|s\.?c\.?|sq|subq)\b", re.I)
SNOMED_SUBCUTANEOUS = "34206005"


@dataclass(frozen=True)
class Product:
    key: str
    name: str
    short: str
    ingredient: str
    codes: frozenset[tuple[str, str]]  # (system, code)
    names: re.Pattern[str]


@dataclass(frozen=True)
class Match:
    product: Product
    by: str  # "code" or "text"
    text: str  # what matched, for the card


class ProductCatalogue:
    def __init__(self, valuesets: dict[str, Any]) -> None:
        systems = valuesets["systems"]
        self.products = [
            Product(
                key=key,
                name=p["name"],
                short=p["short"],
                ingredient=p["ingredient"],
                codes=frozenset(
                    [(systems["rxnorm"], c) for c in p.get("rxnorm", ())]
                    + [(systems["ndc"], _ndc(c)) for c in p.get("ndc", ())]
                ),
                names=re.compile(r"\b(" + "|".join(re.escape(n) for n in p["names"]) + r")\b", re.I),
            )
            for key, p in valuesets["products"].items()
        ]
        self._ndc_system = systems["ndc"]
        self._by_key = {p.key: p for p in self.products}

    def match(self, medication: dict[str, Any] | None, route_text: str = "") -> Match | None:
        """The product a medication CodeableConcept names, by code and then by name."""
        if not isinstance(medication, dict):
            return None
        codings = [c for c in _list(medication.get("coding")) if isinstance(c, dict)]
        found = self._by_code(codings) or self._by_text(_texts(medication, codings))
        if found and found.product.key == "ocrelizumab-iv" and SUBCUTANEOUS.search(route_text):
            return Match(self._by_key["ocrelizumab-sc"], found.by, found.text)
        return found

    def _by_code(self, codings: list[dict[str, Any]]) -> Match | None:
        for product in self.products:
            for coding in codings:
                system, code = coding.get("system"), str(coding.get("code", ""))
                if system == self._ndc_system:
                    code = _ndc(code)
                if (system, code) in product.codes:
                    return Match(product, "code", f"{code} ({coding.get('display') or system})")
        return None

    def _by_text(self, texts: Iterable[str]) -> Match | None:
        for product in self.products:
            for text in texts:
                if product.names.search(text):
                    return Match(product, "text", text)
        return None


def medication_of(resource: dict[str, Any], bundle: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The CodeableConcept naming the drug of a MedicationRequest/-Administration/-Statement.

    Follows `medicationReference` into contained resources ("#id") or other resources of the same
    request (by "Medication/id" or fullUrl); an unresolvable reference yields its display, if any.
    """
    concept = resource.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        return concept
    reference = resource.get("medicationReference")
    if not isinstance(reference, dict):
        return None
    ref = reference.get("reference")
    target = None
    if isinstance(ref, str) and ref.startswith("#"):
        target = next((c for c in _list(resource.get("contained"))
                       if isinstance(c, dict) and c.get("id") == ref[1:]), None)
    elif isinstance(ref, str):
        target = bundle.get(ref)
    if isinstance(target, dict) and isinstance(target.get("code"), dict):
        return target["code"]
    display = reference.get("display")
    return {"text": display} if isinstance(display, str) else None


def route_text(resource: dict[str, Any]) -> str:
    """Route words and codes from dosageInstruction (MedicationRequest) or dosage (Administration)."""
    parts: list[str] = []
    dosages = _list(resource.get("dosageInstruction")) + _list(resource.get("dosage"))
    for dosage in dosages:
        route = dosage.get("route") if isinstance(dosage, dict) else None
        if isinstance(route, dict):
            codings = [c for c in _list(route.get("coding")) if isinstance(c, dict)]
            parts += _texts(route, codings)
            if any(c.get("code") == SNOMED_SUBCUTANEOUS for c in codings):
                parts.append("subcutaneous")
    return " ".join(parts)


def _texts(concept: dict[str, Any], codings: list[dict[str, Any]]) -> list[str]:
    texts = [concept.get("text")] + [c.get("display") for c in codings]
    return [t for t in texts if isinstance(t, str) and t]


def _list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [value] if isinstance(value, dict) else []


def _ndc(code: str) -> str:
    return code.replace("-", "")
