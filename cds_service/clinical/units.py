"""Unit conversion per analyte family, from the explicit tables in rules/units.yaml.

There is deliberately no general UCUM algebra here: a lab value is compared only when its unit is one
the clinical team listed for that analyte, so "10*3/uL" and "/uL" are both understood for neutrophils
but "%" never is.
"""
from __future__ import annotations

from typing import Any


class UnknownUnit(ValueError):
    """The unit is not one this analyte's table knows; the value must not be compared."""


def normalise(unit: str) -> str:
    """The lookup key for a unit string: trimmed, lower-case, micro sign read as "u"."""
    return "".join(unit.split()).replace("µ", "u").replace("μ", "u").lower()


class Units:
    def __init__(self, table: dict[str, Any]) -> None:
        self._families = {
            name: (family.get("display", family["canonical"]),
                   {normalise(u): _affine(f) for u, f in family["factors"].items()})
            for name, family in table.items()
        }
        self._spellings = {name: {normalise(family["canonical"]), normalise(family.get("display", ""))}
                           for name, family in table.items()}

    def canonical(self, family: str) -> str:
        """The canonical unit as clinicians read it (e.g. "×10⁹/L" for UCUM's 10*9/L)."""
        return self._families[family][0]

    def written_canonically(self, family: str, unit: str | None) -> bool:
        """True when `unit` is the canonical unit as written ("U/L", not "IU/L"; "10*9/L", not "K/uL"):
        otherwise a card shows the value as reported next to the canonical one, even at factor 1."""
        return bool(unit) and normalise(unit) in self._spellings[family]

    def to_canonical(self, family: str, value: float, unit: str | None) -> float:
        """`value` in `unit`, expressed in the family's canonical unit; UnknownUnit if not listed."""
        _, factors = self._families[family]
        conversion = factors.get(normalise(unit)) if unit else None
        if conversion is None:
            raise UnknownUnit(unit or "(no unit)")
        factor, offset = conversion
        return value * factor + offset


def _affine(spec: float | list[float]) -> tuple[float, float]:
    """A factor, or [factor, offset] for scales that do not share a zero (°F → °C)."""
    if isinstance(spec, list):
        return float(spec[0]), float(spec[1])
    return float(spec), 0.0
