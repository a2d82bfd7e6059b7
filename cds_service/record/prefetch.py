"""Prefetch: the FHIR queries the service declares, and the patient data a hook request brings.

A key's value in `request.prefetch` can be absent (the client chose not to, or could not), null or an
empty Bundle (the query found nothing), an OperationOutcome (the client's query failed), or the data.
Absent and failed keys are fetched from `fhirServer` by a Fetcher when one is configured; whatever still
cannot be had becomes a named gap, so the rules that needed it say so instead of passing silently.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol
from urllib.parse import quote

from ..hooks import HookRequest
from . import identity, references, urls

log = logging.getLogger(__name__)

TOKEN = re.compile(r"\{\{\s*([A-Za-z.]+)\s*\}\}")
UNTRUSTED_SERVER = (" and was not fetched: the request's fhirServer is not a FHIR server this EHR's issuer is trusted "
                    "for, so the service does not send it the access token")
USER_TOKENS = {"userPractitionerId": "Practitioner", "userPractitionerRoleId": "PractitionerRole",
               "userPatientId": "Patient", "userRelatedPersonId": "RelatedPerson"}
MEDICATION_RESOURCES = ("MedicationAdministration", "MedicationStatement", "MedicationRequest")
MAX_REFERENCED_MEDICATIONS = 50  # distinct Medications fetched by reference for one call


def templates(valuesets: dict[str, Any]) -> dict[str, str]:
    """Prefetch templates built from rules/ data, so the queries ask for what the rules use.

    Labs and problems are searched by the codes the rules know, comma-separated and without their system:
    a result coded under "http://loinc.org/" or an OID is still found, and the facts then read the system
    as it arrived (clinical/codesystems.py) and name one they do not recognise instead of never seeing it. Medication
    history (administrations, statements of doses given elsewhere, orders) is searched by patient and
    status, not by code: EHRs name the drug of a dose by a product-level code (SCD, SBD, NDC) or only
    through `medicationReference`, which a code search never finds. `_include` brings the referenced
    Medications in the same answer; completed orders also count as past doses.
    """
    loinc = ",".join(c for a in valuesets["analytes"].values() for c in a["loinc"])
    conditions = ",".join(c for group in valuesets["conditions"].values() for s in ("snomed", "icd10cm")
                          for c in group.get(s, ()))
    patient = "{{context.patientId}}"
    return {
        "patient": f"Patient/{patient}",
        "labs": f"Observation?patient={patient}&code={loinc}&_sort=-date&_count=200",
        "conditions": f"Condition?patient={patient}&code={conditions}",
        "administrations": f"MedicationAdministration?patient={patient}&_include=MedicationAdministration:medication"
                           "&_sort=-effective-time&_count=100",
        "statements": f"MedicationStatement?patient={patient}&_include=MedicationStatement:medication"
                      "&_sort=-effective&_count=100",
        "medications": f"MedicationRequest?patient={patient}&status=active,completed"
                       "&_include=MedicationRequest:medication&_count=200",
        "allergies": f"AllergyIntolerance?patient={patient}",
        "immunizations": f"Immunization?patient={patient}&_sort=-date&_count=100",
    }


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
    patient_id: str
    resources: list[dict[str, Any]] = field(default_factory=list)
    gaps: dict[str, str] = field(default_factory=dict)  # prefetch key -> why its data is missing
    had_data: bool = False  # at least one key arrived or was fetched (even if empty)
    asked_server: bool = False  # fhirServer was queried: its failures are gaps, not a reason for 412
    fetch_refused: bool = False  # fhirServer is not trusted for the caller: gaps saying so, not a 412
    ignored: int = 0  # resources of another patient, left out (identity.py)
    unfetched: dict[str, str] = field(default_factory=dict)  # "Medication/id" -> why it could not be had

    def add(self, resources: list[dict[str, Any]]) -> None:
        """This patient's resources join the record; another patient's are only counted."""
        own, ignored = identity.split(resources, self.patient_id)
        self.resources += own
        self.ignored += ignored


class NoPatientData(Exception):
    """Nothing was prefetched and nothing could be fetched: CDS Hooks says 412."""


def gather(request: HookRequest, declared: Mapping[str, str], fetcher: Fetcher | None,
           fhir_server_allowed: Callable[[str], bool] | None = None, room: int | None = None) -> PatientRecord:
    """The patient's record from the prefetch, and from fhirServer for what is missing.

    `fhir_server_allowed` says which FHIR servers the caller may have the service fetch from (it sends
    them the EHR's access token): only a fetch is refused, a complete prefetch is used whatever fhirServer
    names. `room` is how many more resources the service reads than the request already carries: a
    fetched answer past it is not read but becomes a gap, as the request itself would have been refused."""
    record = PatientRecord(request.context["patientId"])
    wanted: dict[str, str] = {}
    for key, template in declared.items():
        value = request.prefetch.get(key, _ABSENT) if request.prefetch is not None else _ABSENT
        problem = _problem(value)
        if problem is None:
            record.had_data = True
            record.add(resources_in(value))
        else:
            query = render(template, request)
            if query is None:
                record.gaps[key] = "could not be asked for (the request lacks a value the query needs)"
            else:
                wanted[key] = query
                record.gaps[key] = problem
    if wanted:
        _fetch(request, wanted, fetcher, record, fhir_server_allowed, room)
    if not record.had_data and not record.asked_server and not record.fetch_refused:
        raise NoPatientData("no prefetch data and no FHIR server access to fetch it")
    _fetch_medications(request, fetcher, record, fhir_server_allowed)
    if record.ignored:
        log.warning("resources naming another patient were ignored", extra={"fields": {"ignored": record.ignored}})
    return record


def _fetch(request: HookRequest, wanted: dict[str, str], fetcher: Fetcher | None, record: PatientRecord,
           fhir_server_allowed: Callable[[str], bool] | None, room: int | None) -> None:
    if fetcher is None or not request.fhirServer:
        for key in wanted:
            record.gaps[key] += " and the service has no FHIR server to fetch it from"
        return
    if fhir_server_allowed is not None and not fhir_server_allowed(request.fhirServer):
        for key in wanted:
            record.gaps[key] += UNTRUSTED_SERVER
        record.fetch_refused = True
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
            record.add(resources_in(outcome.partial))
            continue
        problem = _problem(outcome)
        if problem:
            record.gaps[key] = "could not be retrieved: the FHIR server's answer was an error or not FHIR"
            continue
        del record.gaps[key]
        record.had_data = True
        record.add(resources_in(outcome))


def _fetch_medications(request: HookRequest, fetcher: Fetcher | None, record: PatientRecord,
                       fhir_server_allowed: Callable[[str], bool] | None) -> None:
    """Fetch the Medications that medication records name by reference but that are neither contained nor
    in the record (an EHR that did not `_include` them): a dose known only by reference is still a dose.

    One search (`Medication?_id=...`) through the same fetcher, so the same deadline, paging and same-base
    rules hold. Only references to `fhirServer` itself are asked for (relative, or absolute under its
    base): the access token goes nowhere else, and another server's "Medication/1" is not this one's.
    What cannot be had is remembered with the reason, for the card."""
    bundle = references.index(record.resources)
    refs = dict.fromkeys(ref for r in record.resources if r.get("resourceType") in MEDICATION_RESOURCES
                         for ref in [references.unresolved_reference(r, bundle)] if ref)
    local = {ref: references.reference_target(ref) for ref in refs if _on_server(ref, request.fhirServer)}
    record.unfetched.update({ref: "it names another server, which the service does not contact"
                             for ref in refs if ref not in local})
    wanted = dict.fromkeys(local.values())
    if len(wanted) > MAX_REFERENCED_MEDICATIONS:
        record.unfetched.update(dict.fromkeys(local, f"more than {MAX_REFERENCED_MEDICATIONS} medicines were "
                                                     "named by reference"))
        return
    if not wanted:
        return
    found, reason = _fetched_medications(request, fetcher, fhir_server_allowed, [target.split("/", 1)[1] for target in wanted])
    for ref, target in local.items():
        if target in found:
            record.resources.append(found[target])
        else:
            record.unfetched[ref] = reason


def _on_server(reference: str, server: str | None) -> bool:
    """Whether a Medication reference names one on `server`: relative, or absolute and, in urls.py's one
    spelling, exactly `server`'s base followed by "Medication/id" (a version after it allowed). A reference
    that only looks so before its dot segments or escapes are resolved names another server."""
    if "://" not in reference:
        return True
    parts, base = urls.normalise(reference), urls.normalise(server or "")
    if parts is None or base is None or parts.query or base.query or not parts.under(base):
        return False
    rest = parts.path.removeprefix(base.path.rstrip("/")).strip("/")
    target = references.reference_target(reference)
    return target is not None and (rest == target or rest.startswith(f"{target}/_history/"))


def _fetched_medications(request: HookRequest, fetcher: Fetcher | None,
                         fhir_server_allowed: Callable[[str], bool] | None, ids: list[str]
                         ) -> tuple[dict[str, dict[str, Any]], str]:
    """The Medications with these ids from fhirServer, by "Medication/id", and why any other is missing."""
    if fetcher is None or not request.fhirServer:
        return {}, "the service has no FHIR server to fetch it from"
    if fhir_server_allowed is not None and not fhir_server_allowed(request.fhirServer):
        return {}, "it is on a FHIR server this EHR's issuer is not trusted for, so it was not asked for"
    try:
        outcome: Any = fetcher.fetch(request, {"medications-referenced": "Medication?_id=" + ",".join(ids)})
    except (NoFhirAccess, AccessRefused) as e:
        return {}, str(e)
    outcome = outcome["medications-referenced"]
    reason = "it was not found on the FHIR server"
    if isinstance(outcome, FetchFailed):
        reason, outcome = str(outcome), outcome.partial
    found = references.index(resources_in(outcome))
    return {key: resource for key, resource in found.items() if key.startswith("Medication/")}, reason


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
