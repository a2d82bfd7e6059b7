"""The compose lab's loader (deploy/load_fhir_examples.py), run as the lab runs it, against a real FHIR server
(Medplum, devtools/fhir_server.py): afterwards, a call without prefetch gets the example's cards by fetching."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_service.web.app import create_app
from cds_service.config import Settings
from cds_service.record.fhir_client import FetchSettings, FhirFetcher
from cds_service.record.prefetch import resources_in
from cds_service.service import CdsService
from conftest import EXAMPLES, NOW, ROOT, load_json

LOADER = ROOT / "deploy" / "load_fhir_examples.py"
SAMPLES = ["hbv-active--hbsag-positive.json", "neutropenia--critical.json", "liver-injury--alt-and-bilirubin.json"]


def load(base: str, token: str | None, examples: Path = EXAMPLES, *options: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FHIR_TOKEN"}
    if token:
        env["FHIR_TOKEN"] = token
    return subprocess.run([sys.executable, str(LOADER), *options, base, str(examples)], env=env, capture_output=True,
                          text=True, timeout=120)


def prefetched(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for value in body["prefetch"].values() for r in resources_in(value)
            if r.get("resourceType") != "OperationOutcome"]


@pytest.fixture(scope="module")
def loaded(fhir_server) -> str:
    base = fhir_server.base("lab-loader")
    done = load(base, fhir_server.token, EXAMPLES, "--wait", "30")  # as the lab runs it
    assert done.returncode == 0, done.stderr
    assert "loaded" in done.stdout
    return base


def test_every_prefetched_resource_of_the_examples_is_on_the_server_under_its_own_id(loaded, fhir_server):
    bodies = [b for b in map(load_json, sorted(EXAMPLES.glob("*.json"))) if isinstance(b.get("prefetch"), dict)]
    expected = {f"{r['resourceType']}/{r['id']}": r for body in bodies for r in prefetched(body)}
    per_type = Counter(ref.split("/")[0] for ref in expected)
    for kind, count in per_type.items():
        found = requests.get(f"{loaded}/{kind}", params={"_summary": "count"}, headers=fhir_server.headers(),
                             timeout=30).json()
        assert found["total"] == count, kind
    for resource in prefetched(load_json(EXAMPLES / SAMPLES[0])):
        stored = requests.get(f"{loaded}/{resource['resourceType']}/{resource['id']}", headers=fhir_server.headers(),
                              timeout=30).json()
        assert {k: v for k, v in stored.items() if k != "meta"} == {k: v for k, v in resource.items() if k != "meta"}


def test_a_call_without_prefetch_gets_the_example_cards_from_the_loaded_server(loaded, fhir_server, book, client):
    fetch = FetchSettings(deadline_seconds=20.0, read_timeout_seconds=20.0)
    fetching = create_app(CdsService(book, fetcher=FhirFetcher(fetch), clock=lambda: NOW),
                          Settings(auth="off")).test_client()
    for name in SAMPLES:
        body = load_json(EXAMPLES / name)
        bare = {k: v for k, v in copy.deepcopy(body).items() if k != "prefetch"}
        bare["fhirServer"] = loaded
        bare["fhirAuthorization"] = {"access_token": fhir_server.token, "token_type": "Bearer", "expires_in": 300,
                                     "scope": "patient/*.read", "subject": "cd20-cds"}
        sent, fetched = client.post(f"/cds-services/cd20-{body['hook']}", json=body), \
            fetching.post(f"/cds-services/cd20-{body['hook']}", json=bare)
        assert sent.status_code == fetched.status_code == 200, name
        assert _rules(fetched.get_json()) == _rules(sent.get_json()), name


def test_examples_that_disagree_about_a_resource_are_not_loaded(tmp_path):
    body = load_json(EXAMPLES / SAMPLES[0])
    changed = copy.deepcopy(body)
    labs = changed["prefetch"]["labs"]["entry"]
    labs[0]["resource"]["status"] = "amended" if labs[0]["resource"].get("status") != "amended" else "final"
    (tmp_path / "a.json").write_text(json.dumps(body))
    (tmp_path / "b.json").write_text(json.dumps(changed))
    done = load("http://127.0.0.1:9/fhir", None, tmp_path)  # never reached: it stops before loading
    assert done.returncode == 1
    assert f"{labs[0]['resource']['resourceType']}/{labs[0]['resource']['id']}" in done.stderr


def test_an_unreachable_server_is_reported_with_its_own_exit_status(tmp_path):
    (tmp_path / "one.json").write_text((EXAMPLES / SAMPLES[0]).read_text())
    done = load("http://127.0.0.1:9/fhir", None, tmp_path)
    assert done.returncode == 2
    assert "cannot reach http://127.0.0.1:9/fhir" in done.stderr


def test_a_server_that_never_answers_within_the_wait_is_reported_after_it(tmp_path):
    (tmp_path / "one.json").write_text((EXAMPLES / SAMPLES[0]).read_text())
    started = time.monotonic()
    done = load("http://127.0.0.1:9/fhir", None, tmp_path, "--wait", "3")
    assert done.returncode == 2
    assert time.monotonic() - started >= 3
    assert "no answer to /metadata within 3 s" in done.stderr


def _rules(response: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((c["source"]["topic"]["code"], c["indicator"]) for c in response["cards"])
