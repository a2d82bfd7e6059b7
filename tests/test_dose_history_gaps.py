"""A dose history with a hole in it is never read as "no earlier doses", through HTTP.

A dose record the service cannot place (no date, a date it cannot read, a medicine it cannot identify) or
a medication list it could not have may hide a dose given: the order is then not taken for a known first
dose, and a data-unavailable card names the record. Records are built as in test_record_as_it_comes.py;
the clock is frozen at conftest.NOW.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

import cd20_builders as b
import fhir_builders as fb
from cd20_builders import OCREVUS
from test_fetch import Scripted
from test_record_as_it_comes import (BASELINE, COULD_NOT_RUN, by_reference, fetching_client, post, request, scripted,
                                     served_by, services, text)  # noqa: F401 (fixtures)

UNKNOWN_HISTORY = "a first dose (dose history unavailable, so treated as a first dose)"


def undated(**dates: Any) -> dict[str, Any]:
    """An Ocrevus infusion whose date fields are `dates` (none when empty) instead of its effectiveDateTime."""
    dose = b.given(170, b.concept(OCREVUS))
    del dose["effectiveDateTime"]
    return {**dose, **dates}


@pytest.mark.parametrize("dose, said", [
    (undated(), "has no date"),
    (undated(effectiveDateTime="last spring"), 'has a date that cannot be read ("last spring")'),
    (undated(effectivePeriod={"start": "2026-13-45"}), 'has a date that cannot be read ("2026-13-45")'),
], ids=["no date", "unreadable date", "unreadable period"])
def test_a_dose_record_without_a_readable_date_makes_the_history_unknown(client, services, dose, said):
    cards = post(client, services, request(services, labs=BASELINE, doses=[dose],
                                           orders=[b.order(b.concept(OCREVUS), dose=(600, "mg"))]))
    gap = cards[COULD_NOT_RUN]
    assert gap["summary"] == "A safety check for Ocrevus could not run: a dose record of Ocrevus has no readable date."
    assert f"- a dose record of Ocrevus {said}, so it cannot be placed in the dose history" in gap["detail"]
    assert UNKNOWN_HISTORY in cards["premedication-missing"]["detail"]
    assert "after no earlier dose on record (the dose history is incomplete)" in cards["dose-unexpected"]["detail"]


def test_an_undated_statement_next_to_dated_doses_still_leaves_them_counted(client, services):
    statement = {"resourceType": "MedicationStatement", "id": "undated-1", "status": "completed",
                 "medicationCodeableConcept": b.concept(OCREVUS), "subject": {"reference": f"Patient/{fb.PATIENT_ID}"}}
    cards = post(client, services, request(services, labs=BASELINE, statements=[statement],
                                           doses=[b.given(182, b.concept(OCREVUS))]))
    assert f"a maintenance dose; last dose {fb.at(182)[:10]}" in cards["premedication-missing"]["detail"]
    assert "a dose record of Ocrevus has no readable date" in cards[COULD_NOT_RUN]["summary"]


def test_an_undated_dose_is_checked_for_with_a_live_vaccine_order(client, services):
    """The only sign of therapy is a dose record with no date: the live vaccine is not passed silently."""
    mmr = b.order(b.concept({"system": b.CVX, "code": "03", "display": "MMR"}), rid="mmr-1")
    cards = post(client, services, request(services, labs=BASELINE, doses=[undated()], orders=[mmr]))
    assert "dose history could not be read in full" in cards["live-vaccine-on-treatment"]["summary"]


def test_the_medication_orders_gap_makes_the_history_unknown(client, services):
    """Completed orders count as past doses: without them the history is incomplete too."""
    body = request(services, labs=BASELINE)
    del body["prefetch"]["medications"]
    cards = post(client, services, body)
    assert UNKNOWN_HISTORY in cards["premedication-missing"]["detail"]
    assert "the medication list could not be retrieved" in cards[COULD_NOT_RUN]["summary"]


def test_a_dose_whose_medicine_could_not_be_had_makes_the_history_unknown(client, services):
    cards = post(client, services, request(services, labs=BASELINE, doses=[by_reference("Medication/not-sent")]))
    assert UNKNOWN_HISTORY in cards["premedication-missing"]["detail"]
    assert "names its medicine only by a reference that could not be resolved" in text(cards[COULD_NOT_RUN])


@pytest.mark.parametrize("reference, why", [("#not-contained", "the reference names no Medication"),
                                            ("%4Dedication/m1", "the reference names no Medication"),
                                            ("Medication/", "the reference names no Medication"),
                                            ("Medication/uncoded", "the Medication it names has no code")])
def test_a_dose_naming_its_medicine_by_a_reference_that_leads_nowhere_makes_the_history_unknown(
        client, services, reference, why):
    body = request(services, labs=BASELINE, doses=[by_reference(reference)])
    body["prefetch"]["medications"] = fb.bundle([{"resourceType": "Medication", "id": "uncoded", "status": "active"}])
    cards = post(client, services, body)
    assert UNKNOWN_HISTORY in cards["premedication-missing"]["detail"]
    assert f"names its medicine only by a reference that could not be resolved ({why}" in text(cards[COULD_NOT_RUN])


@pytest.mark.parametrize("doses, said", [([], "no earlier dose"), ([182], "1 earlier dose"),
                                         ([168, 182], "2 earlier doses")])
def test_the_dose_card_counts_earlier_doses_in_words(client, services, doses, said):
    cards = post(client, services, request(services, labs=BASELINE, doses=[b.given(d, b.concept(OCREVUS)) for d in doses],
                                           orders=[b.order(b.concept(OCREVUS), dose=(450, "mg"))]))
    assert f"the dose expected after {said} is" in cards["dose-unexpected"]["detail"]


# --- a Medication named by an absolute reference is fetched only from fhirServer itself ------------------

def signed_with(reference: str, book, services, scripted: Scripted) -> dict[str, dict[str, Any]]:
    """The cards for a past dose naming its drug by `reference` ("{port}": the scripted server's), with
    fhirServer the scripted server, whose Medication search finds Ocrevus as "m1"."""
    scripted.answer("Medication", (200, fb.bundle([{"resourceType": "Medication", "id": "m1",
                                                     "code": b.concept(OCREVUS)}]), {}))
    body = request(services, labs=BASELINE, doses=[by_reference(reference.format(port=scripted.port))])
    response = fetching_client(book).post("/cds-services/cd20-order-sign", json=served_by(body, scripted.base, "t0ken"))
    return fb.cards_by_rule(response.get_json())


@pytest.mark.parametrize("spelling", ["HTTP://127.0.0.1:{port}/fhir/Medication/m1",
                                      "http://127.0.0.1:{port}/fhir/./Medication/m1/_history/2",
                                      "http://127.0.0.1:{port}/%66hir/Medication/m1"])
def test_an_absolute_reference_to_fhir_server_in_another_spelling_is_fetched(book, services, scripted, spelling):
    cards = signed_with(spelling, book, services, scripted)
    assert [urlsplit(c.path).query for c in scripted.calls_for("Medication")] == ["_id=m1"]
    assert "a maintenance dose" in cards["premedication-missing"]["detail"]
    assert COULD_NOT_RUN not in cards


@pytest.mark.parametrize("spelling", ["http://127.0.0.1:{port}/fhir/../elsewhere/Medication/m1",
                                      "http://127.0.0.1:{port}/fhir/%2e%2e/elsewhere/Medication/m1",
                                      "http://127.0.0.1:{port}/fhir/Group/g1/Medication/m1",
                                      "http://127.0.0.1:{port}/fhirx/Medication/m1"])
def test_a_reference_that_only_looks_like_fhir_server_is_not_fetched(book, services, scripted, spelling):
    cards = signed_with(spelling, book, services, scripted)
    assert scripted.calls_for("Medication") == []
    assert "names another server" in cards[COULD_NOT_RUN]["detail"]
    assert UNKNOWN_HISTORY in cards["premedication-missing"]["detail"]


@pytest.mark.parametrize("dates, said", [({}, "has no date"),
                                         ({"effectiveDateTime": "spring 2024"}, 'has a date that cannot be read ("spring 2024")')],
                         ids=["no date", "unreadable date"])
def test_a_cladribine_record_without_a_readable_date_is_named_not_passed_over(client, services, dates, said):
    """Past immune-depleting therapy raises a warning within its look-back; a record that cannot be placed
    in time is a data problem on the card, never taken for no such therapy."""
    cladribine = b.given(200, b.named("Mavenclad (cladribine) 10 mg tablet"))
    del cladribine["effectiveDateTime"]
    cards = post(client, services, request(services, labs=BASELINE, doses=[{**cladribine, **dates}]))
    assert "prior-immune-depletion" not in cards
    assert f"- a record of cladribine (Mavenclad) {said}, so it cannot be told whether it was given recently enough" \
        in cards[COULD_NOT_RUN]["detail"]
