"""Every rule at, just above and just below its thresholds, and every time window at its edge.

The numbers are the label's and the clinical team's (rules/thresholds.yaml and products.yaml defaults),
written out here on purpose: changing a threshold is a clinical decision, so it should fail a test and be
reviewed. Comparisons are strict where the source says "below" or "above": ANC < 1.5 / 1.0 / 0.5 ×10⁹/L,
ALT/AST > 3 × ULN, bilirubin > 2 × ULN, IgG < LLN. Windows are inclusive: a result exactly N days old is
inside an N-day window.
"""
from __future__ import annotations

import pytest

import fhir_builders as fb
from fhir_builders import ALP, ALT, ANC, ANTI_HBC, AST, BILIRUBIN, HBSAG, HBV_DNA, ICD10CM, IGG, SNOMED

HOOKS = ["order-select", "order-sign"]
NEGATIVE, POSITIVE = "260385009", "10828004"  # SNOMED answers
NORMAL_LIVER = {ALT: (20, "U/L"), AST: (20, "U/L"), ALP: (80, "U/L"), BILIRUBIN: (0.6, "mg/dL")}
LIVER_LABELS = {ALT: "ALT", AST: "AST", ALP: "alkaline phosphatase", BILIRUBIN: "total bilirubin"}


@pytest.fixture(scope="module")
def ask(client):
    return fb.asker(client)


def indicator(cards: dict, rule: str) -> str | None:
    return cards[rule]["indicator"] if rule in cards else None


def maintenance() -> list[dict]:
    """A completed ocrelizumab infusion 180 days ago: the order is a maintenance dose."""
    return [fb.medication_administration(days_ago=180)]


PHASES = {"first": [], "maintenance": maintenance()}


@pytest.mark.parametrize("dose, phase", [
    (None, "first"),
    (fb.medication_administration(180), "maintenance"),
    (fb.medication_administration(3000), "maintenance"),
    (fb.medication_administration(180, status="not-done"), "first"),
    (fb.medication_administration(180, status="entered-in-error"), "first"),
    (fb.medication_administration(180, fb.RITUXIMAB), "first"),  # another ingredient is not this therapy
], ids=["none", "completed", "completed-long-ago", "not-done", "entered-in-error", "other-ingredient"])
def test_a_completed_dose_of_the_same_ingredient_makes_a_maintenance_dose(ask, dose, phase):
    """The phase shows in the rules that differ by it: no HBV screening is critical before a first dose."""
    cards = ask(doses=[dose] if dose else [])
    assert indicator(cards, "hbv-screening-missing") == ("critical" if phase == "first" else "info")
    assert indicator(cards, "igg-missing") == ("warning" if phase == "first" else "info")
    assert ("liver-tests-missing" in cards) is (phase == "first")


# --- neutrophils ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("anc, expected", [
    (1.51, None), (1.5, None), (1.49, "info"), (1.01, "info"), (1.0, "info"), (0.99, "warning"),
    (0.51, "warning"), (0.5, "warning"), (0.49, "critical"), (0.0, "critical"),
])
def test_neutropenia_is_strictly_below_1_5_1_0_and_0_5(ask, hook, phase, anc, expected):
    cards = ask(hook=hook, labs=[fb.lab(ANC, anc, "10*9/L")], doses=PHASES[phase])
    assert indicator(cards, "neutropenia") == expected
    assert "neutrophils-missing" not in cards


@pytest.mark.parametrize("days, expected", [(1, "critical"), (90, "critical"), (91, None)])
def test_a_low_anc_counts_for_90_days(ask, days, expected):
    cards = ask(labs=[fb.lab(ANC, 0.4, "10*9/L", days_ago=days)])
    assert indicator(cards, "neutropenia") == expected


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("medication, window", [(fb.OCRELIZUMAB, 30), (fb.OFATUMUMAB, 90)],
                         ids=["ocrelizumab-30-days", "ofatumumab-90-days"])
@pytest.mark.parametrize("beyond", [False, True], ids=["at-the-edge", "a-day-beyond"])
def test_anc_is_missing_after_the_products_window(ask, phase, medication, window, beyond):
    doses = [fb.medication_administration(180, medication)] if phase == "maintenance" else []
    cards = ask(labs=[fb.lab(ANC, 2.5, "10*9/L", days_ago=window + beyond)], doses=doses,
                orders=[fb.medication_request(medication)])
    assert indicator(cards, "neutrophils-missing") == ("info" if beyond else None)
    assert "neutropenia" not in cards


def test_no_anc_at_all_is_missing(ask):
    assert indicator(ask(), "neutrophils-missing") == "info"


# --- liver: enzymes, bilirubin, their pairing, the 90-day window --------------------------------------

@pytest.mark.parametrize("code", [ALT, AST])
@pytest.mark.parametrize("value, elevated", [(119.9, False), (120, False), (120.1, True), (400, True)])
def test_enzyme_counts_above_three_times_its_own_upper_limit(ask, code, value, elevated):
    cards = ask(labs=[fb.lab(code, value, "U/L", low=0, high=40)])
    assert indicator(cards, "liver-enzymes-elevated") == ("warning" if elevated else None)
    assert "liver-injury" not in cards
    if elevated:
        assert "upper 40 U/L (the result's reference range)" in cards["liver-enzymes-elevated"]["detail"]


@pytest.mark.parametrize("value, high, elevated", [
    (1.99, 1.0, False), (2.0, 1.0, False), (2.01, 1.0, True),
    (2.4, None, False), (2.41, None, True),  # no range: the default 1.2 mg/dL
])
def test_bilirubin_counts_above_twice_the_upper_limit(ask, value, high, elevated):
    cards = ask(labs=[fb.lab(BILIRUBIN, value, "mg/dL", high=high)])
    assert indicator(cards, "liver-enzymes-elevated") == ("warning" if elevated else None)


@pytest.mark.parametrize("code", [ALT, BILIRUBIN])
@pytest.mark.parametrize("days, counted", [(90, True), (91, False)])
def test_a_high_liver_result_counts_for_90_days(ask, code, days, counted):
    cards = ask(labs=[fb.lab(code, 10, "mg/dL" if code == BILIRUBIN else "U/L", high=1, days_ago=days)])
    assert ("liver-enzymes-elevated" in cards) is counted


@pytest.mark.parametrize("enzyme", [ALT, AST])
@pytest.mark.parametrize("enzyme_days, bilirubin_days, injury", [
    (1, 1, True), (1, 8, True), (8, 1, True),  # up to 7 days apart, either order
    (1, 9, False), (9, 1, False),  # 8 days apart
    (83, 90, True), (84, 91, False), (91, 84, False),  # both must be inside the 90-day window
])
def test_liver_injury_pairs_enzyme_and_bilirubin_within_7_days(ask, enzyme, enzyme_days, bilirubin_days, injury):
    cards = ask(labs=[fb.lab(enzyme, 160, "U/L", high=40, days_ago=enzyme_days),
                      fb.lab(BILIRUBIN, 3.0, "mg/dL", high=1.0, days_ago=bilirubin_days)])
    assert indicator(cards, "liver-injury") == ("critical" if injury else None)
    assert ("liver-enzymes-elevated" in cards) is not injury  # the subset pattern is suppressed by the whole


@pytest.mark.parametrize("enzyme_value, bilirubin_value, injury", [
    (300, 3.0, False), (301, 3.0, True),  # enzyme exactly 3 × ULN is not above it
    (400, 2.0, False), (400, 2.01, True),  # bilirubin exactly 2 × ULN is not above it
])
def test_liver_injury_needs_both_strictly_above_their_limits(ask, enzyme_value, bilirubin_value, injury):
    cards = ask(labs=[fb.lab(ALT, enzyme_value, "U/L", high=100),
                      fb.lab(BILIRUBIN, bilirubin_value, "mg/dL", high=1.0)])
    assert indicator(cards, "liver-injury") == ("critical" if injury else None)
    assert "liver-enzymes-elevated" in cards or injury


@pytest.mark.parametrize("missing", list(NORMAL_LIVER))
@pytest.mark.parametrize("days, expected", [(90, None), (91, "warning")])
def test_each_liver_test_is_needed_within_90_days_before_a_first_dose(ask, missing, days, expected):
    labs = [fb.lab(code, value, unit, days_ago=days if code == missing else 1)
            for code, (value, unit) in NORMAL_LIVER.items()]
    cards = ask(labs=labs)
    assert indicator(cards, "liver-tests-missing") == expected
    if expected:
        assert LIVER_LABELS[missing] in cards["liver-tests-missing"]["summary"]


def test_liver_tests_are_not_asked_for_before_a_maintenance_dose(ask):
    assert "liver-tests-missing" in ask()
    assert "liver-tests-missing" not in ask(doses=maintenance())


# --- IgG ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, lln, low", [
    (699, None, True), (700, None, False), (701, None, False),  # no range: the 700 mg/dL default
    (599, 600, True), (600, 600, False), (650, 600, False),  # the result's own range wins over the default
    (750, 800, True),
])
def test_igg_is_low_strictly_below_its_lower_limit(ask, value, lln, low):
    cards = ask(labs=[fb.lab(IGG, value, "mg/dL", low=lln, high=None if lln is None else 1600)])
    assert indicator(cards, "igg-low") == ("warning" if low else None)
    if low:
        source = "the default limit" if lln is None else "the result's reference range"
        assert f"{lln or 700} mg/dL" in cards["igg-low"]["summary"]
        assert source in cards["igg-low"]["detail"]


def test_a_low_igg_card_shows_the_lower_limit_it_used(ask):
    cards = ask(labs=[fb.lab(IGG, 550, "mg/dL", low=600, high=1600)])
    assert "lower 600 mg/dL (the result's reference range)" in cards["igg-low"]["detail"]


@pytest.mark.parametrize("days, low", [(365, True), (366, False)])
def test_a_low_igg_counts_for_365_days(ask, days, low):
    cards = ask(labs=[fb.lab(IGG, 500, "mg/dL", days_ago=days)], doses=maintenance())
    assert ("igg-low" in cards) is low


@pytest.mark.parametrize("phase, days, expected", [
    ("first", 183, None), ("first", 184, "warning"), ("first", None, "warning"),
    ("rituximab first", 184, "info"),  # no label step for rituximab: a baseline is advice
    ("maintenance", 184, None), ("maintenance", 365, None), ("maintenance", 366, "info"),
    ("maintenance", None, "info"),
])
def test_igg_window_is_183_days_before_a_first_dose_and_365_in_maintenance(ask, phase, days, expected):
    labs = [] if days is None else [fb.lab(IGG, 1000, "mg/dL", days_ago=days)]
    orders = [fb.medication_request(fb.RITUXIMAB)] if phase.startswith("rituximab") else None
    cards = ask(labs=labs, doses=PHASES.get(phase, []), orders=orders)
    assert indicator(cards, "igg-missing") == expected


# --- hepatitis B -------------------------------------------------------------------------------------

@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("hbsag_days, core_days, unscreened", [
    (1, 1, None), (365, 365, None), (366, 1, "HBsAg"), (1, 366, "total anti-HBc"),
])
def test_hbv_screening_is_needed_within_365_days_before_a_first_dose(ask, hook, hbsag_days, core_days, unscreened):
    cards = ask(hook=hook, labs=[fb.serology(HBSAG, snomed=NEGATIVE, days_ago=hbsag_days),
                                 fb.serology(ANTI_HBC, snomed=NEGATIVE, days_ago=core_days)])
    assert indicator(cards, "hbv-screening-missing") == ("critical" if unscreened else None)
    if unscreened:
        assert unscreened in cards["hbv-screening-missing"]["summary"]


@pytest.mark.parametrize("days, expected", [(3000, None), (None, "info")])
def test_hbv_screening_of_any_age_will_do_during_maintenance(ask, days, expected):
    labs = [] if days is None else [fb.serology(HBSAG, snomed=NEGATIVE, days_ago=days),
                                    fb.serology(ANTI_HBC, snomed=NEGATIVE, days_ago=days)]
    cards = ask(labs=labs, doses=maintenance())
    assert indicator(cards, "hbv-screening-missing") == expected


def test_anti_hbc_igm_is_not_screening(ask):
    cards = ask(labs=[fb.serology(HBSAG, snomed=NEGATIVE), fb.serology("31204-1", snomed=NEGATIVE)])
    assert "total anti-HBc" in cards["hbv-screening-missing"]["summary"]


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("days", [1, 3000])
def test_a_positive_hbsag_is_active_hepatitis_b(ask, phase, days):
    cards = ask(labs=[fb.serology(HBSAG, snomed=POSITIVE, days_ago=days)], doses=PHASES[phase])
    assert indicator(cards, "hbv-active") == "critical"
    assert "hbv-screening-missing" not in cards  # suppressed: the screen that matters is positive


@pytest.mark.parametrize("code, system, clinical, verification, active", [
    ("66071002", SNOMED, "active", "confirmed", True),
    ("B18.1", ICD10CM, "active", "confirmed", True),
    ("61977001", SNOMED, "recurrence", "confirmed", True),
    ("66071002", SNOMED, "resolved", "confirmed", False),
    ("66071002", SNOMED, "inactive", "confirmed", False),
    ("66071002", SNOMED, "active", "refuted", False),
    ("66071002", SNOMED, "active", "entered-in-error", False),
])
def test_hepatitis_b_on_the_problem_list(ask, code, system, clinical, verification, active):
    cards = ask(conditions=[fb.condition(code, system, clinical=clinical, verification=verification)])
    assert indicator(cards, "hbv-active") == ("critical" if active else None)


@pytest.mark.parametrize("days, active", [(1, True), (90, True), (91, False)])
def test_detected_hbv_dna_counts_for_90_days(ask, days, active):
    cards = ask(labs=[fb.lab(HBV_DNA, 250, "[IU]/mL", days_ago=days)])
    assert ("hbv-active" in cards) is active


@pytest.mark.parametrize("hbsag, core, resolved, active", [
    (NEGATIVE, POSITIVE, True, False),
    (NEGATIVE, NEGATIVE, False, False),
    (POSITIVE, POSITIVE, False, True),  # active hepatitis B outranks (suppresses) resolved infection
])
def test_resolved_hepatitis_b_is_hbsag_negative_with_anti_hbc_positive(ask, hbsag, core, resolved, active):
    cards = ask(labs=[fb.serology(HBSAG, snomed=hbsag), fb.serology(ANTI_HBC, snomed=core)])
    assert indicator(cards, "hbv-resolved-infection") == ("warning" if resolved else None)
    assert ("hbv-active" in cards) is active
