"""A dose history with a hole in it is never read as "no earlier doses", through HTTP.

A dose record the service cannot place (no date, a date it cannot read, a medicine it cannot identify) or
a medication list it could not have may hide a dose given: the order is then not taken for a known first
dose, and a data-unavailable card names the record. Records are built as in test_record_as_it_comes.py;
the clock is frozen at conftest.NOW.
"""
from __future__ import annotations

from typing import Any

import pytest

import cd20_builders as b
import fhir_builders as fb
from cd20_builders import OCREVUS
from test_record_as_it_comes import BASELINE, COULD_NOT_RUN, by_reference, post, request, services, text  # noqa: F401 (fixture)

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


@pytest.mark.parametrize("doses, said", [([], "no earlier dose"), ([182], "1 earlier dose"),
                                         ([168, 182], "2 earlier doses")])
def test_the_dose_card_counts_earlier_doses_in_words(client, services, doses, said):
    cards = post(client, services, request(services, labs=BASELINE, doses=[b.given(d, b.concept(OCREVUS)) for d in doses],
                                           orders=[b.order(b.concept(OCREVUS), dose=(450, "mg"))]))
    assert f"the dose expected after {said} is" in cards["dose-unexpected"]["detail"]
