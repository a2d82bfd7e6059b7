"""Load the example patients of fhir_examples/ into a FHIR R4 server: the compose lab's one-shot job.

Each example hook request carries its patient's record as prefetch. Those resources are PUT under their
own ids (batch Bundles: the patients, then the rest), so that a call sent without prefetch makes the
service fetch the very record the example would have sent. Draft orders are left out: they are what the
clinician is signing, not yet part of the record.

    python deploy/load_fhir_examples.py [--wait SECONDS] http://localhost:8081/fhir [fhir_examples]

--wait: first wait up to that long for the server to answer /metadata. The lab starts the loader with the
server; engines that do not wait for a dependency to be healthy first (podman 4) start them together.
FHIR_TOKEN, when set, is sent as a bearer token. Exit status: 0 all loaded, 1 some resource refused or
two examples disagree about one resource, 2 the server could not be reached or refused the batch.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import requests

from cds_service.record.prefetch import resources_in

EXAMPLES = Path(__file__).resolve().parent.parent / "fhir_examples"
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
TIMEOUT_SECONDS = 120  # a fresh HAPI server indexes a first batch slowly
POLL_SECONDS = 2


class Examples:
    """The resources the example requests prefetch, by "Type/id", and where two examples disagree."""

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self.conflicts: list[str] = []
        self.without_id = 0

    def add_file(self, path: Path) -> None:
        body = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(body, dict) or not isinstance(body.get("prefetch"), dict):
            return  # not a hook request with a record (e.g. expected.json)
        for value in body["prefetch"].values():
            for resource in resources_in(value):
                self._add(resource, path.name)

    def _add(self, resource: dict[str, Any], source: str) -> None:
        kind, rid = resource.get("resourceType"), resource.get("id")
        if kind == "OperationOutcome":  # an EHR's failed query, not part of the record
            return
        if not isinstance(kind, str) or not isinstance(rid, str) or not FHIR_ID.fullmatch(rid):
            self.without_id += 1
            return
        ref = f"{kind}/{rid}"
        known = self.resources.setdefault(ref, resource)
        if known != resource:
            self.conflicts.append(f"{ref} differs in {source} from an earlier example")

    def batches(self) -> list[dict[str, Any]]:
        """The patients, then what refers to them: servers check references, and may run a batch's
        entries in parallel."""
        patients = sorted(ref for ref in self.resources if ref.startswith("Patient/"))
        rest = sorted(ref for ref in self.resources if not ref.startswith("Patient/"))
        return [self._batch(refs) for refs in (patients, rest) if refs]

    def _batch(self, refs: list[str]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "batch",
                "entry": [{"resource": self.resources[ref], "request": {"method": "PUT", "url": ref}} for ref in refs]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fhir_base", help="the FHIR server's base URL, e.g. http://localhost:8081/fhir")
    parser.add_argument("examples", nargs="?", type=Path, default=EXAMPLES, help="folder of example requests")
    parser.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                        help="wait up to this long for the server to answer /metadata first")
    args = parser.parse_args(argv)
    examples = Examples()
    for path in sorted(args.examples.glob("*.json")):
        examples.add_file(path)
    if examples.conflicts:
        print("not loaded: examples disagree about the same resource id:", *examples.conflicts, sep="\n  ",
              file=sys.stderr)
        return 1
    refused: list[str] = []
    url = args.fhir_base.rstrip("/")
    if not _answers(url, args.wait):
        print(f"cannot reach {args.fhir_base}: no answer to /metadata within {args.wait:g} s", file=sys.stderr)
        return 2
    for batch in examples.batches():
        try:
            response = requests.post(url, json=batch, headers=_headers(), timeout=TIMEOUT_SECONDS)
        except requests.RequestException as e:
            print(f"cannot reach {args.fhir_base}: {type(e).__name__}", file=sys.stderr)
            return 2
        if not response.ok:
            print(f"{args.fhir_base} refused the batch: HTTP {response.status_code} {response.text[:500]}",
                  file=sys.stderr)
            return 2
        refused += _refused(batch, response.json())
    for line in refused:
        print(f"refused: {line}", file=sys.stderr)
    patients = sum(ref.startswith("Patient/") for ref in examples.resources)
    print(f"loaded {len(examples.resources) - len(refused)} of {len(examples.resources)} resources "
          f"({patients} patients) into {args.fhir_base}"
          + (f"; skipped {examples.without_id} without a usable id" if examples.without_id else ""))
    return 1 if refused else 0


def _answers(url: str, wait_seconds: float) -> bool:
    """Whether the server answers /metadata within the wait; without a wait, the first batch tells instead."""
    if wait_seconds <= 0:
        return True
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            if requests.get(f"{url}/metadata", headers=_headers(), timeout=10).ok:
                return True
        except requests.RequestException:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)


def _headers() -> dict[str, str]:
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if os.environ.get("FHIR_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['FHIR_TOKEN']}"
    return headers


def _refused(batch: dict[str, Any], answer: dict[str, Any]) -> list[str]:
    """The batch entries the server did not store, with its reason; a batch answer keeps the entries' order."""
    sent = [entry["request"]["url"] for entry in batch["entry"]]
    answered = answer.get("entry") or []
    if len(answered) != len(sent):
        return [f"the server answered {len(answered)} entries for {len(sent)} sent"]
    refused = []
    for ref, entry in zip(sent, answered, strict=True):
        status = str((entry.get("response") or {}).get("status", ""))
        if not status.startswith("2"):
            refused.append(f"{ref}: {status} {_diagnostics(entry)}".rstrip())
    return refused


def _diagnostics(entry: dict[str, Any]) -> str:
    outcome = (entry.get("response") or {}).get("outcome") or entry.get("resource") or {}
    return "; ".join(str(i.get("diagnostics", "")) for i in outcome.get("issue") or ())[:300]


if __name__ == "__main__":
    sys.exit(main())
