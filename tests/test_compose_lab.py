"""The compose lab, brought up from docker-compose.yml as a user does, and checked from outside
(make container-test).

The FHIR server is the lab's own (deploy/lab/fhir-medplum.yml: the server the tests run, in place of HAPI,
which takes minutes to start and cannot be pulled without a registry); PostgreSQL is the official image
where it can be pulled, else Debian's (deploy/lab/postgres-debian.yml). A third override, written by the
test, trusts the test's own EHR instead of the sandbox (whose private key the test does not have) and sets
the examples' clock. Unique project name and free ports, so that it never meets another lab.
"""
from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from conftest import ROOT
from security_support import SigningEhr, example_request, free_port
from tests import stand_ins
from tests.containers import EXAMPLE_CLOCK, Engine, readable_issuers, wait_for

pytestmark = pytest.mark.container

COMPOSE = ROOT / "docker-compose.yml"
FHIR_OVERRIDE = ROOT / "deploy" / "lab" / "fhir-medplum.yml"
POSTGRES_OVERRIDE = ROOT / "deploy" / "lab" / "postgres-debian.yml"
LAB_FHIR = "http://localhost:8081/fhir"  # the FHIR server as the service (in its network namespace) sees it
ADMIN_TOKEN = "lab-admin-token"  # the lab's default (docker-compose.yml)
SAMPLES = ["hbv-active--hbsag-positive.json", "neutropenia--critical.json", "liver-injury--alt-and-bilirubin.json"]


@dataclass
class Lab:
    engine: Engine
    project: str
    files: list[Path]
    ports: dict[str, int]
    ehr: SigningEhr
    answers: dict[str, Any] = field(default_factory=dict)  # what the tests learnt, for the ones after them

    @property
    def base(self) -> str:
        return f"http://localhost:{self.ports['CDS_PORT']}"

    def compose(self, *args: str, timeout: float = 300, check: bool = True):
        env = {name: str(port) for name, port in self.ports.items()} | {"CDS_PUBLIC_URL": self.base}
        return self.engine.compose(self.project, self.files, *args, env=env, timeout=timeout, check=check)

    def container(self, service: str) -> str:
        found = self.engine.run("ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={self.project}",
                                "--filter", f"label=com.docker.compose.service={service}").stdout.split()
        assert len(found) == 1, (service, found)
        return found[0]

    def call(self, body: dict[str, Any]) -> requests.Response:
        path = f"/cds-services/cd20-{body['hook']}"
        return requests.post(f"{self.base}{path}", json=body, headers=self.ehr.header(path, base=self.base), timeout=60)

    def psql(self, query: str) -> str:
        return self.engine.run("exec", self.container("db"), "psql", "--username=cds", "--dbname=cds",
                               "--tuples-only", "--no-align", "--command", query).stdout.strip()

    def wait_until_ready(self) -> None:
        wait_for(f"{self.base}/readyz", self.engine, self.container("cds"))


@pytest.fixture(scope="module")
def lab(engine: Engine, tmp_path_factory) -> Iterator[Lab]:
    stand_ins.ensure(engine, stand_ins.PYTHON)
    stand_ins.ensure(engine, stand_ins.NODE)
    files = [COMPOSE, FHIR_OVERRIDE]
    if not stand_ins.obtainable(engine, yaml.safe_load(COMPOSE.read_text())["services"]["db"]["image"]):
        stand_ins.ensure(engine, stand_ins.DEBIAN)
        files.append(POSTGRES_OVERRIDE)
    ehr = SigningEhr()
    files.append(trusting(ehr, tmp_path_factory.mktemp("lab")))
    lab = Lab(engine, f"cd20-cds-test-{uuid.uuid4().hex[:8]}", files,
              {"CDS_PORT": free_port(), "FHIR_PORT": free_port()}, ehr)
    try:
        lab.compose("up", "--detach", "--build", timeout=1800)
        lab.wait_until_ready()
        yield lab
    finally:
        lab.compose("down", "--volumes", check=False)


def trusting(ehr: SigningEhr, directory: Path) -> Path:
    """The override that makes the lab trust the test's EHR (naming the lab's FHIR server) and use the examples'
    clock."""
    issuers = readable_issuers(ehr, directory, LAB_FHIR)
    override = {"services": {"cds": {
        "environment": {"CDS_TRUSTED_ISSUERS": f"/etc/cd20-cds-test/{issuers.name}", "CDS_NOW": EXAMPLE_CLOCK},
        "volumes": [f"{directory}:/etc/cd20-cds-test:ro"]}}}
    path = directory.parent / f"{directory.name}-override.yml"
    path.write_text(yaml.safe_dump(override))
    return path


def test_the_lab_starts_and_its_loader_fills_the_fhir_server_with_the_examples(lab):
    loader = lab.container("fhir-loader")
    exit_code = lab.engine.run("wait", loader, timeout=400).stdout.strip()
    log = lab.engine.run("logs", loader)
    assert exit_code == "0", log.stdout + log.stderr
    assert "loaded" in log.stdout
    from_host = f"http://localhost:{lab.ports['FHIR_PORT']}/fhir"  # what a browser (the sandbox) uses
    patient = requests.get(f"{from_host}/Patient/{example_request(SAMPLES[0])['context']['patientId']}", timeout=30)
    assert patient.status_code == 200 and patient.json()["resourceType"] == "Patient"


def test_hook_calls_with_prefetch_get_the_cards_the_code_gives(lab, client):
    for name in SAMPLES:
        body = lab_request(name)
        answer = lab.call(body)
        assert answer.status_code == 200, (name, answer.text)
        assert answer.json() == client.post(f"/cds-services/cd20-{body['hook']}", json=body).get_json(), name
        lab.answers[name] = answer.json()


def test_hook_calls_without_prefetch_fetch_the_record_from_the_lab_fhir_server(lab):
    for name in SAMPLES:
        bare = {k: v for k, v in lab_request(name).items() if k != "prefetch"}
        answer = lab.call(bare)
        assert answer.status_code == 200, (name, answer.text)
        assert rules(answer.json()) == rules(lab.answers[name]), name


def test_feedback_is_stored_and_still_there_after_the_service_and_database_restart(lab):
    card = lab.answers[SAMPLES[0]]["cards"][0]
    comment = f"lab test {secrets.token_hex(4)}"
    feedback = {"feedback": [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": EXAMPLE_CLOCK,
                              "overrideReason": {"userComment": comment}}]}
    body = lab_request(SAMPLES[0])
    path = f"/cds-services/cd20-{body['hook']}/feedback"
    stored = requests.post(f"{lab.base}{path}", json=feedback, headers=lab.ehr.header(path, base=lab.base), timeout=30)
    assert stored.status_code == 200, stored.text
    query = f"SELECT outcome, user_comment FROM feedback WHERE card_uuid = '{card['uuid']}'"
    assert lab.psql(query) == f"overridden|{comment}"
    lab.compose("restart", "db", "cds")
    lab.wait_until_ready()
    assert lab.psql(query) == f"overridden|{comment}"
    report = requests.get(f"{lab.base}/admin/report", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    assert report.status_code == 200 and card["source"]["topic"]["code"] in report.text
    assert lab.call(body).status_code == 200


def test_down_with_volumes_leaves_no_container_volume_or_network_behind(lab):
    """Last: it takes the lab down."""
    lab.compose("down", "--volumes")
    listings = {"container": ["container", "ls", "--all", "--format", "{{.Names}}"],
                "volume": ["volume", "ls", "--format", "{{.Name}}"], "network": ["network", "ls", "--format", "{{.Name}}"]}
    if lab.engine.name == "podman":  # podman-compose puts the project's containers in a pod
        listings["pod"] = ["pod", "ls", "--format", "{{.Name}}"]
    left = {kind: [name for name in lab.engine.run(*argv).stdout.split() if lab.project in name]
            for kind, argv in listings.items()}
    assert left == {kind: [] for kind in listings}


def lab_request(name: str) -> dict[str, Any]:
    """An example hook request as an EHR using the lab sends it: naming the lab's FHIR server."""
    return {**example_request(name), "fhirServer": LAB_FHIR}


def rules(response: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((c["source"]["topic"]["code"], c["indicator"]) for c in response["cards"])
