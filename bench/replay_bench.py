"""Population replay throughput and memory per worker, on Dask: `cds-service replay` over exports made by
export_generator.py from the patients of fhir_examples/ (records of their size: about 11 resources each).

Runs: a 10,000-patient export with 1 local worker and with 2, twice each, in turn (the machine is shared:
the best of two is kept); then a 40,000-patient export with 2. Each run is `cds-service replay --workers
N` in a subprocess, as a user runs it: its own LocalCluster, one thread per worker process. From each
run's summary.json: patients per second per worker, over reading the export and evaluating every patient
(the cluster's start-up left out), and each worker's peak resident set (getrusage's ru_maxrss, which the
tasks report from the workers).

A worker holds one partition at a time, and there are max(4 x workers, export size / --partition-mb)
partitions: below 4 x workers x --partition-mb of NDJSON, a bigger export means bigger partitions, up to
the cap, and flat beyond it. All runs use --partition-mb 4, so that both exports are past the cap and the
memory comparison is about export size alone (at the default 16 MB, a 10,000-patient export of 67 MB
gets 8 partitions of 8 MB: the cap is reached from about 20,000 such patients on).

Targets: at least 100 patients/s per worker; 2 workers at least 1.7 times as fast as 1 (the machine has
2 cores); memory per worker flat in export size: the 40,000-patient run's peak within 15 % of the
10,000-patient run's, both with 2 workers.

Run from the project root: `make bench` (or `.venv/bin/python bench/replay_bench.py`). Exits 1 if a
target is missed.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import _machine
from export_generator import patients, write

ROOT = Path(__file__).resolve().parent.parent
AT = datetime(2026, 11, 21, 12, tzinfo=timezone.utc)
RUNS = [(10_000, 1), (10_000, 2), (10_000, 1), (10_000, 2), (40_000, 2)]  # (patients, workers), in this order
PARTITION_MB = "4"
PER_WORKER_TARGET, SCALING_TARGET, MEMORY_GROWTH_MAX = 100.0, 1.7, 0.15


def run(export: Path, out: Path, workers: int) -> dict:
    started = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "cds-service"), "replay", str(export), "--at",
                           AT.isoformat(), "--product", "ocrelizumab-iv", "--workers", str(workers), "--out", str(out),
                           "--partition-mb", PARTITION_MB], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"replay failed:\n{done.stderr[-3000:]}")
    figures = json.loads((out / "summary.json").read_text())
    return {"patients": figures["patients"]["answered"], "workers": workers, "wall": time.perf_counter() - started,
            **figures["run"], "peak_mb": figures["run"]["peak_memory_mb_per_worker"]}


def main() -> int:
    print(_machine())
    results = []
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as scratch:
        for count in sorted({count for count, _ in RUNS}):
            made = time.perf_counter()
            write(Path(scratch) / f"export-{count}", patients(count, AT, seed=count))
            size = sum(p.stat().st_size for p in (Path(scratch) / f"export-{count}").iterdir()) / 2 ** 20
            print(f"export of {count} patients: {size:.0f} MB of NDJSON, made in {time.perf_counter() - made:.1f} s")
        for count, workers in RUNS:
            result = run(Path(scratch) / f"export-{count}", Path(scratch) / f"out-{count}-{workers}", workers)
            results.append(result)
            seconds = result["seconds"]
            print(f"{count} patients, {workers} worker(s): {result['patients_per_second_per_worker']:.0f} patients/s per "
                  f"worker (reading {seconds['reading']:.1f} s, evaluating {seconds['evaluating']:.1f} s, "
                  f"{result['partitions']} partitions; {result['wall']:.1f} s with the cluster's start), peak RSS per "
                  f"worker {', '.join(f'{m:.0f}' for m in result['peak_mb'])} MB", flush=True)
    best = {key: max((r for r in results if (r["patients"], r["workers"]) == key),
                     key=lambda r: r["patients_per_second_per_worker"]) for key in set(RUNS)}
    one, two, big = best[(10_000, 1)], best[(10_000, 2)], best[(40_000, 2)]
    scaling = 2 * two["patients_per_second_per_worker"] / one["patients_per_second_per_worker"]
    growth = max(big["peak_mb"]) / max(two["peak_mb"]) - 1
    slowest = min(r["patients_per_second_per_worker"] for r in best.values())
    checks = [(f"patients/s per worker ≥ {PER_WORKER_TARGET:.0f} (best run of each kind)",
               slowest >= PER_WORKER_TARGET, f"{slowest:.0f} at the least"),
              (f"2 workers ≥ {SCALING_TARGET} × 1 worker", scaling >= SCALING_TARGET, f"{scaling:.2f} ×"),
              (f"peak RSS per worker, 40,000 vs 10,000 patients, within {MEMORY_GROWTH_MAX:.0%}",
               growth <= MEMORY_GROWTH_MAX, f"{growth:+.1%}")]
    print()
    for name, met, figure in checks:
        print(f"{'met   ' if met else 'MISSED'} {name}: {figure}")
    return 0 if all(met for _, met, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
