"""patient-view (cd20-patient-view): monitoring reminders for a patient on anti-CD20 therapy, through HTTP.

The next dose is due the product's usual interval after the last one (products.yaml interval_days:
Ocrevus, Zunovo and rituximab 182 days, Briumvi 168); the reminder is info from 30 days before the due
date through the due date itself, a warning once it has passed, and none once the dose is more than 182
days overdue (the therapy is presumed stopped). Kesimpta is self-injected, so its doses are not on record
and it gets no next-dose reminder. A patient whose last dose is more than 548 days (18 months) old is no
longer taken to be on therapy: no reminders at all.
"""
from __future__ import annotations

from datetime import timedelta

import pytest

import cd20_builders as b
import fhir_builders as fb
from cd20_builders import BRIUMVI, KESIMPTA, OCREVUS, RITUXAN, ZUNOVO, indicator
from conftest import NOW
from fhir_builders import ANTI_HBC, HBSAG, IGG

NEGATIVE, POSITIVE = "260385009", "10828004"
HBV_DNA_IU = "42595-9"
INTERVALS = [(OCREVUS, 182), (ZUNOVO, 182), (BRIUMVI, 168), (RITUXAN, 182)]


@pytest.fixture(scope="module")
def view(client):
    """The cards patient-view gives for a patient's record, by rule id."""
    ask = b.caller(client)
    return lambda **record: ask(hook="patient-view", **record)


def on_therapy(coding: dict, last: int, interval: int) -> list[dict]:
    """Past doses well into maintenance, the latest `last` days ago."""
    return [b.given(d, b.concept(coding)) for d in maintenance_days(last, interval)]


def maintenance_days(last: int, interval: int) -> list[int]:
    return [last, last + interval, last + interval + 7, last + interval + 14]


def due_date(last: int, interval: int) -> str:
    return (NOW - timedelta(days=last) + timedelta(days=interval)).date().isoformat()


# --- next-dose-due -------------------------------------------------------------------------------------

@pytest.mark.parametrize("coding, interval", INTERVALS, ids=b.case_id)
@pytest.mark.parametrize("days_to_due, expected", [(31, None), (30, "info"), (10, "info"), (0, "info"),
                                                   (-1, "warning"), (-182, "warning"), (-183, None)])
def test_next_dose_is_due_the_products_interval_after_the_last(view, coding, interval, days_to_due, expected):
    last = interval - days_to_due
    cards = view(doses=on_therapy(coding, last, interval))
    assert indicator(cards, "next-dose-due") == expected
    if expected:
        assert due_date(last, interval) in cards["next-dose-due"]["summary"]
    if expected == "warning":
        assert "overdue" in cards["next-dose-due"]["summary"]


@pytest.mark.parametrize("coding", [OCREVUS, BRIUMVI], ids=b.case_id)
def test_a_missed_second_starter_dose_is_overdue(view, coding):
    cards = view(doses=[b.given(20, b.concept(coding))])
    assert indicator(cards, "next-dose-due") == "warning"


def test_the_first_maintenance_dose_is_due_six_months_after_the_first_starter_dose(view):
    cards = view(doses=[b.given(176, b.concept(OCREVUS)), b.given(190, b.concept(OCREVUS))])
    assert indicator(cards, "next-dose-due") == "warning"
    assert due_date(190, 182) in cards["next-dose-due"]["summary"]


@pytest.mark.parametrize("last", [1, 20, 29])
def test_self_injected_kesimpta_gets_no_next_dose_reminder(view, last):
    assert "next-dose-due" not in view(doses=on_therapy(KESIMPTA, last, 28))


def test_doses_recorded_only_as_completed_orders_count(view):
    orders = [b.medicine(b.concept(OCREVUS), status="completed", days_ago=d) for d in maintenance_days(170, 182)]
    assert indicator(view(medications=orders), "next-dose-due") == "info"


# --- igg-monitoring-due and hbv-dna-monitoring ----------------------------------------------------------

@pytest.mark.parametrize("coding", [OCREVUS, KESIMPTA], ids=b.case_id)
@pytest.mark.parametrize("igg_days, expected", [(365, None), (366, "info"), (None, "info")])
def test_igg_is_due_yearly_during_therapy(view, coding, igg_days, expected):
    labs = [] if igg_days is None else [fb.lab(IGG, 900, "mg/dL", days_ago=igg_days)]
    cards = view(doses=on_therapy(coding, 100, 182), labs=labs)
    assert indicator(cards, "igg-monitoring-due") == expected
    if expected:
        ordered = cards["igg-monitoring-due"]["suggestions"][0]["actions"][0]["resource"]
        assert ordered["code"]["coding"][0]["code"] == IGG


@pytest.mark.parametrize("more_labs, medications, expected", [
    ([], [], "warning"),
    ([fb.lab(HBV_DNA_IU, 0, "[IU]/mL", days_ago=90)], [], None),
    ([fb.lab(HBV_DNA_IU, 0, "[IU]/mL", days_ago=91)], [], "warning"),
    ([], [b.medicine(b.named("tenofovir disoproxil fumarate 300 mg"))], None),
    ([], [b.medicine(b.named("entecavir 0.5 mg"), status="stopped")], "warning"),
])
def test_hbv_dna_is_due_for_anti_hbc_positive_patients_without_prophylaxis(view, more_labs, medications, expected):
    labs = [fb.serology(HBSAG, snomed=NEGATIVE), fb.serology(ANTI_HBC, snomed=POSITIVE), *more_labs]
    cards = view(doses=on_therapy(OCREVUS, 100, 182), labs=labs, medications=medications)
    assert indicator(cards, "hbv-dna-monitoring") == expected


def test_anti_hbc_negative_patients_need_no_hbv_dna(view):
    labs = [fb.serology(HBSAG, snomed=NEGATIVE), fb.serology(ANTI_HBC, snomed=NEGATIVE)]
    assert "hbv-dna-monitoring" not in view(doses=on_therapy(OCREVUS, 100, 182), labs=labs)


def test_a_patient_with_a_dose_history_gets_every_reminder_due(view):
    labs = [fb.serology(HBSAG, snomed=NEGATIVE), fb.serology(ANTI_HBC, snomed=POSITIVE)]
    cards = view(doses=on_therapy(OCREVUS, 170, 182), labs=labs)
    assert indicator(cards, "next-dose-due") == "info"
    assert indicator(cards, "igg-monitoring-due") == "info"
    assert indicator(cards, "hbv-dna-monitoring") == "warning"
    assert "Therapy on record: Ocrevus (ocrelizumab) IV" in cards["next-dose-due"]["detail"]


def test_order_time_checks_do_not_run_when_the_chart_opens(view):
    cards = view(doses=on_therapy(OCREVUS, 100, 182))
    for rule in ("hbv-screening-missing", "liver-tests-missing", "premedication-missing", "neutrophils-missing",
                 "dose-interval-short"):
        assert rule not in cards


# --- patients not on anti-CD20 therapy ------------------------------------------------------------------

@pytest.mark.parametrize("last, on_therapy_still", [(548, True), (549, False)])
def test_reminders_stop_18_months_after_the_last_dose(view, last, on_therapy_still):
    cards = view(doses=on_therapy(OCREVUS, last, 182))
    assert ("igg-monitoring-due" in cards) is on_therapy_still


@pytest.mark.parametrize("doses", [
    [],
    [b.given(100, b.named("Tysabri (natalizumab) 300 mg"))],
    [b.given(100, b.concept(OCREVUS), status="entered-in-error")],
    [b.given(100, b.concept(OCREVUS), status="not-done")],
])
def test_a_patient_with_no_anti_cd20_history_gets_no_cards(client, doses):
    """Anti-HBc positive and no IgG on record: reminders a patient on therapy would get, but this one is not."""
    labs = [fb.serology(HBSAG, snomed=NEGATIVE), fb.serology(ANTI_HBC, snomed=POSITIVE)]
    service = next(s for s in client.get("/cds-services").get_json()["services"] if s["hook"] == "patient-view")
    body = b.request(hook="patient-view", keys=service["prefetch"], doses=doses, labs=labs)
    response = client.post(f"/cds-services/{service['id']}", json=body)
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}
