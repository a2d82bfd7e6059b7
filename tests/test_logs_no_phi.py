"""No patient data and no tokens in the logs: every example request, and requests built to stand out
(distinctive patient ids, names, identifiers and lab values, an EHR access token that is really used),
go through a real `cds-service serve` with authentication on; then every line it logged is scanned.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from security_support import EXAMPLES, RecordingServer, SigningEhr, example_request, free_port, serve

FHIR_SERVER = "https://ehr.example.org/fhir"  # what the examples name; trusted for the test EHR
DISTINCT_ID = "zq-7731-patient"
DISTINCT_NAME = ("Quillfeather", "Ysolde")
DISTINCT_MRN = "MRN-58213377"
DISTINCT_VALUES = ("987.6543", "0.04321")
ACCESS_TOKEN = "ehr-access-token-4f1c9d2a7b"


@pytest.fixture(scope="module")
def ehr() -> SigningEhr:
    return SigningEhr()


@pytest.fixture(scope="module")
def fhir_server() -> Iterator[RecordingServer]:
    with RecordingServer(default={"resourceType": "Bundle", "type": "searchset", "entry": []}) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory, ehr, fhir_server) -> Iterator[tuple[str, Path]]:
    home = tmp_path_factory.mktemp("phi")
    issuers = ehr.issuers_file(home, fhir_servers=[FHIR_SERVER, fhir_server.url + "/fhir"])
    log_path, port = home / "server.log", free_port()
    env = {"CDS_TRUSTED_ISSUERS": str(issuers), "CDS_PUBLIC_URL": f"http://127.0.0.1:{port}",
           "CDS_NOW": "2026-11-21T12:00:00Z", "CDS_LOG_LEVEL": "INFO"}
    with serve(env, log_path, port=port) as base:
        yield base, log_path


def _examples() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(EXAMPLES.glob("*.json")) if p.name != "expected.json"]


def _distinctive(request: dict[str, Any]) -> dict[str, Any]:
    """The request about another patient, with a name, an identifier and lab values no log may show."""
    text = json.dumps(request).replace(request["context"]["patientId"], DISTINCT_ID)
    request = json.loads(text)
    patient = request["prefetch"]["patient"]
    patient["name"] = [{"family": DISTINCT_NAME[0], "given": [DISTINCT_NAME[1]]}]
    patient["identifier"] = [{"system": "urn:oid:1.2.3.4", "value": DISTINCT_MRN}]
    labs = [e["resource"] for e in request["prefetch"]["labs"]["entry"] if "valueQuantity" in e["resource"]]
    for lab, value in zip(labs, DISTINCT_VALUES):
        lab["valueQuantity"]["value"] = float(value)
    return request


def _needles(request: dict[str, Any]) -> set[str]:
    """What identifies the patient in a request: ids, names, identifiers, birth date."""
    found = {request["context"]["patientId"]}
    patient = (request.get("prefetch") or {}).get("patient")
    if isinstance(patient, dict):
        found |= {n.get("family", "") for n in patient.get("name", [])}
        found |= {g for n in patient.get("name", []) for g in n.get("given", [])}
        found |= {i.get("value", "") for i in patient.get("identifier", [])}
        found.add(patient.get("birthDate", ""))
    return {n for n in found if len(n) >= 4}


def _post(base: str, ehr: SigningEhr, path: str, body: Any, token: str | None = None) -> requests.Response:
    token = token or ehr.token(path, base=base)
    return requests.post(base + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_nothing_identifying_reaches_the_log(server, ehr, fhir_server):
    base, log_path = server
    discovery = requests.get(base + "/cds-services", headers=ehr.header("/cds-services", base=base), timeout=10)
    assert discovery.status_code == 200
    service_for = {s["hook"]: s["id"] for s in discovery.json()["services"]}

    needles = {ACCESS_TOKEN, *DISTINCT_VALUES, DISTINCT_MRN, DISTINCT_ID, *DISTINCT_NAME}
    tokens: list[str] = []
    calls, answered = 1, 0
    requests_sent = _examples()
    base_request = example_request()
    requests_sent.append(_distinctive(base_request))
    fetching = _distinctive(base_request)
    fetching.update(prefetch={"patient": fetching["prefetch"]["patient"]}, fhirServer=fhir_server.url + "/fhir",
                    fhirAuthorization={"access_token": ACCESS_TOKEN, "token_type": "Bearer"})
    requests_sent.append(fetching)
    for request in requests_sent:
        needles |= _needles(request)
        path = f"/cds-services/{service_for[request['hook']]}"
        token = ehr.token(path, base=base)
        tokens.append(token)
        response = _post(base, ehr, path, request, token)
        calls += 1
        assert response.status_code in (200, 412), (request["context"]["patientId"], response.text[:300])
        if response.status_code == 412:  # examples of a request with no patient data at all
            continue
        answered += 1
        cards = response.json()["cards"]
        feedback = [{"card": c["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-21T12:00:00Z",
                     "overrideReason": {"userComment": f"spoke to {DISTINCT_NAME[1]} {DISTINCT_NAME[0]}"}}
                    for c in cards if "uuid" in c]
        if feedback:
            assert _post(base, ehr, path + "/feedback", {"feedback": feedback}).status_code == 200
            calls += 1
    assert answered >= len(requests_sent) - 3
    assert any(h[2].get("Authorization") == f"Bearer {ACCESS_TOKEN}" for h in fhir_server.hits)

    broken = copy.deepcopy(_distinctive(base_request))
    broken["context"]["draftOrders"] = f"Patient {DISTINCT_NAME[0]}"
    assert _post(base, ehr, "/cds-services/cd20-order-sign", broken).status_code == 400
    replayed = tokens[0]
    assert _post(base, ehr, "/cds-services/cd20-order-sign", base_request, replayed).status_code == 401
    assert requests.get(base + "/cds-services", headers={"Authorization": f"Bearer {tokens[1]}x"},
                        timeout=10).status_code == 401
    calls += 3

    lines = log_path.read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert sum(1 for e in entries if e.get("message") == "request") >= calls
    assert sum(1 for e in entries if e.get("message") == "authentication failed") == 2
    secrets = needles | {t.split(".")[2] for t in tokens} | {t.split(".")[1] for t in tokens}
    leaks = {needle: line for line in lines for needle in secrets if needle and needle in line}
    assert not leaks, leaks
