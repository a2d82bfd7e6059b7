"""The data-unavailable card and record text in card lists, through HTTP: each data problem counted and
listed once, a record's thousands of bad entries bounded like every other fact, and record text in
bullets and "Also:" lines escaped exactly once for Markdown (as in the detail's other lines).
"""
from __future__ import annotations

import copy

import cd20_builders as b
import fhir_builders as fb
from cd20_builders import OCREVUS
from fhir_builders import ALT, IGG
from test_record_as_it_comes import BASELINE, COULD_NOT_RUN, post, request, services  # noqa: F401 (fixture)

FOREIGN = copy.deepcopy(BASELINE[0]) | {"subject": {"reference": "Patient/someone-else"}}


def test_each_data_problem_is_counted_and_listed_once(client, services):
    labs = [*BASELINE, fb.lab(IGG, 950, "furlongs", days_ago=20), fb.lab(ALT, 20, "furlongs", days_ago=5), FOREIGN]
    card = post(client, services, request(services, labs=labs))[COULD_NOT_RUN]
    assert card["summary"].startswith("3 data problems keep safety checks for Ocrevus from running")
    detail = card["detail"]
    assert detail.count(f"the IgG result of {fb.at(20)[:10]}") == 1  # read by igg-low and igg-missing alike
    assert detail.count(f"the ALT result of {fb.at(5)[:10]}") == 1
    assert detail.count("data for another patient was received and ignored") == 1
    assert "A safety check for" not in detail


def test_thousands_of_bad_dose_records_make_a_bounded_card(client, services):
    future = []
    for n in range(1000):
        dose = b.given(170, b.concept(OCREVUS))
        dose["effectiveDateTime"] = f"{2100 + n}-01-01"
        future.append(dose)
    detail = post(client, services, request(services, labs=BASELINE, doses=future))[COULD_NOT_RUN]["detail"]
    assert detail.count("- the Ocrevus dose record of ") == 20


def test_record_text_in_bullets_is_escaped_once(client, services):
    problems = [b.problem("84114007", text="- two"), b.problem("85898001", text="# one <img src=x>")]
    detail = post(client, services, request(services, labs=BASELINE, conditions=problems))["cardiac-history"]["detail"]
    assert "- &#45; two on the problem list" in detail
    assert "- &#35; one &#60;img src=x&#62; on the problem list" in detail
    assert "&#92;" not in detail  # no backslash the record does not hold


def test_record_text_in_an_also_line_is_escaped_once(client, services):
    mmr = b.vaccine("03", 10, display="MMR <b>x</b>")
    flu = b.vaccine("141", 5, display="- flu")
    detail = post(client, services, request(services, labs=BASELINE, immunizations=[mmr, flu]))["live-vaccine-recent"]["detail"]
    assert "**Also:** Vaccine (&#45; flu) given" in detail
    assert "&#92;" not in detail and "&#60; b" not in detail
