"""The image, built from the Dockerfile and run as a user runs it, checked from outside (make container-test).

Authentication on (an EHR of the test's own signs the tokens), SQLite in /app/var (the one folder the
image's user may write), the example clock. Where no registry answers, the image builds on the stand-in
python:3.11-slim of tests/stand_ins.py; the Dockerfile is the one users build.
"""
from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from conftest import ROOT
from security_support import SigningEhr, example_request, free_port
from tests import stand_ins
from tests.containers import EXAMPLE_CLOCK, Engine, readable_issuers, wait_for

pytestmark = pytest.mark.container

IMAGE = "localhost/cd20-cds:container-test"
BUILD_STAGE = f"{IMAGE}-build"  # tagged, so that removing untagged images keeps it as the next run's cache
EXAMPLE = example_request("hbv-active--hbsag-positive.json")
USER = "cds"
UID = GID = "10001"


@dataclass(frozen=True)
class Running:
    container: str
    base: str  # where the test reaches it
    public_url: str  # what tokens are minted for


@pytest.fixture(scope="module")
def image(engine: Engine) -> str:
    stand_ins.ensure(engine, stand_ins.PYTHON)
    engine.build(BUILD_STAGE, ROOT, target="build")
    engine.build(IMAGE, ROOT)
    return IMAGE


@pytest.fixture(scope="module")
def ehr() -> SigningEhr:
    return SigningEhr()


@pytest.fixture(scope="module")
def running(engine: Engine, image: str, ehr: SigningEhr, tmp_path_factory) -> Iterator[Running]:
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    issuers = readable_issuers(ehr, tmp_path_factory.mktemp("issuers"), EXAMPLE["fhirServer"])
    name = f"cd20-cds-test-{uuid.uuid4().hex[:8]}"
    settings = {"CDS_PUBLIC_URL": public_url, "CDS_TRUSTED_ISSUERS": f"/etc/cd20-cds/{issuers.name}",
                "CDS_PATIENT_HASH_KEY": secrets.token_hex(32), "CDS_NOW": EXAMPLE_CLOCK}
    engine.run("run", "--detach", "--name", name, "--publish", f"127.0.0.1:{port}:8080",
               "--volume", f"{issuers.parent}:/etc/cd20-cds:ro", *(f"--env={k}={v}" for k, v in settings.items()),
               *engine.health_check_flags(), image)
    try:
        wait_for(f"{public_url}/healthz", engine, name)
        yield Running(name, public_url, public_url)
    finally:
        engine.run("rm", "--force", name, check=False)


def test_the_service_is_alive_and_ready_with_its_sqlite_store_in_the_writable_folder(running):
    assert requests.get(f"{running.base}/healthz", timeout=10).json() == {"status": "alive"}
    ready = requests.get(f"{running.base}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "engine": "ok", "rules": "ok"}


def test_discovery_needs_a_token_from_a_trusted_issuer(running, ehr):
    url = f"{running.base}/cds-services"
    assert requests.get(url, timeout=10).status_code == 401
    signed = requests.get(url, headers=ehr.header("/cds-services", base=running.public_url), timeout=10)
    assert signed.status_code == 200
    assert {"cd20-order-select", "cd20-order-sign"} <= {s["id"] for s in signed.json()["services"]}


def test_a_signed_hook_call_gets_the_cards_the_code_gives(running, ehr, client):
    body = EXAMPLE
    path = f"/cds-services/cd20-{body['hook']}"
    answer = requests.post(f"{running.base}{path}", json=body, headers=ehr.header(path, base=running.public_url),
                           timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["cards"], "the example has cards"
    assert answer.json() == client.post(path, json=body).get_json()


def test_it_runs_as_the_unprivileged_user_and_group_the_dockerfile_names(running, engine, image):
    assert engine.run("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip() == f"{UID}:{GID}"
    ids = engine.run("exec", running.container, "id").stdout.split()
    assert ids == [f"uid={UID}({USER})", f"gid={GID}({USER})", f"groups={GID}({USER})"]
    status = engine.run("exec", running.container, "cat", "/proc/1/status").stdout  # the server, PID 1
    owners = {line.split(":")[0]: line.split()[1:] for line in status.splitlines() if line.startswith(("Uid", "Gid"))}
    assert owners == {"Uid": [UID] * 4, "Gid": [GID] * 4}


def test_the_health_check_passes_while_the_service_answers_and_fails_where_nothing_does(running, engine, image):
    check = json.loads(engine.run("image", "inspect", "--format", "{{json .Config.Healthcheck}}", image).stdout)
    assert check["Test"][0] == "CMD" and "/healthz" in " ".join(check["Test"])
    assert engine.healthy(running.container)
    idle = f"cd20-cds-test-idle-{uuid.uuid4().hex[:8]}"
    engine.run("run", "--detach", "--name", idle, *engine.health_check_flags(), image, "sleep", "300")
    try:
        assert not engine.healthy(idle)
    finally:
        engine.run("kill", idle, check=False)  # SIGKILL: sleep, as PID 1, ignores SIGTERM
        engine.run("rm", "--force", idle, check=False)


def test_sigterm_stops_the_service_cleanly_and_promptly(running, engine):
    """Last: it stops the container. `stop` sends SIGTERM and waits; gunicorn exits 0 well before SIGKILL."""
    started = time.monotonic()
    engine.run("stop", "--time", "30", running.container, timeout=60)
    assert time.monotonic() - started < 20
    state = json.loads(engine.run("inspect", "--format", "{{json .State}}", running.container).stdout)
    assert (state["Status"], state["ExitCode"]) == ("exited", 0)
