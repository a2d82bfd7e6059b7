"""Makes a FHIR Bulk Data export ($export output: one NDJSON file per resource type, or several) of any
number of patients, offline, by varying real records: the patients of fhir_examples/ (their prefetch)
and, if asked, the Synthea records of ../shared/fhir-corpus/fhir/synthea/. Each copy gets new ids (its
references rewritten to match), its dates shifted and its lab values perturbed, so no two patients are
the same and their cards differ as real records' would.

    .venv/bin/python bench/export_generator.py 10000 /tmp/export [--synthea-every 50] [--gzip]
        [--files-per-type 4] [--seed 1] [--at 2026-11-21]

Dates land before --at: the examples' records are written against 2026-11-21T12:00Z and move with it,
less up to --jitter-days; a Synthea record's newest date lands up to --jitter-days before --at.
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

from cds_service.record import identity

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "fhir_examples"
SYNTHEA = ROOT.parent / "shared" / "fhir-corpus" / "fhir" / "synthea"
EXAMPLES_AT = datetime(2026, 11, 21, 12, tzinfo=timezone.utc)
DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(.*)$")
Resource = dict[str, Any]


@dataclass(frozen=True)
class Record:
    """One patient's resources as found, and what their dates are written against."""

    patient_id: str
    resources: list[Resource]
    full_urls: dict[str, str]  # fullUrl (Synthea's urn:uuid references) -> "Type/id"
    newest: datetime | None  # None: written against EXAMPLES_AT


def example_records() -> list[Record]:
    """The patient record of every example request: its prefetch (only what is that patient's), without the
    draft orders."""
    records = []
    for path in sorted(EXAMPLES.glob("*--*.json")):
        body = json.loads(path.read_text(encoding="utf-8"))
        resources: dict[tuple[str, str], Resource] = {}
        for value in (body.get("prefetch") or {}).values():
            for resource in _resources_in(value):
                resources.setdefault((resource["resourceType"], resource.get("id", "")), resource)
        own, _ = identity.split(list(resources.values()), body["context"]["patientId"])  # not another patient's
        if any(r["resourceType"] == "Patient" for r in own):
            records.append(Record(body["context"]["patientId"], own, {}, None))
    return records


def synthea_records() -> list[Record]:
    """The Synthea patient Bundles, smallest first."""
    records = []
    for path in sorted(SYNTHEA.rglob("*.json"), key=lambda p: p.stat().st_size):
        entries = json.loads(path.read_text(encoding="utf-8"))["entry"]
        resources = [e["resource"] for e in entries]
        patient = next(r["id"] for r in resources if r["resourceType"] == "Patient")
        urls = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries if "fullUrl" in e}
        records.append(Record(patient, resources, urls, _newest(resources)))
    return records


def patients(count: int, at: datetime, seed: int = 1, synthea_every: int = 0, jitter_days: int = 20
             ) -> Iterator[list[Resource]]:
    """`count` patients, each a list of resources: example records in turn, every `synthea_every`-th
    patient (when > 0) from a Synthea record instead."""
    examples = example_records()
    synthea = synthea_records() if synthea_every else []
    for n in range(count):
        rng = random.Random(f"{seed}/{n}")
        if synthea and n % synthea_every == synthea_every - 1:
            record = synthea[(n // synthea_every) % len(synthea)]
        else:
            record = examples[n % len(examples)]
        yield vary(record, f"gen{seed}-{n:07d}", at, rng, jitter_days)


def vary(record: Record, patient_id: str, at: datetime, rng: random.Random, jitter_days: int) -> list[Resource]:
    """A copy of the record: new ids, references to match, dates moved before `at`, values perturbed."""
    newest = record.newest or EXAMPLES_AT
    shift = (at - newest) - timedelta(days=rng.randint(0, jitter_days))
    ids = {f"{r['resourceType']}/{r.get('id')}": f"{r['resourceType']}/{_new_id(patient_id, r)}" for r in record.resources}
    ids[f"Patient/{record.patient_id}"] = f"Patient/{patient_id}"
    ids.update({url: ids.get(target, target) for url, target in record.full_urls.items()})
    copies = []
    for resource in record.resources:
        copy = _rewrite(resource, ids, shift)
        copy["id"] = patient_id if copy["resourceType"] == "Patient" else _new_id(patient_id, resource)
        _perturb(copy, rng)
        copies.append(copy)
    return copies


def write(out: Path, records: Iterator[list[Resource]], gzipped: bool = False, files_per_type: int = 1) -> int:
    """Write the export: `Type.ndjson` (or `Type.k.ndjson` for k < files_per_type), gzipped if asked; the
    patients are spread over a type's files. Returns the number of resources written."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, IO[bytes]] = {}
    written = 0
    try:
        for n, resources in enumerate(records):
            for resource in resources:
                name = resource["resourceType"] + (f".{n % files_per_type}" if files_per_type > 1 else "") + ".ndjson"
                if name not in files:
                    files[name] = (gzip.open(out / f"{name}.gz", "wb", compresslevel=1) if gzipped
                                   else open(out / name, "wb"))
                files[name].write(json.dumps(resource, separators=(",", ":")).encode() + b"\n")
                written += 1
    finally:
        for f in files.values():
            f.close()
    return written


def _resources_in(value: Any) -> list[Resource]:
    if not isinstance(value, dict):
        return []
    if value.get("resourceType") == "Bundle":
        return [e["resource"] for e in value.get("entry") or () if isinstance(e.get("resource"), dict)
                and e["resource"].get("resourceType") != "OperationOutcome"]
    return [value] if isinstance(value.get("resourceType"), str) else []


def _new_id(patient_id: str, resource: Resource) -> str:
    return f"{patient_id}-{resource.get('id', 'x')}"[:64]


def _rewrite(value: Any, ids: dict[str, str], shift: timedelta) -> Any:
    """A deep copy with references renamed and every date or dateTime moved by `shift`."""
    if isinstance(value, dict):
        copy = {k: _rewrite(v, ids, shift) for k, v in value.items()}
        if isinstance(copy.get("reference"), str):
            copy["reference"] = ids.get(copy["reference"], copy["reference"])
        return copy
    if isinstance(value, list):
        return [_rewrite(v, ids, shift) for v in value]
    if isinstance(value, str):
        return _shifted(value, shift)
    return value


def _shifted(text: str, shift: timedelta) -> str:
    match = DATE.match(text)
    if not match or not shift.days:
        return text
    try:
        day = date.fromisoformat(match.group(1)) + timedelta(days=shift.days)
    except ValueError:
        return text
    return day.isoformat() + match.group(2)


def _perturb(resource: Resource, rng: random.Random) -> None:
    """Lab values up or down by up to 10 %, kept to the precision they were written with."""
    for holder in [resource, *(c for c in resource.get("component") or () if isinstance(c, dict))]:
        quantity = holder.get("valueQuantity")
        if isinstance(quantity, dict) and isinstance(quantity.get("value"), (int, float)):
            value = quantity["value"]
            places = len(str(value).partition(".")[2]) if isinstance(value, float) else 0
            perturbed = round(value * rng.uniform(0.9, 1.1), places)
            quantity["value"] = perturbed if places else int(perturbed)


def _newest(resources: list[Resource]) -> datetime | None:
    dates = [m.group(1) for r in resources for m in map(DATE.match, _strings(r)) if m]
    return datetime.fromisoformat(max(dates)).replace(tzinfo=timezone.utc) if dates else None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patients", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--synthea-every", type=int, default=0, help="every k-th patient from a Synthea record")
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--files-per-type", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--at", default="2026-11-21", help="the date the records lead up to")
    parser.add_argument("--jitter-days", type=int, default=20)
    args = parser.parse_args()
    at = datetime.combine(date.fromisoformat(args.at), EXAMPLES_AT.timetz())
    written = write(args.out, patients(args.patients, at, args.seed, args.synthea_every, args.jitter_days),
                    args.gzip, args.files_per_type)
    print(f"{args.patients} patients, {written} resources in {args.out}")


if __name__ == "__main__":
    main()
