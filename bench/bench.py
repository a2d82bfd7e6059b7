"""Time per hook call, in process and over HTTP, next to the time json.loads takes on the same body.

json.loads is the floor: every request must at least be parsed. The targets say how far above that
floor the service may sit: under 10 ms in process for a typical prefetch, and under 3 x json.loads for
the largest Synthea record (2.8 MB), so that a big chart costs parsing, not rule evaluation.

Run from the project root: `make bench` (or `.venv/bin/python bench/bench.py`).
"""
from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import requests

from cds_service.web import jsonbody
from cds_service.engine import rulebook
from cds_service.config import Settings
from cds_service.service import CdsService

ROOT = Path(__file__).resolve().parent.parent
SYNTHEA = (ROOT.parent / "shared/fhir-corpus/fhir/synthea/emisgroup-exa/"
           "Leonardo412_Schuppe920_10bf6da8-ffa1-6913-a119-726634be754c.json")
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
SERVICE = "cd20-order-sign"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
OCRELIZUMAB = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1876380",
                           "display": "ocrelizumab 30 MG/ML Injectable Solution"}]}


@dataclass(frozen=True)
class Case:
    name: str
    bodies: list[bytes]  # sent in turn: one, or one per run when no call may repeat an earlier one
    runs: int  # timed runs per path, after a few untimed warm-up runs
    target: str  # for the in-process path
    meets: Callable[[list[float], list[float]], bool]  # (times, json.loads times) -> target met


@dataclass(frozen=True)
class Row:
    case: Case
    path: str
    times: list[float]  # seconds
    floor: list[float]  # json.loads of the same body, seconds

    @property
    def target(self) -> str:
        return self.case.target if self.path == "in process" else "-"

    @property
    def met(self) -> bool | None:
        """None where the row has no target."""
        return self.case.meets(self.times, self.floor) if self.path == "in process" else None


def main() -> int:
    settings = Settings.from_env()
    service = CdsService(rulebook.load(), clock=lambda: NOW)
    keys = next(s["prefetch"] for s in service.discovery()["services"] if s["id"] == SERVICE)
    cases = [Case("typical (10 labs)", [_raw(_typical_body(keys))], 500, "p95 < 10 ms",
                  lambda times, _: _p95(times) < 0.010),
             Case("typical, first call", first_calls(keys, 505), 500, "p95 < 10 ms",
                  lambda times, _: _p95(times) < 0.010),
             Case("Synthea 2.8 MB", [_synthea_raw(keys)], 60, "median < 3 x json.loads",
                  lambda times, floor: statistics.median(times) < 3 * statistics.median(floor))]
    print(_machine())
    rows = [Row(case, "in process", *_measure(_in_process(service, settings), case)) for case in cases]
    with _server() as base, requests.Session() as http:
        rows += [Row(case, "HTTP", *_measure(_over_http(http, base), case)) for case in cases]
    print(_table(rows))
    return 0 if all(r.met is not False for r in rows) else 1


def _in_process(service: CdsService, settings: Settings) -> Callable[[bytes], Any]:
    """What the route does with a body, minus Flask: parse with the depth check, call, serialise."""
    def call(raw: bytes) -> Any:
        return json.dumps(service.call(SERVICE, jsonbody.loads(raw, settings.max_json_depth)))
    return call


def _over_http(http: requests.Session, base: str) -> Callable[[bytes], Any]:
    def call(raw: bytes) -> Any:
        response = http.post(f"{base}/cds-services/{SERVICE}", data=raw,
                             headers={"Content-Type": "application/json"}, timeout=30)
        response.raise_for_status()
        return response.content
    return call


def _measure(call: Callable[[bytes], Any], case: Case) -> tuple[list[float], list[float]]:
    """Times of the call and of json.loads on the same body, taken in turn so both see the same load."""
    bodies = iter(case.bodies * (1 if len(case.bodies) > 1 else case.runs + 5))
    for _ in range(5):
        raw = next(bodies)
        call(raw), json.loads(raw)
    times, floors = [], []
    for _ in range(case.runs):
        raw = next(bodies)
        floors.append(_timed(json.loads, raw))
        times.append(_timed(call, raw))
    return times, floors


def _timed(call: Callable[[bytes], Any], raw: bytes) -> float:
    start = time.perf_counter()
    call(raw)
    return time.perf_counter() - start


def _table(rows: list[Row]) -> str:
    head = (f"{'case':<20} {'body':>9} {'path':<11} {'runs':>5} {'median ms':>10} {'p95 ms':>8} "
            f"{'json.loads ms':>14} {'x json.loads':>13}  {'target':<24} met")
    lines = [head, "-" * len(head)]
    for r in rows:
        floor = statistics.median(r.floor)
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        lines.append(f"{r.case.name:<20} {_size(r.case.bodies[0]):>9} {r.path:<11} {len(r.times):>5} "
                     f"{statistics.median(r.times) * 1000:>10.2f} {_p95(r.times) * 1000:>8.2f} "
                     f"{floor * 1000:>14.2f} {statistics.median(r.times) / floor:>13.1f}  {r.target:<24} {met}")
    return "\n".join(lines)


def _size(raw: bytes) -> str:
    return f"{len(raw) / 1e6:.1f} MB" if len(raw) >= 1e6 else f"{len(raw) / 1e3:.1f} kB"


def _p95(times: list[float]) -> float:
    return statistics.quantiles(times, n=20, method="inclusive")[-1]


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"machine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}; "
            f"load average {load} (figures taken under load are inflated and noisy)\n")


@contextmanager
def serve_process(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`cds-service serve` on a free loopback port with `env`: its URL and process; stopped afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(Path(sys.executable).parent / "cds-service"), "serve",
                                    "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=log)
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def _server() -> Iterator[str]:
    """`cds-service serve` as in production (gunicorn, 2 workers), in development mode with a frozen clock."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "CDS_DEV": "1", "CDS_AUTH": "off", "CDS_NOW": "2026-11-21T12:00:00Z",
               "WEB_CONCURRENCY": "2", "CDS_DATABASE_URL": f"sqlite:///{home}/bench.db"}
        log_path = Path(home) / "server.log"
        with serve_process(env, log_path) as (url, process):
            yield _wait_until_up(url, process, log_path)


def _wait_until_up(base: str, process: subprocess.Popen, log_path: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{base}/cds-services", timeout=1).status_code == 200:
                return base
        except requests.ConnectionError:
            time.sleep(0.1)
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
    raise RuntimeError(f"cds-service serve did not start (exit code {process.poll()}); its log ends:\n{tail}")


def _typical_body(keys: Iterable[str], n: int = 0) -> dict[str, Any]:
    """A first ocrelizumab dose with the ten results a clinic usually has on file; IgG is low.

    n > 0 gives another patient with the same picture: every result a little higher (by n/100,000, at
    most a few percent) and its own ids, so that nothing the service remembers from body m applies to n."""
    def q(loinc: str, value: float, *args: Any, **limits: Any) -> dict[str, Any]:
        return _quantity(loinc, round(value * (1 + n / 100_000), 6), *args, n=n, **limits)

    labs = [q("1742-6", 25, "U/L", 10, high=40), q("1920-8", 22, "U/L", 10, high=40),
            q("6768-6", 80, "U/L", 10, high=130), q("1975-2", 0.6, "mg/dL", 10, high=1.2),
            q("751-8", 3.1, "10*9/L", 10), q("2465-3", 620, "mg/dL", 60, low=700, high=1600),
            _answer("5196-1", "260385009", 60, n), _answer("16933-4", "260385009", 60, n),
            q("1742-6", 28, "U/L", 120, high=40), q("751-8", 2.9, "10*9/L", 120)]
    patient = {"resourceType": "Patient", "id": f"p{n + 1}", "gender": "female", "birthDate": "1990-04-02"}
    return _request(keys, patient, _bundle(labs))


def first_calls(keys: Iterable[str], count: int) -> list[bytes]:
    """`count` typical bodies, each for another patient (see _typical_body): sent in turn, none is a
    repeat of a question the service has answered lately, so each call costs what a first call costs."""
    return [_raw(_typical_body(keys, n)) for n in range(1, count + 1)]


def _synthea_raw(keys: Iterable[str]) -> bytes:
    """The largest Synthea record, byte for byte as published, as the `labs` prefetch of one body."""
    record = SYNTHEA.read_bytes()
    patient = next(e["resource"] for e in json.loads(record)["entry"] if e["resource"]["resourceType"] == "Patient")
    return _raw(_request(keys, patient, "@LABS@")).replace(b'"@LABS@"', record)


def _request(keys: Iterable[str], patient: dict[str, Any], labs: Any) -> dict[str, Any]:
    """An order-sign body answering every prefetch key the service declares (empty unless given)."""
    order = {"resourceType": "MedicationRequest", "id": "order-1", "status": "draft", "intent": "order",
             "subject": {"reference": f"Patient/{patient['id']}"}, "medicationCodeableConcept": OCRELIZUMAB}
    return {"hook": "order-sign", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"userId": "Practitioner/example", "patientId": patient["id"],
                        "draftOrders": _bundle([order])},
            "prefetch": {**{key: _bundle([]) for key in keys}, "patient": patient, "labs": labs}}


def _quantity(loinc: str, value: float, unit: str, days_ago: int, low: float | None = None,
              high: float | None = None, n: int = 0) -> dict[str, Any]:
    ucum = {"unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    obs = _observation(loinc, days_ago, n, valueQuantity={"value": value, **ucum})
    limits = {k: {"value": v, **ucum} for k, v in (("low", low), ("high", high)) if v is not None}
    if limits:
        obs["referenceRange"] = [limits]
    return obs


def _answer(loinc: str, snomed: str, days_ago: int, n: int = 0) -> dict[str, Any]:
    return _observation(loinc, days_ago, n, valueCodeableConcept={"coding": [{"system": SNOMED, "code": snomed}]})


def _observation(loinc: str, days_ago: int, n: int, **value: Any) -> dict[str, Any]:
    when = (NOW - timedelta(days=days_ago)).isoformat()
    return {"resourceType": "Observation", "id": f"{loinc}-{days_ago}" + (f"-{n}" if n else ""), "status": "final",
            "code": {"coding": [{"system": LOINC, "code": loinc}]}, "subject": {"reference": f"Patient/p{n + 1}"},
            "effectiveDateTime": when, **value}


def _bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def _raw(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


if __name__ == "__main__":
    sys.exit(main())
