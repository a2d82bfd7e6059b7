"""Feedback answered 200 survives a crash: a real `cds-service serve` (gunicorn, two workers) is killed
with SIGKILL while several threads post feedback, then started again; every feedback that got a 200 is
in the database, and the EHR's retries of them are not stored twice; and a graceful stop loses no issued card.
On SQLite and on PostgreSQL."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import select

from cds_service.feedback.models import Feedback, IssuedCard
from cds_service.feedback.settings import StoreSettings
from cds_service.feedback.store import Store
from conftest import EXAMPLES

FEEDBACK = "/cds-services/cd20-order-sign/feedback"
SIGN = "/cds-services/cd20-order-sign"
POSTERS = 6
KILL_AFTER = 60  # acknowledged feedback before the kill
CARDS_PER_POSTER = 1000  # far more than a poster gets through before the kill


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(database_url: str, directory: Path, name: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`cds-service serve` in a process group of its own, so a kill takes the master and its workers."""
    port = free_port()
    metrics = directory / f"{name}-metrics"
    metrics.mkdir()
    env = {**os.environ, "CDS_DATABASE_URL": database_url, "CDS_AUTH": "off", "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    env.pop("CDS_DEV", None)
    log_path = directory / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cds_service.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "2", "--threads", "4"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, process, log_path)
        yield base, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # gunicorn's quick shutdown
            process.wait(timeout=15)


def _wait_until_up(base: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        try:
            if requests.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or no worker booted yet
            time.sleep(0.1)
    raise AssertionError(f"the service did not come up within 30 s:\n{log_path.read_text()}")


def feedback(card: str) -> dict:
    return {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-21T12:00:00Z"}]}


def poster_card(poster: int, i: int) -> str:
    return f"poster-{poster}-card-{i}"


def issue_poster_cards(database_url: str) -> None:
    """The cards the posters give feedback on, on record as issued (feedback about others is not kept)."""
    store = Store(StoreSettings(database_url=database_url, patient_hash_key=b"k" * 32))
    cards = [{"uuid": poster_card(p, i), "indicator": "warning", "source": {"topic": {"code": "igg-missing"}}}
             for p in range(POSTERS) for i in range(CARDS_PER_POSTER)]
    store.record_cards("cd20-order-sign", "order-sign", "patient-1", cards)
    assert store.flush(30)
    store.close()


def post_until_refused(base: str, poster: int, acknowledged: list[str]) -> None:
    """One EHR connection posting feedback until the service is gone; notes each card answered 200."""
    with requests.Session() as session:
        for i in range(CARDS_PER_POSTER):
            card = poster_card(poster, i)
            try:
                response = session.post(base + FEEDBACK, json=feedback(card), timeout=10)
            except requests.RequestException:
                return
            if response.status_code == 200:
                acknowledged.append(card)


def stored_cards(database_url: str, column: Any = Feedback.card_uuid) -> list[str]:
    store = Store(StoreSettings(database_url=database_url))
    try:
        with store.transaction() as connection:
            return list(connection.execute(select(column)).scalars())
    finally:
        store.close()


def signal_under_load(process: subprocess.Popen, clients: list[threading.Thread], answered: list[str],
                      signal_number: int) -> int:
    """Start the clients, signal the service once KILL_AFTER answers are in, and wait for everything to end:
    the service's exit code."""
    for client in clients:
        client.start()
    deadline = time.monotonic() + 30
    while len(answered) < KILL_AFTER and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal_number)
    for client in clients:
        client.join(timeout=30)
    assert len(answered) >= KILL_AFTER, "the clients were too slow to get going"
    return process.wait(timeout=30)


def test_every_feedback_answered_200_survives_a_kill_of_the_service(database_url, tmp_path):
    acknowledged: list[str] = []
    issue_poster_cards(database_url)
    with serving(database_url, tmp_path, "first") as (base, process):
        posters = [threading.Thread(target=post_until_refused, args=(base, n, acknowledged)) for n in range(POSTERS)]
        signal_under_load(process, posters, acknowledged, signal.SIGKILL)
    assert not set(acknowledged) - set(stored_cards(database_url))
    with serving(database_url, tmp_path, "second") as (base, _):
        for card in acknowledged:  # the EHR retries, not knowing what was stored
            assert requests.post(base + FEEDBACK, json=feedback(card), timeout=10).status_code == 200
    stored = stored_cards(database_url)
    assert len(stored) == len(set(stored)) and set(acknowledged) <= set(stored)


def call_until_refused(base: str, request: dict, issued: list[str]) -> None:
    """One EHR connection making hook calls until the service is gone; notes each card it was sent."""
    with requests.Session() as session:
        while True:
            body = {**request, "hookInstance": str(uuid.uuid4())}
            try:
                response = session.post(base + SIGN, json=body, timeout=10)
            except requests.RequestException:
                return
            if response.status_code == 200:
                issued += [card["uuid"] for card in response.json()["cards"]]


def test_cards_issued_up_to_a_graceful_stop_are_all_recorded(database_url, tmp_path):
    """The workers write issued cards from a queue, a moment after answering; a stop (SIGTERM) during
    hook calls writes what is queued before the workers exit."""
    request = json.loads((EXAMPLES / "hbv-screening-missing--first-dose.json").read_text())
    issued: list[str] = []
    with serving(database_url, tmp_path, "stopped") as (base, process):
        callers = [threading.Thread(target=call_until_refused, args=(base, request, issued)) for _ in range(POSTERS)]
        assert signal_under_load(process, callers, issued, signal.SIGTERM) == 0
    assert set(issued) <= set(stored_cards(database_url, IssuedCard.card_uuid))
