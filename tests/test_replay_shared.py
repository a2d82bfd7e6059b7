"""A token is accepted once across every worker and instance that shares the feedback database.

Each test runs on an SQLite file and on a real PostgreSQL server (`database_url`, tests/stores.py). The
"instances" are separate apps with separate stores (connection pools) on one database, as two gunicorn
workers or two replicas are; the last test runs a real `cds-service serve` with two worker processes.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from flask import Flask

from cds_service.web.app import create_app
from cds_service.config import Settings
from cds_service.feedback.models import UsedToken
from cds_service.feedback.token_replay import DatabaseReplayCache
from cds_service.feedback.settings import StoreSettings
from cds_service.feedback.store import Store
from security_support import PUBLIC_URL, SigningEhr, serve
from test_feedback import outage, run_cli, table

DISCOVERY = "/cds-services"
ISS = "https://ehr.example.test"


@pytest.fixture(scope="module")
def ehr() -> SigningEhr:
    return SigningEhr(iss=ISS)


@pytest.fixture(scope="module")
def issuers(tmp_path_factory, ehr: SigningEhr) -> Path:
    return ehr.issuers_file(tmp_path_factory.mktemp("replay-issuers"))


@pytest.fixture
def instances(service, issuers: Path, database_url: str) -> Iterator[list[Flask]]:
    """Two instances of the app, authentication required, each with its own store on one database."""
    stores = [Store(StoreSettings(database_url=database_url)) for _ in range(2)]
    stores[0].upgrade()
    settings = Settings(trusted_issuers=issuers, public_url=PUBLIC_URL)
    yield [create_app(service, settings, store=store) for store in stores]
    for store in stores:
        store.close()


def test_a_token_replayed_to_another_instance_is_refused(instances, ehr):
    first, second = (app.test_client() for app in instances)
    headers = ehr.header(DISCOVERY)
    assert first.get(DISCOVERY, headers=headers).status_code == 200
    replayed = second.get(DISCOVERY, headers=headers)
    assert replayed.status_code == 401 and replayed.headers["WWW-Authenticate"] == "Bearer"
    assert first.get(DISCOVERY, headers=headers).status_code == 401
    assert second.get(DISCOVERY, headers=ehr.header(DISCOVERY)).status_code == 200  # its own tokens pass


def test_the_same_token_presented_to_two_instances_at_once_is_accepted_once(instances, ehr):
    def present(app: Flask, headers: dict[str, str], start: threading.Barrier) -> int:
        client = app.test_client()
        start.wait()
        return client.get(DISCOVERY, headers=headers).status_code

    with ThreadPoolExecutor(2) as pool:
        for round_ in range(15):
            headers, start = ehr.header(DISCOVERY), threading.Barrier(2)
            statuses = sorted(pool.map(present, instances, [headers] * 2, [start] * 2))
            assert statuses == [200, 401], round_


def test_while_the_database_is_down_a_valid_token_gets_503_and_is_accepted_on_retry(
        request, service, issuers, database_url, ehr):
    quick = database_url + "?timeout=0.2" if database_url.startswith("sqlite") else database_url
    store = Store(StoreSettings(database_url=quick))
    store.upgrade()
    http = create_app(service, Settings(trusted_issuers=issuers, public_url=PUBLIC_URL), store=store).test_client()
    headers = ehr.header(DISCOVERY)
    with outage(request, database_url):
        response = http.get(DISCOVERY, headers=headers)
        assert response.status_code == 503 and response.headers["Retry-After"]
        assert "send the call again" in response.get_json()["error"]
        forged = http.get(DISCOVERY, headers=ehr.header(DISCOVERY, aud="https://elsewhere.test/cds-services"))
        assert forged.status_code == 401  # tokens that fail on their own merits are refused as ever
    assert http.get(DISCOVERY, headers=headers).status_code == 200  # the EHR's retry, once the database is back
    assert http.get(DISCOVERY, headers=headers).status_code == 401
    store.close()


def test_expired_token_ids_are_swept_a_bounded_batch_at_a_time(database_url):
    store = Store(StoreSettings(database_url=database_url))
    cache = DatabaseReplayCache(store, sweep_every=60, sweep_batch=2)
    t0 = time.time()
    for n in range(5):
        assert cache.first_use(ISS, f"old-{n}", expires_at=t0 + 10 + n, now=t0)
    assert not cache.first_use(ISS, "old-0", expires_at=t0 + 10, now=t0 + 5)
    assert jtis(store) == {f"old-{n}" for n in range(5)}
    assert cache.first_use(ISS, "new-1", expires_at=t0 + 400, now=t0 + 100)  # a minute on: sweep the 2 oldest
    assert jtis(store) == {"old-2", "old-3", "old-4", "new-1"}
    assert cache.first_use(ISS, "new-2", expires_at=t0 + 400, now=t0 + 110)  # no sweep within the minute
    assert jtis(store) == {"old-2", "old-3", "old-4", "new-1", "new-2"}
    assert cache.first_use(ISS, "old-2", expires_at=t0 + 400, now=t0 + 120)  # an expired id's row is taken over
    assert not cache.first_use(ISS, "old-2", expires_at=t0 + 400, now=t0 + 130)
    store.close()


def test_db_prune_deletes_every_expired_token_id(database_url, monkeypatch, capsys):
    store = Store(StoreSettings(database_url=database_url))
    cache = DatabaseReplayCache(store, sweep_every=float("inf"))
    now = time.time()
    for n in range(3):
        cache.first_use(ISS, f"expired-{n}", expires_at=now - 60, now=now - 300)
    cache.first_use(ISS, "current", expires_at=now + 300, now=now)
    code, out = run_cli(monkeypatch, capsys, database_url, "db", "prune")
    assert code == 0 and "pruned 3 expired token id(s)" in out
    assert jtis(store) == {"current"}
    store.close()


def test_cds_service_serve_with_two_workers_accepts_a_token_sent_many_times_at_once_once(
        tmp_path, issuers, database_url, ehr):
    env = {"CDS_DATABASE_URL": database_url, "CDS_TRUSTED_ISSUERS": str(issuers), "CDS_PUBLIC_URL": PUBLIC_URL,
           "WEB_CONCURRENCY": "2", "CDS_THREADS": "4"}
    with serve(env, tmp_path / "server.log") as base:
        headers = ehr.header(DISCOVERY)
        start = threading.Barrier(16)

        def present(_: int) -> int:
            start.wait()
            return requests.get(base + DISCOVERY, headers=headers, timeout=30).status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = Counter(pool.map(present, range(48)))
    assert statuses == Counter({200: 1, 401: 47})


def jtis(store: Store) -> set[str]:
    return {row.jti for row in table(store, UsedToken)}
