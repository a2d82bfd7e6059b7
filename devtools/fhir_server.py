"""A real FHIR R4 server on loopback, for the tests, the fetch bench and `make sandbox`.

Medplum's FHIR router and in-memory repository are installed from npm once into a cache outside the
repository (~/.cache/cd20-cds/medplum-<version>, or under $XDG_CACHE_HOME), then run behind our own
glue, fhir_server.js, on a free 127.0.0.1 port, and stopped by PID. Seeding helpers turn the example
hook requests and Synthea bundles into the server's data, so the same records can be sent as prefetch
or fetched. No pytest here (the session fixture is in tests/conftest.py): sandbox/ runs the same server.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import requests

MEDPLUM_VERSION = "5.2.13"
PACKAGES = [f"@medplum/{name}@{MEDPLUM_VERSION}" for name in ("fhir-router", "core", "definitions")]
GLUE = Path(__file__).with_suffix(".js")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "fhir_examples"
SYNTHEA = ROOT.parent / "shared" / "fhir-corpus" / "fhir" / "synthea" / "smart-generated-sample-data"
SYNTHEA_BUNDLES = ["Thanh_Considine_b7a86b8b-bbf8-4107-96e6-76a948fba0e8.json",
                   "Jordan_Cruickshank_5de38439-d320-46d3-854d-3c098e88de4c.json"]
SEEDED_TYPES = {"Patient", "Observation", "Condition", "MedicationAdministration", "MedicationStatement",
                "MedicationRequest", "Medication", "AllergyIntolerance", "Immunization"}  # what the templates ask for
START_TIMEOUT = 60


class FhirServer:
    """A running glue server; `base(tenant)` is a fhirServer URL with its own empty repository."""

    def __init__(self, process: subprocess.Popen, port: int, token: str | None, log: Any) -> None:
        self.process, self.port, self.token, self._log = process, port, token, log

    def base(self, tenant: str) -> str:
        return f"http://127.0.0.1:{self.port}/{tenant}/fhir"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def configure(self, tenant: str, max_count: int | None = None, delays: dict[str, int] | None = None) -> None:
        """Cap the tenant's page size (as real servers cap _count) and slow resource types down (ms)."""
        config = {"maxCount": max_count, "delays": delays or {}}
        requests.put(f"http://127.0.0.1:{self.port}/{tenant}/config", json=config, headers=self.headers(),
                     timeout=10).raise_for_status()

    def seed(self, tenant: str, resources: list[dict[str, Any]]) -> None:
        """PUT every resource (a batch), so ids and references stay as written."""
        entries = [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                   for r in resources]
        response = requests.post(self.base(tenant), json={"resourceType": "Bundle", "type": "batch", "entry": entries},
                                 headers=self.headers(), timeout=60)
        response.raise_for_status()
        failed = [e["response"] for e in response.json().get("entry", []) if e["response"]["status"] not in ("200", "201")]
        if failed:
            raise RuntimeError(f"seeding {tenant!r}: {len(failed)} entries failed, e.g. {json.dumps(failed[0])[:500]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cd20-cds" / f"medplum-{MEDPLUM_VERSION}"


def install() -> Path:
    """The node_modules holding Medplum's packages; installed from npm on first use, then reused."""
    target = cache_dir()
    modules = target / "node_modules"
    if (target / "installed").exists():
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to install the test FHIR server (Medplum) but is not on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".medplum-", dir=target.parent))
    (staging / "package.json").write_text('{"private": true}\n')
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error", *PACKAGES],
                          cwd=staging, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"npm install {' '.join(PACKAGES)} failed:\n{done.stderr[-2000:]}")
    (staging / "installed").write_text(MEDPLUM_VERSION + "\n")
    try:
        staging.rename(target)  # atomic: a half-finished install is never taken for a cache
    except OSError:  # another run finished first; use its copy
        shutil.rmtree(staging, ignore_errors=True)
    return modules


def start(token: str | None = None, port: int = 0) -> FhirServer:
    """Start the glue on `port` (0: a free one) and wait until it answers /metadata."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is needed to run the test FHIR server but is not on PATH")
    env = {**os.environ, "NODE_PATH": str(install()), "PORT": str(port), "REQUIRE_TOKEN": token or ""}
    log = tempfile.TemporaryFile()
    process = subprocess.Popen([node, *_node_flags(node), str(GLUE)], stdout=subprocess.PIPE, stderr=log, env=env)
    try:
        server = FhirServer(process, _port(process, log), token, log)
        _wait_ready(server)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return server


def _node_flags(node: str) -> list[str]:
    """@medplum/core needs a global WebSocket: Node 20 has it only behind a flag, Node 22+ by default."""
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    major = int(re.match(r"v(\d+)", version).group(1))  # type: ignore[union-attr]
    return ["--experimental-websocket"] if major < 22 else []


def _port(process: subprocess.Popen, log: Any) -> int:
    ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
    line = process.stdout.readline().decode() if ready else ""  # type: ignore[union-attr]
    found = re.match(r"listening (\d+)", line)
    if not found:
        log.seek(0)
        raise RuntimeError(f"the test FHIR server did not start: {log.read().decode(errors='replace')[-2000:]}")
    return int(found.group(1))


def _wait_ready(server: FhirServer) -> None:
    until = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if requests.get(f"{server.base('ready')}/metadata", headers=server.headers(), timeout=5).ok:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > until or server.process.poll() is not None:
            raise RuntimeError("the test FHIR server did not answer /metadata")
        time.sleep(0.1)


def synthea_resources(path: Path) -> list[dict[str, Any]]:
    """A Synthea transaction Bundle as resources to PUT: urn:uuid references become Type/id ones."""
    bundle = json.loads(path.read_text(encoding="utf-8"))
    refs = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
    kept = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] in SEEDED_TYPES]
    return json.loads(re.sub(r'"(urn:uuid:[0-9a-fA-F-]+)"', lambda m: json.dumps(refs.get(m.group(1), m.group(1))),
                             json.dumps(kept)))


def example_requests() -> Iterator[tuple[str, dict[str, Any]]]:
    """The example hook requests in fhir_examples/ that carry prefetch: (name, request body)."""
    for path in sorted(EXAMPLES.glob("*.json")):
        body = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(body, dict) and body.get("hook") and isinstance(body.get("prefetch"), dict):
            yield path.stem, body


def prefetched_resources(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every resource a request's prefetch holds, to seed the server with the same record."""
    found = []
    for value in body["prefetch"].values():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Bundle":
            found += [e["resource"] for e in value.get("entry") or () if isinstance(e.get("resource"), dict)]
        elif value.get("resourceType") not in (None, "OperationOutcome"):
            found.append(value)
    return [r for r in found if r.get("id")]


def tenant_name(name: str) -> str:
    """A tenant (repository) name for an example: its file name, in the characters a tenant may use."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)

