"""`cds-service replay`: the cards every rule would show over a whole FHIR Bulk Data export, on Dask.

The export is made offline by bench/export_generator.py (fhir_examples' patients and Synthea records,
varied), and a few bad lines are added to it. The replay runs through the real CLI on one shared
two-worker Dask cluster (--scheduler), except where a test is about its own local cluster (--workers 1).
Every patient's cards must be exactly what `cds-service evaluate` prints for the request the replay
built (--save-requests), and what the service answers when it fetches the same record from a real FHIR
server instead: so the in-memory search is checked against one.
"""
from __future__ import annotations

import fcntl
import gzip
import io
import json
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from distributed import LocalCluster

from bench import export_generator
from cds_service import cli
from cds_service.feedback.settings import patient_hash
from cds_service.population import export
from cds_service.population.search import clinical_date
from conftest import NOW, ROOT
from devtools.fhir_server import SEEDED_TYPES
from tests.stores import TEST_HASH_KEY
from test_fetch import app_with, fetching

AT = NOW.isoformat()
PATIENTS, SYNTHEA_EVERY = 30, 10  # three Synthea records, the smallest ones
BAD_LINES = [b"{not json", b"[1, 2]", b"", json.dumps({"resourceType": "Observation", "id": "no-subject",
                                                       "status": "final"}).encode(),
             json.dumps({"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/nobody"}}).encode()]
BAD_FILE = "Observation.1.ndjson"


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """One two-worker cluster for the module: starting one costs seconds."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                      silence_logs=logging.ERROR) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """The same patients as plain NDJSON (two files per type, a few bad lines in one) and gzipped."""
    base = tmp_path_factory.mktemp("exports")
    made = {}
    for name, gzipped in (("plain", False), ("gzipped", True)):
        made[name] = base / name
        records = export_generator.patients(PATIENTS, NOW, seed=1, synthea_every=SYNTHEA_EVERY)
        export_generator.write(made[name], records, gzipped=gzipped, files_per_type=2)
    with open(made["plain"] / BAD_FILE, "ab") as f:
        f.writelines(line + b"\n" for line in BAD_LINES)
    with gzip.open(made["gzipped"] / f"{BAD_FILE}.gz", "ab") as f:
        f.writelines(line + b"\n" for line in BAD_LINES)
    return made


def replay(source: Path, out: Path, *args: str) -> tuple[int, str, str]:
    """`cds-service replay` in this process (its log set-up undone afterwards); (exit code, stdout, stderr)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr):
            code = cli.main(["replay", str(source), "--at", AT, "--out", str(out), *args])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return code, stdout.getvalue(), stderr.getvalue()


def cards(out: Path) -> dict[str, dict[str, Any]]:
    lines = (out / "cards.ndjson").read_text(encoding="utf-8").splitlines()
    return {entry["patient"]: entry for entry in map(json.loads, lines)}


def evaluate(capsys, request: Path) -> dict[str, Any]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        code = cli.main(["evaluate", str(request), "--now", AT])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def shown(answer: dict[str, Any]) -> list[dict[str, str]]:
    return [{"rule": c["source"]["topic"]["code"], "indicator": c["indicator"]} for c in answer["cards"]]


@pytest.fixture(scope="module")
def signed(scheduler, exports, tmp_path_factory) -> Path:
    """A replay of the plain export: ocrelizumab IV at order-sign, requests saved, the files read in many
    small chunks (lines cut at a chunk's end must be read once, and located by their line in the file)."""
    out = tmp_path_factory.mktemp("signed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export, "CHUNK_BYTES", 64 * 1024)
        code, printed, err = replay(exports["plain"], out, "--product", "ocrelizumab-iv", "--scheduler", scheduler,
                                    "--save-requests")
    assert code == 0, err[-3000:]
    (out / "stdout.txt").write_text(printed, encoding="utf-8")
    return out


def good_resources(source: Path) -> Iterator[dict[str, Any]]:
    """The export's resources that name a patient of the export (the bad lines left out)."""
    for path in export.files(source):
        for line in path.read_bytes().splitlines():
            try:
                resource = json.loads(line)
            except ValueError:
                continue
            if isinstance(resource, dict) and export.patient_of(resource) not in (None, "nobody"):
                yield resource


def test_every_patient_gets_the_cards_evaluate_gives_for_the_request_replay_built(signed, capsys):
    found = cards(signed)
    assert len(found) == PATIENTS
    requests = sorted((signed / "requests").glob("*.json"))
    assert {r.stem for r in requests} == set(found)
    for request in requests:
        assert shown(evaluate(capsys, request)) == found[request.stem]["cards"], request.name
    assert sum(1 for entry in found.values() if entry["cards"]) >= PATIENTS // 2  # not a run of empty answers


def test_patients_are_named_by_a_keyed_hash_never_by_their_id(signed):
    text = (signed / "cards.ndjson").read_text(encoding="utf-8")
    assert "gen1-" not in text and "gen1-" not in (signed / "summary.json").read_text(encoding="utf-8")
    assert patient_hash(TEST_HASH_KEY.encode(), "gen1-0000000") in cards(signed)


def test_the_summary_counts_what_cards_ndjson_holds(signed):
    summary = json.loads((signed / "summary.json").read_text(encoding="utf-8"))
    found = cards(signed)
    per_rule = Counter((c["rule"], c["indicator"]) for entry in found.values() for c in entry["cards"])
    assert {(r["rule"], r["indicator"]): r["patients"] for r in summary["rules"]} == per_rule
    for rule in summary["rules"]:
        assert rule["per_1000"] == round(rule["patients"] * 1000 / PATIENTS, 1) and rule["silent"] is False
    assert summary["patients"] == {"in_export": PATIENTS, "answered": PATIENTS, "refused": 0,
                                   "no_card": sum(1 for e in found.values() if not e["cards"]),
                                   "no_card_per_1000": round(sum(1 for e in found.values() if not e["cards"])
                                                             * 1000 / PATIENTS, 1)}
    assert summary["run"]["workers"] == 2 and summary["run"]["chunks"] > 20
    assert len(summary["run"]["peak_memory_mb_per_worker"]) == 2  # as the workers report it
    assert all(50 < mb < 2000 for mb in summary["run"]["peak_memory_mb_per_worker"])
    printed = (signed / "stdout.txt").read_text(encoding="utf-8")
    top = summary["rules"][0]
    assert f"{top['rule']}" in printed and f"{top['per_1000']:.1f}" in printed and "(no card at all)" in printed


def test_bad_lines_and_resources_without_a_patient_are_counted_and_located_never_fatal(signed, exports):
    data = json.loads((signed / "summary.json").read_text(encoding="utf-8"))["input"]
    assert data["malformed_lines"] == 2
    assert data["without_patient"] == {"count": 1, "by_type": {"Observation": 1}}
    assert data["without_patient_resource"] == {"patients": 1, "resources": 1}  # Patient/nobody's Condition
    located = {(p["kind"], p["what"]): p for p in data["problems"]}
    assert set(located) == {("malformed", "not JSON"), ("malformed", "not a FHIR resource (no resourceType)"),
                            ("without-patient", "Observation")}
    lines = (exports["plain"] / BAD_FILE).read_bytes().splitlines()
    for (kind, _), problem in located.items():
        assert problem["file"] == BAD_FILE
        assert lines[problem["line"] - 1] == BAD_LINES[{"malformed": 0, "without-patient": 3}[kind]
                                                       + (problem["what"].startswith("not a FHIR"))]
    printed = (signed / "stdout.txt").read_text(encoding="utf-8")
    assert f"{BAD_FILE} line {located[('malformed', 'not JSON')]['line']}: not JSON" in printed
    assert "1 resources name no patient (Observation 1): left out." in printed


def test_the_same_cards_with_one_local_worker_from_the_gzipped_export(signed, exports, tmp_path):
    code, out, err = replay(exports["gzipped"], tmp_path, "--product", "ocrelizumab-iv", "--workers", "1")
    assert code == 0, err[-3000:]
    assert cards(tmp_path) == cards(signed)
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert summary["run"]["workers"] == 1 and summary["input"]["malformed_lines"] == 2
    assert summary["rules"] == json.loads((signed / "summary.json").read_text(encoding="utf-8"))["rules"]


def test_the_record_replay_builds_is_what_a_real_fhir_server_answers_to_the_same_queries(signed, exports,
                                                                                           fhir_server, book):
    """Each patient's cards with the replay's prefetch equal the cards with no prefetch at all, the service
    fetching the patient from a FHIR server (Medplum) loaded with the export."""
    seen = [r for r in good_resources(exports["plain"]) if r["resourceType"] in SEEDED_TYPES
            and not ((clinical_date(r) or NOW) > NOW)]  # the replay leaves out what is dated after --at
    fhir_server.seed("replay", seen)
    client = app_with(book)
    for request in sorted((signed / "requests").glob("*.json")):
        body = json.loads(request.read_text(encoding="utf-8"))
        response = client.post("/cds-services/cd20-order-sign",
                               json=fetching(body, fhir_server.base("replay"), fhir_server.token))
        assert response.status_code == 200, response.get_data(as_text=True)
        assert shown(response.get_json()) == cards(signed)[request.stem]["cards"], request.name


def test_rules_in_shadow_mode_are_replayed_as_silent(signed, scheduler, exports, tmp_path, monkeypatch):
    monkeypatch.setenv("CDS_SHADOW", "hbv-screening-missing")
    code, out, err = replay(exports["plain"], tmp_path, "--product", "ocrelizumab-iv", "--scheduler", scheduler)
    assert code == 0, err[-3000:]
    live = cards(signed)
    for patient, entry in cards(tmp_path).items():
        expected = live[patient]["cards"]
        assert entry["cards"] == [c for c in expected if c["rule"] != "hbv-screening-missing"]
        assert entry["silent"] == [c for c in expected if c["rule"] == "hbv-screening-missing"]
    silent = [r for r in json.loads((tmp_path / "summary.json").read_text())["rules"] if r["silent"]]
    assert [r["rule"] for r in silent] and {r["rule"] for r in silent} == {"hbv-screening-missing"}
    assert "silent" in out


def test_patient_view_replays_the_chart_reminders(scheduler, exports, tmp_path, capsys):
    code, out, err = replay(exports["plain"], tmp_path, "--hook", "patient-view", "--scheduler", scheduler,
                            "--save-requests")
    assert code == 0, err[-3000:]
    found = cards(tmp_path)
    for request in sorted((tmp_path / "requests").glob("*.json")):
        assert shown(evaluate(capsys, request)) == found[request.stem]["cards"], request.name
    assert any(entry["cards"] for entry in found.values())


def test_the_report_is_one_page_with_its_charts_inline(signed):
    page = (signed / "report.html").read_text(encoding="utf-8")
    assert 'id="cards-per-1000"' in page and 'id="cards-per-patient"' in page
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "gen1-" not in page


def test_a_terminal_shows_a_progress_bar(scheduler, exports, tmp_path):
    """Run in a pseudo-terminal, as a person would: the bars are drawn on it while the replay runs."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))  # 30 rows, 120 columns
    process = subprocess.Popen([sys.executable, "-m", "cds_service.cli", "replay", str(exports["plain"]), "--at", AT,
                                "--product", "ocrelizumab-iv", "--scheduler", scheduler, "--out", str(tmp_path)],
                               stdin=terminal, stdout=terminal, stderr=terminal, cwd=ROOT, env=os.environ.copy())
    os.close(terminal)
    screen = bytearray()
    reader = threading.Thread(target=_read_all, args=(controller, screen), daemon=True)
    reader.start()
    assert process.wait(300) == 0, screen.decode(errors="replace")[-3000:]
    reader.join(10)
    text = screen.decode(errors="replace")
    assert "reading export: 100%" in text and "evaluating: 100%" in text and f"{PATIENTS}/{PATIENTS}" in text


def _read_all(fd: int, into: bytearray) -> None:
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # the other end is closed
            return
        if not data:
            return
        into.extend(data)


@pytest.mark.parametrize("args, message", [
    (["--product", "ocrelizumab"], "--product: ocrelizumab is not a product; order-sign needs one of ocrelizumab-sc, "
                                   "ocrelizumab-iv"),
    (["--hook", "order-select"], "--product: order-select needs one of"),
    (["--product", "ocrelizumab-iv", "--workers", "0"], "--workers and --partition-mb must be at least 1"),
    (["--product", "ocrelizumab-iv", "--at", "soon"], "--at 'soon': expected a date (2026-11-21) or an ISO 8601 time"),
])
def test_a_replay_that_cannot_run_says_why(exports, tmp_path, args, message):
    code, out, err = replay(exports["plain"], tmp_path, *args)
    assert code == 2 and message in err


def test_an_export_that_is_not_there_or_has_no_ndjson_is_refused(tmp_path):
    code, _, err = replay(tmp_path / "missing", tmp_path / "out", "--product", "ocrelizumab-iv")
    assert code == 2 and "no such file or directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = replay(tmp_path / "empty", tmp_path / "out", "--product", "ocrelizumab-iv")
    assert code == 2 and "no NDJSON file" in err


def test_chunks_cut_anywhere_read_every_line_once(tmp_path, monkeypatch):
    path = tmp_path / "x.ndjson"
    lines = [f'{{"n": {n}, "pad": "{"x" * (n % 7)}"}}'.encode() for n in range(200)]
    path.write_bytes(b"\n".join(lines))  # no line end after the last line
    for size in (1, 2, 3, 17, 64, 1000, 10 ** 6):
        monkeypatch.setattr(export, "CHUNK_BYTES", size)
        read = [line for chunk in export.chunks(path, [path]) for line in export.lines(chunk)]
        assert read == lines, size


def test_the_generator_makes_distinct_patients_whose_references_hold(tmp_path):
    export_generator.write(tmp_path, export_generator.patients(60, NOW, seed=7, synthea_every=30))
    resources = [json.loads(line) for path in export.files(tmp_path) for line in path.read_bytes().splitlines()]
    ids = {f"{r['resourceType']}/{r['id']}" for r in resources}
    patients = [r["id"] for r in resources if r["resourceType"] == "Patient"]
    assert len(patients) == len(set(patients)) == 60
    for resource in resources:
        patient = export.patient_of(resource)
        if resource["resourceType"] in SEEDED_TYPES - {"Medication"}:  # a Medication belongs to no patient
            assert patient in patients, resource["id"]
    labs = [r for r in resources if r["resourceType"] == "Observation" and "valueQuantity" in r]
    assert len({json.dumps(r["valueQuantity"]) for r in labs}) > len(labs) // 2  # values perturbed
    again = [json.loads(line) for path in export.files(tmp_path) for line in path.read_bytes().splitlines()]
    assert again == resources and all(f"Patient/{p}" in ids for p in patients)
