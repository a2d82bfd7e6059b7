"""A FHIR Bulk Data export (the output of $export) as input: NDJSON files, one resource per line, one file
or several per resource type, optionally gzipped; cut into chunks that workers read independently, and
each resource's patient, by which the export is grouped.
"""
from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIXES = (".ndjson", ".ndjson.gz")
CHUNK_BYTES = 32 * 1024 * 1024  # a plain file is read in pieces this large, by as many tasks
GZIP_RATIO = 8  # what a gzipped NDJSON file is assumed to hold, per byte, when sizing partitions
PATIENT_REFERENCE = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]*)?$")
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
PATIENT_FIELDS = ("subject", "patient")  # where the resources the service reads name their patient


class ExportError(ValueError):
    """The export cannot be read at all (no NDJSON file where it should be); the message says why."""


@dataclass(frozen=True)
class Chunk:
    """Lines of one file that start in [start, end); a gzipped file is one chunk (end None)."""

    number: int  # among all the export's chunks
    path: str
    name: str  # the file's path inside the export, for reports
    index: int  # the chunk's place in its file: line numbers are counted from the chunks before it
    start: int
    end: int | None


def files(export: Path) -> list[Path]:
    """The export's NDJSON files: EXPORT itself, or every *.ndjson(.gz) under it."""
    if export.is_file():
        return [export]
    if not export.is_dir():
        raise ExportError(f"{export}: no such file or directory")
    found = sorted(p for p in export.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
    if not found:
        raise ExportError(f"{export}: no NDJSON file (*.ndjson or *.ndjson.gz) in it")
    return found


def chunks(export: Path, paths: list[Path]) -> list[Chunk]:
    found: list[Chunk] = []
    chunk_bytes = CHUNK_BYTES
    for path in paths:
        name = path.name if path == export else str(path.relative_to(export))
        if _gzipped(path):
            found.append(Chunk(len(found), str(path), name, 0, 0, None))
            continue
        size = path.stat().st_size
        for index, start in enumerate(range(0, max(size, 1), chunk_bytes)):
            found.append(Chunk(len(found), str(path), name, index, start, min(start + chunk_bytes, size)))
    return found


def size_estimate(paths: list[Path]) -> int:
    """Bytes of NDJSON the export holds, gzipped files counted as GZIP_RATIO times their size."""
    return sum(p.stat().st_size * (GZIP_RATIO if _gzipped(p) else 1) for p in paths)


def lines(chunk: Chunk) -> Iterator[bytes]:
    """The chunk's lines, without their line ends: every line that starts inside it, read to its end."""
    if chunk.end is None:
        with gzip.open(chunk.path, "rb") as f:
            yield from (line.rstrip(b"\r\n") for line in f)
        return
    with open(chunk.path, "rb") as f:
        position = chunk.start
        if position:
            f.seek(position - 1)
            position += len(f.readline()) - 1  # the rest of a line begun in the chunk before
        while position < chunk.end:
            line = f.readline()
            if not line:
                return
            position += len(line)
            yield line.rstrip(b"\r\n")


def patient_of(resource: dict[str, Any]) -> str | None:
    """The id of the patient a resource is about (a Patient's own id); None if it names none we can read."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) and FHIR_ID.fullmatch(rid) else None
    for name in PATIENT_FIELDS:
        value = resource.get(name)
        reference = value.get("reference") if isinstance(value, dict) else None
        if isinstance(reference, str):
            match = PATIENT_REFERENCE.search(reference)
            if match:
                return match.group(1)
    return None


def _gzipped(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"
