"""Lab values in the units real laboratories send, read into one unit per analyte before any comparison.

Each unit is tested by a value just on each side of a threshold, so a wrong factor moves the value to
the wrong side. The expected factors are written out here independently of rules/units.yaml (a typo
there must fail here), and a coverage test makes sure every unit that file lists is exercised.
An unknown unit is never compared: it gives a data-unavailable card and no threshold card.
"""
from __future__ import annotations

import html

import pytest

import fhir_builders as fb
from fhir_builders import ALT, ANC, AST, BILIRUBIN, IGG, NEUTROPHILS_PERCENT

# unit as labs write it, a value exactly at the threshold and one just across it (on the alarming side)
ANC_UNITS = [  # neutropenia a warning below 1.0 ×10⁹/L (an info card at 1.0)
    ("10*9/L", 1.0, 0.99), ("10^9/L", 1.0, 0.99), ("x10^9/L", 1.0, 0.99), ("x10E9/L", 1.0, 0.99),
    ("10E9/L", 1.0, 0.99), ("G/L", 1.0, 0.99),
    ("10*3/uL", 1.0, 0.99), ("10^3/µL", 1.0, 0.99), ("x10^3/uL", 1.0, 0.99), ("x10e3/uL", 1.0, 0.99),
    ("10*3/mm3", 1.0, 0.99), ("K/uL", 1.0, 0.99), ("Thou/uL", 1.0, 0.99),
    ("/uL", 1000, 990), ("{cells}/uL", 1000, 990), ("cells/µL", 1000, 990), ("cells/μL", 1000, 990),
    ("/mm3", 1000, 990), ("cells/mm3", 1000, 990), ("10*6/L", 1000, 990),
]
ENZYME_UNITS = [  # female default ULN 33 U/L: elevated above 99 U/L
    ("U/L", 99, 99.6), ("IU/L", 99, 99.6), ("[IU]/L", 99, 99.6), ("ukat/L", 1.65, 1.66), ("µkat/L", 1.65, 1.66),
]
BILIRUBIN_UNITS = [  # default ULN 1.2 mg/dL: elevated above 2.4 mg/dL (umol/L × 0.058466)
    ("mg/dL", 2.4, 2.41), ("umol/L", 41.0, 41.3), ("µmol/L", 41.0, 41.3), ("mg/L", 24, 24.1),
]
IGG_UNITS = [  # default LLN 700 mg/dL: low below it
    ("mg/dL", 700, 699), ("g/L", 7.0, 6.99), ("mg/L", 7000, 6990), ("g/dL", 0.7, 0.699),
]
FAMILIES = {"cell_count": ANC_UNITS, "enzyme": ENZYME_UNITS, "bilirubin": BILIRUBIN_UNITS,
            "immunoglobulin": IGG_UNITS}


@pytest.fixture(scope="module")
def ask(client):
    return fb.asker(client)


def _key(unit: str) -> str:
    return "".join(unit.split()).replace("µ", "u").replace("μ", "u").lower()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_unit_in_the_units_table_is_tested_here(book, family):
    listed = {_key(u) for u in book.units[family]["factors"]}
    tested = {_key(unit) for unit, _, _ in FAMILIES[family]}
    assert listed <= tested, f"units.yaml lists {sorted(listed - tested)} for {family}: add them to this test"


@pytest.mark.parametrize("ucum", [True, False], ids=["ucum", "unit-text-only"])
@pytest.mark.parametrize("unit, at, across", ANC_UNITS)
def test_neutrophil_count_units(ask, unit, at, across, ucum):
    assert ask(labs=[fb.lab(ANC, at, unit, ucum=ucum)])["neutropenia"]["indicator"] == "info"
    cards = ask(labs=[fb.lab(ANC, across, unit, ucum=ucum)])
    assert cards["neutropenia"]["indicator"] == "warning"
    assert "ANC 0.99" in cards["neutropenia"]["summary"]


@pytest.mark.parametrize("ucum", [True, False], ids=["ucum", "unit-text-only"])
@pytest.mark.parametrize("unit, at, across", ENZYME_UNITS)
def test_enzyme_units(ask, unit, at, across, ucum):
    assert "liver-enzymes-elevated" not in ask(labs=[fb.lab(ALT, at, unit, ucum=ucum)])
    cards = ask(labs=[fb.lab(ALT, across, unit, ucum=ucum)])
    assert "ALT 99.6 U/L" in cards["liver-enzymes-elevated"]["summary"]


@pytest.mark.parametrize("unit, at, across", BILIRUBIN_UNITS)
def test_bilirubin_units(ask, unit, at, across):
    assert "liver-enzymes-elevated" not in ask(labs=[fb.lab(BILIRUBIN, at, unit, ucum=False)])
    cards = ask(labs=[fb.lab(BILIRUBIN, across, unit, ucum=False)])
    assert "Total bilirubin 2.41 mg/dL" in cards["liver-enzymes-elevated"]["summary"]


@pytest.mark.parametrize("unit, at, across", IGG_UNITS)
def test_igg_units(ask, unit, at, across):
    assert "igg-low" not in ask(labs=[fb.lab(IGG, at, unit)])
    cards = ask(labs=[fb.lab(IGG, across, unit)])
    assert "Low IgG: 699 mg/dL" in cards["igg-low"]["summary"]


@pytest.mark.parametrize("code, value, unit, low, high, range_unit, rule, fires, limit", [
    (ALT, 120, "U/L", None, 0.75, "ukat/L", "liver-enzymes-elevated", False, None),  # 2.7 × 45 U/L
    (ALT, 140, "U/L", None, 0.75, "ukat/L", "liver-enzymes-elevated", True, "upper 45 U/L"),
    (ALT, 2.5, "ukat/L", None, 45, "U/L", "liver-enzymes-elevated", True, "upper 45 U/L"),  # 150 U/L
    (BILIRUBIN, 1.9, "mg/dL", None, 17, "umol/L", "liver-enzymes-elevated", False, None),  # 1.9 × 0.994
    (BILIRUBIN, 2.0, "mg/dL", None, 17, "umol/L", "liver-enzymes-elevated", True, "upper 0.994 mg/dL"),
    (IGG, 650, "mg/dL", 7.0, 16.0, "g/L", "igg-low", True, "700 mg/dL"),
    (IGG, 6.5, "g/L", 600, 1600, "mg/dL", "igg-low", False, None),
])
def test_reference_range_is_converted_like_the_value(ask, code, value, unit, low, high, range_unit, rule, fires, limit):
    cards = ask(labs=[fb.lab(code, value, unit, low=low, high=high, range_unit=range_unit)])
    assert (rule in cards) is fires
    if fires:
        assert limit in cards[rule]["summary"] + cards[rule]["detail"]
        assert "the result's reference range" in cards[rule]["detail"]


@pytest.mark.parametrize("gender, code, value, elevated, limit", [
    ("male", ALT, 123, False, None), ("male", ALT, 123.5, True, "upper 41 U/L"),
    ("female", ALT, 99, False, None), ("female", ALT, 99.5, True, "upper 33 U/L"),
    ("male", AST, 120, False, None), ("male", AST, 120.5, True, "upper 40 U/L"),
    ("female", AST, 96, False, None), ("female", AST, 96.5, True, "upper 32 U/L"),
    (None, ALT, 99.5, True, "upper 33 U/L"),  # no Patient: the lower (female) limit
    ("other", ALT, 99.5, True, "upper 33 U/L"),
    ("unknown", AST, 96.5, True, "upper 32 U/L"),
])
def test_default_upper_limits_follow_patient_gender(ask, gender, code, value, elevated, limit):
    cards = ask(labs=[fb.lab(code, value, "U/L")], gender=gender)
    assert ("liver-enzymes-elevated" in cards) is elevated
    if elevated:
        assert limit in cards["liver-enzymes-elevated"]["detail"]
        assert "the default limit" in cards["liver-enzymes-elevated"]["detail"]


@pytest.mark.parametrize("code, value, unit, silenced", [
    (ALT, 500, "mmol/L", "liver-enzymes-elevated"),
    (AST, 500, "mg/dL", "liver-enzymes-elevated"),
    (BILIRUBIN, 9, "mmol/L", "liver-enzymes-elevated"),
    (BILIRUBIN, 9, "g/L", "liver-enzymes-elevated"),
    (IGG, 1, "mmol/L", "igg-low"),
    (ANC, 0.3, "%", "neutropenia"),
    (ANC, 0.3, "10*12/L", "neutropenia"),
    (ANC, 0.3, None, "neutropenia"),
    (IGG, 300, None, "igg-low"),
])
def test_an_unknown_unit_is_never_compared(ask, code, value, unit, silenced):
    """Read with a factor of 1, each of these values would raise the rule; it must not. The card names the
    unit, or says the result has none."""
    cards = ask(labs=[fb.lab(code, value, unit)])
    assert silenced not in cards
    assert cards["data-unavailable"]["indicator"] == "warning"
    shown = cards["data-unavailable"]["summary"] + html.unescape(cards["data-unavailable"]["detail"])  # as rendered
    assert (unit or "has no unit") in shown


def test_an_enzyme_in_an_unknown_unit_cannot_complete_a_liver_injury_pair(ask):
    cards = ask(labs=[fb.lab(ALT, 500, "mmol/L"), fb.lab(BILIRUBIN, 5, "mg/dL")])
    assert "liver-injury" not in cards
    assert "bilirubin" in cards["liver-enzymes-elevated"]["summary"]  # the readable result still counts
    assert "data-unavailable" in cards


@pytest.mark.parametrize("code", [NEUTROPHILS_PERCENT, "23761-0", "26511-6"])
@pytest.mark.parametrize("value, unit", [(0.4, "%"), (40, "%"), (0.4, "10*9/L")])
def test_percent_neutrophils_is_never_read_as_an_anc(ask, code, value, unit):
    cards = ask(labs=[fb.lab(code, value, unit)])
    assert "neutropenia" not in cards
    assert cards["neutrophils-missing"]["indicator"] == "info"  # no absolute count: the check is still owed


def test_percent_neutrophils_does_not_override_an_absolute_count(ask):
    cards = ask(labs=[fb.lab(ANC, 0.4, "10*9/L", days_ago=2), fb.lab(NEUTROPHILS_PERCENT, 60, "%", days_ago=1)])
    assert cards["neutropenia"]["indicator"] == "critical"


@pytest.mark.parametrize("code, comparator, value, unit, rule, expected", [
    (ANC, "<", 0.5, "10*9/L", "neutropenia", "critical"),
    (ALT, ">", 1000, "U/L", "liver-enzymes-elevated", "warning"),
])
def test_a_bound_on_the_alarming_side_of_a_threshold_still_alarms(ask, code, comparator, value, unit, rule, expected):
    result = fb.lab(code, value, unit)
    result["valueQuantity"]["comparator"] = comparator
    assert ask(labs=[result])[rule]["indicator"] == expected
