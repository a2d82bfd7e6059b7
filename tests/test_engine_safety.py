"""The rules engine under load, through the public surface.

durable-rules 2.0.28 allows 1024 live sessions, is not thread-safe and keeps facts between calls
(DESIGN.md §durable-rules). engine/durable_rules.py copes with one reused session, emptied after every evaluation,
under one lock. These tests drive it past each limit: more evaluations than it has sessions, several
patients in turn (nothing may carry over from one to the next), and concurrent calls both through a
real `cds-service serve` process and straight into the engine from many threads.
"""
from __future__ import annotations

import json
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

import cd20_builders as cb
import fhir_builders as fb
from cds_service import cards
from cds_service.engine.durable_rules import Engine, _Host
from cds_service.service import CdsService
from conftest import NOW
from security_support import serve

THRESHOLD_RULES = {"hbv-active", "hbv-resolved-infection", "igg-low", "liver-injury", "liver-enzymes-elevated",
                   "neutropenia"}
MISSING_RULES = {"hbv-screening-missing", "igg-missing", "liver-tests-missing", "neutrophils-missing"}
POSITIVE, NEGATIVE = "10828004", "260385009"
OCREVUS, KESIMPTA, RITUXAN, TRUXIMA = (cb.concept(c) for c in (cb.OCREVUS, cb.KESIMPTA, cb.RITUXAN, cb.TRUXIMA))
METFORMIN = cb.concept({"system": fb.RXNORM, "code": "860975", "display": "metformin 500 MG Oral Tablet"})

BAD_LABS = [
    fb.serology(fb.HBSAG, days_ago=20, snomed=POSITIVE),
    fb.lab(fb.ALT, 200, "U/L", days_ago=5, high=40),
    fb.lab(fb.BILIRUBIN, 3.6, "mg/dL", days_ago=4, high=1.2),
    fb.lab(fb.ANC, 0.4, "10*9/L", days_ago=3),
    fb.lab(fb.IGG, 400, "mg/dL", days_ago=30, low=700, high=1600),
]
NORMAL_LABS = [
    fb.serology(fb.HBSAG, days_ago=60, snomed=NEGATIVE),
    fb.serology(fb.ANTI_HBC, days_ago=60, snomed=NEGATIVE),
    fb.lab(fb.ALT, 25, "U/L", days_ago=10, high=40),
    fb.lab(fb.AST, 22, "U/L", days_ago=10, high=40),
    fb.lab(fb.ALP, 80, "U/L", days_ago=10, high=130),
    fb.lab(fb.BILIRUBIN, 0.6, "mg/dL", days_ago=10, high=1.2),
    fb.lab(fb.ANC, 3.1, "10*9/L", days_ago=10),
    fb.lab(fb.IGG, 1050, "mg/dL", days_ago=60, low=700, high=1600),
]
RESOLVED_HBV_AND_UNKNOWN_UNIT = [
    fb.serology(fb.HBSAG, days_ago=40, snomed=NEGATIVE),
    fb.serology(fb.ANTI_HBC, days_ago=40, snomed=POSITIVE),
    fb.lab(fb.IGG, 9.5, "g/L", days_ago=40, low=7, high=16),
    fb.lab(fb.ANC, 2.2, "furlongs/L", days_ago=12),
]


@pytest.fixture(scope="module")
def bodies(client) -> dict[str, tuple[str, dict[str, Any]]]:
    """Several patients and orders, each as (service id, request body) answering every declared key.

    Each body is built once, so its hookInstance (and the card uuids derived from it) stays fixed.
    """
    services = {s["hook"]: s for s in client.get("/cds-services").get_json()["services"]}

    def ask(hook: str = "order-sign", **data: Any) -> tuple[str, dict[str, Any]]:
        return services[hook]["id"], cb.request(hook=hook, keys=services[hook]["prefetch"], **data)

    return {
        "bad-labs": ask(orders=[cb.order(OCREVUS)], labs=BAD_LABS),
        "no-labs": ask(orders=[cb.order(OCREVUS)]),
        "normal-labs": ask("order-select", orders=[cb.order(KESIMPTA), cb.order(METFORMIN, rid="order-2")],
                           labs=NORMAL_LABS),
        "resolved-hbv": ask(orders=[cb.order(RITUXAN)], labs=RESOLVED_HBV_AND_UNKNOWN_UNIT),
        "maintenance-two-orders": ask(orders=[cb.order(OCREVUS), cb.order(TRUXIMA, rid="order-2")],
                                      labs=BAD_LABS[:2], doses=[cb.given(170, OCREVUS)]),
        "on-therapy": ask("patient-view", labs=NORMAL_LABS[:2], doses=[cb.given(200, OCREVUS)]),
        "not-anti-cd20": ask(orders=[cb.order(METFORMIN)], labs=BAD_LABS),
    }


def _rules(response: dict[str, Any]) -> set[str]:
    return {card["source"]["topic"]["code"] for card in response["cards"]}


def _afresh(body: dict[str, Any], n: int) -> dict[str, Any]:
    """The body with its draft orders renamed ("order-1" -> "order-<n>-1"): the same question, which the
    engine has not answered yet (it remembers answers by their facts, the order's id among them)."""
    return json.loads(re.sub(r"order-(\d)", rf"order-{n}-\1", json.dumps(body)))


def _without_uuids(response: dict[str, Any]) -> dict[str, Any]:
    """The answer without its card and suggestion uuids, which name the order (renamed by _afresh)."""
    return json.loads(re.sub(r'"uuid": "[0-9a-f-]{36}"', '"uuid": ""', json.dumps(response)))


def _sequence(names: list[str], count: int) -> list[str]:
    """Bodies in a fixed random order (every body comes after every other), bad labs then no labs first."""
    return ["bad-labs", "no-labs"] + random.Random(1024).choices(names, k=count - 2)


def test_more_requests_than_engine_sessions_each_get_their_first_answer(client, bodies):
    """1500 hook calls in one process, past the 1024 sessions durable-rules holds, none answered differently."""
    first: dict[str, Any] = {}
    for n, name in enumerate(_sequence(list(bodies), 1500)):
        service_id, body = bodies[name]
        response = client.post(f"/cds-services/{service_id}", json=_afresh(body, n))
        assert response.status_code == 200, (name, response.get_json())
        answer = _without_uuids(response.get_json())
        assert first.setdefault(name, answer) == answer, name


def test_no_fact_carries_over_to_the_next_patient(client, bodies):
    """Bad labs, then no labs at all, then normal labs: each answer depends on its own record only."""
    bad, none, normal, bad_again, other = [
        client.post(f"/cds-services/{bodies[n][0]}", json=bodies[n][1]).get_json()
        for n in ("bad-labs", "no-labs", "normal-labs", "bad-labs", "not-anti-cd20")]
    assert {"hbv-active", "liver-injury", "neutropenia", "igg-low"} <= _rules(bad)
    assert MISSING_RULES <= _rules(none)
    assert not THRESHOLD_RULES & _rules(none)
    assert not (THRESHOLD_RULES | MISSING_RULES | {"data-unavailable"}) & _rules(normal)
    assert bad_again == bad
    assert other == {"cards": []}


def _fail_assertions(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(self: _Host, ruleset: str, facts: Any, complete: Any = None) -> None:
        raise Exception("Could not assert facts, error code: 999")  # how durable-rules reports its engine's errors

    monkeypatch.setattr(_Host, "assert_facts", failing)


def _leave_facts_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Host, "retract_facts", lambda self, ruleset, facts, complete=None: None)


@pytest.mark.parametrize("fault", [_fail_assertions, _leave_facts_behind], ids=["assertion-fails", "facts-left-behind"])
def test_a_rules_engine_failure_gives_a_503_and_no_cards_and_the_next_call_is_whole(client, bodies, monkeypatch, fault):
    """Findings from a run of the engine that did not complete could be missing a warning: none are given."""
    service_id, body = bodies["bad-labs"]
    whole = client.post(f"/cds-services/{service_id}", json=_afresh(body, 9001))
    fault(monkeypatch)
    failed = client.post(f"/cds-services/{service_id}", json=_afresh(body, 9002))
    monkeypatch.undo()
    assert failed.status_code == 503 and failed.headers["Retry-After"]
    assert "no cards are given" in failed.get_json()["error"] and "cards" not in failed.get_json()
    again = client.post(f"/cds-services/{service_id}", json=_afresh(body, 9003))
    assert again.status_code == 200 and _rules(again.get_json()) == _rules(whole.get_json())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`cds-service serve` as a separate process on a free loopback port: (base URL, its log file)."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {"CDS_DEV": "1", "CDS_AUTH": "off", "CDS_NOW": NOW.isoformat().replace("+00:00", "Z"),
           "WEB_CONCURRENCY": "2"}
    with serve(env, log_path) as base:
        yield base, log_path


def test_concurrent_requests_to_a_real_server_each_get_the_answer_they_get_alone(server, bodies):
    base, log_path = server

    def post(http: Any, name: str, n: int = 0) -> tuple[int, Any]:
        service_id, body = bodies[name]
        response = http.post(f"{base}/cds-services/{service_id}", json=_afresh(body, n), timeout=10)
        return response.status_code, _without_uuids(response.json())

    alone = {name: post(requests, name) for name in bodies}
    assert all(status == 200 for status, _ in alone.values()), alone
    assert MISSING_RULES <= _rules(alone["no-labs"][1]) and not THRESHOLD_RULES & _rules(alone["no-labs"][1])
    local, sessions = threading.local(), []

    def send(n: int, name: str) -> tuple[str, tuple[int, Any]]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            sessions.append(local.session)
        return name, post(local.session, name, n + 1)

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(send, *zip(*enumerate(_sequence(list(bodies), 400)))))
    for session in sessions:
        session.close()
    wrong = [name for name, answer in answers if answer != alone[name]]
    assert not wrong, f"{len(wrong)} of {len(answers)} answers differ from the answer alone, e.g. {wrong[:5]}"
    log = log_path.read_text()
    assert log.count("Booting worker") == 2, f"a worker died and was replaced:\n{log}"
    assert '"level": "ERROR"' not in log


@pytest.fixture(scope="module")
def engine_inputs(book, bodies) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """What the service hands the engine for each body: real facts from the FHIR, recorded on the way."""
    seen: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    with pytest.MonkeyPatch.context() as patch:
        evaluate_each = Engine.evaluate_each
        patch.setattr(Engine, "evaluate_each", lambda self, anchors, record: seen.extend((a, record) for a in anchors)
                      or evaluate_each(self, anchors, record))
        service = CdsService(book, clock=lambda: NOW)
        for service_id, body in bodies.values():
            service.call(service_id, body)
    return seen


def test_engine_hammered_from_many_threads_gives_the_sequential_findings(book, engine_inputs):
    """8 threads x 500 evaluations on one Engine: no crash, and every result as when evaluated alone."""
    engine = Engine(book, remembered=0)  # each evaluation goes to durable-rules
    expected = [engine.evaluate(anchor, record) for anchor, record in engine_inputs]
    assert len({frozenset(f.rule_id for f in findings) for findings in expected}) >= 5
    start = threading.Barrier(8)

    def hammer(offset: int) -> list[int]:
        start.wait()
        wrong = []
        for i in range(500):
            n = (i + offset) % len(engine_inputs)
            if engine.evaluate(*engine_inputs[n]) != expected[n]:
                wrong.append(n)
        return wrong

    with ThreadPoolExecutor(max_workers=8) as pool:
        wrong = [n for found in pool.map(hammer, range(8)) for n in found]
    assert not wrong, f"{len(wrong)} of 4000 evaluations differ from the sequential findings"


def test_remembered_findings_are_the_findings_of_a_fresh_evaluation(book, engine_inputs):
    """Asked again, the engine answers from memory: the same findings as durable-rules gives afresh,
    also after the cards of the first answer were built from them."""
    remembering, fresh = Engine(book), Engine(book, remembered=0)
    for _ in range(3):
        for anchor, record in engine_inputs:
            findings = remembering.evaluate(anchor, record)
            assert findings == fresh.evaluate(anchor, record)
            cards.build(findings, book, "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", "patient-1")


def test_orders_asked_about_together_get_the_findings_each_gets_alone(book, engine_inputs):
    """A call's orders share one assertion of the record (its cost is linear in the orders): each order's
    findings are the ones it gets when evaluated on its own, whatever orders come with it."""
    together, alone = Engine(book, remembered=0), Engine(book, remembered=0)
    anchors = [anchor for anchor, _ in engine_inputs]
    for _, record in engine_inputs:
        assert together.evaluate_each(anchors, record) == [f for a in anchors for f in alone.evaluate(a, record)]
