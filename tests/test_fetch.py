"""Fetching what the EHR did not prefetch, from its FHIR server: through HTTP against the app, with a real
FHIR server (Medplum, devtools/fhir_server.py) and tiny loopback servers for what a real one will not do on
demand (hang, reset, redirect, point `next` elsewhere)."""
from __future__ import annotations

import copy
import json
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from cds_service.web.app import create_app
from cds_service.config import Settings
from cds_service.record.fhir_client import FetchSettings, FhirFetcher
from cds_service.record.identity import belongs_to
from cds_service.service import CdsService
from conftest import NOW
from fhir_builders import ALT, HBSAG, bundle, cards_by_rule, hook_request, lab, patient, serology
from devtools.fhir_server import (SYNTHEA, SYNTHEA_BUNDLES, example_requests, prefetched_resources,
                               synthea_resources, tenant_name)

TOKEN_FIELD = "fhirAuthorization"
SCREENING_MISSING = "hbv-screening-missing"  # "no HBV result": must not be claimed when the labs were not read


def app_with(book, **settings: Any):
    """A test client over a service that fetches with these FetchSettings (generous deadline by default:
    the in-memory FHIR server scans every resource, and CI machines are slow)."""
    fetch = FetchSettings(**{"deadline_seconds": 20.0, "read_timeout_seconds": 20.0, **settings})
    service = CdsService(book, fetcher=FhirFetcher(fetch), clock=lambda: NOW)
    return create_app(service, Settings(auth="off")).test_client()


@pytest.fixture(scope="module")
def client(book):
    return app_with(book)


def fetching(body: dict[str, Any], server: str, token: str | None = "t0ken-abc") -> dict[str, Any]:
    """The same hook request with no prefetch at all, and the FHIR server to fetch from."""
    body = {k: v for k, v in copy.deepcopy(body).items() if k not in ("prefetch", TOKEN_FIELD)}
    body["fhirServer"] = server
    if token:
        body[TOKEN_FIELD] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                             "scope": "patient/*.read", "subject": "cd20-cds"}
    return body


def post(client, body: dict[str, Any]):
    return client.post(f"/cds-services/cd20-{body['hook']}", json=body)


def cards(client, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    response = post(client, body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return cards_by_rule(response.get_json())


def gap_text(found: dict[str, dict[str, Any]]) -> str:
    assert "data-unavailable" in found, f"no data-unavailable card; got {sorted(found)}"
    card = found["data-unavailable"]
    return card["summary"] + "\n" + card["detail"]


# --- a real FHIR server -----------------------------------------------------------------------------------

EXAMPLES = dict(example_requests())


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_patient_gets_the_same_cards_fetched_as_prefetched(name, client, fhir_server, book):
    """Every example patient: no prefetch at all + fhirServer gives exactly the cards full prefetch gives.

    The server requires the token on every call (REQUIRE_TOKEN), so a call without it would be a 412.
    """
    body = EXAMPLES[name]
    if not set(templates(client, body["hook"])) <= set(body["prefetch"]):
        pytest.skip("this example leaves prefetch keys out on purpose (it is about missing data)")
    if not all(belongs_to(r, body["context"]["patientId"]) for r in prefetched_resources(body)):
        pytest.skip("this example's prefetch holds another patient's data, which a FHIR server search never returns")
    tenant = tenant_name(name)
    fhir_server.seed(tenant, prefetched_resources(body))
    expected = post(client, body)
    assert expected.status_code == 200, expected.get_data(as_text=True)
    fetched = post(client, fetching(body, fhir_server.base(tenant), fhir_server.token))
    assert fetched.status_code == 200, fetched.get_data(as_text=True)
    assert fetched.get_json() == expected.get_json()


def templates(client, hook: str) -> dict[str, str]:
    services = client.get("/cds-services").get_json()["services"]
    return next(s["prefetch"] for s in services if s["hook"] == hook)


@pytest.fixture(scope="module")
def synthea(client, fhir_server) -> dict[str, tuple[list[dict[str, Any]], dict[str, Any]]]:
    """Two Synthea records in one repository (tenant "synthea"), by patient id: the record, and what an
    EHR would prefetch for it (each template's answer from the server)."""
    records = {}
    for name in SYNTHEA_BUNDLES:
        resources = synthea_resources(SYNTHEA / name)
        fhir_server.seed("synthea", resources)
        records[next(r["id"] for r in resources if r["resourceType"] == "Patient")] = resources
    return {pid: (record, {key: search(fhir_server, "synthea", query.replace("{{context.patientId}}", pid))
                           for key, query in templates(client, "order-sign").items()})
            for pid, record in records.items()}


def search(server, tenant: str, query: str) -> dict[str, Any]:
    return requests.get(f"{server.base(tenant)}/{query}", headers=server.headers(), timeout=60).json()


def test_synthea_patients_get_the_same_cards_fetched_as_prefetched(client, fhir_server, synthea):
    """Each patient's fetch finds the data an EHR would have prefetched with the same queries."""
    for pid, (_, prefetched) in synthea.items():
        body = hook_request()
        body["context"]["patientId"] = pid
        body["prefetch"] = prefetched
        expected = post(client, body)
        assert expected.status_code == 200
        fetched = post(client, fetching(body, fhir_server.base("synthea"), fhir_server.token))
        assert fetched.get_json() == expected.get_json()


@pytest.mark.parametrize("key", ["patient", "labs", "conditions", "administrations", "statements", "medications",
                                 "allergies", "immunizations"])
def test_prefetch_template_finds_exactly_the_records_it_asks_for(key, client, synthea):
    """Against Medplum's search (system|code lists, status lists, _sort, _count, _include), each template
    returns the patient's resources with the codes asked for, newest first: no more (not the other
    patient's), no less; and, where it asks for them, the Medications those resources name by reference."""
    query = templates(client, "order-sign")[key]
    kind = query.split("?")[0].split("/")[0]
    for pid, (record, prefetched) in synthea.items():
        found = prefetched[key]
        if "?" not in query:
            assert (found["resourceType"], found["id"]) == (kind, pid)
            continue
        got = [e["resource"] for e in found.get("entry", []) if e["resource"]["resourceType"] == kind]
        wanted = {r["id"] for r in record if r["resourceType"] == kind and _matches(r, query)}
        assert {r["id"] for r in got} == wanted
        included = {e["resource"]["id"] for e in found.get("entry", []) if e["resource"]["resourceType"] == "Medication"}
        named = {r["medicationReference"]["reference"].split("/")[-1] for r in got if "medicationReference" in r}
        assert included == (named if "_include" in query else set())
        dates = [r.get("effectiveDateTime") or r.get("occurrenceDateTime") for r in got]
        if "_sort=-" in query and all(dates):
            moments = [datetime.fromisoformat(d.replace("Z", "+00:00")) for d in dates]
            assert moments == sorted(moments, reverse=True)


def _matches(resource: dict[str, Any], query: str) -> bool:
    """The template's code and status filters, applied by hand to one resource."""
    params = dict(p.split("=", 1) for p in query.split("?", 1)[1].split("&"))
    if "status" in params and resource.get("status") not in params["status"].split(","):
        return False
    if "code" not in params:
        return True
    concept = resource.get("code") or resource.get("medicationCodeableConcept") or {}
    codes = params["code"].split(",")
    return any(c.get("code") in codes or f"{c.get('system')}|{c.get('code')}" in codes for c in concept.get("coding", []))


def test_paging_follows_next_links_across_several_pages(client, fhir_server):
    """A record spread over three pages: the HBsAg on the last (oldest) page is found."""
    labs = [lab(ALT, 20, "U/L", days_ago=d) for d in range(1, 26)] + [serology(HBSAG, days_ago=400, text="positive")]
    fhir_server.seed("paging", [patient("female"), *labs])
    fhir_server.configure("paging", max_count=10)
    found = cards(client, fetching(hook_request(), fhir_server.base("paging"), fhir_server.token))
    assert found["hbv-active"]["indicator"] == "critical"
    assert "data-unavailable" not in found


def test_paging_stops_at_the_cap_and_says_the_record_is_incomplete(book, fhir_server):
    """Beyond the page cap, what arrived is used and the rest is a named gap, not silence."""
    labs = [lab(ALT, 200, "U/L", days_ago=d / 10) for d in range(1, 26)] + [serology(HBSAG, days_ago=400, text="positive")]
    fhir_server.seed("paging-cap", [patient("female"), *labs])
    fhir_server.configure("paging-cap", max_count=10)
    found = cards(app_with(book, max_pages=2), fetching(hook_request(), fhir_server.base("paging-cap"),
                                                        fhir_server.token))
    assert "more than 2 pages" in gap_text(found)
    assert "liver-enzymes-elevated" in found  # from the pages that did arrive
    assert SCREENING_MISSING not in found  # the HBV results may be on the pages not read


def test_a_refused_token_is_412_with_an_operation_outcome(client, fhir_server):
    fhir_server.seed("refused", [patient("female")])
    response = post(client, fetching(hook_request(), fhir_server.base("refused"), "not-the-token"))
    assert response.status_code == 412
    assert response.get_json()["resourceType"] == "OperationOutcome"
    assert "401" in response.get_json()["issue"][0]["diagnostics"]


def test_unauthenticated_fetch_when_allowed(book, fhir_server):
    body = hook_request(labs=[serology(HBSAG, text="positive")])
    fhir_server.seed("open-unauthenticated", prefetched_resources(body))
    request = fetching(body, fhir_server.base("open-unauthenticated"), token=None)
    found = cards(app_with(book, allow_unauthenticated=True), request)
    assert found["hbv-active"]["indicator"] == "critical"


def test_create_app_fetches_with_settings_from_the_environment(monkeypatch, fhir_server):
    monkeypatch.setenv("CDS_FETCH_DEADLINE_SECONDS", "20")
    monkeypatch.setenv("CDS_FETCH_READ_TIMEOUT_SECONDS", "20")
    body = hook_request(labs=[serology(HBSAG, text="positive")])
    fhir_server.seed("create-app", prefetched_resources(body))
    client = create_app(settings=Settings(auth="off", frozen_now=NOW)).test_client()
    found = cards(client, fetching(body, fhir_server.base("create-app"), fhir_server.token))
    assert found["hbv-active"]["indicator"] == "critical"


# --- servers that misbehave on purpose -------------------------------------------------------------------

RESET = "reset"


@dataclass
class Call:
    path: str
    authorization: str | None
    cookie: str | None


class Scripted:
    """A tiny FHIR-ish server on 127.0.0.1: answers per resource type from a script, records every call.

    An answer is (status, body, headers), or RESET to drop the connection without answering. Each type's
    answers are used in turn, the last one repeating; unscripted types get an empty search result.
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.script: dict[str, list[Any]] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.calls.append(Call(self.path, self.headers.get("Authorization"), self.headers.get("Cookie")))
                answer = owner.next_answer(self.path)
                if answer == RESET:
                    self.close_connection = True
                    return
                status, payload, headers = answer
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/fhir+json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def answer(self, resource_type: str, *answers: Any) -> None:
        self.script[resource_type] = list(answers)

    def next_answer(self, path: str) -> Any:
        kind = urlsplit(path).path.removeprefix("/fhir/").split("/")[0]
        queue = self.script.get(kind)
        if queue:
            return queue.pop(0) if len(queue) > 1 else queue[0]
        if kind == "Patient":
            return 200, patient("female"), {}
        return 200, bundle([]), {}

    def calls_for(self, resource_type: str) -> list[Call]:
        return [c for c in self.calls if urlsplit(c.path).path.startswith(f"/fhir/{resource_type}")]


def _running() -> Iterator[Scripted]:
    server = Scripted()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    yield from _running()


@pytest.fixture
def elsewhere() -> Iterator[Scripted]:
    """A second server: one the token must never reach."""
    yield from _running()


@pytest.fixture
def silent() -> Iterator[str]:
    """A port that accepts connections and never answers; yields its fhirServer URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/fhir"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


@pytest.fixture
def down() -> str:
    """The fhirServer URL of a port nothing listens on."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return f"http://127.0.0.1:{port}/fhir"


def test_a_server_that_never_answers_is_cut_off_at_the_deadline(book, silent):
    client = app_with(book, deadline_seconds=0.5, read_timeout_seconds=5)
    started = time.monotonic()
    found = cards(client, fetching(hook_request(), silent))
    elapsed = time.monotonic() - started
    assert elapsed < 3, f"the fetch phase took {elapsed:.1f} s with a 0.5 s deadline"
    assert "did not answer within 0.5 s" in gap_text(found)
    assert SCREENING_MISSING not in found  # not checked is not "missing", and never "fine"


def test_a_server_that_is_down_gives_a_card_naming_what_was_not_checked(client, down):
    """One line per unchecked part of the record (the patient resource only picks default limits)."""
    text = gap_text(cards(client, fetching(hook_request(), down)))
    searches = [key for key, query in templates(client, "order-sign").items() if "?" in query]
    unchecked = set(re.findall(r"(?:^- |: )([\w ,()]+?) could not be retrieved: the FHIR server could not be reached",
                               text, re.MULTILINE))
    assert len(unchecked) == len(searches), unchecked


def test_rules_that_could_run_still_run_when_the_server_fails(client, down):
    """Labs prefetched (HBsAg positive), the rest to be fetched from a server that is down."""
    body = hook_request(labs=[serology(HBSAG, text="positive")])
    body["prefetch"] = {"patient": body["prefetch"]["patient"], "labs": body["prefetch"]["labs"]}
    body["fhirServer"], body[TOKEN_FIELD] = down, {"access_token": "t0ken-abc"}
    found = cards(client, body)
    assert found["hbv-active"]["indicator"] == "critical"
    assert "could not be reached" in gap_text(found)


def test_the_token_reaches_every_call_including_next_pages(client, scripted):
    first = bundle([serology(HBSAG, text="negative")])
    first["link"] = [{"relation": "next", "url": f"{scripted.base}/Observation?page=2"}]
    second = bundle([lab(ALT, 20, "U/L")])
    second["link"] = [{"relation": "next", "url": f"{scripted.base}/Observation?page=3"}]
    scripted.answer("Observation", (200, first, {}), (200, second, {}), (200, bundle([]), {}))
    cards(client, fetching(hook_request(), scripted.base, "t0ken-abc"))
    assert len(scripted.calls_for("Observation")) == 3
    assert {c.authorization for c in scripted.calls} == {"Bearer t0ken-abc"}


@pytest.mark.parametrize("where", ["another server", "another path", "another host name"])
def test_a_next_link_off_the_fhir_server_is_not_followed(where, client, scripted, elsewhere):
    target = {"another server": f"{elsewhere.base}/Observation?page=2",
              "another path": f"http://127.0.0.1:{scripted.port}/other/Observation?page=2",
              "another host name": f"http://localhost:{scripted.port}/fhir/Observation?page=2"}[where]
    first = bundle([serology(HBSAG, text="positive")])
    first["link"] = [{"relation": "next", "url": target}]
    scripted.answer("Observation", (200, first, {}))
    found = cards(client, fetching(hook_request(), scripted.base, "t0ken-abc"))
    assert elsewhere.calls == []
    assert len(scripted.calls_for("Observation")) == 1
    assert [c for c in scripted.calls if "/other/" in c.path or "page=2" in c.path] == []
    assert found["hbv-active"]["indicator"] == "critical"  # page 1 is used
    assert "only partly retrieved" in gap_text(found)


def test_a_redirect_is_not_followed(client, scripted, elsewhere):
    scripted.answer("Observation", (302, b"", {"Location": f"{elsewhere.base}/Observation"}))
    found = cards(client, fetching(hook_request(), scripted.base, "t0ken-abc"))
    assert elsewhere.calls == []
    assert "redirected" in gap_text(found)


@pytest.mark.parametrize("first", [(503, {"resourceType": "OperationOutcome"}, {}), RESET])
def test_a_gateway_error_or_reset_is_retried_once(first, client, scripted):
    scripted.answer("Observation", first, (200, bundle([serology(HBSAG, text="positive")]), {}))
    found = cards(client, fetching(hook_request(), scripted.base))
    assert len(scripted.calls_for("Observation")) == 2
    assert found["hbv-active"]["indicator"] == "critical"
    assert "data-unavailable" not in found


def test_a_lasting_server_error_is_retried_once_then_named(client, scripted):
    scripted.answer("Observation", (503, {"resourceType": "OperationOutcome"}, {}))
    found = cards(client, fetching(hook_request(), scripted.base))
    assert len(scripted.calls_for("Observation")) == 2
    assert "answered with an error (HTTP 503)" in gap_text(found)


def test_no_unauthenticated_fetch_unless_allowed(book, scripted):
    """fhirServer without fhirAuthorization is as good as no fhirServer: nothing is asked, so 412."""
    response = post(app_with(book, allow_unauthenticated=False), fetching(hook_request(), scripted.base, token=None))
    assert response.status_code == 412
    assert scripted.calls == []


def test_no_access_token_with_partial_prefetch_names_the_gap(book, scripted):
    body = hook_request(labs=[serology(HBSAG, text="positive")])
    body["prefetch"] = {"patient": body["prefetch"]["patient"], "labs": body["prefetch"]["labs"]}
    body["fhirServer"] = scripted.base
    found = cards(app_with(book, allow_unauthenticated=False), body)
    assert found["hbv-active"]["indicator"] == "critical"
    assert "no access token" in gap_text(found)
    assert scripted.calls == []


def test_a_forbidden_answer_is_412(client, scripted):
    scripted.answer("Condition", (403, {"resourceType": "OperationOutcome"}, {}))
    assert post(client, fetching(hook_request(), scripted.base)).status_code == 412


@pytest.mark.parametrize("answer, words", [
    ((200, b"{not json", {}), "not valid JSON"),
    ((200, patient("female"), {}), "not a search result"),
    ((200, {"resourceType": "OperationOutcome", "issue": []}, {}), "answered with an error"),
    ((200, {"resourceType": "Bundle", "entry": {"oops": 1}}, {}), "not valid FHIR"),
    ((404, {"resourceType": "OperationOutcome"}, {}), "rejected the query (HTTP 404)"),
])
def test_an_unusable_answer_is_a_named_gap(answer, words, client, scripted):
    scripted.answer("Observation", answer)
    found = cards(client, fetching(hook_request(), scripted.base))
    assert words in gap_text(found)
    assert SCREENING_MISSING not in found


def test_cookies_from_the_fhir_server_are_never_sent_back(client, scripted):
    scripted.answer("Patient", (200, patient("female"), {"Set-Cookie": "session=user-a; Path=/"}))
    cards(client, fetching(hook_request(), scripted.base, "token-of-user-a"))
    cards(client, fetching(hook_request(), scripted.base, "token-of-user-b"))
    assert [c.cookie for c in scripted.calls] == [None] * len(scripted.calls)


def test_the_token_and_the_patient_never_reach_the_logs(client, book, scripted, silent, caplog):
    body = hook_request()
    body["context"]["patientId"] = "pat-5ec7e7"
    scripted.answer("Observation", (503, {}, {}))
    with caplog.at_level(logging.DEBUG):
        cards(client, fetching(body, scripted.base, "t0ken-secret"))
        cards(app_with(book, deadline_seconds=0.3), fetching(body, silent, "t0ken-secret"))
    lines = [(r.levelno, f"{r.getMessage()} {getattr(r, 'fields', '')}") for r in caplog.records]
    assert any("fhir fetch" in line for _, line in lines)
    assert [line for _, line in lines if "t0ken-secret" in line] == []
    assert [line for level, line in lines if level >= logging.INFO and "pat-5ec7e7" in line] == []


def test_fetched_keys_and_errors_are_counted(client, down):
    before = _metrics(client)
    cards(client, fetching(hook_request(), down))
    after = _metrics(client)
    assert after[("cds_prefetch_fetched_total", "key", "labs")] == before.get(
        ("cds_prefetch_fetched_total", "key", "labs"), 0) + 1
    assert after[("cds_fhir_fetch_errors_total", "kind", "unreachable")] >= before.get(
        ("cds_fhir_fetch_errors_total", "kind", "unreachable"), 0) + 1


def _metrics(client) -> dict[tuple[str, str, str], float]:
    text = client.get("/metrics").get_data(as_text=True)
    return {(s.name, label, value): s.value for family in text_string_to_metric_families(text)
            for s in family.samples for label, value in s.labels.items()}


# --- settings ----------------------------------------------------------------------------------------------

def test_settings_come_from_the_environment():
    settings = FetchSettings.from_env({"CDS_FETCH_DEADLINE_SECONDS": "1.5", "CDS_FETCH_MAX_PAGES": "3"})
    assert (settings.deadline_seconds, settings.max_pages, settings.allow_unauthenticated) == (1.5, 3, False)
    assert FetchSettings.from_env({"CDS_DEV": "1"}).allow_unauthenticated
    assert not FetchSettings.from_env({"CDS_DEV": "1", "CDS_ALLOW_UNAUTHENTICATED_FETCH": "0"}).allow_unauthenticated


@pytest.mark.parametrize("name, value", [("CDS_FETCH_DEADLINE_SECONDS", "soon"), ("CDS_FETCH_MAX_PAGES", "0"),
                                         ("CDS_FETCH_DEADLINE_SECONDS", "inf")])
def test_bad_settings_stop_start_up_naming_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        FetchSettings.from_env({name: value})
