"""Demo patients for the CDS Hooks sandbox: records taken from fhir_examples/, dates moved to today.

The examples are written against 2026-11-21T12:00Z (fhir_examples/README.md). Rather than freeze the
service's clock there (CDS_NOW), every date and dateTime in the demo records is moved forward by the time
since then, so a lab "9 days old" in the example is 9 days old now: the service runs on its real clock,
and the sandbox's draft order (dated today by the sandbox) agrees with the record.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from devtools.fhir_server import prefetched_resources

EXAMPLES = Path(__file__).resolve().parent.parent / "fhir_examples"
WRITTEN_AT = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)  # the clock the examples are written against
MEDICATIONS = {"ocrelizumab": {"id": "1876380", "name": "10 ML ocrelizumab 30 MG/ML Injection"},
               "rituximab": {"id": "1657862", "name": "10 ML rituximab 10 MG/ML Injection"}}
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


@dataclass(frozen=True)
class DemoPatient:
    example: str  # the file in fhir_examples/ whose prefetch is this patient's record
    title: str  # what it shows, for the list `make sandbox` prints
    screen: str  # the sandbox screen to open it on: patient-view, rx-view or rx-sign

    @property
    def request(self) -> dict[str, Any]:
        return json.loads((EXAMPLES / self.example).read_text(encoding="utf-8"))

    @property
    def patient_id(self) -> str:
        return self.request["context"]["patientId"]


PATIENTS = [
    DemoPatient("clean--first-dose-all-labs-normal.json",
                "first dose, full work-up done and normal (HBV, IgG, liver, neutrophils)", "rx-sign"),
    DemoPatient("hbv-active--hbsag-positive.json", "active hepatitis B: HBsAg reactive before a first dose", "rx-sign"),
    DemoPatient("igg-low--below-lab-range.json", "low IgG (5.2 g/L) on maintenance", "rx-sign"),
    DemoPatient("liver-injury--alt-and-bilirubin.json", "liver injury: ALT 5.1 x ULN with bilirubin 2.8 x ULN",
                "rx-sign"),
    DemoPatient("neutropenia--critical.json", "severe neutropenia: ANC 0.42 x 10^9/L on maintenance", "rx-sign"),
    DemoPatient("hbv-dna-monitoring--patient-view.json",
                "maintenance on ocrelizumab, resolved hepatitis B without HBV DNA monitoring", "patient-view"),
]


def choose_drug(medication: dict[str, str]) -> str:
    """JavaScript that picks this drug in the sandbox's Rx View and Rx Sign, as its own picker would.

    The picker's list has no anti-CD20 product, so the sandbox cannot be asked about one by hand; this
    dispatches the Redux action the picker dispatches, to the store the app keeps on its root element.
    `make sandbox` prints it for the browser's console, and the browser test runs the same text.
    """
    return ("(m => { const r = document.getElementById('root'); "
            "let f = r[Object.keys(r).find(k => k.startsWith('__reactContainer$'))]; "
            "while (f && !(f.memoizedProps && f.memoizedProps.store)) f = f.child; "
            "f.memoizedProps.store.dispatch({type: 'STORE_USER_CHOSEN_MEDICATION', medication: m}); })"
            f"({json.dumps(medication)})")


def records(patients: list[DemoPatient], now: datetime) -> list[dict[str, Any]]:
    """Every resource of these patients' records, dates moved so the examples' moment becomes `now`."""
    by = now - WRITTEN_AT
    found: dict[str, dict[str, Any]] = {}
    for patient in patients:
        for resource in prefetched_resources(patient.request):
            found[f"{resource['resourceType']}/{resource['id']}"] = moved(resource, by)
    return list(found.values())


def moved(value: Any, by: timedelta) -> Any:
    """A FHIR value with every full date and dateTime in it moved by `by` (dates by whole days)."""
    if isinstance(value, dict):
        return {key: moved(item, by) for key, item in value.items()}
    if isinstance(value, list):
        return [moved(item, by) for item in value]
    if not isinstance(value, str):
        return value
    if DATE_TIME.fullmatch(value):
        shifted = (datetime.fromisoformat(value) + by).isoformat()
        return shifted.replace("+00:00", "Z") if value.endswith("Z") else shifted
    if DATE.fullmatch(value):
        days = (WRITTEN_AT + by).date() - WRITTEN_AT.date()
        return (date.fromisoformat(value) + days).isoformat()
    return value
