"""The record as it really comes (issue 12), through HTTP: only this patient's data, results coded under
any spelling of their code system, honest gaps, entries dated after now, one card per clinical problem,
the ordered product's own label, medication history from every resource EHRs use, and the label details
seen in new cases.

Records are built as EHR feeds send them (tests/fhir_builders.py, cd20_builders.py); the clock is frozen
at conftest.NOW. Fetching tests use the real FHIR server on loopback (devtools/fhir_server.py), and a
scripted one for an EHR that answers with the wrong patient's data.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import pytest

import cd20_builders as b
import fhir_builders as fb
from cd20_builders import KESIMPTA, OCREVUS, RITUXAN, ZUNOVO, indicator
from cds_service.web.app import create_app
from cds_service.config import Settings
from cds_service.record.fhir_client import FetchSettings, FhirFetcher
from cds_service.service import CdsService
from conftest import NOW
from fhir_builders import ALP, ALT, ANC, ANTI_HBC, AST, BILIRUBIN, HBSAG, IGG, LOINC, PATIENT_ID, UCUM
from test_fetch import Scripted, _running

NEGATIVE, POSITIVE, INDETERMINATE = "260385009", "10828004", "82334004"
CHRONIC_HBV = "61977001"
HBV_DNA_IU = "42595-9"
NORMAL_LIVER = [fb.lab(ALT, 20, "U/L", days_ago=9), fb.lab(AST, 22, "U/L", days_ago=9),
                fb.lab(ALP, 80, "U/L", days_ago=9), fb.lab(BILIRUBIN, 0.6, "mg/dL", days_ago=9)]
SCREENED = [fb.serology(HBSAG, snomed=NEGATIVE, days_ago=60), fb.serology(ANTI_HBC, snomed=NEGATIVE, days_ago=60)]
BASELINE = [*SCREENED, fb.lab(IGG, 950, "mg/dL", days_ago=60), *NORMAL_LIVER, fb.lab(ANC, 3.1, "10*9/L", days_ago=9)]
COULD_NOT_RUN = "data-unavailable"


@pytest.fixture(scope="module")
def services(client) -> dict[str, dict[str, Any]]:
    return {s["hook"]: s for s in client.get("/cds-services").get_json()["services"]}


@pytest.fixture(scope="module")
def ask(client):
    """ask(**record): the cards for an Ocrevus IV order (unless `orders` says otherwise), by rule id."""
    asking = b.caller(client)

    def ask(**data: Any) -> dict[str, dict[str, Any]]:
        data.setdefault("orders", [b.order(b.concept(OCREVUS))])
        return asking(**data)

    return ask


def post(client, services, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    response = client.post(f"/cds-services/{services[body['hook']]['id']}", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return fb.cards_by_rule(response.get_json())


def request(services, hook: str = "order-sign", **data: Any) -> dict[str, Any]:
    data.setdefault("orders", [b.order(b.concept(OCREVUS))])
    return b.request(hook=hook, keys=services[hook]["prefetch"], **data)


def text(card: dict[str, Any]) -> str:
    return card["summary"] + "\n" + card["detail"]


def of(patient: str, resource: dict[str, Any], field: str = "subject") -> dict[str, Any]:
    """The same resource, naming `patient` (a reference in any form) as its subject."""
    moved = copy.deepcopy(resource)
    moved[field] = {"reference": patient}
    return moved


def maintenance() -> list[dict[str, Any]]:
    return [b.given(168, b.concept(OCREVUS)), b.given(182, b.concept(OCREVUS))]


def by_reference(reference: str) -> dict[str, Any]:
    """An Ocrevus infusion 170 days ago whose drug is named only through `medicationReference`."""
    dose = b.given(170, b.concept(OCREVUS))
    del dose["medicationCodeableConcept"]
    dose["medicationReference"] = {"reference": reference}
    return dose


def fetching_client(book):
    """A client over a service that fetches from fhirServer (generous deadline: CI machines are slow)."""
    service = CdsService(book, fetcher=FhirFetcher(FetchSettings(deadline_seconds=20, read_timeout_seconds=20)),
                         clock=lambda: NOW)
    return create_app(service, Settings(auth="off")).test_client()


def served_by(body: dict[str, Any], server: str, token: str) -> dict[str, Any]:
    """The request naming `server` as its fhirServer, with an access token for it."""
    return {**body, "fhirServer": server, "fhirAuthorization": {
        "access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read", "subject": "cd20-cds"}}


# --- patient identity ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("other", ["Patient/someone-else", "https://ehr.example.org/fhir/Patient/someone-else",
                                   "Patient/someone-else/_history/3",
                                   "urn:uuid:0b7e6c1a-3f56-4a5e-9d3c-2f1e0d9c8b7a"])
def test_another_patients_positive_hbsag_is_never_used(ask, other):
    labs = [*BASELINE[1:], of(other, fb.serology(HBSAG, snomed=POSITIVE))]
    cards = ask(orders=[b.order(b.concept(OCREVUS))], labs=[*SCREENED[:1], *labs])
    assert "hbv-active" not in cards
    assert cards[COULD_NOT_RUN]["indicator"] == "warning"
    assert "Data for another patient was received and ignored (1 resource)" in cards[COULD_NOT_RUN]["summary"]


@pytest.mark.parametrize("mine", [f"Patient/{PATIENT_ID}", f"https://ehr.example.org/fhir/Patient/{PATIENT_ID}",
                                  f"Patient/{PATIENT_ID}/_history/2"])
def test_this_patients_data_in_any_reference_form_is_used(ask, mine):
    cards = ask(labs=[of(mine, fb.serology(HBSAG, snomed=POSITIVE))])
    assert cards["hbv-active"]["indicator"] == "critical"
    assert COULD_NOT_RUN not in cards


def test_a_synthea_style_urn_uuid_subject_is_this_patient_when_the_ids_agree(client, services):
    uuid = "5de38439-d320-46d3-854d-3c098e88de4c"
    body = request(services, labs=[of(f"urn:uuid:{uuid}", fb.serology(HBSAG, snomed=POSITIVE))])
    body["context"]["patientId"] = uuid
    body["prefetch"]["patient"]["id"] = uuid
    cards = post(client, services, body)
    assert cards["hbv-active"]["indicator"] == "critical"
    assert COULD_NOT_RUN not in cards


def test_another_patients_normal_anc_does_not_silence_neutrophils_missing(ask):
    cards = ask(labs=[*BASELINE[:-1], of("Patient/other", fb.lab(ANC, 3.4, "10*9/L", days_ago=3))])
    assert indicator(cards, "neutrophils-missing") == "info"
    assert "ignored (1 resource)" in cards[COULD_NOT_RUN]["summary"]


def test_a_prefetched_patient_with_another_id_is_refused(client, services):
    """The male default ALT limit (41 U/L) would hide this 105 U/L; the refused Patient is not read, so the
    lower limit (33) applies, and the call says another patient's data arrived."""
    body = request(services, labs=[*BASELINE[:2], fb.lab(ALT, 105, "U/L", days_ago=5)], doses=maintenance())
    body["prefetch"]["patient"] = {"resourceType": "Patient", "id": "someone-else", "gender": "male"}
    cards = post(client, services, body)
    assert "sex unknown" in cards["liver-enzymes-elevated"]["detail"]
    assert "Data for another patient was received and ignored (1 resource)" in cards[COULD_NOT_RUN]["summary"]


def test_ignored_data_is_logged_without_identifiers(client, services, caplog):
    body = request(services, labs=[of("Patient/secret-other-id", fb.serology(HBSAG, snomed=POSITIVE))])
    with caplog.at_level(logging.INFO):
        post(client, services, body)
    logged = [r for r in caplog.records if "another patient" in r.getMessage()]
    assert logged and logged[0].levelno == logging.WARNING
    assert all("secret-other-id" not in repr(r.__dict__) and PATIENT_ID not in repr(r.__dict__) for r in logged)


@pytest.fixture
def scripted():
    yield from _running()


def test_fetched_resources_of_another_patient_are_ignored_too(book, scripted: Scripted):
    """An EHR whose search answers with another patient's results: the fetched ones are filtered as the
    prefetched ones are."""
    scripted.answer("Observation", (200, fb.bundle([of("Patient/other", fb.serology(HBSAG, snomed=POSITIVE)),
                                                    *BASELINE]), {}))
    body = fb.hook_request()
    del body["prefetch"]
    response = fetching_client(book).post("/cds-services/cd20-order-sign", json=served_by(body, scripted.base, "t0ken"))
    cards = fb.cards_by_rule(response.get_json())
    assert "hbv-active" not in cards
    assert "ignored (1 resource)" in cards[COULD_NOT_RUN]["summary"]


# --- code systems as they arrive ---------------------------------------------------------------------------

SPELLINGS = {"http://loinc.org/": LOINC, "https://loinc.org": LOINC, "HTTP://LOINC.ORG": LOINC,
             "urn:oid:2.16.840.1.113883.6.1": LOINC}


def coded(resource: dict[str, Any], system: str, field: str = "code") -> dict[str, Any]:
    moved = copy.deepcopy(resource)
    for coding in moved[field]["coding"]:
        coding["system"] = system
    return moved


@pytest.mark.parametrize("system", SPELLINGS)
def test_an_hbsag_under_any_spelling_of_loinc_is_found(ask, system):
    cards = ask(labs=[*BASELINE[1:], coded(fb.serology(HBSAG, snomed=POSITIVE), system)])
    assert cards["hbv-active"]["indicator"] == "critical"
    assert COULD_NOT_RUN not in cards


@pytest.mark.parametrize("system", SPELLINGS)
def test_alt_and_ast_under_a_trailing_slash_are_liver_tests(ask, system):
    labs = [*SCREENED, fb.lab(IGG, 950, "mg/dL", days_ago=60), fb.lab(ANC, 3.1, "10*9/L", days_ago=9),
            *[coded(lab, system) for lab in NORMAL_LIVER]]
    assert "liver-tests-missing" not in ask(labs=labs)


@pytest.mark.parametrize("system", ["http://snomed.info/sct/", "urn:oid:2.16.840.1.113883.6.96"])
def test_snomed_spellings_for_answers_and_problems(ask, system):
    answer = fb.serology(HBSAG)
    answer["valueCodeableConcept"] = {"coding": [{"system": system, "code": POSITIVE}]}
    assert ask(labs=[answer])["hbv-active"]["indicator"] == "critical"
    problem = coded(fb.condition(CHRONIC_HBV), system)
    assert ask(labs=BASELINE, conditions=[problem])["hbv-active"]["indicator"] == "critical"


def test_rxnorm_cvx_and_ucum_as_oids(ask):
    order = b.order(b.concept({"system": "urn:oid:2.16.840.1.113883.6.88", "code": "1876385"}))
    mmr = b.vaccine("03", 10, "MMR")
    mmr["vaccineCode"]["coding"][0]["system"] = "urn:oid:2.16.840.1.113883.12.292"
    anc = fb.lab(ANC, 0.4, "10*9/L")
    anc["valueQuantity"]["system"] = "urn:oid:2.16.840.1.113883.6.8"
    cards = ask(orders=[order], labs=[*BASELINE[:-1], anc], immunizations=[mmr])
    assert "Recognised by its name" not in cards["live-vaccine-recent"]["detail"]
    assert cards["neutropenia"]["indicator"] == "critical"


def test_a_known_lab_code_under_an_unknown_system_is_named_not_dropped(ask):
    unknown = coded(fb.serology(HBSAG, snomed=POSITIVE), "http://lab.example.org/codes")
    cards = ask(labs=[*BASELINE[1:], unknown])
    said = text(cards[COULD_NOT_RUN])
    assert "http://lab.example.org/codes" in said and "5196-1" in said
    assert "No HBsAg" not in text(cards.get("hbv-screening-missing", {"summary": "", "detail": ""}))


def test_a_known_problem_code_under_an_unknown_system_is_named(ask):
    cards = ask(labs=BASELINE, conditions=[coded(fb.condition(CHRONIC_HBV), "http://example.org/problems")])
    assert "hbv-active" not in cards
    assert "a hepatitis B problem-list entry is coded 61977001 under a code system the service does not " \
           "recognise (http://example.org/problems)" in text(cards[COULD_NOT_RUN])


def test_an_order_coded_under_an_unknown_system_is_still_checked_and_named(ask):
    order = b.order(b.concept({"system": "http://formulary.example.org", "code": "1876385"}))
    cards = ask(orders=[order], labs=[*BASELINE[1:], fb.serology(HBSAG, snomed=POSITIVE)])
    assert cards["hbv-active"]["indicator"] == "critical"
    assert "taken to be Ocrevus" in text(cards[COULD_NOT_RUN])


# --- honest gaps --------------------------------------------------------------------------------------------

def test_old_unitless_results_do_not_stop_liver_tests_missing(ask):
    """ALT and AST without a unit, 168 days old, first dose: the 90-day window names all four tests, and no
    check is said to be unable to run because of results it would not have used anyway."""
    labs = [*SCREENED, fb.lab(IGG, 950, "mg/dL", days_ago=60), fb.lab(ANC, 3.1, "10*9/L", days_ago=9),
            fb.lab(ALT, 40, None, days_ago=168), fb.lab(AST, 38, None, days_ago=168)]
    cards = ask(labs=labs)
    assert "4 of ALT, AST, ALP and bilirubin" in cards["liver-tests-missing"]["summary"]
    assert COULD_NOT_RUN not in cards


def test_an_unreadable_recent_result_is_named_by_its_date_not_called_missing(ask):
    labs = [*BASELINE[:3], fb.lab(ALT, 40, None, days_ago=30), *NORMAL_LIVER[1:], BASELINE[-1]]
    cards = ask(labs=labs)
    assert "liver-tests-missing" not in cards
    date = fb.at(30)[:10]
    assert cards[COULD_NOT_RUN]["summary"] == f"A safety check for Ocrevus could not run: the ALT result of {date} has no unit."


def test_results_a_year_and_a_half_old_do_not_count_as_the_latest(ask):
    """Unitless results 525 days old: none is in any window but the HBV screen's, which has no limit on
    maintenance; only the checks they feed are counted."""
    old = [fb.lab(code, 1, None, days_ago=525) for code in (ALT, AST, ALP, BILIRUBIN, ANC, IGG, "731-0")]
    cards = ask(labs=[*SCREENED, *old], doses=maintenance())
    assert COULD_NOT_RUN not in cards
    unreadable_hbsag = fb.serology(HBSAG, days_ago=525)
    cards = ask(labs=[unreadable_hbsag, SCREENED[1], *old], doses=maintenance())
    assert cards[COULD_NOT_RUN]["summary"].endswith(
        f"the HBsAg result of {fb.at(525)[:10]} has no result that can be read as positive or negative.")


def test_every_validation_problem_of_a_result_is_named(ask):
    bad = fb.lab(ALT, 40, "U/L", days_ago=5)
    bad["valueQuantity"]["value"] = "forty"
    bad["subject"] = {"reference": 7}
    bad["issued"] = "yesterday"
    detail = ask(labs=[*BASELINE[:3], bad, *NORMAL_LIVER[1:], BASELINE[-1]])[COULD_NOT_RUN]["detail"]
    for field in ("valueQuantity.value", "subject.reference", "issued"):
        assert field in detail


def test_a_vaccine_dated_four_years_ahead_is_a_data_problem_not_a_recent_one(ask):
    ahead = b.vaccine("187", -4 * 365, "Shingrix")
    cards = ask(labs=BASELINE, immunizations=[ahead])
    assert "vaccine-timing" not in cards
    assert "is dated after now" in cards[COULD_NOT_RUN]["summary"]


def test_a_few_minutes_ahead_is_clock_skew_and_counts_as_now(ask):
    cards = ask(labs=BASELINE, immunizations=[b.vaccine("187", -5 / 1440, "Shingrix")])
    assert indicator(cards, "vaccine-timing") == "info"
    assert COULD_NOT_RUN not in cards


def test_a_lab_and_a_dose_dated_after_now_are_not_recent_events(ask):
    cards = ask(labs=[*BASELINE[:-1], fb.lab(ANC, 0.3, "10*9/L", days_ago=-30)],
                doses=[b.given(-20, b.concept(OCREVUS))])
    assert "neutropenia" not in cards
    assert "a first dose" in cards["premedication-missing"]["detail"]  # the future "dose" is not a past one
    assert "dated after now" in cards[COULD_NOT_RUN]["detail"]


# --- one clinical problem, one card ------------------------------------------------------------------------

def test_active_hepatitis_b_carries_the_hbv_dna_advice_and_order(ask):
    labs = [fb.serology(HBSAG, snomed=POSITIVE), fb.serology(ANTI_HBC, snomed=POSITIVE), *BASELINE[2:]]
    cards = ask(labs=labs, doses=maintenance())
    assert [r for r in cards if r.startswith("hbv-")] == ["hbv-active"]
    card = cards["hbv-active"]
    assert card["indicator"] == "critical"
    assert "HBV DNA (and ALT) every" in card["detail"]
    assert HBV_DNA_IU in {a["resource"]["code"]["coding"][0]["code"] for s in card["suggestions"] for a in s["actions"]}


def test_liver_injury_carries_an_aminotransferase_it_does_not_name(ask):
    """ALT with bilirubin is the injury pattern; AST, raised but drawn 20 days earlier (pair window 7), is not
    part of it, and would be lost if the enzyme card were simply suppressed."""
    labs = [*BASELINE[:3], fb.lab(ALT, 200, "U/L", days_ago=3, high=40), fb.lab(AST, 150, "U/L", days_ago=23, high=40),
            fb.lab(BILIRUBIN, 3.0, "mg/dL", days_ago=3, high=1.2), BASELINE[-1]]
    cards = ask(labs=labs, doses=maintenance())
    assert "liver-enzymes-elevated" not in cards
    card = cards["liver-injury"]
    assert "AST" in card["summary"] + card["detail"] and "ALT" in card["summary"] + card["detail"]
    assert card["detail"].count("**Also:**") == 1  # the AST; ALT and bilirubin are already its own numbers


def test_elevated_enzymes_and_missing_tests_before_a_first_dose_are_one_liver_card(ask):
    labs = [*BASELINE[:3], fb.lab(ALT, 180, "U/L", days_ago=3, high=40), fb.lab(AST, 30, "U/L", days_ago=3),
            BASELINE[-1]]
    cards = ask(labs=labs)
    assert "liver-tests-missing" not in cards
    card = cards["liver-enzymes-elevated"]
    assert "No alkaline phosphatase result" in card["detail"] and "No total bilirubin result" in card["detail"]
    assert any("Hepatic function" in s["label"] for s in card["suggestions"])


def test_low_igg_and_no_recent_igg_are_one_card(ask):
    labs = [*SCREENED, fb.lab(IGG, 500, "mg/dL", days_ago=250), *NORMAL_LIVER, BASELINE[-1]]
    cards = ask(labs=labs)
    assert "igg-missing" not in cards
    assert "No IgG result in the last 183 days" in cards["igg-low"]["detail"]


@pytest.fixture(scope="module")
def view(client):
    ask = b.caller(client)
    return lambda **record: ask(hook="patient-view", **record)


@pytest.mark.parametrize("hours", [-11, 0, 11])
def test_a_dose_due_today_is_info_whatever_the_time_of_day(view, hours):
    last = 182 + hours / 24
    doses = [b.given(d, b.concept(OCREVUS)) for d in (last, last + 182, last + 196, last + 210)]
    card = view(doses=doses, labs=[fb.lab(IGG, 900, "mg/dL", days_ago=30)])["next-dose-due"]
    assert card["indicator"] == "info"


@pytest.mark.parametrize("late, expected", [(0, "info"), (3, "info"), (4, "warning")])
def test_the_day_15_dose_is_overdue_only_past_its_3_day_window(view, late, expected):
    cards = view(doses=[b.given(14 + late, b.concept(OCREVUS))], labs=[fb.lab(IGG, 900, "mg/dL", days_ago=30)])
    assert indicator(cards, "next-dose-due") == expected


# --- citations follow the product ordered ------------------------------------------------------------------

@pytest.mark.parametrize("coding, label", [(RITUXAN, "Rituxan (rituximab)"), (KESIMPTA, "Kesimpta (ofatumumab)"),
                                           (ZUNOVO, "Ocrevus Zunovo"), (OCREVUS, "Ocrevus (ocrelizumab)")],
                         ids=b.case_id)
def test_liver_and_igg_cards_cite_the_ordered_products_label(ask, coding, label):
    labs = [*SCREENED, fb.lab(IGG, 500, "mg/dL", days_ago=30), fb.lab(ALT, 300, "U/L", days_ago=3, high=40),
            *NORMAL_LIVER[1:], BASELINE[-1]]
    cards = ask(orders=[b.order(b.concept(coding))], labs=labs)
    for rule in ("igg-low", "liver-enzymes-elevated"):
        assert cards[rule]["source"]["label"].startswith(label), cards[rule]["source"]
        if coding is not OCREVUS:
            assert "Ocrevus (ocrelizumab) US" not in cards[rule]["detail"]


# --- medication history from every resource EHRs use ------------------------------------------------------

def test_a_dose_given_elsewhere_recorded_as_a_medication_statement_counts(ask):
    statement = {"resourceType": "MedicationStatement", "id": "elsewhere-1", "status": "completed",
                 "medicationCodeableConcept": b.concept(OCREVUS), "subject": {"reference": f"Patient/{PATIENT_ID}"},
                 "effectivePeriod": {"start": fb.at(380), "end": fb.at(170)}}
    cards = ask(labs=BASELINE, statements=[statement])
    assert "a maintenance dose; last dose " + fb.at(170)[:10] in cards["premedication-missing"]["detail"]


@pytest.mark.parametrize("reference", ["Medication/ocr-1", "https://ehr.example.org/fhir/Medication/ocr-1",
                                       "urn:uuid:7d1c8f0e-8b1a-4d0e-9b8f-2a3c4d5e6f70"])
def test_a_dose_known_only_by_reference_is_a_dose(ask, reference):
    mid = reference.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
    medication = {"resourceType": "Medication", "id": mid, "code": b.concept(OCREVUS)}
    cards = ask(labs=BASELINE, doses=[by_reference(reference), medication])
    assert "a maintenance dose" in cards["premedication-missing"]["detail"]
    assert COULD_NOT_RUN not in cards


def test_a_reference_nobody_can_resolve_is_said_so(ask):
    cards = ask(labs=BASELINE, doses=[by_reference("Medication/not-sent")])
    assert "names its medicine only by a reference that could not be resolved" in cards[COULD_NOT_RUN]["detail"]
    assert "no FHIR server" in cards[COULD_NOT_RUN]["detail"]


def test_a_referenced_medication_is_fetched_from_the_fhir_server(book, services, fhir_server):
    """The administrations arrive prefetched without their Medication: it is read from fhirServer with the
    EHR's token, through the same fetcher (deadline, same base)."""
    fhir_server.seed("medication-reference", [{"resourceType": "Medication", "id": "ocr-fetch",
                                               "code": b.concept(OCREVUS)}])
    body = request(services, labs=BASELINE, doses=[by_reference("Medication/ocr-fetch")])
    response = fetching_client(book).post("/cds-services/cd20-order-sign",
                                          json=served_by(body, fhir_server.base("medication-reference"), fhir_server.token))
    cards = fb.cards_by_rule(response.get_json())
    assert "a maintenance dose" in cards["premedication-missing"]["detail"]
    assert COULD_NOT_RUN not in cards


def test_a_reference_to_another_server_is_not_fetched(book, services, scripted: Scripted):
    body = request(services, labs=BASELINE, doses=[by_reference("https://elsewhere.example.org/fhir/Medication/m1")])
    response = fetching_client(book).post("/cds-services/cd20-order-sign", json=served_by(body, scripted.base, "t0ken"))
    cards = fb.cards_by_rule(response.get_json())
    assert scripted.calls_for("Medication") == []
    assert "names another server" in cards[COULD_NOT_RUN]["detail"]


def test_medication_statements_are_a_declared_prefetch_key_and_their_gap_is_named(client, services):
    for hook in ("order-select", "order-sign", "patient-view"):
        assert services[hook]["prefetch"]["statements"].startswith("MedicationStatement?patient={{context.patientId}}")
    body = request(services, labs=BASELINE)
    del body["prefetch"]["statements"]
    cards = post(client, services, body)
    assert "dose history unavailable" in cards["premedication-missing"]["detail"]
    assert "the medication statements (doses recorded elsewhere) could not be retrieved" in cards[COULD_NOT_RUN]["summary"]


# --- label details seen in new cases -----------------------------------------------------------------------

def test_a_preliminary_result_never_replaces_a_final_one(ask):
    labs = [*SCREENED, fb.lab(IGG, 450, "mg/dL", days_ago=20), fb.lab(IGG, 720, "mg/dL", days_ago=2, status="preliminary"),
            *NORMAL_LIVER, BASELINE[-1]]
    assert "450 mg/dL" in ask(labs=labs, doses=maintenance())["igg-low"]["summary"]
    alone = [*SCREENED, fb.lab(IGG, 450, "mg/dL", days_ago=2, status="preliminary"), *NORMAL_LIVER, BASELINE[-1]]
    assert indicator(ask(labs=alone, doses=maintenance()), "igg-low") == "warning"  # none final: it stands in


def test_a_newer_preliminary_result_is_checked_beside_the_final_one(ask):
    """Today's preliminary ANC of 0.3 is not hidden by a normal final count from three weeks ago, and the
    card says the result is preliminary; a normal preliminary after a normal final gives no card."""
    labs = [*SCREENED, fb.lab(IGG, 950, "mg/dL", days_ago=60), *NORMAL_LIVER, fb.lab(ANC, 3.1, "10*9/L", days_ago=21),
            fb.lab(ANC, 0.3, "10*9/L", days_ago=0.1, status="preliminary")]
    card = ask(labs=labs, doses=maintenance())["neutropenia"]
    assert card["indicator"] == "critical"
    assert "ANC 0.3 ×10⁹/L (preliminary)" in card["summary"]
    labs[-1] = fb.lab(ANC, 2.9, "10*9/L", days_ago=0.1, status="preliminary")
    assert "neutropenia" not in ask(labs=labs, doses=maintenance())


def test_a_newer_preliminary_positive_hbsag_is_not_hidden_by_an_older_negative_one(ask):
    labs = [fb.serology(HBSAG, snomed=NEGATIVE, days_ago=200), fb.serology(ANTI_HBC, snomed=NEGATIVE, days_ago=200),
            fb.serology(HBSAG, snomed=POSITIVE, days_ago=1, status="preliminary")]
    card = ask(labs=labs, doses=maintenance())["hbv-active"]
    assert card["indicator"] == "critical"
    assert "| HBsAg | positive (preliminary) |" in card["detail"]


@pytest.mark.parametrize("first, second", [(OCREVUS, RITUXAN), (RITUXAN, OCREVUS)], ids=["ocrevus first", "rituximab first"])
def test_two_b_cell_depleting_therapies_signed_together(client, services, first, second):
    """One warning for the pair, whichever order comes first, not one on each product's cards."""
    body = request(services, orders=[b.order(b.concept(first)), b.order(b.concept(second), rid="order-2")],
                   labs=BASELINE)
    cards = [c for c in client.post("/cds-services/cd20-order-sign", json=body).get_json()["cards"]
             if c["source"]["topic"]["code"] == "duplicate-therapy"]
    assert [card["indicator"] for card in cards] == ["warning"]
    assert "Ocrevus" in text(cards[0]) and "rituximab" in text(cards[0])


def test_the_day_1_and_day_15_orders_of_one_product_are_not_duplicates(client, services):
    body = request(services, orders=[b.order(b.concept(OCREVUS)), b.order(b.concept(OCREVUS), rid="order-2")],
                   labs=BASELINE)
    cards = client.post("/cds-services/cd20-order-sign", json=body).get_json()["cards"]
    assert cards and "duplicate-therapy" not in {c["source"]["topic"]["code"] for c in cards}


def test_an_active_kesimpta_prescription_while_ocrevus_is_ordered(ask):
    cards = ask(labs=BASELINE, medications=[b.medicine(b.concept(KESIMPTA))])
    assert "Kesimpta is active on the record" in cards["duplicate-therapy"]["summary"]


@pytest.mark.parametrize("value, grade, rule_indicator", [(1.0, 2, "info"), (1.4, 2, "info"), (0.99, 3, "warning"),
                                                          (0.5, 3, "warning"), (0.42, 4, "critical")])
def test_neutropenia_is_worded_by_ctcae_grade(ask, value, grade, rule_indicator):
    cards = ask(labs=[*BASELINE[:-1], fb.lab(ANC, value, "10*9/L", days_ago=3)])
    card = cards["neutropenia"]
    assert card["indicator"] == rule_indicator
    assert f"CTCAE grade {grade}" in card["summary"]
    assert "mild" not in card["summary"].lower()


def test_an_indeterminate_hbsag_is_named_as_such(ask):
    labs = [fb.serology(HBSAG, snomed=INDETERMINATE, days_ago=20), *BASELINE[1:]]
    card = ask(labs=labs)["hbv-screening-missing"]
    assert card["summary"].startswith(f"HBsAg of {fb.at(20)[:10]} was indeterminate")
    assert "No HBsAg result" not in text(card)


@pytest.mark.parametrize("unit, shown", [("IU/L", "150 U/L (reported as 150 IU/L)"), ("U/L", "150 U/L on")])
def test_the_unit_as_reported_is_shown_next_to_the_canonical_one(ask, unit, shown):
    labs = [*BASELINE[:3], fb.lab(ALT, 150, unit, days_ago=3, ucum=False), *NORMAL_LIVER[1:], BASELINE[-1]]
    summary = ask(labs=labs, doses=maintenance())["liver-enzymes-elevated"]["summary"]
    assert shown in summary
    assert ("reported as" in summary) is (unit != "U/L")


def test_a_cell_count_in_k_per_ul_is_shown_as_reported_too(ask):
    cards = ask(labs=[*BASELINE[:-1], fb.lab(ANC, 0.8, "K/uL", days_ago=3)])
    assert "ANC 0.8 ×10⁹/L (reported as 0.8 K/uL)" in cards["neutropenia"]["summary"]


def test_ucum_spelled_system_reads_the_code(ask):
    alt = fb.lab(ALT, 150, "[IU]/L", days_ago=3)
    alt["valueQuantity"]["system"] = UCUM + "/"
    labs = [*BASELINE[:3], alt, *NORMAL_LIVER[1:], BASELINE[-1]]
    assert ask(labs=labs, doses=maintenance())["liver-enzymes-elevated"]["indicator"] == "warning"


def test_a_tiny_value_is_shown_as_a_plain_number(ask):
    labs = [*BASELINE[:-1], fb.lab(ANC, 0.00005, "10*9/L", days_ago=3)]
    card = ask(labs=labs)["neutropenia"]
    assert card["indicator"] == "critical"
    assert "ANC 0.00005 ×10⁹/L" in card["summary"] and "e-05" not in text(card)
