"""Prefetch: the FHIR queries the service declares, and the patient data a hook request brings.

A key's value in `request.prefetch` can be absent (the client chose not to, or could not), null or an
empty Bundle (the query found nothing), an OperationOutcome (the client's query failed), or the data.
Absent and failed keys are fetched from `fhirServer` by a Fetcher when one is configured; whatever still
cannot be had becomes a named gap, so the rules that needed it say so instead of passing silently.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol
from urllib.parse import quote

from .hooks import HookRequest

TOKEN = re.compile(r"\{\{\s*([A-Za-z.]+)\s*\}\}")
USER_TOKENS = {"userPractitionerId": "Practitioner", "userPractitionerRoleId": "PractitionerRole",
               "userPatientId": "Patient", "userRelatedPersonId": "RelatedPerson"}


def templates(valuesets: dict[str, Any], products: dict[str, Any]) -> dict[str, str]:
    """Prefetch templates built from rules/ data, so the queries ask for what the rules use.

    Labs, problems and past doses are searched by the codes the rules know (system|code, comma-separated;
    past doses by RxNorm and NDC, since two products have no RxNorm code yet); current medicines are
    searched by status instead, because real orders carry product-level codes (SCD, SBD, NDC) that a
    search by ingredient code would miss. Completed orders there also count as past doses.
    """
    systems = valuesets["systems"]
    loinc = _codes(systems["loinc"], (c for a in valuesets["analytes"].values() for c in a["loinc"]))
    conditions = _codes(None, (f"{systems[s]}|{c}" for group in valuesets["conditions"].values()
                               for s in ("snomed", "icd10cm") for c in group.get(s, ())))
    rxnorm = [c for p in products.values() for c in p["rxnorm"]]
    rxnorm += [c for g in ("cladribine", "alemtuzumab") for c in valuesets["drug_groups"][g]["rxnorm"]]
    history = _codes(None, [f"{systems['rxnorm']}|{c}" for c in rxnorm]
                     + [f"{systems['ndc']}|{c}" for p in products.values() for c in p["ndc"]])
    patient = "{{context.patientId}}"
    return {
        "patient": f"Patient/{patient}",
        "labs": f"Observation?patient={patient}&code={loinc}&_sort=-date&_count=200",
        "conditions": f"Condition?patient={patient}&code={conditions}",
        "administrations": f"MedicationAdministration?patient={patient}&code={history}"
                           "&_sort=-effective-time&_count=100",
        "medications": f"MedicationRequest?patient={patient}&status=active,completed&_count=200",
        "allergies": f"AllergyIntolerance?patient={patient}",
        "immunizations": f"Immunization?patient={patient}&_sort=-date&_count=100",
    }


def _codes(system: str | None, codes: Any) -> str:
    return ",".join(f"{system}|{c}" if system else c for c in codes)


class FetchFailed(Exception):
    """A query to fhirServer gave no usable answer, or only part of it; the message says why, for a clinician.

    `partial` holds what did arrive (e.g. the first pages of a search) so the rules can still use it,
    while the gap keeps the checks it might have changed from passing silently.
    """

    def __init__(self, reason: str, partial: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.partial = partial


class AccessRefused(Exception):
    """fhirServer refused the service's credentials (401/403): the request cannot be served (412)."""


class NoFhirAccess(Exception):
    """The fetcher will not query fhirServer for this request (no access token, and unauthenticated
    fetching is not allowed): as if there were no fhirServer at all."""


class Fetcher(Protocol):
    """Runs queries against the EHR's FHIR server (see fhir_client.py).

    Raises AccessRefused when the server refuses the credentials, NoFhirAccess when it will not ask the
    server at all; any other failure is a FetchFailed value for the key it concerns.
    """

    def fetch(self, request: HookRequest, queries: Mapping[str, str]) -> dict[str, dict[str, Any] | FetchFailed]:
        ...


@dataclass
class PatientRecord:
    resources: list[dict[str, Any]] = field(default_factory=list)
    gaps: dict[str, str] = field(default_factory=dict)  # prefetch key -> why its data is missing
    had_data: bool = False  # at least one key arrived or was fetched (even if empty)
    asked_server: bool = False  # fhirServer was queried: its failures are gaps, not a reason for 412


class NoPatientData(Exception):
    """Nothing was prefetched and nothing could be fetched: CDS Hooks says 412."""


def gather(request: HookRequest, declared: Mapping[str, str], fetcher: Fetcher | None,
           room: int | None = None) -> PatientRecord:
    """The patient's record from the prefetch, and from fhirServer for what is missing. `room` is how many
    more resources the service reads than the request already carries: a fetched answer past it is not
    read but becomes a gap, as the request itself would have been refused."""
    record = PatientRecord()
    wanted: dict[str, str] = {}
    for key, template in declared.items():
        value = request.prefetch.get(key, _ABSENT) if request.prefetch is not None else _ABSENT
        problem = _problem(value)
        if problem is None:
            record.had_data = True
            record.resources += resources_in(value)
        else:
            query = render(template, request)
            if query is None:
                record.gaps[key] = "could not be asked for (the request lacks a value the query needs)"
            else:
                wanted[key] = query
                record.gaps[key] = problem
    if wanted:
        _fetch(request, wanted, fetcher, record, room)
    if not record.had_data and not record.asked_server:
        raise NoPatientData("no prefetch data and no FHIR server access to fetch it")
    return record


def _fetch(request: HookRequest, wanted: dict[str, str], fetcher: Fetcher | None, record: PatientRecord,
           room: int | None) -> None:
    if fetcher is None or not request.fhirServer:
        for key in wanted:
            record.gaps[key] += " and the service has no FHIR server to fetch it from"
        return
    try:
        outcomes = fetcher.fetch(request, wanted)
    except NoFhirAccess as e:
        for key in wanted:
            record.gaps[key] += f" and {e}"
        return
    record.asked_server = True
    for key, outcome in outcomes.items():
        if room is not None:
            count = resource_count(outcome.partial if isinstance(outcome, FetchFailed) else outcome)
            if count > room:
                record.gaps[key] = f"could not be used: the FHIR server's answer held more resources ({count}) " \
                                   "than the service reads in one call"
                continue
            room -= count
        if isinstance(outcome, FetchFailed):
            record.gaps[key] = str(outcome)
            record.resources += resources_in(outcome.partial)
            continue
        problem = _problem(outcome)
        if problem:
            record.gaps[key] = "could not be retrieved: the FHIR server's answer was an error or not FHIR"
            continue
        del record.gaps[key]
        record.had_data = True
        record.resources += resources_in(outcome)


_ABSENT = object()


def _problem(value: Any) -> str | None:
    """Why a prefetch value cannot be used as the query's answer; None when it can (even if empty)."""
    if value is _ABSENT:
        return "was not prefetched"
    if value is None:
        return None
    if not isinstance(value, dict):
        return "was prefetched in a form that is not a FHIR resource"
    kind = value.get("resourceType")
    if kind == "OperationOutcome" or (kind == "Bundle" and _only_errors(value)):
        return "could not be prefetched (the EHR reported an error)"
    if kind is None and "resource" in value:  # pre-1.0 {response, resource} wrapper
        return _problem(value["resource"])
    if not isinstance(kind, str):
        return "was prefetched in a form that is not a FHIR resource"
    return None


def _only_errors(bundle: dict[str, Any]) -> bool:
    """A search Bundle whose only entries are OperationOutcomes reporting an error: the search failed."""
    entries = [e.get("resource") for e in bundle.get("entry") or () if isinstance(e, dict)]
    return bool(entries) and all(
        isinstance(r, dict) and r.get("resourceType") == "OperationOutcome"
        and any(isinstance(i, dict) and i.get("severity") in ("error", "fatal") for i in r.get("issue") or ())
        for r in entries)


def resource_count(value: Any) -> int:
    """How many resources a prefetch value holds, counted without reading them: every entry of a Bundle
    and of every Bundle inside it at any depth, every contained resource, wrappers ({"resource": ...})
    looked through. The outer Bundle is a search result or a list of orders, not a resource the rules read."""
    while isinstance(value, dict) and "resourceType" not in value and isinstance(value.get("resource"), dict):
        value = value["resource"]
    count = -1 if isinstance(value, dict) and value.get("resourceType") == "Bundle" else 0
    pending = [value]
    while pending:
        item = pending.pop()
        if not isinstance(item, dict):
            continue
        if "resourceType" not in item and isinstance(item.get("resource"), dict):
            pending.append(item["resource"])
            continue
        count += 1
        for part in ("entry", "contained"):
            children = item.get(part)
            if isinstance(children, list):
                pending += children
    return count


def resources_in(value: Any) -> list[dict[str, Any]]:
    """The resources a prefetch value holds: a Bundle's entries, or the resource itself."""
    if not isinstance(value, dict):
        return []
    if "resourceType" not in value and isinstance(value.get("resource"), dict):
        value = value["resource"]
    if value.get("resourceType") != "Bundle":
        return _readable([value])
    entries = value.get("entry")
    found = []
    for entry in entries if isinstance(entries, list) else ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") != "OperationOutcome":
            found.append(resource)
    return _readable(found)


def _readable(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Resources with a type, and a status only where it is a string (a copy without it otherwise).

    Every reader looks `resourceType` and `status` up in sets; anything but a string there is not FHIR,
    and must make the resource read as invalid (reported like any other), not crash the call.
    """
    readable = []
    for resource in resources:
        if not isinstance(resource.get("resourceType"), str):
            continue
        if "status" in resource and not isinstance(resource["status"], str):
            resource = {k: v for k, v in resource.items() if k != "status"}
        readable.append(resource)
    return readable


def render(template: str, request: HookRequest) -> str | None:
    """Fill a template's tokens from the request; None if a token has no value."""
    values = {f"context.{k}": v for k, v in request.context.items() if isinstance(v, str)}
    user_type, _, user_id = str(request.context.get("userId", "")).partition("/")
    for token, resource_type in USER_TOKENS.items():
        if user_type == resource_type and user_id:
            values[token] = user_id
    missing = [t for t in TOKEN.findall(template) if t not in values]
    if missing:
        return None
    return TOKEN.sub(lambda m: quote(values[m.group(1)], safe=""), template)
