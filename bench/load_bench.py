"""HTTP throughput and latency under concurrent load, and memory per worker, against `cds-service serve`.

The server runs as in production: gunicorn with its default workers (WEB_CONCURRENCY 2, gthread, 4
threads each), logging every request; development mode, authentication off, clock frozen, its metrics
and its feedback database (a scratch SQLite file) in a temporary directory. Debian's `wrk` loads it over
loopback: the typical order-sign body of bench.py (10 labs, 2 cards) POSTed to the hook, next to GETs
of /healthz, which goes through the same gunicorn, Flask hooks, CORS and logging with no engine behind
it: the framework's floor. The load goes in short rounds, /healthz and the hook in turn so that both see
the same machine. Each round opens new keep-alive connections: which worker accepts a connection is a
race, and its requests go to that worker until the server closes it (every 25 requests, so that the
connections spread out); the rounds are pooled, and each round's split of connections over the workers
half a second in is printed.

The typical body is the same every time, as when an EHR asks again about the same order (order-select
at each change, then order-sign): the service answers such repeats from what it remembers (lab readings
and rule findings, by content). So the hook is also loaded with first calls: 2048 bodies, each for
another patient (every result a little different), sent in turn, so that nothing remembered applies.
Those rows have no target and show what a call costs the first time.

Targets, at 8 concurrent connections: typical throughput at least 50% of the floor's; p99 under 25 ms.
Then memory: the resident set (VmRSS) of each worker before and after 10,000 more typical requests,
counted by wrk and cross-checked with each worker's own request counter (the file it keeps its /metrics
samples in), which also says how many of them each worker served. The throughput rounds before it are
the warm-up (the first thousands of requests fill caches and the allocator's arenas once), so "no
growth" means each worker's RSS grows by less than 5 MB over those requests, of which it served at
least 1,000.

Run from the project root: `make bench` (or `.venv/bin/python bench/load_bench.py`). Exits 1 if a
target is missed; 2 if nothing could be measured: wrk cannot be had (it is installed with apt-get when
missing and running as root; no slower tool stands in for it), the server does not start, or requests
fail under the load.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
from prometheus_client.multiprocess import MultiProcessCollector

from bench import SERVICE, _machine, _raw, _typical_body, first_calls, serve_process

HERE = Path(__file__).resolve().parent
LUA = HERE / "load_bench.lua"
CONNECTIONS = (8, 32)  # the targets are at 8; 32 spreads over both workers and queues beyond their 2 x 4 threads
TARGET_CONNECTIONS = 8
ROUNDS = 5  # per endpoint and number of connections, each with new connections (see _load_rows)
ROUND_SECONDS = 3
WARM_UP_SECONDS = 3
FIRST_CALL_BODIES = 2048  # sent in turn: more than the service remembers, so no call finds a remembered answer
MEMORY_REQUESTS = 10_000
MEMORY_ROUND_SECONDS = 5
MEMORY_SECONDS = 90  # at most, for the memory rounds: the whole script stays well under 5 minutes
MIN_SERVED = 1_000  # a worker's memory figure says little unless it served at least this many of them
FLOOR_SHARE = 0.5
P99_MS = 25.0
GROWTH_MB = 5.0
WORKERS = 2
HOOK_ROUTE = "/cds-services/<service_id>"


class NotMeasured(RuntimeError):
    """No figures to give (no wrk, the server did not start, requests failed): said plainly, exit 2."""


@dataclass(frozen=True)
class Server:
    url: str
    port: int
    master: int  # gunicorn's master process; the workers are its children
    metrics: Path  # PROMETHEUS_MULTIPROC_DIR: each worker's counters in files of its own


@dataclass(frozen=True)
class Run:
    """What one wrk run reports, and how its connections were spread over the workers."""

    requests: int
    seconds: float
    socket_errors: int
    http_errors: int
    quantiles_us: list[int]  # 1000 latency quantiles, each standing for 0.1% of the requests
    split: tuple[int, ...]  # established connections held by each worker

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


@dataclass(frozen=True)
class Row:
    measure: str
    figure: str
    target: str = "-"
    met: bool | None = None  # None where the row has no target


def main() -> int:
    try:
        wrk = _wrk()
        print(_machine())
        with tempfile.TemporaryDirectory(prefix="cds-load-bench-") as home, _server(Path(home)) as server:
            rows = _measure(wrk, server, Path(home))
    except NotMeasured as e:
        print(f"load bench not run: {e}", file=sys.stderr)
        return 2
    print(_table(rows))
    return 0 if all(r.met is not False for r in rows) else 1


def _measure(wrk: str, server: Server, home: Path) -> list[Row]:
    keys = _prefetch_keys(server.url)
    body, firsts = home / "typical.json", home / "first-calls.jsonl"
    body.write_bytes(_raw(_typical_body(keys)))
    firsts.write_bytes(b"\n".join(first_calls(keys, FIRST_CALL_BODIES)))
    hook, floor = f"{server.url}/cds-services/{SERVICE}", f"{server.url}/healthz"
    for url, posted in ((floor, None), (hook, body)):
        _run(wrk, server, url, TARGET_CONNECTIONS, posted, WARM_UP_SECONDS)
    rows, rate = [], 0.0
    for connections in CONNECTIONS:
        targeted = connections == TARGET_CONNECTIONS
        trivial, typical, first = [], [], []
        for _ in range(ROUNDS):  # alternated, so that all see the same machine
            trivial.append(_run(wrk, server, floor, connections, None, ROUND_SECONDS))
            typical.append(_run(wrk, server, hook, connections, body, ROUND_SECONDS))
            if targeted:
                first.append(_run(wrk, server, hook, connections, firsts, ROUND_SECONDS))
        rows += _load_rows(connections, trivial, typical, body.stat().st_size)
        if targeted:
            rows += _first_call_rows(connections, trivial, first)
            rate = _per_second(typical)
    return rows + _memory_rows(wrk, server, hook, body, rate)


def _load_rows(connections: int, trivial: list[Run], typical: list[Run], size: int) -> list[Row]:
    """Pooled figures over the rounds: a single run would report either a 4+4 or an 8+0 split of the
    connections, the pool averages over how clients happen to land on the workers."""
    share = _per_second(typical) / _per_second(trivial)
    p99_ms = _percentile(typical, 99) / 1000
    targeted = connections == TARGET_CONNECTIONS
    return [
        Row(f"/healthz (floor), {connections} connections", _figures(trivial)),
        Row("  by round: req/s, p99 ms (connections per worker)", _rounds(trivial)),
        Row(f"typical POST ({size / 1e3:.1f} kB), {connections} connections", _figures(typical)),
        Row("  by round: req/s, p99 ms (connections per worker)", _rounds(typical)),
        Row(f"  throughput vs floor, {connections} connections", f"{share:.1%}",
            f">= {FLOOR_SHARE:.0%}" if targeted else "-", share >= FLOOR_SHARE if targeted else None),
        Row(f"  typical p99, {connections} connections", f"{p99_ms:.1f} ms",
            f"< {P99_MS:.0f} ms" if targeted else "-", p99_ms < P99_MS if targeted else None),
    ]


def _first_call_rows(connections: int, trivial: list[Run], first: list[Run]) -> list[Row]:
    """The same picture for patients the service has not seen: nothing remembered applies (no target)."""
    return [
        Row(f"first calls (a new patient each), {connections} connections", _figures(first)),
        Row("  by round: req/s, p99 ms (connections per worker)", _rounds(first)),
        Row(f"  throughput vs floor, {connections} connections",
            f"{_per_second(first) / _per_second(trivial):.1%}"),
    ]


def _memory_rows(wrk: str, server: Server, hook: str, body: Path, rate: float) -> list[Row]:
    """RSS of each worker around at least MEMORY_REQUESTS typical calls. wrk runs for a time, not a
    count, so the calls go in rounds sized from the last rate seen; new connections each round also
    make sure both workers take a share."""
    workers = _workers(server.master)
    served_before = _served(server, workers)
    before = {pid: _rss_kb(pid) for pid in workers}
    runs: list[Run] = []
    deadline = time.monotonic() + MEMORY_SECONDS
    while (missing := MEMORY_REQUESTS - sum(r.requests for r in runs)) > 0 and time.monotonic() < deadline - 1:
        left = int(deadline - time.monotonic())
        seconds = max(1, min(math.ceil(missing / max(rate, 1.0)), MEMORY_ROUND_SECONDS, left))
        runs.append(_run(wrk, server, hook, TARGET_CONNECTIONS, body, seconds))
        rate = runs[-1].per_second
    served_after = _served(server, workers)
    after = {pid: _rss_kb(pid) for pid in workers}
    if _workers(server.master) != workers:
        raise NotMeasured(f"gunicorn replaced a worker during the memory run ({workers} -> {_workers(server.master)})")
    sent, served = sum(r.requests for r in runs), {pid: served_after[pid] - served_before[pid] for pid in workers}
    enough = sent >= MEMORY_REQUESTS
    rows = [Row("memory run: typical POSTs counted by wrk / by the workers",
                f"{sent:,} / {sum(served.values()):,} in {len(runs)} rounds, {sum(r.seconds for r in runs):.0f} s",
                f">= {MEMORY_REQUESTS:,}", enough)]
    for n, pid in enumerate(workers, 1):
        growth = (after[pid] - before[pid]) / 1024
        rows.append(Row(f"worker {n} (pid {pid}): RSS before -> after", f"{before[pid] / 1024:.1f} -> "
                        f"{after[pid] / 1024:.1f} MB ({growth:+.1f} MB), {served[pid]:,} requests served",
                        f"growth < {GROWTH_MB:.0f} MB, >= {MIN_SERVED:,} served",
                        enough and growth < GROWTH_MB and served[pid] >= MIN_SERVED))
    return rows


def _figures(runs: list[Run]) -> str:
    return (f"{_per_second(runs):,.0f} req/s, p50 {_percentile(runs, 50) / 1000:.1f} ms, "
            f"p99 {_percentile(runs, 99) / 1000:.1f} ms ({sum(r.requests for r in runs):,} requests, "
            f"{len(runs)} x {ROUND_SECONDS} s)")


def _rounds(runs: list[Run]) -> str:
    return "; ".join(f"{r.per_second:,.0f}, {_percentile([r], 99) / 1000:.0f} ({'+'.join(map(str, r.split))})"
                     for r in runs)


def _per_second(runs: list[Run]) -> float:
    return sum(r.requests for r in runs) / sum(r.seconds for r in runs)


def _percentile(runs: list[Run], p: float) -> float:
    """The p-th percentile latency (microseconds) of all the runs' requests together."""
    weighted = sorted((q, r.requests / len(r.quantiles_us)) for r in runs for q in r.quantiles_us)
    wanted, seen = p / 100 * sum(w for _, w in weighted), 0.0
    for latency, weight in weighted:
        seen += weight
        if seen >= wanted:
            return latency
    return weighted[-1][0]


def _run(wrk: str, server: Server, url: str, connections: int, body: Path | None, seconds: int) -> Run:
    """One closed-loop run: each connection sends its next request as soon as the last answer is in.

    One wrk thread: on a 2-core machine a second one only takes CPU from the server under test, and one
    drives far more requests per second than the floor reaches. A run with failed requests measured
    something else than the service: the bench stops rather than print it."""
    args = [wrk, "--threads", "1", "--connections", str(connections), "--duration", f"{seconds}s",
            "--timeout", "10s", "--script", str(LUA), url, "--", str(body or "")]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(min(0.5, seconds / 4))  # wrk connects at once and keeps its connections
    split = _connections(_workers(server.master), server.port)
    try:
        stdout, stderr = process.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise NotMeasured(f"wrk did not finish a {seconds} s run within {seconds + 30} s") from None
    line = next((line for line in stdout.splitlines() if line.startswith("LOAD ")), None)
    if process.returncode != 0 or line is None:
        raise NotMeasured(f"wrk failed (exit {process.returncode}): {stderr.strip() or stdout.strip()}")
    run = Run(**json.loads(line.removeprefix("LOAD ")), split=split)
    if run.socket_errors or run.http_errors:
        raise NotMeasured(f"{url}: {run.http_errors} HTTP errors and {run.socket_errors} socket errors "
                          f"in {run.requests} requests")
    return run


def _wrk() -> str:
    """Debian's wrk, installed with apt-get when missing and allowed (root)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise NotMeasured("wrk is not installed and this is not root: install it with `apt-get install wrk`")
    print("wrk is missing: installing Debian's package (apt-get install wrk)", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "wrk"]
    try:
        if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
            subprocess.run(install, env=env, capture_output=True, check=False)
    except OSError as e:  # no apt-get: not a Debian machine
        raise NotMeasured(f"wrk is not installed and apt-get cannot run ({e.strerror}): install wrk") from e
    found = shutil.which("wrk")
    if not found:
        raise NotMeasured("wrk could not be installed (apt-get install wrk failed); no slower load tool is "
                          "substituted, as its own limits would be measured instead of the service's")
    return found


@contextmanager
def _server(home: Path) -> Iterator[Server]:
    """`cds-service serve` with its default workers on a free loopback port, stopped afterwards."""
    metrics = home / "metrics"
    env = {k: v for k, v in os.environ.items() if k not in ("CDS_THREADS", "CDS_LOG_LEVEL")}
    env.update(CDS_DEV="1", CDS_AUTH="off", CDS_NOW="2026-11-21T12:00:00Z", WEB_CONCURRENCY=str(WORKERS),
               PROMETHEUS_MULTIPROC_DIR=str(metrics), CDS_DATABASE_URL=f"sqlite:///{home / 'cds.db'}")
    log_path = home / "server.log"
    with serve_process(env, log_path) as (url, process):
        try:
            _wait_until_ready(url, process)
            yield Server(url, int(url.rsplit(":", 1)[1]), process.pid, metrics)
        except NotMeasured as e:  # not ready, or calls failing under load: show why
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise NotMeasured(f"{e}\nthe server's log ends:\n{tail}") from e


def _wait_until_ready(url: str, process: subprocess.Popen) -> None:
    """Until /readyz answers 200 (rules loaded, engine warmed, database reachable) and all workers run."""
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200 and len(_workers(process.pid)) == WORKERS:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise NotMeasured(f"cds-service serve did not become ready with {WORKERS} workers (exit code {process.poll()})")


def _workers(master: int) -> list[int]:
    """The gunicorn workers: the master's child processes."""
    children = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:  # the process ended while being read
            continue
        if fields.get("PPid", "").strip() == str(master):
            children.append(int(status.parent.name))
    return sorted(children)


def _rss_kb(pid: int) -> int:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1])


def _prefetch_keys(base: str) -> list[str]:
    services = requests.get(f"{base}/cds-services", timeout=10).json()["services"]
    return list(next(s["prefetch"] for s in services if s["id"] == SERVICE))


def _connections(workers: list[int], port: int) -> tuple[int, ...]:
    """How many established connections on the server's port each worker holds."""
    established = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                established.add(f"socket:[{fields[9]}]")
    return tuple(sum(1 for fd in _descriptors(pid) if fd in established) for pid in workers)


def _descriptors(pid: int) -> list[str]:
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:  # closed while being listed
            continue
    return targets


def _served(server: Server, workers: list[int]) -> dict[int, int]:
    """Typical hook calls each worker answered 200, from the counters it writes for /metrics, once they
    have settled: calls still queued when wrk stopped are answered after it."""
    counts, previous = _hook_counts(server.metrics, workers), None
    deadline = time.monotonic() + 5
    while counts != previous and time.monotonic() < deadline:
        time.sleep(0.3)
        counts, previous = _hook_counts(server.metrics, workers), counts
    return counts


def _hook_counts(metrics: Path, workers: list[int]) -> dict[int, int]:
    return {pid: _hook_count(metrics / f"histogram_{pid}.db") for pid in workers}


def _hook_count(file: Path) -> int:
    """A worker's file appears with its first timed request."""
    if not file.exists():
        return 0
    return int(sum(sample.value for family in MultiProcessCollector.merge([str(file)]) for sample in family.samples
                   if sample.name == "cds_http_request_duration_seconds_count"
                   and sample.labels == {"route": HOOK_ROUTE, "service": SERVICE, "status": "200"}))


def _table(rows: list[Row]) -> str:
    widths = [max(len(r.measure) for r in rows), max(len(r.figure) for r in rows), max(len(r.target) for r in rows)]
    head = f"{'measure':<{widths[0]}}  {'figure':<{widths[1]}}  {'target':<{widths[2]}}  met"
    lines = [head, "-" * len(head)]
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        lines.append(f"{r.measure:<{widths[0]}}  {r.figure:<{widths[1]}}  {r.target:<{widths[2]}}  {met}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
