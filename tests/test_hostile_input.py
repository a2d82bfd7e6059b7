"""Hostile and broken input gets a clear 4xx or cards, never a 5xx, and never unbounded work.

Random JSON (hypothesis) goes into the hook endpoint as whole bodies, as the prefetch values and draft
orders of a real anti-CD20 request, and as one field of its real resources at a time; the malformed
FHIR of the official validator test suite and CDS Hooks requests written by other projects go in as they
are. Body size is checked on a real server, with and without Content-Length.
"""
from __future__ import annotations

import copy
import http.client
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cds_service.engine import rulebook
from cds_service.web.app import create_app
from cds_service.config import Settings
from cds_service.service import CdsService

from conftest import NOW, SHARED
from security_support import example_request, serve

SERVICES = ["cd20-order-sign", "cd20-order-select"]
SIGN = "/cds-services/cd20-order-sign"
INVALID = sorted((SHARED / "fhir-corpus" / "fhir" / "invalid").glob("*.json"))
CDS_REQUESTS = sorted((SHARED / "fhir-corpus" / "cds-requests").rglob("*.json"))
# Fixed seeds keep CI stable; the counts keep the file fast (each example is a whole hook call).
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)
PIPELINE = settings(PROPERTY, max_examples=80)

FHIR_KEYS = ["resourceType", "id", "status", "intent", "code", "coding", "system", "text", "display", "value",
             "unit", "valueQuantity", "valueCodeableConcept", "valueString", "referenceRange", "low", "high",
             "effectiveDateTime", "effectivePeriod", "start", "end", "issued", "subject", "reference",
             "entry", "resource", "fullUrl", "medicationCodeableConcept", "medicationReference", "contained",
             "clinicalStatus", "verificationStatus", "interpretation", "gender", "birthDate", "dosageInstruction",
             "route", "doseAndRate", "doseQuantity", "occurrenceDateTime", "vaccineCode", "category",
             "dataAbsentReason", "component", "onsetDateTime", "abatementDateTime", "recordedDate", "authoredOn"]
FHIR_WORDS = ["Observation", "Bundle", "Patient", "Condition", "MedicationRequest", "MedicationAdministration",
              "Medication", "AllergyIntolerance", "Immunization", "OperationOutcome", "final", "active", "draft",
              "order", "completed", "http://loinc.org", "http://unitsofmeasure.org", "1742-6", "751-8", "2465-3",
              "5196-1", "16933-4", "1975-2", "U/L", "10*9/L", "mg/dL", "g/L", "umol/L", "%", "1876385",
              "http://www.nlm.nih.gov/research/umls/rxnorm", "ocrelizumab", "2026-11-20", "2026-11-20T08:00:00Z",
              "1900-01-01", "9999-12-31T23:59:59Z", "2026-02-30", "Patient/example-clean-1", "#med", ""]
RESOURCE_TYPES = FHIR_WORDS[:10]

scalars = (st.none() | st.booleans() | st.integers(-10**20, 10**20)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12) | st.sampled_from(FHIR_WORDS))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(FHIR_KEYS) | st.text(max_size=8), inner, max_size=5),
                           max_leaves=25)
resources = st.builds(lambda kind, fields: {**fields, "resourceType": kind}, st.sampled_from(RESOURCE_TYPES),
                      st.dictionaries(st.sampled_from(FHIR_KEYS), json_values, max_size=8))
bundles = st.builds(lambda items, extra: {"resourceType": "Bundle", "type": "searchset",
                                          "entry": [{"resource": r} for r in items] + extra},
                    st.lists(resources, max_size=5), st.lists(json_values, max_size=2))
prefetch_values = json_values | resources | bundles


def _post(client, body: Any, service_id: str = "cd20-order-sign"):
    return client.post(f"/cds-services/{service_id}", data=json.dumps(body), content_type="application/json")


def _assert_handled(response) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    body = response.get_json()
    assert isinstance(body, dict)
    if response.status_code == 200:
        assert isinstance(body["cards"], list)


@PROPERTY
@given(body=json_values, service_id=st.sampled_from(SERVICES))
def test_any_json_body_is_answered_without_a_server_error(client, body, service_id):
    _assert_handled(_post(client, body, service_id))


@PROPERTY
@given(parts=st.dictionaries(st.sampled_from(["hook", "hookInstance", "context", "prefetch", "fhirServer",
                                               "fhirAuthorization"]), json_values),
       context=st.dictionaries(st.sampled_from(["userId", "patientId", "draftOrders", "selections"]), json_values))
def test_request_shaped_bodies_with_random_parts_are_answered(client, parts, context):
    body = {"hook": "order-sign", "hookInstance": "h-1", **parts}
    if "context" not in parts:
        body["context"] = context
    _assert_handled(_post(client, body))


@PIPELINE
@given(values=st.dictionaries(st.sampled_from(["patient", "labs", "conditions", "administrations", "medications",
                                                "allergies", "immunizations", "unknown"]), prefetch_values))
def test_random_prefetch_values_in_an_anti_cd20_request_are_answered(client, values):
    request = example_request()
    request["prefetch"].update(values)
    _assert_handled(_post(client, request))


@PIPELINE
@given(extra=st.lists(resources, max_size=4), order_fields=st.dictionaries(st.sampled_from(FHIR_KEYS), json_values,
                                                                             max_size=3))
def test_random_draft_orders_beside_an_anti_cd20_order_are_answered(client, extra, order_fields):
    request = example_request()
    entries = request["context"]["draftOrders"]["entry"]
    entries[0]["resource"].update({k: v for k, v in order_fields.items() if k != "resourceType"})
    entries += [{"resource": r} for r in extra]
    _assert_handled(_post(client, request))


def _resources_of(request: dict[str, Any]) -> list[dict[str, Any]]:
    found = [e["resource"] for e in request["context"]["draftOrders"]["entry"]]
    for value in request["prefetch"].values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            found += [e["resource"] for e in value.get("entry", [])]
        elif isinstance(value, dict):
            found.append(value)
    return found


@PIPELINE
@given(data=st.data())
def test_one_field_of_a_real_resource_replaced_by_random_json_is_answered(client, data):
    request = example_request("liver-injury--alt-and-bilirubin.json")
    resource = data.draw(st.sampled_from(_resources_of(request)))
    key = data.draw(st.sampled_from(sorted(resource)) | st.sampled_from(FHIR_KEYS))
    resource[key] = data.draw(json_values)
    _assert_handled(_post(client, request))


# --- malformed inputs written by others ----------------------------------------------------------------------

@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_malformed_fhir_as_a_body_is_a_4xx(client, path):
    response = client.post(SIGN, data=path.read_bytes(), content_type="application/json")
    assert 400 <= response.status_code < 500
    assert "error" in response.get_json()


def _parsable(paths: list[Path]) -> list[Path]:
    ok = []
    for path in paths:
        try:
            json.loads(path.read_bytes())
            ok.append(path)
        except ValueError:
            pass
    return ok


@pytest.mark.parametrize("path", _parsable(INVALID), ids=lambda p: p.name)
def test_malformed_fhir_as_every_prefetch_value_of_an_anti_cd20_request_gets_cards(client, path):
    resource = json.loads(path.read_bytes())
    base = example_request()
    for key in base["prefetch"]:
        request = copy.deepcopy(base)
        request["prefetch"][key] = resource
        response = _post(client, request)
        assert response.status_code == 200, (key, response.get_data(as_text=True)[:300])
        request["prefetch"][key] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": resource}]}
        assert _post(client, request).status_code == 200, key


def test_unparsable_fhir_files_in_the_corpus_are_refused_as_json(client):
    unparsable = sorted(set(INVALID) - set(_parsable(INVALID)))
    assert len(unparsable) >= 5
    for path in unparsable:
        response = client.post(SIGN, data=path.read_bytes(), content_type="application/json")
        assert response.status_code == 400
        assert "not valid JSON" in response.get_json()["error"]


@pytest.mark.parametrize("path", CDS_REQUESTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_cds_requests_from_other_projects_get_a_4xx_or_cards(client, path):
    body = path.read_bytes()
    for service_id in SERVICES + ["cd20-patient-view"]:
        response = client.post(f"/cds-services/{service_id}", data=body, content_type="application/json")
        _assert_handled(response)


# --- size and shape limits ------------------------------------------------------------------------------------

def test_deep_nesting_is_refused_before_parsing(client):
    for body in (b"[" * 200_000 + b"]" * 200_000, b'{"a":' * 100 + b"1" + b"}" * 100):
        response = client.post(SIGN, data=body, content_type="application/json")
        assert response.status_code == 400
        assert "nested more than" in response.get_json()["error"]


def test_brackets_inside_strings_do_not_count_as_nesting(client):
    request = example_request()
    request["context"]["draftOrders"]["entry"][0]["resource"]["note"] = [{"text": "[[[[{{{{" * 1000}]
    assert _post(client, request).status_code == 200


def _with_labs(count: int) -> dict[str, Any]:
    request = example_request()
    entry = request["prefetch"]["labs"]["entry"][0]
    request["prefetch"]["labs"]["entry"] = [{"resource": {**entry["resource"], "id": f"lab-{n}"}}
                                            for n in range(count)]
    return request


def test_requests_bringing_more_resources_than_the_limit_are_refused(book):
    client = create_app(CdsService(book, clock=lambda: NOW, max_resources=40), Settings(auth="off")).test_client()
    at_limit = 40 - len(_resources_of(_with_labs(0)))
    assert _post(client, _with_labs(at_limit)).status_code == 200
    response = _post(client, _with_labs(at_limit + 1))
    assert response.status_code == 400
    assert "at most 40" in response.get_json()["error"]


def test_the_resource_limit_comes_from_cds_max_resources(monkeypatch):
    monkeypatch.setattr(rulebook, "load", lambda *a, **k: _BOOK)
    client = create_app(None, Settings.from_env({"CDS_AUTH": "off", "CDS_MAX_RESOURCES": "12",
                                                 "CDS_NOW": "2026-11-21T12:00:00Z"})).test_client()
    response = _post(client, _with_labs(20))
    assert response.status_code == 400
    assert "at most 12" in response.get_json()["error"]


_BOOK = rulebook.load()


@pytest.fixture(scope="module")
def small_limit_server(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("hostile") / "server.log"
    with serve({"CDS_AUTH": "off", "CDS_MAX_BODY_BYTES": "100000"}, log_path) as base:
        yield base


def _send(base: str, body: bytes, chunked: bool) -> tuple[int, dict[str, Any]]:
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        if chunked:
            connection.putrequest("POST", SIGN)
            connection.putheader("Content-Type", "application/json")
            connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders()
            for start in range(0, len(body), 8192):
                part = body[start:start + 8192]
                connection.send(b"%x\r\n%s\r\n" % (len(part), part))
            connection.send(b"0\r\n\r\n")
        else:
            connection.request("POST", SIGN, body=body, headers={"Content-Type": "application/json"})
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the whole body was sent: read what it said
    response = connection.getresponse()
    answer = (response.status, json.loads(response.read()))
    connection.close()
    return answer


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size", [100_001, 150_000, 3_000_000])
def test_a_body_over_the_size_limit_is_a_413_on_a_real_server(small_limit_server, chunked, size):
    body = b'{"hook": "order-sign", "x": "' + b"a" * (size - 31) + b'"}'
    assert len(body) == size
    status, answer = _send(small_limit_server, body, chunked)
    assert status == 413
    assert answer["status"] == 413


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_under_the_size_limit_is_read_whole_on_a_real_server(small_limit_server, chunked):
    status, answer = _send(small_limit_server, json.dumps(example_request()).encode(), chunked)
    assert status == 200
    assert isinstance(answer["cards"], list)
