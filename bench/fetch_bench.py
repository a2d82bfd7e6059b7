"""What fetching from the EHR's FHIR server costs, against a local one (Medplum in memory, devtools/fhir_server.py).

1. Added latency: one example patient's hook call with full prefetch, then the same call with no
   prefetch and a fhirServer (every key fetched, token required), CALLS times each; the difference of
   the medians and of the 95th percentiles is what the fetch path adds. For scale, the same queries
   sent one after another with plain requests: the in-memory server's own time, which dominates.
2. Parallelism: the wall time of the fetch phase against the slowest of its queries fetched alone. The
   in-memory server runs on one JavaScript thread and answers queries one after another, so this part
   gives each resource type a server-side latency (the glue waits before answering, as a real server's
   database and network do): parallel queries then overlap, and the phase should take no more than
   TARGET × the slowest query.

Run: .venv/bin/python bench/fetch_bench.py [--calls 200]  (needs node and npm, like the tests)
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cds_service import hooks  # noqa: E402
from cds_service.record import prefetch  # noqa: E402
from cds_service.engine import rulebook  # noqa: E402
from cds_service.record.fhir_client import FetchSettings, FhirFetcher  # noqa: E402
from cds_service.service import CdsService  # noqa: E402
from tests.conftest import NOW  # noqa: E402
from devtools.fhir_server import FhirServer, example_requests, prefetched_resources, start  # noqa: E402

TARGET = 1.3
TOKEN = "bench-token"
SERVER_LATENCY_MS = {"Patient": 30, "Observation": 150, "Condition": 60, "MedicationAdministration": 90,
                     "MedicationStatement": 50, "MedicationRequest": 80, "AllergyIntolerance": 40, "Immunization": 70}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="hook calls per path (default 200)")
    parser.add_argument("--rounds", type=int, default=30, help="fetch phases timed for parallelism (default 30)")
    args = parser.parse_args()
    book = rulebook.load()
    templates = prefetch.templates(book.valuesets)
    name, body = _richest_example(set(templates))
    server = start(token=TOKEN)
    try:
        server.seed("bench", prefetched_resources(body))
        server.seed("bench-slow", prefetched_resources(body))
        server.configure("bench-slow", delays=SERVER_LATENCY_MS)
        print(f"# fetch bench: {name} ({len(prefetched_resources(body))} resources), {_machine()}\n")
        _added_latency(CdsService(book, fetcher=FhirFetcher(FetchSettings.from_env({})), clock=lambda: NOW),
                       server, body, args.calls)
        print()
        return _parallelism(server, body, templates, args.rounds)
    finally:
        server.stop()


def _richest_example(declared: set[str]) -> tuple[str, dict[str, Any]]:
    """The example whose full prefetch holds the most resources: the most work for the fetch path."""
    full = [(n, b) for n, b in example_requests() if declared <= set(b["prefetch"]) and b["hook"] != "patient-view"]
    return max(full, key=lambda nb: len(prefetched_resources(nb[1])))


def _added_latency(service: CdsService, server: FhirServer, body: dict[str, Any], calls: int) -> None:
    service_id = f"cd20-{body['hook']}"
    fetching = {k: v for k, v in body.items() if k != "prefetch"}
    fetching.update(fhirServer=server.base("bench"), fhirAuthorization={"access_token": TOKEN})
    prefetched = _times(lambda: service.call(service_id, body), calls)
    fetched = _times(lambda: service.call(service_id, fetching), calls)
    assert service.call(service_id, fetching) == service.call(service_id, body), "fetched cards differ"
    urls = [f"{server.base('bench')}/{prefetch.render(t, hooks.HookRequest.model_validate(body))}"
            for t in service.services[service_id].prefetch.values()]
    with requests.Session() as session:
        bare = _times(lambda: [session.get(u, headers=server.headers(), timeout=30).json() for u in urls], calls)
    added = ("**added by fetching**", statistics.median(fetched) - statistics.median(prefetched),
             _p95(fetched) - _p95(prefetched))
    rows = [("full prefetch", statistics.median(prefetched), _p95(prefetched)),
            ("no prefetch, all fetched", statistics.median(fetched), _p95(fetched)), added,
            (f"for scale: the server alone ({len(urls)} queries one after another, plain requests)",
             statistics.median(bare), _p95(bare))]
    print(f"## Added latency of the fetch path ({calls} calls each, ms)\n")
    print("| path | median | p95 |\n|---|---:|---:|")
    for label, median, p95 in rows:
        print(f"| {label} | {_ms(median)} | {_ms(p95)} |")


def _parallelism(server: FhirServer, body: dict[str, Any], templates: dict[str, str], rounds: int) -> int:
    request = hooks.HookRequest.model_validate({**{k: v for k, v in body.items() if k != "prefetch"},
                                                "fhirServer": server.base("bench-slow"),
                                                "fhirAuthorization": {"access_token": TOKEN}})
    queries = {key: prefetch.render(template, request) or "" for key, template in templates.items()}
    fetcher = FhirFetcher(FetchSettings.from_env({}))
    alone = {key: statistics.median(_times(lambda q={key: query}: _fetch(fetcher, request, q), rounds))
             for key, query in queries.items()}
    phase = _times(lambda: _fetch(fetcher, request, queries), rounds)
    slowest_key = max(alone, key=alone.__getitem__)
    ratio = statistics.median(phase) / alone[slowest_key]
    print(f"## Fetch phase vs its slowest query (server latency per type simulated, median of {rounds}, ms)\n")
    print("| query | alone |\n|---|---:|")
    for key, seconds in alone.items():
        print(f"| {key} ({SERVER_LATENCY_MS[queries[key].split('?')[0].split('/')[0]]} ms server side) "
              f"| {_ms(seconds)} |")
    print(f"| **all {len(queries)} in one fetch phase** | **{_ms(statistics.median(phase))}** "
          f"(p95 {_ms(_p95(phase))}) |")
    print(f"\nphase / slowest ({slowest_key}) = {ratio:.2f}× (target ≤ {TARGET}×; "
          f"sum of all queries alone = {_ms(sum(alone.values()))} ms)")
    return 0 if ratio <= TARGET else 1


def _fetch(fetcher: FhirFetcher, request: hooks.HookRequest, queries: dict[str, str]) -> None:
    failed = [k for k, v in fetcher.fetch(request, queries).items() if isinstance(v, prefetch.FetchFailed)]
    assert not failed, f"fetch failed for {failed}"


def _times(call: Callable[[], Any], n: int) -> list[float]:
    call()  # warm-up: connections, caches
    times = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def _p95(times: list[float]) -> float:
    return sorted(times)[max(0, -(-len(times) * 95 // 100) - 1)]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _machine() -> str:
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs (load average {load}), Python {platform.python_version()}, Node {node}"


if __name__ == "__main__":
    sys.exit(main())
