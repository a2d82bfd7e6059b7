"""`cds-service replay EXPORT --at DATE --product P --out DIR`: run the service over a whole population.

The export is read and shuffled by patient on Dask (see tasks.py): local worker processes by default
(one engine each, as durable-rules requires), or the cluster at --scheduler, whose workers must see
EXPORT and --out at the same paths and have this package installed. Progress shows on the terminal.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import secrets
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, time as clock_time, timezone
from pathlib import Path
from typing import Any

from .. import hooks
from ..config import Settings
from ..engine import rulebook
from ..feedback.settings import StoreSettings
from ..record import prefetch
from . import export, page, summary, tasks
from .request import BadPlan, Plan

MIB = 1024 * 1024
PARTITION_MB = 16  # NDJSON per partition: what one task holds in memory at a time, whatever the export's size
NOON = clock_time(12, tzinfo=timezone.utc)


def add_command(commands: argparse._SubParsersAction) -> None:
    replay = commands.add_parser("replay", help="the cards every rule would show over a FHIR Bulk Data export")
    replay.add_argument("export", type=Path, help="the $export output: a folder of NDJSON files (.ndjson, .ndjson.gz) "
                                                  "or one file")
    replay.add_argument("--at", required=True, help="the date of the orders: a day (noon UTC) or an ISO 8601 time")
    replay.add_argument("--product", help="the product ordered, a key of rules/products.yaml (e.g. ocrelizumab-iv)")
    replay.add_argument("--hook", default="order-sign", choices=("order-sign", "order-select", "patient-view"))
    where = replay.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    where.add_argument("--scheduler", help="the address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786")
    replay.add_argument("--out", type=Path, required=True, help="folder for summary.json, cards.ndjson, report.html")
    replay.add_argument("--partition-mb", type=int, default=PARTITION_MB,
                        help=f"NDJSON per partition, what bounds a worker's memory (default {PARTITION_MB})")
    replay.add_argument("--save-requests", action="store_true",
                        help="also write each patient's hook request to OUT/requests/ (these hold patient data)")


def run(args: argparse.Namespace) -> int:
    if not all(importlib.util.find_spec(name) for name in ("distributed", "tqdm")):  # imported where used
        return _fail("needs Dask and tqdm, the 'replay' extra: pip install 'cd20-cds[replay]'")
    try:
        book, plan, key, paths = _prepare(args)
    except (ValueError, OSError) as e:  # RulebookError, BadPlan, UnsupportedSearch, ExportError, ConfigError
        return _fail(str(e))
    if key is None:
        key = secrets.token_bytes(32)
        print("cds-service replay: CDS_PATIENT_HASH_KEY is not set; patients are hashed with a key made for this "
              "run only", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.out / ".replay-work"
    shutil.rmtree(workdir, ignore_errors=True)
    job = tasks.Job(uuid.uuid4().hex, book, plan, key, Settings.from_env().max_resources, str(workdir), 0)
    try:
        with _client(args.workers, args.scheduler) as client:
            figures = _replay(client, args, job, paths)
    except OSError as e:  # the scheduler cannot be reached, or the export or --out cannot be read or written
        return _fail(str(e))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    (args.out / "summary.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    (args.out / "report.html").write_text(page.render(figures), encoding="utf-8")
    print(summary.table(figures))
    print(f"\nWritten: {args.out / 'summary.json'}, {args.out / 'cards.ndjson'}, {args.out / 'report.html'}")
    return 0


def _prepare(args: argparse.Namespace) -> tuple[rulebook.Rulebook, Plan, bytes | None, list[Path]]:
    if (args.workers is not None and args.workers < 1) or args.partition_mb < 1:
        raise BadPlan("--workers and --partition-mb must be at least 1")
    at = _moment(args.at)
    book = rulebook.load()
    services = hooks.services(prefetch.templates(book.valuesets))
    plan = Plan.make(book, services, args.hook, args.product, at)
    key = StoreSettings.from_env(Settings.from_env().dev, serving=False).patient_hash_key
    return book, plan, key, export.files(args.export)


def _replay(client: Any, args: argparse.Namespace, job: tasks.Job, paths: list[Path]) -> dict[str, Any]:
    """Shuffle the export by patient, evaluate every patient, and gather the figures."""
    from distributed import as_completed
    from tqdm import tqdm

    chunks = export.chunks(args.export, paths)
    workers = len(client.scheduler_info()["workers"])
    partitions = max(4 * workers, math.ceil(export.size_estimate(paths) / (args.partition_mb * MIB)))
    requests = args.out / "requests" if args.save_requests else None
    _folders(Path(job.workdir), partitions, requests)
    job = replace(job, partitions=partitions, requests=str(requests) if requests else None)
    shared = client.scatter(job, broadcast=True)
    tally, started = tasks.Tally(), time.perf_counter()
    futures = client.map(tasks.partition, chunks, job=shared, pure=False)
    sizes = {future.key: _size(chunk) for future, chunk in zip(futures, chunks)}
    with tqdm(total=sum(sizes.values()), desc="reading export", unit="B", unit_scale=True) as bar:
        for future, result in as_completed(futures, loop=client.loop, with_results=True):
            tally.add(result)
            bar.update(sizes[future.key])
            future.release()  # the worker may forget the result now
    read = time.perf_counter() - started
    futures = client.map(tasks.evaluate, range(partitions), job=shared, pure=False)
    with tqdm(total=tally.patient_records, desc="evaluating", unit="patient") as bar:
        for future, result in as_completed(futures, loop=client.loop, with_results=True):
            tally.add(result)
            bar.update(result.checked)
            future.release()
    evaluated = time.perf_counter() - started - read
    _concatenate(sorted((Path(job.workdir) / "cards").glob("*.ndjson")), args.out / "cards.ndjson")
    run = {"workers": workers, "partitions": partitions, "chunks": len(chunks),
           "seconds": {"reading": round(read, 2), "evaluating": round(evaluated, 2)},
           "patients_per_second_per_worker": round(tally.checked / (read + evaluated) / workers, 1),
           "peak_memory_mb_per_worker": sorted(round(kb / 1024, 1) for kb in tally.peak_kb.values())}
    return summary.build(tally, job.plan, str(args.export), run)


def _folders(workdir: Path, partitions: int, requests: Path | None) -> None:
    for number in range(partitions):
        (workdir / "parts" / f"{number:05d}").mkdir(parents=True)
    (workdir / "cards").mkdir()
    (workdir / tasks.MEDICATIONS).mkdir()
    if requests:
        shutil.rmtree(requests, ignore_errors=True)
        requests.mkdir(parents=True)


@contextmanager
def _client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler, set_as_default=False) as client:
            yield client
        return
    logging.getLogger("distributed").setLevel(logging.WARNING)  # its own INFO lines are not this tool's output
    # Dask's workers sample their own stacks all the time and keep the profile: memory that grows with the
    # run's length (about 20 MB per worker over 40,000 patients), for a profile nobody reads here.
    with dask.config.set({"distributed.worker.profile.enabled": False}), \
            LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                         dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client


def _concatenate(parts: list[Path], target: Path) -> None:
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out)


def _size(chunk: export.Chunk) -> int:
    return (chunk.end - chunk.start) if chunk.end is not None else os.path.getsize(chunk.path)


def _moment(text: str) -> datetime:
    try:
        if len(text) == 10:
            return datetime.combine(datetime.fromisoformat(text).date(), NOON)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadPlan(f"--at {text[:40]!r}: expected a date (2026-11-21) or an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _fail(message: str) -> int:
    print(f"cds-service replay: {message}", file=sys.stderr)
    return 2
