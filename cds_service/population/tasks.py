"""The two kinds of task a replay runs on the Dask workers, and the counts they hand back.

1. `partition(chunk)`: reads one chunk of the export and appends each resource the prefetch reads to
   the partition of its patient (a hash of the id picks it): `parts/NNNNN/<chunk>.ndjson`, lines
   "<patient id>\\t<resource>". Lines wait in one buffer of at most FLUSH_BYTES, written out file by
   file, so a task's memory and open files stay bounded however many partitions there are. Medication
   resources belong to no patient: where the prefetch includes them, they go to `medications/<chunk>.ndjson`.
2. `evaluate(partition)`: reads one partition (its size is bounded: the number of partitions follows the
   export's size), groups it by patient, builds each patient's hook request and answers it with
   CdsService.call, the HTTP service's code path; the patient's cards go to `cards/NNNNN.ndjson` under
   a keyed hash of the id, never the id. The export's Medications (at most MEDICATIONS_KEPT: a formulary,
   not a population) are read once per worker process, for the requests' `_include`.

Each worker process keeps one CdsService, so one rules engine, as durable-rules requires.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import socket
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.rulebook import Rulebook
from ..feedback.settings import patient_hash
from ..hooks import InvalidRequest
from ..record.references import index
from ..service import CdsService, PreconditionFailed
from . import export
from .request import Plan

log = logging.getLogger(__name__)
FLUSH_BYTES = 8 * 1024 * 1024
EXAMPLES_KEPT = 10  # located problems (malformed lines, resources without a patient) a task reports
MEDICATIONS = "medications"  # beside parts/: the export's Medications, one file per chunk
MEDICATIONS_KEPT = 50_000  # Medications held by each worker for `_include`; more are counted, not read


@dataclass(frozen=True)
class Job:
    """Everything a task needs, sent to each worker once."""

    token: str  # this run: a worker keeps one service per run
    book: Rulebook
    plan: Plan
    hash_key: bytes
    max_resources: int
    workdir: str
    partitions: int
    requests: str | None = None  # a folder to write each patient's request to (holds patient data)


@dataclass(frozen=True)
class Problem:
    kind: str  # "malformed" or "without-patient"
    file: str
    chunk: int
    line: int  # within the chunk, from 1
    what: str  # why the line is malformed, or the type of the resource without a patient


@dataclass
class Tally:
    """Counts handed back by tasks and added up; no patient data (nor its hash) in it."""

    lines: int = 0
    resources: int = 0
    patient_records: int = 0  # Patient resources seen
    malformed: int = 0
    without_patient: Counter[str] = field(default_factory=Counter)  # by resource type
    not_read: Counter[str] = field(default_factory=Counter)  # types the prefetch never reads
    medications: int = 0  # Medication resources kept aside for `_include`
    problems: list[Problem] = field(default_factory=list)
    chunk_lines: dict[tuple[str, int], int] = field(default_factory=dict)  # (file, chunk index) -> lines
    patients: int = 0  # patients whose call was answered
    checked: int = 0  # patients looked at: answered, refused or failed
    no_card: int = 0  # answered with no card at all
    cards: Counter[tuple[str, str, bool]] = field(default_factory=Counter)  # (rule, indicator, silent) -> patients
    cards_per_patient: Counter[int] = field(default_factory=Counter)  # live cards a call showed -> patients
    refused: Counter[str] = field(default_factory=Counter)  # "400: why" -> patients
    later: int = 0  # resources dated after the replay's date, left out
    orphan_patients: int = 0  # patient ids with resources but no Patient resource in the export
    orphan_resources: int = 0
    peak_kb: dict[str, int] = field(default_factory=dict)  # worker process -> its peak resident set so far

    def add(self, other: "Tally") -> None:
        for name, value in vars(other).items():
            mine = getattr(self, name)
            if name == "peak_kb":
                mine.update({worker: max(kb, mine.get(worker, 0)) for worker, kb in value.items()})
            elif isinstance(mine, dict) and not isinstance(mine, Counter):
                mine.update(value)
            else:
                setattr(self, name, mine + value)

    def note_memory(self) -> None:
        self.peak_kb[f"{socket.gethostname()}:{os.getpid()}"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def partition(chunk: export.Chunk, job: Job) -> Tally:
    tally, buffer = Tally(), _Buffer(Path(job.workdir) / "parts", f"{chunk.number:06d}.ndjson")
    medications: list[bytes] = []  # at most a chunk's worth
    wanted = job.plan.resource_types
    number = 0
    for number, line in enumerate(export.lines(chunk), start=1):
        if not line.strip():
            continue
        resource, why = _parse(line)
        if resource is None:
            tally.malformed += 1
            _note(tally, Problem("malformed", chunk.name, chunk.index, number, why))
            continue
        tally.resources += 1
        kind = resource["resourceType"]
        if kind == "Medication" and job.plan.includes_medications:
            tally.medications += 1
            medications.append(line + b"\n")
            continue
        if kind not in wanted:
            tally.not_read[kind] += 1
            continue
        patient = export.patient_of(resource)
        if patient is None:
            tally.without_patient[kind] += 1
            _note(tally, Problem("without-patient", chunk.name, chunk.index, number, kind))
            continue
        tally.patient_records += kind == "Patient"
        buffer.add(zlib.crc32(patient.encode()) % job.partitions, patient.encode() + b"\t" + line + b"\n")
    buffer.flush()
    if medications:
        (Path(job.workdir) / MEDICATIONS / f"{chunk.number:06d}.ndjson").write_bytes(b"".join(medications))
    tally.lines = number
    tally.chunk_lines[(chunk.name, chunk.index)] = number
    tally.note_memory()
    return tally


def evaluate(partition_number: int, job: Job) -> Tally:
    service, medications = _worker_state(job)
    groups: dict[bytes, list[bytes]] = {}
    for path in sorted((Path(job.workdir) / "parts" / f"{partition_number:05d}").glob("*.ndjson")):
        with open(path, "rb") as f:
            for line in f:
                key, _, raw = line.rstrip(b"\n").partition(b"\t")
                groups.setdefault(key, []).append(raw)
    tally, results = Tally(), []
    while groups:
        key, raws = groups.popitem()
        resources = [json.loads(raw) for raw in raws]
        if not any(r["resourceType"] == "Patient" for r in resources):
            tally.orphan_patients += 1
            tally.orphan_resources += len(resources)
            continue
        results.append(_call(service, job, key.decode(), resources, medications, tally))
    results.sort(key=lambda r: r["patient"])
    cards = Path(job.workdir) / "cards" / f"{partition_number:05d}.ndjson"
    cards.write_text("".join(json.dumps(r) + "\n" for r in results), encoding="utf-8")
    tally.note_memory()
    return tally


def _call(service: CdsService, job: Job, patient_id: str, resources: list[dict[str, Any]],
          medications: dict[str, dict[str, Any]], tally: Tally) -> dict[str, Any]:
    """One patient's call, counted; their line of cards.ndjson."""
    digest = patient_hash(job.hash_key, patient_id)
    body, later = job.plan.request(patient_id, resources, job.plan.hook_instance(digest), medications)
    tally.later += later
    tally.checked += 1
    if job.requests:
        (Path(job.requests) / f"{digest}.json").write_text(json.dumps(body, indent=1), encoding="utf-8")
    silent: list[dict[str, Any]] = []
    try:
        answer = service.call(job.plan.service_id, body, silent=silent)
    except InvalidRequest as e:
        return _refused(tally, digest, f"400: {e}")
    except PreconditionFailed as e:
        return _refused(tally, digest, f"412: {e}")
    except Exception as e:  # noqa: BLE001 - one patient's failure is counted and reported, the others go on
        log.error("a replayed call failed", extra={"fields": {"error": type(e).__name__}})
        return _refused(tally, digest, f"500: {type(e).__name__}")
    shown = [_card(c) for c in answer["cards"]]
    tally.patients += 1
    tally.no_card += not shown
    tally.cards_per_patient[len(shown)] += 1
    for card, quiet in [(c, False) for c in shown] + [(_card(c), True) for c in silent]:
        tally.cards[(card["rule"], card["indicator"], quiet)] += 1
    return {"patient": digest, "cards": shown, "silent": [_card(c) for c in silent]}


def _refused(tally: Tally, digest: str, why: str) -> dict[str, Any]:
    tally.refused[why] += 1
    return {"patient": digest, "error": why}


def _card(card: dict[str, Any]) -> dict[str, str]:
    return {"rule": card["source"]["topic"]["code"], "indicator": card["indicator"]}


_STATE: dict[str, tuple[CdsService, dict[str, dict[str, Any]]]] = {}  # this worker's, for the run under way


def _worker_state(job: Job) -> tuple[CdsService, dict[str, dict[str, Any]]]:
    """This worker process's service and the export's Medications, made once per run."""
    if job.token not in _STATE:
        _STATE.clear()
        at = job.plan.at
        service = CdsService(job.book, clock=lambda: at, max_resources=job.max_resources)
        _STATE[job.token] = service, _medications(Path(job.workdir) / MEDICATIONS)
    return _STATE[job.token]


def _medications(folder: Path) -> dict[str, dict[str, Any]]:
    """The Medications kept aside by the partition tasks, by "Medication/id" (and urn:uuid: for uuids),
    at most MEDICATIONS_KEPT of them (the command reports how many more there were)."""
    found: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.ndjson")):
        with open(path, "rb") as f:
            for line in f:
                if len(found) == MEDICATIONS_KEPT:
                    return index(found)
                found.append(json.loads(line))
    return index(found)


def _parse(line: bytes) -> tuple[dict[str, Any] | None, str]:
    try:
        resource = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the decoder goes
        return None, "not JSON"
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return None, "not a FHIR resource (no resourceType)"
    return resource, ""


def _note(tally: Tally, problem: Problem) -> None:
    if len(tally.problems) < EXAMPLES_KEPT:
        tally.problems.append(problem)


class _Buffer:
    """Lines waiting to be appended to their partition's file of this chunk."""

    def __init__(self, parts: Path, name: str) -> None:
        self.parts, self.name = parts, name
        self.lines: dict[int, list[bytes]] = {}
        self.size = 0
        self.started: set[int] = set()

    def add(self, partition_number: int, line: bytes) -> None:
        self.lines.setdefault(partition_number, []).append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write every waiting line; a file is truncated the first time, so a retried task starts afresh."""
        for number, lines in self.lines.items():
            path = self.parts / f"{number:05d}" / self.name
            with open(path, "ab" if number in self.started else "wb") as f:
                f.writelines(lines)
            self.started.add(number)
        self.lines, self.size = {}, 0
