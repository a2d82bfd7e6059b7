"""Positive/negative answers in every form labs send them, and which result counts.

HBsAg is the probe: positive raises hbv-active, negative completes the screen (with a negative total
anti-HBc), indeterminate is not a screening result (hbv-screening-missing stays), and an answer the
service cannot read is a data-unavailable card, never a silent pass.
"""
from __future__ import annotations

import pytest

import fhir_builders as fb
from fhir_builders import ALT, ANC, ANTI_HBC, HBSAG, HBV_DNA

SCREENED_NEGATIVE_CORE = fb.serology(ANTI_HBC, snomed="260385009", days_ago=2)

SNOMED_ANSWERS = [
    ("10828004", "positive"), ("11214006", "positive"), ("260373001", "positive"), ("720735008", "positive"),
    ("260385009", "negative"), ("131194007", "negative"), ("260415000", "negative"),
    ("82334004", "indeterminate"), ("42425007", "indeterminate"), ("419984006", "indeterminate"),
    ("125154007", "indeterminate"), ("455371000124106", "indeterminate"),
]
STRING_ANSWERS = [
    ("Positive", "positive"), ("Reactive", "positive"), ("REACTIVE", "positive"), ("Detected", "positive"),
    ("Repeatedly reactive", "positive"), ("  positive ", "positive"),
    ("Negative", "negative"), ("Non-reactive", "negative"), ("Nonreactive", "negative"),
    ("non reactive", "negative"), ("Not detected", "negative"), ("  NOT   detected ", "negative"),
    ("negative\t", "negative"),
    ("Indeterminate", "indeterminate"), ("Equivocal", "indeterminate"), ("inconclusive", "indeterminate"),
    ("see comment", "unreadable"), ("Positive?", "unreadable"),
]
INTERPRETATIONS = [
    ("POS", "positive"), ("DET", "positive"), ("A", "positive"), ("H", "positive"), ("HH", "positive"),
    ("NEG", "negative"), ("N", "negative"), ("ND", "negative"),
    ("IND", "indeterminate"),
    ("L", "unreadable"), ("LL", "unreadable"),  # "low" is no answer to a presence test: never a negative screen
]


@pytest.fixture(scope="module")
def ask(client):
    return fb.asker(client)


def assert_hbsag_read_as(cards: dict, answer: str) -> None:
    """What the cards show the service understood an HBsAg result (with a negative total anti-HBc) to be."""
    if answer == "positive":
        assert cards["hbv-active"]["indicator"] == "critical"
        return
    assert "hbv-active" not in cards
    if answer == "negative":
        assert "hbv-screening-missing" not in cards
        assert "data-unavailable" not in cards
    elif answer == "indeterminate":
        assert "HBsAg" in cards["hbv-screening-missing"]["summary"]
        assert "data-unavailable" not in cards
    else:
        assert "HBsAg" in cards["data-unavailable"]["summary"] + cards["data-unavailable"]["detail"]


@pytest.mark.parametrize("code, answer", SNOMED_ANSWERS)
def test_snomed_coded_answers(ask, code, answer):
    assert_hbsag_read_as(ask(labs=[fb.serology(HBSAG, snomed=code), SCREENED_NEGATIVE_CORE]), answer)


@pytest.mark.parametrize("text, answer", STRING_ANSWERS)
def test_string_answers(ask, text, answer):
    assert_hbsag_read_as(ask(labs=[fb.serology(HBSAG, text=text), SCREENED_NEGATIVE_CORE]), answer)


@pytest.mark.parametrize("text, answer", STRING_ANSWERS)
def test_answers_given_as_concept_text(ask, text, answer):
    cards = ask(labs=[fb.serology(HBSAG, concept={"text": text}), SCREENED_NEGATIVE_CORE])
    assert_hbsag_read_as(cards, answer)


@pytest.mark.parametrize("flag, answer", INTERPRETATIONS)
def test_interpretation_flags(ask, flag, answer):
    assert_hbsag_read_as(ask(labs=[fb.serology(HBSAG, interpretation=flag), SCREENED_NEGATIVE_CORE]), answer)


def test_the_value_outranks_a_contradicting_flag(ask):
    cards = ask(labs=[fb.serology(HBSAG, text="Negative", interpretation="POS"), SCREENED_NEGATIVE_CORE])
    assert_hbsag_read_as(cards, "negative")


def test_a_result_with_no_answer_at_all_is_reported(ask):
    assert_hbsag_read_as(ask(labs=[fb.serology(HBSAG), SCREENED_NEGATIVE_CORE]), "unreadable")


def test_a_loinc_answer_code_is_never_taken_for_a_negative_screen(ask):
    """LOINC answer lists (LA6576-8 Positive) are common in US feeds; unread, they must still not pass."""
    concept = {"coding": [{"system": "http://loinc.org", "code": "LA6576-8", "display": "Positive"}]}
    cards = ask(labs=[fb.serology(HBSAG, concept=concept), SCREENED_NEGATIVE_CORE])
    assert "hbv-active" in cards or "data-unavailable" in cards


@pytest.mark.parametrize("code, display, answer", [
    ("LA6576-8", "Positive", "positive"), ("LA6577-6", "Negative", "negative"),
    ("LA11882-0", "Detected", "positive"), ("LA11883-8", "Not detected", "negative"),
])
def test_loinc_answer_codes(ask, code, display, answer):
    concept = {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]}
    assert_hbsag_read_as(ask(labs=[fb.serology(HBSAG, concept=concept), SCREENED_NEGATIVE_CORE]), answer)


@pytest.mark.parametrize("form, answer", [
    ({"snomed": "10828004"}, "positive"), ({"text": "Reactive"}, "positive"), ({"interpretation": "POS"}, "positive"),
    ({"snomed": "260385009"}, "negative"), ({"text": "Non-reactive"}, "negative"),
    ({"snomed": "82334004"}, "indeterminate"),
])
def test_total_anti_hbc_answers(ask, form, answer):
    negative_hbsag = fb.serology(HBSAG, snomed="260385009")
    cards = ask(labs=[negative_hbsag, fb.serology(ANTI_HBC, **form)])
    assert ("hbv-resolved-infection" in cards) is (answer == "positive")
    assert ("hbv-screening-missing" in cards) is (answer == "indeterminate")


@pytest.mark.parametrize("result, active", [
    (fb.lab(HBV_DNA, 35, "[IU]/mL"), True),
    (fb.serology(HBV_DNA, text="Detected"), True),
    (fb.serology(HBV_DNA, text="Not detected"), False),
    (fb.lab(HBV_DNA, 0, "[IU]/mL"), False),
])
def test_hbv_dna_detection(ask, result, active):
    assert ("hbv-active" in ask(labs=[result])) is active


def test_hbv_dna_below_the_limit_of_quantitation_is_not_detected(ask):
    result = fb.lab(HBV_DNA, 10, "[IU]/mL")
    result["valueQuantity"]["comparator"] = "<"
    assert "hbv-active" not in ask(labs=[result])


# --- which result counts -------------------------------------------------------------------------------

@pytest.mark.parametrize("status, counts", [
    ("final", True), ("amended", True), ("corrected", True), ("preliminary", True),
    ("entered-in-error", False), ("cancelled", False),
])
def test_result_status(ask, status, counts):
    cards = ask(labs=[fb.serology(HBSAG, snomed="10828004", status=status), SCREENED_NEGATIVE_CORE,
                      fb.lab(ANC, 0.3, "10*9/L", status=status)])
    assert ("hbv-active" in cards) is counts
    assert ("neutropenia" in cards) is counts
    if not counts:  # as if the result were not there at all
        assert "HBsAg" in cards["hbv-screening-missing"]["summary"]
        assert "neutrophils-missing" in cards


def test_an_erroneous_newer_result_does_not_hide_an_older_valid_one(ask):
    cards = ask(labs=[fb.serology(HBSAG, snomed="10828004", days_ago=30),
                      fb.serology(HBSAG, snomed="260385009", days_ago=1, status="entered-in-error")])
    assert cards["hbv-active"]["indicator"] == "critical"


@pytest.mark.parametrize("reverse", [False, True], ids=["oldest-first", "newest-first"])
@pytest.mark.parametrize("older, newer, active", [
    ("10828004", "260385009", False),  # positive, then negative: the negative is the current answer
    ("260385009", "10828004", True),
])
def test_the_latest_hbsag_wins_whatever_the_order_sent(ask, reverse, older, newer, active):
    labs = [fb.serology(HBSAG, snomed=older, days_ago=200), fb.serology(HBSAG, snomed=newer, days_ago=10),
            SCREENED_NEGATIVE_CORE]
    cards = ask(labs=labs[::-1] if reverse else labs)
    assert ("hbv-active" in cards) is active
    assert "hbv-screening-missing" not in cards


@pytest.mark.parametrize("reverse", [False, True], ids=["oldest-first", "newest-first"])
def test_the_latest_anc_wins(ask, reverse):
    labs = [fb.lab(ANC, 0.3, "10*9/L", days_ago=20), fb.lab(ANC, 2.1, "10*9/L", days_ago=5)]
    assert "neutropenia" not in ask(labs=labs[::-1] if reverse else labs)


def test_a_problem_list_entry_in_another_code_system_is_not_hepatitis_b(ask):
    cards = ask(conditions=[fb.condition("66071002", "http://example.org/local-codes")])
    assert "hbv-active" not in cards



def test_a_qualitative_result_is_shown_without_the_limit_columns(ask):
    """A positive or negative has no limit to compare with: its table has no empty "Limit used" columns."""
    detail = ask(labs=[fb.serology(HBSAG, snomed="10828004"), SCREENED_NEGATIVE_CORE])["hbv-active"]["detail"]
    assert "| Result | Value | Date |\n| --- | --- | --- |\n| HBsAg | positive |" in detail
    assert "Limit used" not in detail and "× limit" not in detail


def test_a_measured_result_keeps_its_limit_and_how_far_beyond_it(ask):
    detail = ask(labs=[fb.lab(ALT, 150, "U/L", high=33)])["liver-enzymes-elevated"]["detail"]
    assert "| Result | Value | Date | Limit used | × limit |" in detail
    assert "upper 33 U/L" in detail
