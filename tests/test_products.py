"""Each anti-CD20 product as rules/products.yaml describes it, through HTTP: recognised by code, by name and
by route; its premedication; its dose regimen and minimum intervals; and what a past severe reaction means
for it.

The numbers are the labels' (../shared/clinical/clinical-rules.md §1 and §2), written out here on purpose:
a product's regimen is a clinical decision, so changing it should fail a test and be reviewed. Doses given
as `[days ago, ...]` are the patient's earlier doses of the same drug, newest first.
"""
from __future__ import annotations

import re

import pytest

import cd20_builders as b
from cd20_builders import BRIUMVI, HOOKS, KESIMPTA, NDC, OCREVUS, RITUXAN, TRUXIMA, ZUNOVO, indicator
from fhir_builders import RXNORM

OCREVUS_NAME = "Ocrevus (ocrelizumab) IV"
ZUNOVO_NAME = "Ocrevus Zunovo (ocrelizumab and hyaluronidase-ocsq)"
KESIMPTA_NAME = "Kesimpta (ofatumumab)"
BRIUMVI_NAME = "Briumvi (ublituximab-xiiy)"
RITUXIMAB_NAME = "rituximab (Rituxan or a biosimilar)"
ORDER_LINE = re.compile(r"^Order: (.+?), a (?:first|maintenance) dose", re.M)
BY_NAME = "Recognised by its name"
STEROID = b.order(b.named("methylprednisolone sodium succinate 100 mg IV"), rid="premed-steroid")
ANTIHISTAMINE = b.order(b.named("diphenhydramine 50 mg IV"), rid="premed-antihistamine")


@pytest.fixture(scope="module")
def ask(client):
    return b.caller(client)


def ordered_as(cards: dict) -> set[str]:
    """The product the cards say was ordered (their "Order: <name>, ..." line)."""
    return {m.group(1) for card in cards.values() for m in [ORDER_LINE.search(card["detail"])] if m}


def code_only(coding: dict) -> dict:
    return b.concept({k: v for k, v in coding.items() if k != "display"})


def history(coding: dict, days: list[int]) -> list[dict]:
    return [b.given(d, b.concept(coding)) for d in days]


# --- recognising the product ----------------------------------------------------------------------------

@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("coding, product", [
    (OCREVUS, OCREVUS_NAME),
    ({"system": RXNORM, "code": "1876380"}, OCREVUS_NAME),  # the SCD
    (ZUNOVO, ZUNOVO_NAME),
    ({"system": NDC, "code": "50242-554-86"}, ZUNOVO_NAME),  # the sample package
    (KESIMPTA, KESIMPTA_NAME),
    (BRIUMVI, BRIUMVI_NAME),
    ({"system": NDC, "code": "73150015006"}, BRIUMVI_NAME),  # the same NDC in its 11-digit form
    ({"system": NDC, "code": "00078-1007-68"}, KESIMPTA_NAME),  # 11-digit, hyphenated
    (RITUXAN, RITUXIMAB_NAME),
    (TRUXIMA, RITUXIMAB_NAME),  # biosimilar rituximab-abbs
    ({"system": RXNORM, "code": "2273513"}, RITUXIMAB_NAME),  # Ruxience (BN)
    ({"system": RXNORM, "code": "121191"}, RITUXIMAB_NAME),  # rituximab (IN)
], ids=b.case_id)
def test_each_product_is_recognised_by_its_code_alone(ask, hook, coding, product):
    cards = ask(hook=hook, orders=[b.order(code_only(coding))])
    assert ordered_as(cards) == {product}
    assert not any(BY_NAME in card["detail"] for card in cards.values())


@pytest.mark.parametrize("text, product", [
    ("Ocrevus 300 mg in 250 mL sodium chloride 0.9%", OCREVUS_NAME),
    ("OCRELIZUMAB", OCREVUS_NAME),
    ("Ocrevus Zunovo 920 mg/23 mL", ZUNOVO_NAME),
    ("Zunovo", ZUNOVO_NAME),
    ("ocrelizumab and hyaluronidase-ocsq injection", ZUNOVO_NAME),
    ("Kesimpta Sensoready pen 20 mg/0.4 mL", KESIMPTA_NAME),
    ("ofatumumab", KESIMPTA_NAME),
    ("Briumvi 450 mg IV", BRIUMVI_NAME),
    ("ublituximab-xiiy", BRIUMVI_NAME),
    ("Rituxan 1000 mg IV", RITUXIMAB_NAME),
    ("Truxima (rituximab-abbs)", RITUXIMAB_NAME),
    ("Ruxience", RITUXIMAB_NAME),
    ("riabni", RITUXIMAB_NAME),
])
def test_each_product_is_recognised_by_its_name_and_the_card_says_so(ask, text, product):
    cards = ask(orders=[b.order(b.named(text))])
    assert ordered_as(cards) == {product}
    assert all(f'{BY_NAME} ("{text}")' in card["detail"] for card in cards.values())


@pytest.mark.parametrize("medication, route, product", [
    (b.concept(OCREVUS), b.SUBCUTANEOUS, ZUNOVO_NAME),
    (b.named("ocrelizumab 920 mg"), {"text": "subcutaneous"}, ZUNOVO_NAME),
    (b.named("ocrelizumab 920 mg"), {"text": "SC"}, ZUNOVO_NAME),
    (b.concept(OCREVUS), b.INTRAVENOUS, OCREVUS_NAME),
    (b.named("ocrelizumab 600 mg"), {"text": "IV infusion"}, OCREVUS_NAME),
])
def test_subcutaneous_ocrelizumab_is_told_apart_by_its_route(ask, medication, route, product):
    assert ordered_as(ask(orders=[b.order(medication, route=route)])) == {product}


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("text", ["Tysabri (natalizumab) 300 mg IV", "methylprednisolone 1 g IV", "lisinopril 10 mg"])
def test_an_order_for_anything_else_gets_no_cards_at_all(client, hook, text):
    body = b.request(hook=hook, keys=[], orders=[b.order(b.named(text))])
    response = client.post(f"/cds-services/cd20-{hook}", json=body)
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


# --- premedication (order-sign: looked for among the orders being signed) -------------------------------

PREMEDICATION = [  # product, premedication its label asks for (None: none required)
    (OCREVUS, "methylprednisolone 100 mg IV"),
    (ZUNOVO, "oral dexamethasone (or an equivalent corticosteroid) plus an oral antihistamine"),
    (BRIUMVI, "methylprednisolone 100 mg IV"),
    (RITUXAN, "methylprednisolone 100 mg IV"),
    (KESIMPTA, None),
]
MISSING_NAMED = {"Zunovo": ("oral dexamethasone", "oral antihistamine")}  # the others: the groups' own names


@pytest.mark.parametrize("coding, premedication", PREMEDICATION, ids=b.case_id)
def test_premedication_missing_names_the_products_own_premedication(ask, coding, premedication):
    """Zunovo's label asks for oral dexamethasone and an oral antihistamine, not the IV premedication: its
    card says so in the summary too (it named methylprednisolone and diphenhydramine before)."""
    cards = ask(orders=[b.order(b.concept(coding))])
    assert indicator(cards, "premedication-missing") == ("info" if premedication else None)
    if premedication:
        card = cards["premedication-missing"]
        assert premedication in card["detail"]
        steroid, antihistamine = MISSING_NAMED.get(b.case_id(coding), ("corticosteroid", "antihistamine"))
        assert steroid in card["summary"] and antihistamine in card["summary"]
        if b.case_id(coding) == "Zunovo":
            assert "methylprednisolone" not in card["summary"] and "diphenhydramine" not in card["summary"]


@pytest.mark.parametrize("coding, premedication", PREMEDICATION, ids=b.case_id)
def test_a_corticosteroid_and_an_antihistamine_among_the_drafts_are_premedication(ask, coding, premedication):
    cards = ask(orders=[b.order(b.concept(coding)), STEROID, ANTIHISTAMINE])
    assert "premedication-missing" not in cards


def test_oral_premedication_for_subcutaneous_ocrelizumab(ask):
    oral = [b.order(b.named("dexamethasone 20 mg oral tablet"), rid="dex"),
            b.order(b.named("desloratadine 5 mg oral tablet"), rid="deslo")]
    assert "premedication-missing" not in ask(orders=[b.order(b.concept(ZUNOVO)), *oral])


@pytest.mark.parametrize("drafts, missing, present", [
    ([STEROID], "antihistamine", "corticosteroid"),
    ([ANTIHISTAMINE], "corticosteroid", "antihistamine"),
])
def test_premedication_missing_says_which_half_is_missing(ask, drafts, missing, present):
    summary = ask(orders=[b.order(b.concept(OCREVUS)), *drafts])["premedication-missing"]["summary"]
    assert missing in summary and present not in summary


def test_premedication_on_the_medication_list_is_not_an_order_for_this_dose(ask):
    cards = ask(orders=[b.order(b.concept(OCREVUS))],
                medications=[b.medicine(b.named("prednisone 5 mg tablet")), b.medicine(b.named("cetirizine 10 mg"))])
    assert indicator(cards, "premedication-missing") == "info"


@pytest.mark.parametrize("coding", [OCREVUS, ZUNOVO, BRIUMVI, RITUXAN], ids=b.case_id)
def test_premedication_is_not_checked_when_an_order_is_only_selected(ask, coding):
    assert "premedication-missing" not in ask(hook="order-select", orders=[b.order(b.concept(coding))])


# --- dose regimen ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("coding, earlier, dose, expected", [
    # Ocrevus: 300 mg day 1, 300 mg day 15, then 600 mg every 6 months
    (OCREVUS, [], 300, None), (OCREVUS, [], 600, 300),
    (OCREVUS, [14], 300, None), (OCREVUS, [14], 600, 300),
    (OCREVUS, [168, 182], 600, None), (OCREVUS, [168, 182], 300, 600),
    (OCREVUS, [180, 194, 360, 374], 600, None),
    # Briumvi: 150 mg day 1, 450 mg day 15, then 450 mg every 24 weeks
    (BRIUMVI, [], 150, None), (BRIUMVI, [], 450, 150),
    (BRIUMVI, [14], 450, None), (BRIUMVI, [14], 150, 450),
    (BRIUMVI, [154, 168], 450, None), (BRIUMVI, [154, 168], 150, 450),
    # Ocrevus Zunovo: 920 mg from the first dose
    (ZUNOVO, [], 920, None), (ZUNOVO, [], 600, 920), (ZUNOVO, [182], 920, None), (ZUNOVO, [182], 300, 920),
    # Kesimpta: 20 mg every time
    (KESIMPTA, [], 20, None), (KESIMPTA, [7], 20, None), (KESIMPTA, [28, 42, 49, 56], 20, None),
    (KESIMPTA, [], 40, 20),
], ids=b.case_id)
def test_the_dose_must_fit_the_products_regimen(ask, hook, coding, earlier, dose, expected):
    cards = ask(hook=hook, orders=[b.order(b.concept(coding), dose=(dose, "mg"))], doses=history(coding, earlier))
    assert indicator(cards, "dose-unexpected") == ("info" if expected else None)
    if expected:
        assert f"{dose} mg differs from the label's {expected} mg" in cards["dose-unexpected"]["summary"]


@pytest.mark.parametrize("quantity, fits", [((0.6, "g"), True), ((600000, "ug"), True), ((0.3, "g"), False)])
def test_a_dose_in_another_mass_unit_is_checked_in_mg(ask, quantity, fits):
    cards = ask(orders=[b.order(b.concept(OCREVUS), dose=quantity)], doses=history(OCREVUS, [168, 182]))
    assert ("dose-unexpected" in cards) is not fits


@pytest.mark.parametrize("coding, ml, fits", [
    (ZUNOVO, 23, True), (ZUNOVO, 15, False),  # 40 mg/mL: 920 mg is 23 mL
    (KESIMPTA, 0.4, True), (KESIMPTA, 0.8, False),  # 50 mg/mL: 20 mg is 0.4 mL
], ids=b.case_id)
def test_a_dose_in_ml_of_a_product_given_undiluted_is_read_at_its_concentration(ask, coding, ml, fits):
    cards = ask(orders=[b.order(b.concept(coding), dose=(ml, "mL"))])
    assert indicator(cards, "dose-unexpected") == (None if fits else "info")


@pytest.mark.parametrize("coding, ml", [(OCREVUS, 250), (BRIUMVI, 250)], ids=b.case_id)
def test_an_infusion_ordered_in_ml_is_not_read_as_a_dose(ask, coding, ml):
    """An IV order in mL is usually the diluted bag's volume: say it cannot be checked, never "differs"."""
    cards = ask(orders=[b.order(b.concept(coding), dose=(ml, "mL"))])
    assert indicator(cards, "dose-unexpected") == "info"
    assert "cannot be checked" in cards["dose-unexpected"]["summary"]


@pytest.mark.parametrize("coding, expected", [(OCREVUS, 300), (ZUNOVO, 920), (KESIMPTA, 20), (BRIUMVI, 150)],
                         ids=b.case_id)
@pytest.mark.parametrize("unit, words", [("{vial}", "a dose in vials"), ("{pill}", "a dose in pills"),
                                         ("mg/kg", "a dose in mg/kg")])
def test_a_dose_in_a_unit_that_is_no_amount_of_drug_cannot_be_checked_and_the_card_says_so(ask, coding, expected,
                                                                                        unit, words):
    """A UCUM annotation (the CDS Hooks sandbox sends "{pill}") is named in words, not in UCUM's braces."""
    cards = ask(orders=[b.order(b.concept(coding), dose=(1, unit))])
    assert indicator(cards, "dose-unexpected") == "info"
    summary = cards["dose-unexpected"]["summary"]
    assert "cannot be checked" in summary and f"{expected} mg" in summary and words in summary
    assert "{" not in summary


@pytest.mark.parametrize("coding", [OCREVUS, ZUNOVO, KESIMPTA, BRIUMVI], ids=b.case_id)
def test_an_order_without_a_dose_is_not_a_dose_finding(ask, coding):
    assert "dose-unexpected" not in ask(orders=[b.order(b.concept(coding))])


@pytest.mark.parametrize("coding", [RITUXAN, TRUXIMA], ids=b.case_id)
@pytest.mark.parametrize("dose", [(1000, "mg"), (500, "mg"), (375, "mg"), (50, "mL")])
def test_rituximab_has_no_ms_regimen_to_check_doses_against(ask, coding, dose):
    assert "dose-unexpected" not in ask(orders=[b.order(b.concept(coding), dose=dose)])


# --- minimum interval since the last dose ---------------------------------------------------------------

@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("coding, earlier, minimum", [
    (OCREVUS, [10], 11), (OCREVUS, [11], None),  # the day-15 starter dose, -3 days
    (OCREVUS, [149, 163], 150), (OCREVUS, [150, 164], None),  # doses at least 5 months apart
    (BRIUMVI, [10], 11), (BRIUMVI, [11], None),
    (BRIUMVI, [149, 163], 150), (BRIUMVI, [150, 164], None),
    (ZUNOVO, [149], 150), (ZUNOVO, [150], None),  # UNCONFIRMED for SC: the IV's 5 months assumed
    (RITUXAN, [10], 11), (RITUXAN, [11], None),
    (RITUXAN, [111, 125], 112), (RITUXAN, [112, 126], None),  # RA label: courses at least 16 weeks apart
    (KESIMPTA, [7], None), (KESIMPTA, [28, 42], None),  # weekly, then monthly: no minimum on the label
], ids=b.case_id)
def test_doses_closer_than_the_products_minimum_interval(ask, hook, coding, earlier, minimum):
    cards = ask(hook=hook, orders=[b.order(b.concept(coding))], doses=history(coding, earlier))
    assert indicator(cards, "dose-interval-short") == ("warning" if minimum else None)
    if minimum:
        summary = cards["dose-interval-short"]["summary"]
        assert f"Only {earlier[0]} days" in summary and f"the minimum is {minimum} days" in summary


def test_the_interval_counts_from_the_last_dose_of_the_same_drug_given_as_another_product(ask):
    """Zunovo 100 days after an IV ocrelizumab maintenance dose: the same molecule, so still too soon."""
    cards = ask(orders=[b.order(b.concept(ZUNOVO))], doses=history(OCREVUS, [100, 282, 296]))
    assert indicator(cards, "dose-interval-short") == "warning"


# --- a past severe reaction -----------------------------------------------------------------------------

@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("coding, substance, expected, variant", [
    (OCREVUS, "ocrelizumab", "critical", "is contraindicated"),
    (ZUNOVO, "Ocrevus", "critical", "is contraindicated"),
    (ZUNOVO, "hyaluronidase", "critical", "is contraindicated"),  # Zunovo's label names hyaluronidase too
    (BRIUMVI, "ublituximab", "critical", "is contraindicated"),
    (KESIMPTA, "ofatumumab", "warning", "review before giving"),
    (RITUXAN, "rituximab", "warning", "review before giving"),
    (TRUXIMA, "Rituxan", "warning", "review before giving"),
    (OCREVUS, "rituximab", "warning", "another anti-CD20"),
    (BRIUMVI, "ocrelizumab", "warning", "another anti-CD20"),
    (KESIMPTA, "Briumvi", "warning", "another anti-CD20"),
    (RITUXAN, "ofatumumab", "warning", "another anti-CD20"),
    (OCREVUS, "hyaluronidase", None, None),  # no hyaluronidase in the IV product
    (KESIMPTA, "hyaluronidase", None, None),
], ids=b.case_id)
def test_a_severe_reaction_is_a_contraindication_only_where_the_label_says_so(ask, hook, coding, substance,
                                                                            expected, variant):
    cards = ask(hook=hook, orders=[b.order(b.concept(coding))],
                allergies=[b.reaction(b.named(substance), criticality="high")])
    assert indicator(cards, "infusion-reaction-history") == expected
    if expected:
        assert variant in cards["infusion-reaction-history"]["summary"]


@pytest.mark.parametrize("coding, label", [
    (OCREVUS, "Ocrevus (ocrelizumab) US prescribing information"),
    (ZUNOVO, "Ocrevus Zunovo (ocrelizumab and hyaluronidase-ocsq) US prescribing information"),
    (KESIMPTA, "Kesimpta (ofatumumab) US prescribing information"),
    (BRIUMVI, "Briumvi (ublituximab-xiiy) US prescribing information"),
    (RITUXAN, "Rituxan (rituximab) US prescribing information"),
], ids=b.case_id)
def test_product_dependent_cards_cite_the_ordered_products_own_label(ask, coding, label):
    cards = ask(orders=[b.order(b.concept(coding))], allergies=[b.reaction(b.named("ocrelizumab"), criticality="high")])
    source = cards["infusion-reaction-history"]["source"]
    assert source["label"].startswith(label)
    assert source["url"].startswith("https://dailymed.nlm.nih.gov/")
