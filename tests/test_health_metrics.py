"""Probes and Prometheus metrics, through the app and through a real multi-worker `cds-service serve`."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from cds_service.web.app import create_app
from cds_service.config import Settings
from cds_service.feedback.settings import StoreSettings
from cds_service.feedback.store import Store
from cds_service.web.server import REQUESTS_PER_CONNECTION
from conftest import EXAMPLES, NOW, load_json
from security_support import serve

ORDER_SIGN = "/cds-services/cd20-order-sign"
HOOK_ROUTE = "/cds-services/<service_id>"
EXPECTED = load_json(EXAMPLES / "expected.json")
# examples whose expected cards differ: together they exercise several rules and indicators
CALLS = ["hbv-active--hbsag-positive.json", "neutropenia--critical.json", "igg-low--below-lab-range.json",
         "no-cards--lisinopril-order.json"]
SERVER_ENV = {"CDS_DEV": "1", "CDS_AUTH": "off", "CDS_NOW": NOW.isoformat().replace("+00:00", "Z"),
              "WEB_CONCURRENCY": "2"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def cards_by_rule(responses: list[dict[str, Any]]) -> Counter:
    return Counter((c["source"]["topic"]["code"], c["indicator"]) for r in responses for c in r["cards"])


def test_healthz_says_alive(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "alive"}


def test_readyz_is_ready_once_rules_are_loaded_and_the_engine_answers(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["checks"]["rules"] == "ok" and body["checks"]["engine"] == "ok"


def test_readyz_is_503_and_names_the_database_when_the_database_does_not_answer(service):
    nobody_listens = StoreSettings(database_url="postgresql://cds@127.0.0.1:1/cds", patient_hash_key=b"k" * 32)
    client = create_app(service, Settings(auth="off"), store=Store(nobody_listens)).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not ready"
    assert body["checks"]["database"].startswith("failed") and body["checks"]["engine"] == "ok"
    assert client.get("/healthz").status_code == 200  # alive all the same: restarting would not help


def test_metrics_count_the_cards_sent_by_rule_and_indicator_and_time_each_call(client):
    before = samples(client.get("/metrics").get_data(as_text=True))
    responses = []
    for name in CALLS:
        response = client.post(ORDER_SIGN, json=load_json(EXAMPLES / name))
        assert response.status_code == 200
        responses.append(response.get_json())
    assert client.post("/cds-services/no-such-service", json={}).status_code == 404
    assert client.post(ORDER_SIGN, data="[1]", content_type="application/json").status_code == 400
    metrics = client.get("/metrics")
    after = samples(metrics.get_data(as_text=True))

    assert metrics.content_type.startswith("text/plain")
    sent = cards_by_rule(responses)
    assert ("hbv-active", EXPECTED[CALLS[0]]["present"]["hbv-active"]) in sent
    for (rule, indicator), count in sent.items():
        grew = value(after, "cds_cards_total", rule=rule, indicator=indicator) - value(
            before, "cds_cards_total", rule=rule, indicator=indicator)
        assert grew == count, (rule, indicator)

    def calls(status: str, service: str) -> float:
        labels = {"route": HOOK_ROUTE, "service": service, "status": status}
        return (value(after, "cds_http_request_duration_seconds_count", **labels)
                - value(before, "cds_http_request_duration_seconds_count", **labels))

    assert calls("200", "cd20-order-sign") == len(CALLS)
    assert calls("404", "") == 1  # an unknown id is not a label: callers must not be able to mint series
    assert calls("400", "cd20-order-sign") == 1
    evaluated = value(after, "cds_evaluation_seconds_count") - value(before, "cds_evaluation_seconds_count")
    assert evaluated == len([n for n in CALLS if not EXPECTED[n].get("no_cards")])


def test_probes_and_scrapes_are_not_counted_as_traffic(client):
    before = samples(client.get("/metrics").get_data(as_text=True))
    for path in ("/healthz", "/readyz", "/metrics"):
        client.get(path)
    after = samples(client.get("/metrics").get_data(as_text=True))
    routes = {dict(labels).get("route") for name, labels in after if name.startswith("cds_http_request")}
    assert not routes & {"/healthz", "/readyz", "/metrics"}
    assert value(after, "cds_evaluation_seconds_count") == value(before, "cds_evaluation_seconds_count")


def test_a_real_server_adds_up_the_metrics_of_all_its_workers(tmp_path):
    with serve(SERVER_ENV, tmp_path / "server.log") as base:
        assert requests.get(f"{base}/healthz", timeout=5).json() == {"status": "alive"}
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
        responses = []
        for name in CALLS * 3:  # a new connection per call, so both workers take some
            response = requests.post(base + ORDER_SIGN, json=load_json(EXAMPLES / name), timeout=30,
                                     headers={"Connection": "close"})
            assert response.status_code == 200
            responses.append(response.json())
        found = samples(requests.get(f"{base}/metrics", timeout=5).text)

    assert value(found, "cds_http_request_duration_seconds_count",
                 route=HOOK_ROUTE, service="cd20-order-sign", status="200") == len(responses)
    for (rule, indicator), count in cards_by_rule(responses).items():
        assert value(found, "cds_cards_total", rule=rule, indicator=indicator) == count, (rule, indicator)


def test_a_restarted_server_starts_its_metrics_from_zero(tmp_path):
    metrics_dir = tmp_path / "metrics"
    _leave_samples_of_an_earlier_run(metrics_dir)
    env = {**SERVER_ENV, "WEB_CONCURRENCY": "1", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with serve(env, tmp_path / "server.log") as base:
        response = requests.post(base + ORDER_SIGN, json=load_json(EXAMPLES / CALLS[0]), timeout=30)
        assert response.status_code == 200
        found = samples(requests.get(f"{base}/metrics", timeout=5).text)

    assert not [labels for name, labels in found if dict(labels).get("rule") == "from-an-earlier-run"]
    assert value(found, "cds_http_request_duration_seconds_count",
                 route=HOOK_ROUTE, service="cd20-order-sign", status="200") == 1


def _leave_samples_of_an_earlier_run(metrics_dir: Path) -> None:
    """What a worker of a stopped server leaves behind: a sample file in the metrics directory."""
    metrics_dir.mkdir()
    script = ("from cds_service.web.observability import CARDS\n"
              "CARDS.labels('from-an-earlier-run', 'warning').inc()\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60,
                   env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    assert list(metrics_dir.glob("counter_*.db"))


def test_a_real_server_closes_a_kept_alive_connection_every_so_many_requests(tmp_path):
    """So that an EHR's kept-alive connections, which may all land on one worker, spread out over time."""
    with serve(SERVER_ENV, tmp_path / "server.log") as base, requests.Session() as session:
        closing = [n for n in range(1, 2 * REQUESTS_PER_CONNECTION + 2)
                   if session.get(f"{base}/healthz", timeout=5).headers.get("Connection") == "close"]
    assert closing == [REQUESTS_PER_CONNECTION, 2 * REQUESTS_PER_CONNECTION]
