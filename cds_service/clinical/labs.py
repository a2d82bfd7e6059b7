"""Observations → lab results in one canonical unit per analyte, or a reason they cannot be read.

Only Observations whose LOINC code a rule uses are read; each is validated with the FHIR R4B model
first, because a value from a malformed resource is no value to dose on.

Validation is most of the cost of a hook call (about 0.2 ms per Observation), and an EHR sends the same
results again and again: order-select fires at each change to the draft order, then order-sign, each
with the patient's same labs. Reading is a pure function of the resource's content, so readings are
remembered by that content (its JSON text), for the last READINGS_KEPT distinct results read.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import date, datetime, timezone
from functools import lru_cache
from typing import Any

from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError

from .codesystems import CodeSystems
from .units import UnknownUnit, Units

IGNORED_STATUS = {"entered-in-error", "cancelled", "registered"}
FINAL_STATUS = {"final", "amended", "corrected"}  # a result any other status (preliminary) never outranks
READINGS_KEPT = 4096  # a few hundred patients' results: a few MB at most
MAX_MAGNITUDE = 1e12  # no measurement in any canonical unit comes near it (HBV DNA stays below 1e10 IU/mL)
MIN_LIMIT = 1e-3  # the smallest non-zero reference limit taken: a value divided by a smaller one means nothing
MAX_ELEMENTS = 20_000  # JSON values in one resource; real ones have well under a hundred. Validation costs
# tens of microseconds a value and runs in one go, between two deadline checks: this keeps one resource well
# under a call's budget (700 000 one-word notes in one result, a 10 MB body, took 40 s to validate)
TOO_LARGE = f"is too large to read (more than {MAX_ELEMENTS} elements): not validated, so not used"
REMEMBERED_CHARS = 16 * 1024  # a longer result (real ones are ~1 kB) is read, not remembered: 4096 results
# of megabytes each, sent on purpose, would otherwise fill a worker's memory


@dataclass(frozen=True)
class LabResult:
    analyte: str
    when: datetime
    status: str
    value: float | None = None  # canonical unit, quantitative analytes
    result: str | None = None  # positive / negative / indeterminate, qualitative analytes
    unit: str = ""
    low: float | None = None  # reference limits in the canonical unit
    high: float | None = None
    range_source: str = ""  # "the result's reference range" or "the default limit"
    original: str = ""  # the value as reported when its unit is not written as the canonical one, e.g. "15 umol/L"

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUS


@dataclass(frozen=True)
class Unreadable:
    analyte: str
    when: datetime | None
    reason: str  # everything that is wrong, for the card's detail
    brief: str = ""  # the same in a few words, for its summary (the reason itself when empty)


@dataclass(frozen=True)
class Coded:
    """What an Observation's code says it reports; `problem` when its code cannot be trusted as sent."""

    analyte: str
    problem: str = ""


class LabReader:
    def __init__(self, valuesets: dict[str, Any], units: Units) -> None:
        self._systems = CodeSystems(valuesets)
        self._loinc, self._ucum = valuesets["systems"]["loinc"], valuesets["systems"]["ucum"]
        self._analytes = valuesets["analytes"]
        self._by_code = {code: name for name, a in self._analytes.items() for code in a["loinc"]}
        self._answers = _answer_table(valuesets["qualitative"], valuesets["systems"])
        self._units = units
        self._read_text = lru_cache(maxsize=READINGS_KEPT)(self._read_text_uncached)

    def analyte_of(self, resource: dict[str, Any]) -> Coded | None:
        """The analyte an Observation reports, judged from its raw JSON (cheap: used as a filter).

        LOINC in any spelling (codesystems.py) counts; a LOINC code the rules know under a system that
        is not LOINC in any spelling is still this analyte, with the problem named, so that the check it
        feeds says it could not read it instead of saying there is no result."""
        code = resource.get("code")
        codings = code.get("coding") if isinstance(code, dict) else None
        stray = None
        for coding in codings if isinstance(codings, list) else ():
            value = coding.get("code") if isinstance(coding, dict) else None
            name = self._by_code.get(value.strip()) if isinstance(value, str) else None
            if name is None:
                continue
            system = self._systems.canonical(coding.get("system"))
            if system == self._loinc:
                return Coded(name)
            if system is None and stray is None:
                stray = Coded(name, f"is coded {value.strip()} under a code system the service does not "
                                    f"recognise ({self._systems.shown(coding.get('system'))})")
        return stray

    def read(self, resource: dict[str, Any], coded: Coded) -> LabResult | Unreadable | None:
        """None for results that do not count at all (entered in error, cancelled)."""
        if resource.get("status") in IGNORED_STATUS:
            return None
        if coded.problem:
            return Unreadable(coded.analyte, None, coded.problem, "is coded under an unknown code system")
        text = json.dumps(resource, separators=(",", ":"))
        if oversized(text):
            return Unreadable(coded.analyte, None, TOO_LARGE, "is too large to read")
        read = self._read_text if len(text) <= REMEMBERED_CHARS else self._read_text_uncached
        return read(text, coded.analyte)

    def _read_text_uncached(self, text: str, analyte: str) -> LabResult | Unreadable:
        try:
            obs = Observation.model_validate(json.loads(text))
        except ValidationError as e:
            return Unreadable(analyte, None, invalid_fhir(e), "is not valid FHIR")
        when = _when(obs)
        if when is None:
            return Unreadable(analyte, None, "has no date")
        kind = self._analytes[analyte]["type"]
        if kind == "quantitative":
            return self._quantity(obs, analyte, when)
        answer = self._answer(obs, kind)
        if answer is None:
            return Unreadable(analyte, when, "has no result that can be read as positive or negative")
        return LabResult(analyte, when, obs.status, result=answer, original=answer)

    def _quantity(self, obs: Observation, analyte: str, when: datetime) -> LabResult | Unreadable:
        q = obs.valueQuantity
        if q is None or q.value is None:
            return Unreadable(analyte, when, "has no numeric value")
        family = self._analytes[analyte]["units"]
        unit = self._unit(q)
        if not unit:
            return Unreadable(analyte, when, "has no unit")
        try:
            value = self._units.to_canonical(family, _bound(float(q.value), q.comparator), unit)
        except UnknownUnit:
            return Unreadable(analyte, when, f"is in a unit the service does not know ({unit})")
        if not (plausible(float(q.value)) and plausible(value) and value >= 0):
            return Unreadable(analyte, when, f"has a value no measurement can have ({_number(float(q.value))} "
                                             f"{q.unit or unit}): a data error, not compared",
                              "has a value no measurement can have")
        low, high = self._range(obs, family)
        return LabResult(
            analyte, when, obs.status, value=value, unit=self._units.canonical(family),
            low=low, high=high, range_source="the result's reference range" if (low, high) != (None, None) else "",
            original="" if self._units.written_canonically(family, q.unit or unit) and not q.comparator
            else f"{q.comparator or ''}{_number(float(q.value))} {q.unit or unit}",
        )

    def _unit(self, quantity: Any) -> str | None:
        """The UCUM code when the quantity says it is UCUM (in any spelling of the system), else its text."""
        if quantity.code and self._systems.canonical(quantity.system) == self._ucum:
            return quantity.code
        return quantity.unit or quantity.code

    def _range(self, obs: Observation, family: str) -> tuple[float | None, float | None]:
        """Limits from the result's own reference range, converted like the value; else (None, None), also
        when a limit is no limit a lab could set (the default one is used then, and the card says so)."""
        for rr in obs.referenceRange or ():
            if rr.appliesTo or rr.age:
                continue
            try:
                low = self._limit(rr.low, family)
                high = self._limit(rr.high, family)
            except UnknownUnit:
                return None, None
            if not all(limit == 0 or (plausible(limit) and limit >= MIN_LIMIT)
                       for limit in (low, high) if limit is not None):
                return None, None
            return low, high
        return None, None

    def _limit(self, quantity: Any, family: str) -> float | None:
        if quantity is None or quantity.value is None:
            return None
        return self._units.to_canonical(family, float(quantity.value), self._unit(quantity))

    def _answer(self, obs: Observation, kind: str) -> str | None:
        if obs.valueCodeableConcept:
            codings = obs.valueCodeableConcept.coding or ()
            for coding in codings:
                answer = self._answers["code"].get((self._systems.canonical(coding.system), coding.code))
                if answer:
                    return answer
            for text in [obs.valueCodeableConcept.text] + [c.display for c in codings]:
                found = self._word(text)
                if found:
                    return found
        if obs.valueString:
            found = self._word(obs.valueString)
            if found:
                return found
        if kind == "detection" and obs.valueQuantity and obs.valueQuantity.value is not None:
            if obs.valueQuantity.comparator in ("<", "<="):
                return "negative"
            return "positive" if obs.valueQuantity.value > 0 else "negative"
        for concept in obs.interpretation or ():
            for coding in concept.coding or ():
                if coding.code in self._answers["interpretation"]:
                    return self._answers["interpretation"][coding.code]
        return None

    def _word(self, text: str | None) -> str | None:
        return self._answers["word"].get(" ".join(text.lower().split())) if text else None


def invalid_fhir(error: ValidationError) -> str:
    """Every validation problem of a resource, each by its field and what is wrong there (pydantic's
    messages name the expected form, never the value sent)."""
    problems = dict.fromkeys(
        f"{'.'.join(str(p) for p in e['loc']) or 'the resource'}: {e['msg'].removeprefix('Value error, ')}"
        for e in error.errors())
    return "is not valid FHIR (" + "; ".join(problems) + ")"


def oversized(text: str) -> bool:
    """Whether a resource's compact JSON text holds more than MAX_ELEMENTS values, counted at C speed by
    its separators (commas inside strings count too, which errs only towards refusing)."""
    return text.count(",") + text.count("{") + text.count("[") > MAX_ELEMENTS


def plausible(value: float) -> bool:
    """Whether a number can be a measured amount at all: finite and below MAX_MAGNITUDE. Anything else is a
    data error (NaN, Infinity and 1e400 all parse as JSON), never compared; the rules engine could not take
    it either (engine/durable_rules.py)."""
    return math.isfinite(value) and abs(value) <= MAX_MAGNITUDE


def _bound(value: float, comparator: str | None) -> float:
    """A value reported as a bound ("<0.5", ">1000"), read as just past the bound: "<0.5" is below any
    threshold at 0.5 or above, and ">1000" above any at 1000 or below. The card shows the bound as sent."""
    nudge = max(abs(value), 1.0) * 1e-7  # survives the rounding to 9 decimals in facts.py
    return {"<": value - nudge, ">": value + nudge}.get(comparator or "", value)


def _answer_table(qualitative: dict[str, Any], systems: dict[str, str]) -> dict[str, dict[Any, str]]:
    table: dict[str, dict[Any, str]] = {"code": {}, "interpretation": {}, "word": {}}
    for answer, forms in qualitative.items():
        table["code"].update({(systems["snomed"], c): answer for c in forms["snomed"]})
        table["code"].update({(systems["loinc"], c): answer for c in forms.get("loinc", ())})
        table["interpretation"].update({c: answer for c in forms["interpretation"]})
        table["word"].update({w: answer for w in forms["words"]})
    return table


def _when(obs: Observation) -> datetime | None:
    """When the sample was taken: effective[x], else the time the result was issued."""
    candidates = [obs.effectiveDateTime, obs.effectiveInstant,
                  obs.effectivePeriod.end if obs.effectivePeriod else None,
                  obs.effectivePeriod.start if obs.effectivePeriod else None, obs.issued]
    for value in candidates:
        if value is not None:
            return as_datetime(value)
    return None


def as_datetime(value: Any) -> datetime:
    """FHIR date, dateTime or instant as an aware datetime (partial dates read as their first day)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    text = str(value)
    parts = text.split("-")
    if len(parts) == 1:
        return datetime(int(text), 1, 1, tzinfo=timezone.utc)
    if len(parts) == 2:
        return datetime(int(parts[0]), int(parts[1]), 1, tzinfo=timezone.utc)
    return as_datetime(datetime.fromisoformat(text.replace("Z", "+00:00")))


def _number(value: float) -> str:
    return f"{value:.4g}"
