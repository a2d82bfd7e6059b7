"""What a medication resource is about: an anti-CD20 product, a drug group, or a vaccine.

Orders from real clients are often not valid FHIR (the CDS Hooks sandbox sends a MedicationRequest with no
`intent` and a `category` object), so this reads the few fields it needs straight from the JSON instead
of rejecting the resource: codes first, then the drug or brand name in text and display.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple

from ..record.references import as_list
from .codesystems import CodeSystems
from .labs import plausible

SUBCUTANEOUS = re.compile(r"\b(subcutaneous|subcut|s\.?c\.?|sq|subq)\b", re.I)
SNOMED_SUBCUTANEOUS = "34206005"
MASS_TO_MG = {"mg": 1.0, "g": 1000.0, "ug": 0.001, "mcg": 0.001}
UNREADABLE_AMOUNT = "an amount that is not a readable number"  # read as "a dose in an amount that ..."
UCUM_ANNOTATION = re.compile(r"\{\s*([^{}]*?)\s*\}")  # "{pill}": a count of pills (UCUM unit 1, annotated)


@dataclass(frozen=True)
class Product:
    key: str
    data: dict[str, Any]  # the product's entry in rules/products.yaml

    @property
    def ingredient(self) -> str:
        return self.data["ingredient"]


@dataclass(frozen=True)
class Match:
    what: str  # product key, drug group, substance or "vaccine"
    by: str  # "code" or "text"
    text: str  # what matched, for the card
    unknown_system: str = ""  # matched by a code the rules know, under a system the service does not


class Coding(NamedTuple):
    """A coding as compared: its system in canonical form (None when not recognised) and its code."""

    system: str | None
    code: str
    sent_system: Any
    display: Any

    @property
    def label(self) -> str:
        return f"{self.code} ({self.display or self.system or self.sent_system})"


class CodeSet:
    """Codes (system, code) and whole-word names that identify one drug, group or substance."""

    def __init__(self, codes: Iterable[tuple[str, str]], names: Iterable[str]) -> None:
        self.codes = frozenset((system, _plain_code(system, code)) for system, code in codes)
        self.bare = frozenset(code for _, code in self.codes)
        names = list(names)
        self.names = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b", re.I) if names else None

    def match_code(self, codings: list[Coding]) -> str | None:
        for coding in codings:
            if coding.system and (coding.system, _plain_code(coding.system, coding.code)) in self.codes:
                return coding.label
        return None

    def match_stray(self, codings: list[Coding]) -> Coding | None:
        """A coding whose code is one of these under a system the service does not recognise."""
        return next((c for c in codings if c.system is None and ndc11(c.code) in self.bare), None)

    def match_text(self, texts: list[str]) -> str | None:
        if self.names is None:
            return None
        return next((t for t in texts if self.names.search(t)), None)


class Products:
    """Matchers for products, drug groups and reaction substances, built from rules/ data."""

    def __init__(self, products: dict[str, Any], valuesets: dict[str, Any]) -> None:
        systems = valuesets["systems"]
        self.systems = systems
        self.code_systems = CodeSystems(valuesets)
        self.products = {key: Product(key, p) for key, p in products.items()}
        self._products = {key: CodeSet([(systems["rxnorm"], c) for c in p.get("rxnorm", ())]
                                       + [(systems["ndc"], c) for c in p.get("ndc", ())], p["names"])
                          for key, p in products.items()}
        self._groups = {name: _code_set(g, systems) for name, g in valuesets["drug_groups"].items()}
        self._group_labels = {name: g["label"] for name, g in valuesets["drug_groups"].items()}
        self._substances = {name: _code_set(s, systems) for name, s in valuesets["substances"].items()}
        vaccines = valuesets["vaccines"]
        self._live = {c.lstrip("0") for c in vaccines["live"]}
        self._live_names = CodeSet((), vaccines["live_names"])
        self._ambiguous = {c.lstrip("0") for c in vaccines["ambiguous"]}
        self._non_live = {c.lstrip("0") for c in vaccines["non_live_despite_name"]}
        self._known_cvx = self._live | self._ambiguous | self._non_live

    def product(self, concept: dict[str, Any] | None, route: str = "") -> tuple[Product, Match] | None:
        """The anti-CD20 product a medication names: by code, then by name, then by a code the rules know
        under a system the service does not recognise (the Match says which system, so that the caller
        reports it)."""
        codings, texts = self._read(concept)
        found = _first(self._products, codings, texts) or _stray(self._products, codings, self.code_systems)
        if found is None:
            return None
        key = found.what
        if key == "ocrelizumab-iv" and SUBCUTANEOUS.search(route):
            key = "ocrelizumab-sc"
        return self.products[key], found

    def groups(self, concept: dict[str, Any] | None) -> list[str]:
        """Every drug group (rules/valuesets.yaml drug_groups) this medication belongs to."""
        codings, texts = self._read(concept)
        return [name for name, code_set in self._groups.items()
                if code_set.match_code(codings) or code_set.match_text(texts)]

    def group_label(self, group: str) -> str:
        return self._group_labels[group]

    def substance(self, concept: dict[str, Any] | None) -> Match | None:
        return _first(self._substances, *self._read(concept))

    def vaccine(self, concept: dict[str, Any] | None) -> tuple[str, str] | None:
        """(live | non-live | ambiguous, display) for a CVX-coded or live-vaccine-named concept;
        ("unrecognised", why) for a CVX code the rules know under a system the service does not."""
        codings, texts = self._read(concept)
        cvx = self.systems["cvx"]
        for coding in codings:
            if coding.system == cvx:
                code = coding.code.lstrip("0")
                display = coding.display or (texts[0] if texts else f"CVX {code}")
                if code in self._ambiguous:
                    return "ambiguous", display
                if code in self._non_live:
                    return "non-live", display
                return ("live" if code in self._live else "non-live"), display
        named = self._live_names.match_text(texts)
        if named:
            return "live", named
        stray = next((c for c in codings if c.system is None and c.code.lstrip("0") in self._known_cvx), None)
        if stray is None:
            return None
        return "unrecognised", (f"is coded {stray.code} under a code system the service does not recognise "
                                f"({self.code_systems.shown(stray.sent_system)})")

    def _read(self, concept: Any) -> tuple[list[Coding], list[str]]:
        codings, texts = _codings_and_texts(concept)
        return [Coding(self.code_systems.canonical(c.get("system")), str(c.get("code", "")).strip(),
                       c.get("system"), c.get("display")) for c in codings], texts


def _first(code_sets: dict[str, CodeSet], codings: list[Coding], texts: list[str]) -> Match | None:
    if not codings and not texts:
        return None
    for name, code_set in code_sets.items():
        matched = code_set.match_code(codings)
        if matched:
            return Match(name, "code", matched)
    for name, code_set in code_sets.items():
        matched = code_set.match_text(texts)
        if matched:
            return Match(name, "text", matched)
    return None


def _stray(code_sets: dict[str, CodeSet], codings: list[Coding], systems: CodeSystems) -> Match | None:
    for name, code_set in code_sets.items():
        stray = code_set.match_stray(codings)
        if stray:
            return Match(name, "code", stray.label, systems.shown(stray.sent_system))
    return None


def _code_set(spec: dict[str, Any], systems: dict[str, str]) -> CodeSet:
    codes = [(systems[system], code) for system in ("rxnorm", "snomed", "cvx") for code in spec.get(system, ())]
    return CodeSet(codes, spec.get("names", ()))


def route_text(resource: dict[str, Any]) -> str:
    """Route words and codes from dosageInstruction (MedicationRequest) or dosage (Administration)."""
    parts: list[str] = []
    for dosage in as_list(resource.get("dosageInstruction")) + as_list(resource.get("dosage")):
        route = dosage.get("route") if isinstance(dosage, dict) else None
        if isinstance(route, dict):
            codings, texts = _codings_and_texts(route)
            parts += texts
            if any(c.get("code") == SNOMED_SUBCUTANEOUS for c in codings):
                parts.append("subcutaneous")
    return " ".join(parts)


def dose(resource: dict[str, Any], mg_per_ml: float | None = None) -> tuple[float | None, str | None]:
    """The ordered dose as (mg, None), or (None, the unit in words) when it is not a mass (or a volume
    of a product whose concentration is known), or (None, None) when no dose is given.

    Reads R4 `doseAndRate[].doseQuantity` and the STU3-style `doseQuantity` real clients still send.
    """
    for dosage in as_list(resource.get("dosageInstruction")):
        if not isinstance(dosage, dict):
            continue
        candidates = [d.get("doseQuantity") for d in as_list(dosage.get("doseAndRate")) if isinstance(d, dict)]
        candidates.append(dosage.get("doseQuantity"))
        for quantity in candidates:
            if isinstance(quantity, dict) and "value" in quantity:
                amount = _amount(quantity["value"])
                if amount is None:
                    return None, UNREADABLE_AMOUNT
                unit = str(quantity.get("code") or quantity.get("unit") or "")
                factor = MASS_TO_MG.get(unit.strip().lower())
                if factor is None and mg_per_ml and unit.strip().lower() == "ml":
                    factor = mg_per_ml
                return (amount * factor, None) if factor else (None, _unit_words(unit))
    return None, None


def _amount(value: Any) -> float | None:
    """A dose's value as a number, or None when it is none a dose can have: not a JSON number (`true` is
    not 1), not finite, or beyond any amount (an integer of 400 digits would not even fit a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        amount = float(value)
    except OverflowError:
        return None
    return amount if plausible(amount) and amount >= 0 else None


def _unit_words(unit: str) -> str:
    """A unit as a clinician reads it: a UCUM annotation counts things ("{pill}" reads "pills")."""
    counted = UCUM_ANNOTATION.fullmatch(unit.strip())
    if counted and counted.group(1):
        thing = counted.group(1)
        return thing if thing.endswith("s") else thing + "s"
    return unit or "(no unit)"


def _codings_and_texts(concept: Any) -> tuple[list[dict[str, Any]], list[str]]:
    if not isinstance(concept, dict):
        return [], []
    codings = [c for c in as_list(concept.get("coding")) if isinstance(c, dict)]
    texts = [concept.get("text")] + [c.get("display") for c in codings]
    return codings, [t for t in texts if isinstance(t, str) and t]


def _plain_code(system: str | None, code: str) -> str:
    return ndc11(code) if system and system.endswith("/ndc") else code


def ndc11(code: str) -> str:
    """An NDC in its 11-digit 5-4-2 form, so "73150-150-06", "73150-0150-06" and "73150015006" agree.

    A hyphenated 10-digit NDC (4-4-2, 5-3-2 or 5-4-1) is padded segment by segment; an unhyphenated
    10-digit one is ambiguous and is compared as written.
    """
    parts = code.strip().split("-")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return parts[0].zfill(5) + parts[1].zfill(4) + parts[2].zfill(2)
    return code.strip().replace("-", "")
