"""`make sandbox`: its demo records give today the cards their examples give on 2026-11-21, and the command
starts, prints a working URL for every demo patient, and stops cleanly. (The browser side is
tests/test_sandbox_browser.py.)"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from conftest import ROOT
from sandbox import demo
from sandbox.stack import PUBLIC_SANDBOX
from cds_service.service import CdsService

SERVICES = {"patient-view": "cd20-patient-view", "order-select": "cd20-order-select", "order-sign": "cd20-order-sign"}
LATER = timedelta(days=400, hours=7, minutes=13)  # any time after the examples' day, at any hour


def _cards(book, request, at):
    result = CdsService(book, clock=lambda: at).call(SERVICES[request["hook"]], request)
    return [(c["source"]["topic"]["code"], c["indicator"]) for c in result["cards"]]


@pytest.mark.parametrize("patient", demo.PATIENTS, ids=lambda p: p.patient_id)
def test_a_demo_record_moved_to_a_later_day_gives_its_examples_cards(book, patient):
    written = _cards(book, patient.request, demo.WRITTEN_AT)
    assert _cards(book, demo.moved(patient.request, LATER), demo.WRITTEN_AT + LATER) == written


def test_without_moving_the_dates_the_cards_would_be_wrong_a_year_later(book):
    patient = next(p for p in demo.PATIENTS if p.example.startswith("clean--"))
    assert _cards(book, patient.request, demo.WRITTEN_AT) == []
    assert "hbv-screening-missing" in dict(_cards(book, patient.request, demo.WRITTEN_AT + LATER))


def test_dates_and_datetimes_move_and_nothing_else_does():
    by = timedelta(days=13, hours=3)
    record = {"effectiveDateTime": "2026-11-18T08:30:00Z", "issued": "2026-11-18T08:30:00.250+01:00",
              "birthDate": "1990-01-01", "onsetDateTime": "2009", "id": "2026-11-18-lab",
              "note": [{"text": "drawn 2026-11-18"}], "valueQuantity": {"value": 20261118}}
    assert demo.moved(record, by) == {
        "effectiveDateTime": "2026-12-01T11:30:00Z", "issued": "2026-12-01T11:30:00.250000+01:00",
        "birthDate": "1990-01-14", "onsetDateTime": "2009", "id": "2026-11-18-lab",
        "note": [{"text": "drawn 2026-11-18"}], "valueQuantity": {"value": 20261118}}


def test_make_sandbox_prints_working_urls_for_every_demo_patient_and_stops_cleanly(tmp_path):
    env = {**os.environ, "PORT": "0", "FHIR_PORT": "0", "SANDBOX_PORT": "0", "SANDBOX_DIR": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-m", "sandbox"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    output: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=lambda: [*map(output.put, process.stdout), output.put(None)], daemon=True).start()
    try:
        printed = _until(output, "Ctrl-C stops everything.")
        urls = [line.strip() for line in printed if line.strip().startswith("http")]
        public = [u for u in urls if u.startswith(PUBLIC_SANDBOX + "/?")]
        local = [u for u in urls if u.startswith("http://127.0.0.1:")]
        assert len(public) == len(local) == len(demo.PATIENTS)
        for url in public + local:
            query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
            assert query["patientId"] in {p.patient_id for p in demo.PATIENTS}
            patient = requests.get(f"{query['fhirServiceUrl']}/Patient/{query['patientId']}", timeout=10)
            assert patient.status_code == 200 and patient.headers["Access-Control-Allow-Origin"] == "*"
            assert requests.get(query["serviceDiscoveryURL"], timeout=10).status_code == 401  # auth is on
        assert requests.get(local[0].split("/?")[0] + "/index.html", timeout=10).status_code == 200
        assert any("STORE_USER_CHOSEN_MEDICATION" in line for line in printed)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    rest = "".join(_until(output, None))
    assert process.returncode == 0, rest
    assert "Stopped." in rest
    assert (tmp_path / "sandbox.db").exists() and (tmp_path / "sandbox.log").exists()


def _until(output: queue.Queue[str | None], last: str | None, seconds: float = 180) -> list[str]:
    """The command's output up to and including the line `last` (None: up to its end)."""
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while (line := output.get(timeout=max(0.1, deadline - time.monotonic()))) is not None:
        seen.append(line)
        if line.strip() == last:
            return seen
    if last is not None:
        raise AssertionError(f"`python -m sandbox` ended before it was ready:\n{''.join(seen)[-3000:]}")
    return seen
