"""Attacks on a real `cds-service serve` (gunicorn, one worker, authentication on, ES384 tokens), each held.

Each attack runs while /healthz and an ordinary hook call are asked again and again (`Watch`): both must
keep answering, in time, during the attack and after it, on the one worker that took the attack. The
attacks are those an earlier attack run found to get through: many draft orders (cost that grew with
their square), resources hidden in nested Bundles and contained resources, a slow trusted key host, a
`next` link that leaves the FHIR base, markup in the record, a call longer than its budget, and the
admin, feedback and token inputs no one had bounded.
"""
from __future__ import annotations

import copy
import html
import json
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import jwt
import pytest
import requests
import yaml
from markdown_it import MarkdownIt
from sqlalchemy import select

import cd20_builders as cb
import fhir_builders as fb
from cds_service.feedback.models import Feedback
from cds_service.feedback.settings import StoreSettings
from cds_service.feedback.store import Store
from conftest import NOW
from security_support import PUBLIC_URL, RecordingServer, SigningEhr, example_request, serve_process

SIGN = "/cds-services/cd20-order-sign"
BUDGET_SECONDS = 1.0  # the served call budget: an ordinary call needs a few ms of it
HEALTHZ_WAIT = 5.0  # longest /healthz may take during an attack (a key fetch may hold threads 3 s)
ORDINARY = "hbv-screening-missing--first-dose.json"
ADMIN_TOKEN = "admin-token-for-the-attack-tests"
ACCESS_TOKEN = "the-ehrs-access-token"
PAYLOAD = ('<img src=x onerror=alert(1)><script>alert(2)</script> [click](javascript:alert(3)) '
           '![beacon](http://beacon.example/t.png)\n# Heading')
ALLOWED_TAGS = {"p", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td", "strong", "em", "code", "br"}
RENDER = MarkdownIt("commonmark", {"html": True}).enable("table")  # raw HTML on, as the CDS Hooks sandbox has it


class KeyHost:
    """A trusted EHR's key server gone slow: it answers 200 and then sends the key set one byte at a time
    (`trickle`) or stops halfway for good (`stall`); every GET is counted."""

    def __init__(self, mode: str) -> None:
        self.gets = 0
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                outer.gets += 1
                body = b'{"keys": [' + b" " * 100_000 + b"]}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if mode == "stall":
                        self.wfile.write(body[:1000])
                        self.wfile.flush()
                        outer.stop.wait(30)
                        return
                    for n in range(len(body)):
                        if outer.stop.wait(0.2):
                            return
                        self.wfile.write(body[n:n + 1])
                        self.wfile.flush()
                except OSError:  # the service gave up on us
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class Served:
    """The service under attack and what the tests need to talk to it."""

    def __init__(self, base: str, master: int, ehr: SigningEhr, slow: dict[str, SigningEhr], fhir: RecordingServer,
                 log_path: Path) -> None:
        self.base, self.master, self.ehr, self.slow, self.fhir, self.log_path = base, master, ehr, slow, fhir, log_path

    def worker(self) -> str:
        """The process id of the one gunicorn worker (the master's only child)."""
        [worker] = Path(f"/proc/{self.master}/task/{self.master}/children").read_text().split()
        return worker

    def worker_rss_mb(self) -> float:
        """Resident memory of the one gunicorn worker."""
        status = Path(f"/proc/{self.worker()}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def post(self, path: str, body: Any, ehr: SigningEhr | None = None, timeout: float = 30,
             **claims: Any) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(ehr or self.ehr).header(path, **claims)}
        return requests.post(self.base + path, data=data, headers=headers, timeout=timeout)

    def get(self, path: str, ehr: SigningEhr | None = None, timeout: float = 30, **claims: Any) -> requests.Response:
        return requests.get(self.base + path, headers=(ehr or self.ehr).header(path, **claims), timeout=timeout)

    def ordinary(self, timeout: float = 10) -> requests.Response:
        body = {**example_request(ORDINARY), "hookInstance": str(uuid.uuid4())}
        return self.post(SIGN, body, timeout=timeout)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("attacks")
    ehr = SigningEhr()
    slow = {mode: SigningEhr(iss=f"https://{mode}-keys.example.test") for mode in ("trickle", "stall")}
    hosts = {mode: KeyHost(mode) for mode in slow}
    with RecordingServer() as fhir:
        servers = [fhir.url + "/fhir", example_request()["fhirServer"]]
        issuers = yaml.safe_load(ehr.issuers_file(directory, fhir_servers=servers).read_text())
        issuers["issuers"] += [{"iss": e.iss, "jwks_url": hosts[mode].url} for mode, e in slow.items()]
        (directory / "issuers.yaml").write_text(yaml.safe_dump(issuers))
        env = {"CDS_TRUSTED_ISSUERS": str(directory / "issuers.yaml"), "CDS_PUBLIC_URL": PUBLIC_URL,
               "CDS_NOW": NOW.isoformat().replace("+00:00", "Z"), "CDS_ADMIN_TOKEN": ADMIN_TOKEN,
               "CDS_CALL_BUDGET_SECONDS": str(BUDGET_SECONDS), "CDS_FETCH_DEADLINE_SECONDS": "0.5",
               "WEB_CONCURRENCY": "1", "CDS_THREADS": "4"}
        log_path = directory / "server.log"
        try:
            with serve_process(env, log_path) as (base, master):
                target = Served(base, master.pid, ehr, slow, fhir, log_path)
                _warm_up(target)
                yield target
        finally:
            for host in hosts.values():
                host.close()
    assert "Traceback" not in log_path.read_text()


def _warm_up(target: Served) -> None:
    """The worker's first call loads the FHIR models; asked until it fits the budget, as calls will after."""
    for _ in range(10):
        if target.ordinary().status_code == 200:
            return
    raise AssertionError(target.log_path.read_text())


class Watch:
    """/healthz and an ordinary hook call, asked in turn while an attack runs, and once more after it."""

    def __init__(self, target: Served) -> None:
        self.target = target
        self.expected = _rules(target.ordinary().json())
        self.answers: list[tuple[str, int | None, float]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Watch":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        self.thread.join(60)
        self._probe()
        if exc[0] is None:
            self.check()

    def _run(self) -> None:
        while not self.done.is_set():
            self._probe()

    def _probe(self) -> None:
        for kind, ask in (("healthz", lambda: requests.get(self.target.base + "/healthz", timeout=HEALTHZ_WAIT)),
                          ("ordinary", lambda: self.target.ordinary(timeout=10))):
            started = time.monotonic()
            try:
                response = ask()
                status = response.status_code
                if kind == "ordinary" and status == 200 and _rules(response.json()) != self.expected:
                    status = -1  # answered, but not with its cards
            except requests.RequestException:
                status = None
            self.answers.append((kind, status, time.monotonic() - started))

    def check(self) -> None:
        failed = [a for a in self.answers if a[1] != 200]
        assert not failed, f"{len(failed)} of {len(self.answers)} probes failed, e.g. {failed[:5]}"
        slowest = max(seconds for kind, _, seconds in self.answers if kind == "healthz")
        assert slowest < HEALTHZ_WAIT, slowest
        assert {kind for kind, _, _ in self.answers} == {"healthz", "ordinary"}


@pytest.fixture
def watch(served: Served) -> Callable[[], Watch]:
    return lambda: Watch(served)


def _rules(response: dict[str, Any]) -> set[str]:
    return {card["source"]["topic"]["code"] for card in response["cards"]}


def _with_orders(count: int, labs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The ordinary request with `count` anti-CD20 orders (and their premedications) instead of one."""
    request = example_request(ORDINARY)
    request["hookInstance"] = str(uuid.uuid4())
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    request["context"]["draftOrders"]["entry"] = [{"resource": {**copy.deepcopy(order), "id": f"order-{n}"}}
                                                  for n in range(count)]
    if labs is not None:
        patient = {"reference": f"Patient/{request['context']['patientId']}"}
        request["prefetch"]["labs"] = fb.bundle([{**lab, "subject": patient} for lab in labs])
    return request


# --- cost: draft orders and resources -------------------------------------------------------------------------

def test_many_draft_orders_are_refused_and_the_allowed_number_costs_little(served, watch):
    with watch():
        refused = served.post(SIGN, _with_orders(51))
        assert refused.status_code == 400 and "at most 50 draft orders" in refused.json()["error"]
        huge = served.post(SIGN, _with_orders(6000))
        assert huge.status_code == 400
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:  # eight at once, at the limit: the issue's 300 took minutes
            answers = list(pool.map(lambda _: served.post(SIGN, _with_orders(50)), range(8)))
        assert [a.status_code for a in answers] == [200] * 8
        assert "hbv-screening-missing" in _rules(answers[0].json())
        assert time.monotonic() - started < 10


def _nested(depth: int, resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A Bundle inside a Bundle ... `depth` levels down, the resources in the innermost one."""
    bundle = fb.bundle(resources)
    for _ in range(depth):
        bundle = fb.bundle([bundle])
    return bundle


def _observations(count: int) -> list[dict[str, Any]]:
    return [{"resourceType": "Observation", "id": f"o{n}", "status": "final"} for n in range(count)]


@pytest.mark.parametrize("place", ["labs-wrapped", "labs-nested-3-deep", "draft-orders-nested", "contained"])
def test_resources_hidden_in_bundles_or_contained_count_against_the_cap(served, watch, place):
    request = example_request(ORDINARY)
    many = _observations(5100)
    if place == "labs-wrapped":  # the pre-1.0 {"resource": ...} wrapper around a Bundle
        request["prefetch"]["labs"] = {"resource": fb.bundle(many)}
    elif place == "labs-nested-3-deep":
        request["prefetch"]["labs"] = _nested(3, many)
    elif place == "draft-orders-nested":
        request["context"]["draftOrders"]["entry"].append({"resource": _nested(1, many)})
    else:
        request["context"]["draftOrders"]["entry"][0]["resource"]["contained"] = many
    with watch():
        response = served.post(SIGN, request)
    assert response.status_code == 400
    assert "this service reads at most 5000" in response.json()["error"]


def test_a_fetched_answer_past_the_cap_becomes_a_gap_and_is_not_read(served, watch):
    served.fhir.routes.clear()
    served.fhir.routes["/fhir/Observation"] = _nested(2, _observations(5100))
    with watch():
        response = served.post(SIGN, _fetching_request(served))
    assert response.status_code == 200
    cards = fb.cards_by_rule(response.json())
    assert "more resources (5102) than the service reads" in html.unescape(cards["data-unavailable"]["detail"])


@pytest.fixture(autouse=True)
def _fhir_hits_of_this_test_only(served: Served) -> None:
    served.fhir.hits.clear()


def _fetching_request(served: Served) -> dict[str, Any]:
    """The ordinary request with its labs left to fetch from the scripted FHIR server, with a token."""
    request = example_request(ORDINARY)
    request["hookInstance"] = str(uuid.uuid4())
    del request["prefetch"]["labs"]
    request["fhirServer"] = served.fhir.url + "/fhir"
    request["fhirAuthorization"] = {"access_token": ACCESS_TOKEN, "token_type": "Bearer", "scope": "patient/*.read",
                                    "subject": "cds-service", "expires_in": 300}
    return request


def test_a_call_past_its_budget_stops_with_503_and_the_worker_goes_on(served, watch):
    """4950 results never seen before, each in a unit of its own and with components: reading them all takes
    about 5 s here, far past the 1 s budget; the call stops at it, says so, and the worker answers the next
    calls."""
    tag = uuid.uuid4().hex[:8]
    components = [{"code": {"coding": [{"system": fb.LOINC, "code": fb.ALT}]}, "valueQuantity": {"value": n}}
                  for n in range(8)]
    labs = [{**fb.lab(fb.ALT, 20 + n % 7, f"u{tag}{n}", days_ago=1 + n % 300, low=5, high=40),
             "component": components} for n in range(4950)]
    request = _with_orders(40, labs)
    with watch():
        started = time.monotonic()
        response = served.post(SIGN, request)
        took = time.monotonic() - started
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert "did not finish within 1 s" in response.json()["error"]
    assert took < BUDGET_SECONDS + 3, took  # stopped near its deadline, not after all its work
    assert "hook call stopped at its deadline" in served.log_path.read_text()


def test_large_results_sent_again_and_again_do_not_stay_in_the_workers_memory(served, watch):
    """Lab readings are remembered by their content; 60 results of 400 kB each, all different, are read
    and then let go (remembered, they would keep 24 MB)."""
    before = served.worker_rss_mb()
    with watch():
        for n in range(60):
            labs = [{**fb.lab(fb.ALT, 25, "U/L", days_ago=3), "note": [{"text": f"{n} " + "x" * 400_000}]}]
            assert served.post(SIGN, _with_orders(1, labs)).status_code == 200
    growth = served.worker_rss_mb() - before
    assert growth < 10, f"the worker grew by {growth:.1f} MB"


# --- trusted key hosts that are slow --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["trickle", "stall"])
def test_a_slow_key_host_costs_callers_its_deadline_once_and_never_a_500(served, watch, mode):
    """Ten tokens naming keys of an issuer whose key server is slow: one fetch, everyone refused with 401
    within the fetch deadline (3 s), and later tokens refused at once (no new fetch for a minute)."""
    ehr = served.slow[mode]
    with watch():
        started = time.monotonic()
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda _: served.get("/cds-services", ehr=ehr), range(10)))
        took = time.monotonic() - started
        assert [a.status_code for a in answers] == [401] * 10
        assert took < 8, took
        again = time.monotonic()
        assert served.get("/cds-services", ehr=ehr).status_code == 401
        assert time.monotonic() - again < 1


# --- the access token stays on the FHIR base ------------------------------------------------------------------

@pytest.mark.parametrize("next_url", ["{base}/fhir/../admin/x", "{base}/fhir/%2e%2e/admin/x", "{base}/fhir/%2E%2E/admin/x",
                                      "{base}/fhir/..;/admin/x", "{base}/fhir/.%2e/admin/x", "{base}/fhir%2F..%2Fadmin/x",
                                      "{base}/fhir/..%5Cadmin/x", "{base}/fhirx/Observation", "../admin/x",
                                      "http://evil.example/fhir/Observation", "{base}:80/fhir/Observation"])
def test_a_next_link_off_the_fhir_base_is_never_fetched(served, watch, next_url):
    served.fhir.routes.clear()
    page = fb.bundle(_observations(1))
    page["link"] = [{"relation": "next", "url": next_url.format(base=served.fhir.url)}]
    served.fhir.routes["/fhir/Observation"] = page
    with watch():
        response = served.post(SIGN, _fetching_request(served))
    assert response.status_code == 200
    assert "only partly retrieved" in html.unescape(fb.cards_by_rule(response.json())["data-unavailable"]["detail"])
    assert [path.split("?")[0] for _, path, _ in served.fhir.hits] == ["/fhir/Observation"]


def test_a_next_link_on_the_fhir_base_is_followed_with_the_token(served):
    """The check above can fail: a next link under the base is fetched, and only it."""
    served.fhir.routes.clear()
    page = fb.bundle(_observations(1))
    page["link"] = [{"relation": "next", "url": served.fhir.url + "/fhir/./Observation/../Observation?page=2"}]
    served.fhir.routes["/fhir/Observation"] = page
    assert served.post(SIGN, _fetching_request(served)).status_code == 200
    assert [path for _, path, _ in served.fhir.hits][1] == "/fhir/Observation?page=2"
    assert all(headers["Authorization"] == f"Bearer {ACCESS_TOKEN}" for _, _, headers in served.fhir.hits)


@pytest.mark.parametrize("fhir_path", ["/fhir/../admin", "/fhir/%2e%2e/admin", "/fhir/..;/admin", "/fhir%2F..%2Fadmin"])
def test_a_fhir_server_that_only_looks_like_the_issuers_is_refused_before_any_fetch(served, fhir_path):
    """Not fetched, and the token not sent; the clinician sees why the labs are missing (issue 14: a card,
    not a 412 the EHR would show as nothing)."""
    request = _fetching_request(served)
    request["fhirServer"] = served.fhir.url + fhir_path
    response = served.post(SIGN, request)
    assert response.status_code == 200
    assert served.fhir.hits == []
    refused = [c for c in response.json()["cards"] if c["source"]["topic"]["code"] == "data-unavailable"]
    assert len(refused) == 1 and "not a FHIR server this EHR's issuer is trusted for" in refused[0]["detail"]


# --- numbers the rules engine cannot read ---------------------------------------------------------------------

HUGE_INTEGER = "1" + "0" * 400  # json.loads takes it; float() of it raises OverflowError
NUMBER = 777.125  # stands in for the number under attack in the JSON text, replaced there as written


def _with_number(number: str, where: str) -> bytes:
    """The ordinary request with `number`, as JSON text, as an ANC result's value, the ordered dose, or the
    upper reference limit of an ALT result of 30 U/L."""
    labs = [fb.lab(fb.ANC, NUMBER if where == "anc" else 3.1, "10*9/L", days_ago=2),
            fb.lab(fb.ALT, 30, "U/L", days_ago=2, high=NUMBER if where == "range" else 40)]
    dose = (NUMBER if where == "dose" else 300, "mg")
    request = cb.request(keys=example_request(ORDINARY)["prefetch"], orders=[cb.order(cb.concept(cb.OCREVUS), dose=dose)],
                         labs=labs)
    text = json.dumps(request)
    assert text.count(str(NUMBER)) == 1
    return text.replace(str(NUMBER), number).encode()


def _cards_of_held_call(served: Served, watch: Callable[[], Watch], body: bytes) -> dict[str, dict[str, Any]]:
    """The cards of a 200 answer to `body`, given by the same worker as before it (it did not crash)."""
    worker = served.worker()
    with watch():
        response = served.post(SIGN, body)
    assert response.status_code == 200, response.text
    assert served.worker() == worker
    return fb.cards_by_rule(response.json())


@pytest.mark.parametrize("number", ["1e+16", "1e400", "-1e400", HUGE_INTEGER, "NaN", "Infinity", "-3", "true"])
def test_a_lab_value_no_measurement_can_have_is_unreadable_and_never_compared(served, watch, number):
    """durable-rules' JSON parser crashed the worker on numbers in exponent form and on Infinity."""
    cards = _cards_of_held_call(served, watch, _with_number(number, "anc"))
    assert "neutropenia" not in cards
    assert "absolute neutrophil count result of 2026-11-19" in cards["data-unavailable"]["summary"]


@pytest.mark.parametrize("number", ["1e-05", "5E-7", "0.00005", "0"])
def test_an_anc_of_next_to_nothing_in_exponent_form_is_compared_as_the_number_it_is(served, watch, number):
    card = _cards_of_held_call(served, watch, _with_number(number, "anc"))["neutropenia"]
    assert card["indicator"] == "critical" and "grade 4" in card["summary"]


@pytest.mark.parametrize("number", ["1e+16", "1e400", HUGE_INTEGER, "NaN", "-Infinity", "true", '"300"'])
def test_a_dose_that_is_not_a_readable_number_is_not_checked_as_one(served, watch, number):
    card = _cards_of_held_call(served, watch, _with_number(number, "dose"))["dose-unexpected"]
    assert "(a dose in an amount that is not a readable number) cannot be checked" in card["summary"]


@pytest.mark.parametrize("number", ["1e-300", "1e+300", "NaN", HUGE_INTEGER])
def test_a_reference_limit_no_lab_could_set_gives_way_to_the_default_one(served, watch, number):
    """ALT 30 U/L over an upper limit of 1e-300 would be 3e+301 × ULN: the default limit is used instead."""
    cards = _cards_of_held_call(served, watch, _with_number(number, "range"))
    assert not {"liver-enzymes-elevated", "liver-injury"} & set(cards)


@pytest.mark.parametrize("resource", ["result", "problem"])
def test_one_resource_too_large_to_validate_in_the_budget_is_reported_and_not_read(served, watch, resource):
    """100 000 one-word notes in one result (or problem-list entry) took seconds to validate in one go,
    between two deadline checks, past the 1 s budget; now it is a data-unavailable line, in time."""
    notes = [{"text": "x"}] * 100_000
    big = {**(fb.lab(fb.ANC, 0.3, "10*9/L", days_ago=2) if resource == "result" else cb.problem("84114007")),
           "note": notes}
    request = cb.request(keys=example_request(ORDINARY)["prefetch"], orders=[cb.order(cb.concept(cb.OCREVUS))],
                         **({"labs": [big]} if resource == "result" else {"conditions": [big]}))
    cards = _cards_of_held_call(served, watch, json.dumps(request).encode())
    assert "too large to read" in cards["data-unavailable"]["summary"]
    assert not {"neutropenia", "cardiac-history"} & set(cards)


# --- record text in cards -------------------------------------------------------------------------------------

def test_markup_in_the_record_shows_as_text_and_never_as_markup(served, watch):
    request = cb.request(keys=example_request(ORDINARY)["prefetch"], orders=[
        cb.order(cb.named(f"Ocrevus {PAYLOAD}")),
        cb.order(cb.named(f"ceftriaxone 1 g IV {PAYLOAD}"), rid="abx")],
        conditions=[cb.problem("233604007", text=f"Pneumonia {PAYLOAD}", onset_days_ago=2),
                    cb.problem("84114007", text=f"{PAYLOAD} heart failure")],
        labs=[fb.lab(fb.ANC, 2.0, f"cells {PAYLOAD}", days_ago=3)])
    with watch():
        response = served.post(SIGN, request)
    assert response.status_code == 200
    cards = fb.cards_by_rule(response.json())
    assert {"active-infection", "cardiac-history", "data-unavailable"} <= set(cards)
    shown = " ".join(PAYLOAD.split())
    for rule, card in cards.items():
        for field, text in (("summary", card["summary"]), ("detail", card["detail"])):
            tags = set(re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)", RENDER.render(text)))
            assert tags <= ALLOWED_TAGS, (rule, field, tags - ALLOWED_TAGS, text)
        if rule in ("active-infection", "data-unavailable"):
            assert shown in html.unescape(card["detail"]), rule  # the record's text, as written, on one line
    assert "onerror" in cards["cardiac-history"]["summary"]  # kept, and inert


# --- tokens, feedback and the admin report ------------------------------------------------------------------

@pytest.mark.parametrize("claims", [{"nbf": "tomorrow"}, {"nbf": None}, {"nbf": [1]}, {"exp": "soon"},
                                    {"iat": "now"}, {"exp": True}])
def test_jwt_time_claims_that_are_not_numbers_are_refused(served, claims):
    payload = {**served.ehr.claims(PUBLIC_URL + "/cds-services"), **claims}  # claims() would drop a None
    token = jwt.encode(payload, served.ehr.private_key, algorithm="ES384", headers={"kid": served.ehr.kid})
    response = requests.get(served.base + "/cds-services", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 401


def test_feedback_is_bounded_and_kept_only_for_issued_cards(served, watch):
    feedback = SIGN + "/feedback"
    item = {"outcome": "overridden", "outcomeTimestamp": "2026-11-21T12:00:00Z"}
    with watch():
        flood = served.post(feedback, {"feedback": [{**item, "card": f"c{n}"} for n in range(20000)]})
        assert flood.status_code == 413
        too_many = served.post(feedback, {"feedback": [{**item, "card": f"c{n}"} for n in range(101)]})
        assert too_many.status_code == 400
        issued = served.ordinary().json()["cards"][0]["uuid"]
        made_up = [f"never-issued-{uuid.uuid4()}" for _ in range(100)]
        answer = served.post(feedback, {"feedback": [{**item, "card": c} for c in made_up[:99] + [issued]]})
        assert (answer.status_code, answer.json()) == (200, {})
    store = Store(StoreSettings(database_url=os.environ["CDS_DATABASE_URL"]))
    try:
        with store.transaction() as connection:
            stored = set(connection.execute(select(Feedback.card_uuid)).scalars())
    finally:
        store.close()
    assert issued in stored and not stored & set(made_up)


@pytest.mark.parametrize("query", ["since=0001-01-01&until=9999-12-31", "since=9999-12-31",
                                   "until=0001-01-01", "since=1900-01-01&until=2026-01-01",
                                   "since=2026-01-01T00:00:00-23:59&until=9999-12-31T23:59:59-23:59"])
def test_admin_report_periods_past_the_calendar_or_too_long_are_a_400(served, query):
    response = requests.get(f"{served.base}/admin/report?{query}",
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert response.status_code == 400 and response.json()["error"]
