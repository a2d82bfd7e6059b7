"""The order-time rules of issue 5, each with a positive, a negative and every boundary, on both order hooks;
and site overrides (CDS_RULES_OVERRIDES) changing and breaking them.

Windows are inclusive at their stated length unless the rule says "under" (vaccines: given under 28 days
before a first dose fires, exactly 28 does not). Numbers are the rules/thresholds.yaml defaults written
out, so that changing one is a reviewed decision. Products, premedication, doses and intervals are in
tests/test_products.py; patient-view reminders in tests/test_patient_view.py.
"""
from __future__ import annotations

import pytest

import cd20_builders as b
import fhir_builders as fb
from cd20_builders import CVX, HOOKS, OCREVUS, indicator
from cds_service.engine import rulebook
from cds_service.web.app import create_app
from cds_service.config import Settings
from cds_service.service import CdsService
from conftest import NOW
from fhir_builders import ANTI_HBC, HBSAG, ICD10CM

NEGATIVE, POSITIVE = "260385009", "10828004"  # SNOMED answers
HBV_DNA_IU, HCG_URINE, ALC, CD19 = "42595-9", "2106-3", "731-0", "8116-6"
ANAPHYLAXIS = {"coding": [{"system": fb.SNOMED, "code": "39579001", "display": "Anaphylaxis"}]}
PNEUMONIA, HEART_FAILURE, PML, PREGNANT = "233604007", "84114007", "22255007", "77386006"
CLADRIBINE = b.named("Mavenclad (cladribine) 10 mg tablet")
ALEMTUZUMAB = b.named("Lemtrada (alemtuzumab) 12 mg/1.2 mL")
MMR = b.concept({"system": CVX, "code": "03", "display": "MMR"})


@pytest.fixture(scope="module")
def ask(client):
    return b.caller(client)


def ocrevus() -> list[dict]:
    """The order under test: Ocrevus IV, as its SBD."""
    return [b.order(b.concept(OCREVUS))]


def maintenance() -> list[dict]:
    """Two starter infusions half a year ago: the order is a maintenance dose, not too early."""
    return [b.given(168, b.concept(OCREVUS)), b.given(182, b.concept(OCREVUS))]


# --- hbv-dna-monitoring and hbv-resolved-infection ------------------------------------------------------

def resolved_hbv(*more: dict) -> list[dict]:
    return [fb.serology(HBSAG, snomed=NEGATIVE), fb.serology(ANTI_HBC, snomed=POSITIVE), *more]


def hbv_dna(days_ago: int) -> dict:
    """An HBV DNA result below the assay's limit (not detected), `days_ago` days old."""
    result = fb.lab(HBV_DNA_IU, 10, "[IU]/mL", days_ago=days_ago)
    result["valueQuantity"]["comparator"] = "<"
    return result


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("labs, medications, expected", [
    (resolved_hbv(), [], "warning"),
    (resolved_hbv(hbv_dna(90)), [], None), (resolved_hbv(hbv_dna(91)), [], "warning"),
    (resolved_hbv(), [b.medicine(b.named("entecavir 0.5 mg tablet"))], None),
    (resolved_hbv(), [b.medicine(b.named("tenofovir disoproxil fumarate 300 mg"))], None),
    (resolved_hbv(), [b.medicine(b.named("entecavir 0.5 mg tablet"), status="stopped")], "warning"),
    ([fb.serology(HBSAG, snomed=NEGATIVE), fb.serology(ANTI_HBC, snomed=NEGATIVE)], [], None),
])
def test_hbv_dna_is_due_every_90_days_for_anti_hbc_positive_patients_without_prophylaxis(ask, hook, labs,
                                                                                         medications, expected):
    """On an order, the monitoring advice is part of the one hepatitis B card (hbv-resolved-infection here,
    issue 12: one clinical problem, one card), with the HBV DNA order it suggests; never a card of its own."""
    cards = ask(hook=hook, orders=ocrevus(), labs=labs, medications=medications, doses=maintenance())
    assert "hbv-dna-monitoring" not in cards
    hbv = cards.get("hbv-resolved-infection", {"detail": "", "suggestions": []})
    said = "no HBV DNA in 90 days: check HBV DNA for Ocrevus" in hbv["detail"]
    assert said is (expected == "warning")
    ordered = {a["resource"]["code"]["coding"][0]["code"] for s in hbv.get("suggestions", []) for a in s["actions"]}
    assert (HBV_DNA_IU in ordered) is (expected == "warning")


def test_hbv_dna_monitoring_is_not_asked_for_before_a_first_dose(ask):
    """Before starting, hbv-resolved-infection asks for hepatology; monitoring is for patients on therapy."""
    cards = ask(orders=ocrevus(), labs=resolved_hbv())
    assert "hbv-dna-monitoring" not in cards
    assert indicator(cards, "hbv-resolved-infection") == "warning"


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("drug", ["entecavir 0.5 mg tablet", "Vemlidy (tenofovir alafenamide) 25 mg", "Viread"])
def test_resolved_hepatitis_b_drops_to_info_on_entecavir_or_tenofovir(ask, hook, drug):
    cards = ask(hook=hook, orders=ocrevus(), labs=resolved_hbv(), medications=[b.medicine(b.named(drug))])
    assert indicator(cards, "hbv-resolved-infection") == "info"
    assert "prophylaxis" in cards["hbv-resolved-infection"]["summary"]


def test_prophylaxis_ordered_together_with_the_first_dose_counts(ask):
    cards = ask(orders=ocrevus() + [b.order(b.named("entecavir 0.5 mg tablet"), rid="etv")], labs=resolved_hbv())
    assert indicator(cards, "hbv-resolved-infection") == "info"


@pytest.mark.parametrize("status", ["completed", "stopped"])
def test_prophylaxis_no_longer_taken_does_not_lower_the_warning(ask, status):
    cards = ask(orders=ocrevus(), labs=resolved_hbv(),
                medications=[b.medicine(b.named("entecavir 0.5 mg tablet"), status=status)])
    assert indicator(cards, "hbv-resolved-infection") == "warning"


# --- infusion-reaction-history: what makes a reaction severe --------------------------------------------
# (which products it contraindicates is in tests/test_products.py)

@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("marks, severe", [
    ({"criticality": "high"}, True),
    ({"severity": "severe"}, True),
    ({"manifestation": ANAPHYLAXIS}, True),
    ({"manifestation": {"text": "anaphylactic shock during infusion"}}, True),
    ({"criticality": "low"}, False),
    ({"criticality": "unable-to-assess"}, False),
    ({"severity": "moderate"}, False),
    ({"severity": "mild", "manifestation": {"text": "flushing"}}, False),
    ({"criticality": "high", "clinical": "resolved"}, False),
])
def test_only_a_severe_reaction_counts(ask, hook, marks, severe):
    cards = ask(hook=hook, orders=ocrevus(), allergies=[b.reaction(b.named("Ocrevus"), **marks)])
    assert indicator(cards, "infusion-reaction-history") == ("critical" if severe else None)


def test_a_reaction_coded_as_the_substance_counts(ask):
    ocrelizumab = {"coding": [{"system": fb.SNOMED, "code": "733464008", "display": "Ocrelizumab"}]}
    cards = ask(orders=ocrevus(), allergies=[b.reaction(ocrelizumab, criticality="high")])
    assert indicator(cards, "infusion-reaction-history") == "critical"


def test_a_severe_reaction_to_something_else_is_not_an_anti_cd20_reaction(ask):
    cards = ask(orders=ocrevus(), allergies=[b.reaction(b.named("penicillin"), criticality="high")])
    assert "infusion-reaction-history" not in cards


# --- active-infection ------------------------------------------------------------------------------------

@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("onset, expected", [(0, "warning"), (30, "warning"), (31, None), (None, "warning")])
def test_an_infection_on_the_problem_list_counts_for_30_days_from_onset(ask, hook, onset, expected):
    """An active infection with no onset date is taken as current: the problem list says it is active."""
    cards = ask(hook=hook, orders=ocrevus(),
                conditions=[b.problem(PNEUMONIA, text="Pneumonia", onset_days_ago=onset)])
    assert indicator(cards, "active-infection") == expected
    if expected:
        assert "Pneumonia" in cards["active-infection"]["summary"]


@pytest.mark.parametrize("code, system, clinical, active", [
    ("N39.0", ICD10CM, "active", True),  # urinary tract infection
    ("U07.1", ICD10CM, "recurrence", True),  # COVID-19
    (PNEUMONIA, fb.SNOMED, "resolved", False),
    (PNEUMONIA, fb.SNOMED, "inactive", False),
])
def test_infection_codes_and_their_status(ask, code, system, clinical, active):
    cards = ask(orders=ocrevus(), conditions=[b.problem(code, system, clinical=clinical, onset_days_ago=3)])
    assert ("active-infection" in cards) is active


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("medications, drafts, expected", [
    ([b.medicine(b.named("amoxicillin 500 mg capsule"))], [], "warning"),
    ([b.medicine(b.concept({"system": fb.RXNORM, "code": "18631"}))], [], "warning"),  # azithromycin (IN)
    ([], [b.order(b.named("ceftriaxone 1 g IV"), rid="abx")], "warning"),
    ([b.medicine(b.named("amoxicillin 500 mg capsule"), status="completed")], [], None),
    ([b.medicine(b.named("entecavir 0.5 mg tablet"))], [], None),  # HBV prophylaxis is no sign of infection
    ([b.medicine(b.named("valacyclovir 500 mg tablet"))], [], None),  # mostly long-term herpes prophylaxis
])
def test_an_active_anti_infective_order_is_a_sign_of_infection(ask, hook, medications, drafts, expected):
    cards = ask(hook=hook, orders=ocrevus() + drafts, medications=medications)
    assert indicator(cards, "active-infection") == expected


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("value, unit, hours, fever", [
    (38.0, "Cel", 1, True), (37.9, "Cel", 1, False), (39.5, "Cel", 1, True),
    (38.0, "Cel", 72, True), (38.0, "Cel", 73, False),
    (100.4, "[degF]", 5, True), (100.3, "[degF]", 5, False),  # 100.4 °F is 38.0 °C
])
def test_fever_of_38_0_or_more_in_the_last_72_hours(ask, hook, value, unit, hours, fever):
    cards = ask(hook=hook, orders=ocrevus(), labs=[b.temperature(value, unit, hours_ago=hours)])
    assert indicator(cards, "active-infection") == ("warning" if fever else None)
    if fever:
        assert "Fever" in cards["active-infection"]["summary"]


def test_a_fever_in_the_last_72_hours_counts_even_if_a_later_reading_is_normal(ask):
    labs = [b.temperature(39.0, "Cel", hours_ago=24), b.temperature(36.8, "Cel", hours_ago=1)]
    assert indicator(ask(orders=ocrevus(), labs=labs), "active-infection") == "warning"


def test_several_signs_of_infection_make_one_card(ask):
    cards = ask(orders=ocrevus(), conditions=[b.problem(PNEUMONIA, onset_days_ago=2)],
                medications=[b.medicine(b.named("amoxicillin 500 mg capsule"))],
                labs=[b.temperature(38.6, "Cel", hours_ago=3)])
    assert indicator(cards, "active-infection") == "warning"
    assert "3 findings" in cards["active-infection"]["summary"]


# --- pml, pregnancy, cardiac-history ---------------------------------------------------------------------

@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("code, system, clinical, verification, expected", [
    (PML, fb.SNOMED, "active", "confirmed", "critical"), ("A81.2", ICD10CM, "active", "confirmed", "critical"),
    (PML, fb.SNOMED, "active", "provisional", "critical"),  # suspected: withhold at the first sign
    (PML, fb.SNOMED, "resolved", "confirmed", "critical"),  # confirmed PML stops the drug for good
    (PML, fb.SNOMED, "active", "refuted", None), (PML, fb.SNOMED, "resolved", "entered-in-error", None),
    (PNEUMONIA, fb.SNOMED, "active", "confirmed", None),
])
def test_pml_on_the_problem_list_stops_the_dose(ask, hook, code, system, clinical, verification, expected):
    condition = fb.condition(code, system, clinical=clinical, verification=verification)
    assert indicator(ask(hook=hook, orders=ocrevus(), conditions=[condition]), "pml") == expected


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("conditions, labs, expected", [
    ([b.problem(PREGNANT)], [], "warning"),
    ([b.problem("Z34.90", ICD10CM)], [], "warning"),
    ([b.problem(PREGNANT, clinical="resolved")], [], None),
    ([], [fb.serology(HCG_URINE, snomed=POSITIVE, days_ago=30)], "warning"),
    ([], [fb.serology("2110-5", text="Positive", days_ago=0)], "warning"),
    ([], [fb.serology(HCG_URINE, snomed=POSITIVE, days_ago=31)], None),
    ([], [fb.serology(HCG_URINE, snomed=NEGATIVE, days_ago=3)], None),
    ([], [fb.serology(HCG_URINE, snomed=POSITIVE, days_ago=20), fb.serology(HCG_URINE, snomed=NEGATIVE, days_ago=2)],
     None),  # a later negative test supersedes
])
def test_pregnancy_on_the_problem_list_or_a_positive_hcg_within_30_days(ask, hook, conditions, labs, expected):
    cards = ask(hook=hook, orders=ocrevus(), conditions=conditions, labs=labs)
    assert indicator(cards, "pregnancy") == expected


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("code, system, clinical, expected", [
    (HEART_FAILURE, fb.SNOMED, "active", "info"), ("I42.0", ICD10CM, "active", "info"),
    (HEART_FAILURE, fb.SNOMED, "resolved", None), (PNEUMONIA, fb.SNOMED, "active", None),
])
def test_heart_failure_or_cardiomyopathy_is_an_info_card(ask, hook, code, system, clinical, expected):
    cards = ask(hook=hook, orders=ocrevus(),
                conditions=[b.problem(code, system, text="Heart failure", clinical=clinical)])
    assert indicator(cards, "cardiac-history") == expected
    if expected:
        assert cards["cardiac-history"]["summary"].startswith("Heart failure on the problem list")
        assert cards["cardiac-history"]["source"]["url"].startswith("https://doi.org/")


# --- vaccines before a first dose ------------------------------------------------------------------------

@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("cvx, days, recent, timing", [
    ("03", 0, "warning", None), ("03", 27, "warning", None), ("03", 28, None, None),  # MMR, live
    ("21", 27, "warning", None), ("149", 10, "warning", None),  # varicella; intranasal influenza
    ("187", 13, None, "info"), ("187", 14, None, None),  # Shingrix, non-live: 14 days
    ("208", 13, None, "info"),  # COVID-19 mRNA
    ("188", 27, None, "info"), ("188", 28, None, None),  # zoster, unspecified: live or not unknown
    ("206", 13, None, "info"),  # JYNNEOS: non-replicating, treated as non-live (configurable)
])
def test_vaccines_given_too_close_before_a_first_dose(ask, hook, cvx, days, recent, timing):
    cards = ask(hook=hook, orders=ocrevus(), immunizations=[b.vaccine(cvx, days)])
    assert indicator(cards, "live-vaccine-recent") == recent
    assert indicator(cards, "vaccine-timing") == timing


def test_an_ambiguous_vaccine_asks_to_check_whether_it_was_live(ask):
    cards = ask(orders=ocrevus(), immunizations=[b.vaccine("188", 20, "zoster vaccine, unspecified formulation")])
    assert "check whether it was live" in cards["vaccine-timing"]["summary"]


def test_a_live_vaccine_named_without_a_cvx_code_counts(ask):
    named = b.vaccine("03", 10)
    named["vaccineCode"] = {"text": "MMR II (measles, mumps, rubella) vaccine"}
    assert indicator(ask(orders=ocrevus(), immunizations=[named]), "live-vaccine-recent") == "warning"


@pytest.mark.parametrize("status", ["not-done", "entered-in-error"])
def test_a_vaccine_not_given_does_not_count(ask, status):
    assert "live-vaccine-recent" not in ask(orders=ocrevus(), immunizations=[b.vaccine("03", 10, status=status)])


def test_a_non_live_vaccine_matters_before_a_first_dose_only(ask):
    assert "vaccine-timing" not in ask(orders=ocrevus(), immunizations=[b.vaccine("187", 5)], doses=maintenance())


def test_a_live_vaccine_given_during_therapy_is_flagged_on_the_next_dose(ask):
    cards = ask(orders=ocrevus(), immunizations=[b.vaccine("03", 5)], doses=maintenance())
    assert "live-vaccine-on-treatment" in cards or "live-vaccine-recent" in cards


# --- live-vaccine-on-treatment: fires on the vaccine order ----------------------------------------------

def cd19(value: float, days_ago: int) -> dict:
    return fb.lab(CD19, value, "/uL", days_ago=days_ago)


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("last_dose, labs, expected", [
    (30, [], "days after the last anti-CD20 dose"),
    (365, [], "days after the last anti-CD20 dose"),
    (365, [cd19(120, 10)], "days after the last anti-CD20 dose"),  # within 12 months whatever the count
    (366, [], "no CD19 count"),
    (366, [cd19(39, 10)], "no CD19 count"),
    (366, [cd19(40, 10)], None), (366, [cd19(120, 10)], None),  # B cells repleted since the last dose
    (366, [cd19(120, 400)], "no CD19 count"),  # a count from before the last dose shows nothing
    (366, [fb.lab(CD19, 0.05, "10*9/L", days_ago=10)], None),  # 50 /µL
])
def test_a_live_vaccine_ordered_after_anti_cd20_therapy(ask, hook, last_dose, labs, expected):
    cards = ask(hook=hook, orders=[b.order(MMR, rid="mmr")], doses=[b.given(last_dose, b.concept(OCREVUS))],
                labs=labs)
    assert indicator(cards, "live-vaccine-on-treatment") == ("warning" if expected else None)
    if expected:
        assert expected in cards["live-vaccine-on-treatment"]["summary"]


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("vaccine, doses", [
    (MMR, []),  # never on anti-CD20 therapy
    (b.concept({"system": CVX, "code": "187", "display": "zoster recombinant"}), [30]),  # not live
    (b.concept({"system": CVX, "code": "150", "display": "influenza, injectable"}), [30]),
])
def test_no_live_vaccine_card_without_both_a_live_vaccine_and_anti_cd20_therapy(ask, hook, vaccine, doses):
    cards = ask(hook=hook, orders=[b.order(vaccine, rid="vax")], doses=[b.given(d, b.concept(OCREVUS)) for d in doses])
    assert "live-vaccine-on-treatment" not in cards


def test_a_live_vaccine_named_in_the_order_text_counts(ask):
    cards = ask(orders=[b.order(b.named("Varivax (varicella virus vaccine live)"), rid="vax")],
                doses=[b.given(60, b.concept(OCREVUS))])
    assert indicator(cards, "live-vaccine-on-treatment") == "warning"


def test_order_select_checks_the_vaccine_only_when_it_is_selected(ask):
    orders = [b.order(MMR, rid="mmr"), b.order(b.named("amlodipine 5 mg"), rid="other")]
    doses = [b.given(60, b.concept(OCREVUS))]
    assert "live-vaccine-on-treatment" in ask(hook="order-select", orders=orders, doses=doses,
                                              selections=["MedicationRequest/mmr"])
    assert ask(hook="order-select", orders=orders, doses=doses, selections=["MedicationRequest/other"]) == {}


def test_a_live_vaccine_ordered_together_with_a_first_dose_is_flagged(ask):
    cards = ask(orders=ocrevus() + [b.order(MMR, rid="mmr")])
    assert "live-vaccine-on-treatment" in cards or "live-vaccine-recent" in cards


# --- prior-immune-depletion ------------------------------------------------------------------------------

def alc(value: float, days_ago: int, unit: str = "10*9/L") -> dict:
    return fb.lab(ALC, value, unit, days_ago=days_ago)


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("drug", [CLADRIBINE, ALEMTUZUMAB])
@pytest.mark.parametrize("given_days, labs, expected", [
    (1461, [], "no lymphocyte count"), (1462, [], None),  # 48 months
    (200, [alc(1.5, 30)], None), (200, [alc(1.5, 31)], "no lymphocyte count"),
    (200, [alc(0.79, 5)], "Lymphopenia"), (200, [alc(0.8, 5)], None),
    (200, [alc(790, 5, "/uL")], "Lymphopenia"),
])
def test_cladribine_or_alemtuzumab_in_the_last_48_months(ask, hook, drug, given_days, labs, expected):
    cards = ask(hook=hook, orders=ocrevus(), doses=[b.given(given_days, drug)], labs=labs)
    assert indicator(cards, "prior-immune-depletion") == ("warning" if expected else None)
    if expected:
        assert expected in cards["prior-immune-depletion"]["summary"]


def test_prior_therapy_on_the_medication_list_counts(ask):
    cards = ask(orders=ocrevus(), medications=[b.medicine(CLADRIBINE, status="completed", days_ago=300)])
    assert indicator(cards, "prior-immune-depletion") == "warning"


def test_lymphopenia_alone_is_a_warning(ask):
    assert indicator(ask(orders=ocrevus(), labs=[alc(0.4, 3)]), "prior-immune-depletion") == "warning"


# --- site overrides -------------------------------------------------------------------------------------

OVERRIDES = """\
thresholds:
  infection:
    fever_celsius: 38.5
  vaccines:
    live_before_first_dose_days: 42
products:
  ocrelizumab-iv:
    regimen:
      min_days: [null, 11, 140]
rules:
  pml:
    enabled: false
  cardiac-history:
    indicator: warning
"""


@pytest.fixture(scope="module")
def site_ask(tmp_path_factory):
    """ask() against a service loaded with a site's overrides file, called in process (service.call)."""
    path = tmp_path_factory.mktemp("site") / "overrides.yaml"
    path.write_text(OVERRIDES, encoding="utf-8")
    service = CdsService(rulebook.load(overrides=path), clock=lambda: NOW)
    keys = service.services["cd20-order-sign"].prefetch

    def ask(**data):
        return fb.cards_by_rule(service.call("cd20-order-sign", b.request(keys=keys, **data)))

    return ask


@pytest.mark.parametrize("data, rule, default, site", [
    (dict(labs=[b.temperature(38.2, "Cel", hours_ago=2)]), "active-infection", "warning", None),
    (dict(labs=[b.temperature(38.5, "Cel", hours_ago=2)]), "active-infection", "warning", "warning"),
    (dict(immunizations=[b.vaccine("03", 35)]), "live-vaccine-recent", None, "warning"),
    (dict(doses=[b.given(145, b.concept(OCREVUS)), b.given(159, b.concept(OCREVUS))]), "dose-interval-short",
     "warning", None),
    (dict(conditions=[b.problem(PML)]), "pml", "critical", None),
    (dict(conditions=[b.problem(HEART_FAILURE)]), "cardiac-history", "info", "warning"),
])
def test_site_overrides_change_thresholds_windows_regimens_and_indicators(ask, site_ask, data, rule, default, site):
    assert indicator(ask(orders=ocrevus(), **data), rule) == default
    assert indicator(site_ask(orders=ocrevus(), **data), rule) == site


def test_a_disabled_rule_leaves_the_others_running(site_ask):
    cards = site_ask(orders=ocrevus(), conditions=[b.problem(PML), b.problem(PNEUMONIA, onset_days_ago=1)])
    assert "pml" not in cards
    assert indicator(cards, "active-infection") == "warning"


def test_the_overrides_file_is_named_by_cds_rules_overrides(tmp_path, monkeypatch):
    path = tmp_path / "site.yaml"
    path.write_text("thresholds:\n  pregnancy:\n    hcg_window_days: 14\n", encoding="utf-8")
    monkeypatch.setenv("CDS_RULES_OVERRIDES", str(path))
    assert rulebook.load().thresholds["pregnancy"]["hcg_window_days"] == 14


BAD_OVERRIDES = [  # file text, what the error must name
    ("threshold:\n  infection:\n    fever_celsius: 38.5\n", "threshold"),
    ("thresholds:\n  infection:\n    fever_c: 38.5\n", "thresholds.infection.fever_c"),
    ("thresholds:\n  infection:\n    fever_celsius: high\n", "thresholds.infection.fever_celsius"),
    ("thresholds:\n  infection:\n    fever_celsius: true\n", "thresholds.infection.fever_celsius"),
    ("thresholds:\n  infection: 38.5\n", "thresholds.infection"),
    ("thresholds:\n  vaccines:\n    live_before_first_dose_days: [28]\n",
     "thresholds.vaccines.live_before_first_dose_days"),
    ("products:\n  ocrelizumab:\n    regimen:\n      min_days: [null, 11, 140]\n", "products.ocrelizumab"),
    ("rules:\n  pmll:\n    enabled: false\n", "rules.pmll"),
    ("rules:\n  pml:\n    enable: false\n", "rules.pml.enable"),
    ("rules:\n  pml: off\n", "rules.pml"),
    ("rules:\n  pml:\n    indicator: urgent\n", "pml"),
    ("- thresholds\n", "top level"),
]


@pytest.mark.parametrize("text, key", BAD_OVERRIDES)
def test_a_bad_overrides_file_is_refused_naming_the_key(tmp_path, text, key):
    path = tmp_path / "overrides.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(rulebook.RulebookError, match=key.replace(".", r"\.")):
        rulebook.load(overrides=path)


@pytest.mark.parametrize("value", ["'false'", "0", "'no'"])
def test_enabled_must_be_true_or_false(tmp_path, value):
    path = tmp_path / "overrides.yaml"
    path.write_text(f"rules:\n  pml:\n    enabled: {value}\n", encoding="utf-8")
    with pytest.raises(rulebook.RulebookError, match=r"rules\.pml\.enabled"):
        rulebook.load(overrides=path)


def test_a_regimen_override_with_the_wrong_item_type_is_refused(tmp_path):
    path = tmp_path / "overrides.yaml"
    path.write_text("products:\n  ocrelizumab-iv:\n    regimen:\n      doses_mg: ['600 mg']\n", encoding="utf-8")
    with pytest.raises(rulebook.RulebookError, match=r"products\.ocrelizumab-iv\.regimen\.doses_mg"):
        rulebook.load(overrides=path)


def test_a_bad_overrides_file_stops_the_app_from_starting(tmp_path, monkeypatch):
    path = tmp_path / "overrides.yaml"
    path.write_text("rules:\n  no-such-rule:\n    enabled: false\n", encoding="utf-8")
    monkeypatch.setenv("CDS_RULES_OVERRIDES", str(path))
    with pytest.raises(rulebook.RulebookError, match="rules.no-such-rule"):
        create_app(settings=Settings(auth="off"))
