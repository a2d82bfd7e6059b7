"""Real FHIR data and real CDS Hooks requests written outside this project (../shared, read-only).

Leniency: whatever an external client sends, the answer is a 2xx or a 4xx with a JSON body, never a 5xx.
Then the same request shapes with an anti-CD20 product swapped into the draft order, so the rules run
on them; then Synthea and HL7 patient bundles as prefetch, with the cards the corpus README predicts.
"""
from __future__ import annotations

import copy
import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable

import pytest

import fhir_builders as fb
from conftest import NOW, SHARED

CORPUS = SHARED / "fhir-corpus"
EXAMPLES = SHARED / "cds-hooks" / "examples"
if not CORPUS.is_dir() or not EXAMPLES.is_dir():
    pytest.skip(f"the shared test corpus is not checked out next to the project ({SHARED})", allow_module_level=True)

SERVICES = {"order-select": "cd20-order-select", "order-sign": "cd20-order-sign"}
ORDER_TYPES = {"MedicationRequest", "MedicationOrder"}
REQUEST_FILES = sorted((CORPUS / "cds-requests").rglob("*.json")) + sorted(
    f for part in ("spec-2.0", "hooks-stu1", "inferno-crd-test-kit", "sandbox/observed")
    for f in (EXAMPLES / part).iterdir() if f.is_file())
CAPTURES = [json.loads(line) for line in (CORPUS / "sandbox-captures" / "requests.jsonl").read_text().splitlines()
            if line.strip()]
SYNTHEA = sorted((CORPUS / "fhir" / "synthea").rglob("*.json"))
GHP = CORPUS / "fhir" / "hl7-examples" / "r4-core" / "Bundle-ghp.json"
LAB_CODES = {fb.ALT, fb.AST, fb.ALP, fb.BILIRUBIN, "42719-5", "14631-6", fb.ANC}
MISSING_RULES = ["hbv-screening-missing", "igg-missing", "liver-tests-missing", "neutrophils-missing"]
NO_LIVER_TESTS, WITH_ANC = {"Jana258", "Marian936"}, {"Leonardo412"}  # corpus README, section 1


def _name(path: Path) -> str:
    return str(path.relative_to(SHARED))


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except ValueError:
        return None


def assert_lenient(response, *, hook_call: bool = True) -> None:
    """2xx (with cards, for a hook call), or 4xx with a JSON body that says what is wrong; never a 5xx."""
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code == 204:
        return
    body = response.get_json(silent=True)
    assert isinstance(body, dict), f"{response.status_code} without a JSON object body"
    if hook_call and response.status_code < 300:
        assert isinstance(body["cards"], list)


@pytest.fixture(scope="module")
def declared(client) -> dict[str, str]:
    """Each prefetch key the services declare, with the resource type its query asks for."""
    services = client.get("/cds-services").get_json()["services"]
    return {key: re.split(r"[/?]", query)[0] for s in services for key, query in s.get("prefetch", {}).items()}


# --- leniency: external requests as they are -------------------------------------------------------------

@pytest.mark.parametrize("path", REQUEST_FILES, ids=_name)
def test_external_request_as_sent_never_gets_a_server_error(client, path):
    raw, body = path.read_bytes(), _load(path)
    hook = body.get("hook") if isinstance(body, dict) else None
    for service_id in [SERVICES[hook]] if hook in SERVICES else SERVICES.values():
        assert_lenient(client.post(f"/cds-services/{service_id}", data=raw, content_type="application/json"))


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda c: f"{c['method']} {c['path']}")
def test_sandbox_capture_replayed_never_gets_a_server_error(client, capture):
    path = capture["path"]
    for hook, service_id in SERVICES.items():
        path = path.replace(f"cap-{hook}", service_id)
    headers = {"Origin": capture["origin"]}
    if capture["auth"]:
        headers["Authorization"] = capture["auth"]
    if capture["method"] == "OPTIONS":
        headers["Access-Control-Request-Method"] = "POST"
    response = client.open(path, method=capture["method"], headers=headers,
                           json=capture["body"] if capture["body"] is not None else None)
    if capture["method"] == "OPTIONS":
        assert response.status_code < 500
    else:
        assert_lenient(response, hook_call=capture["body"] is not None and "hook" in capture["body"])


# --- the same shapes with an anti-CD20 order, so the rules run on them ------------------------------------

def _with_ocrelizumab(body: dict[str, Any], hook: str, keys: Iterable[str]) -> dict[str, Any]:
    """The request completed into a CDS Hooks 2.0 call (a context-only example gets the envelope it lacks),
    its medication orders made ocrelizumab orders."""
    request = copy.deepcopy(body)
    request.setdefault("hook", hook)
    request.setdefault("hookInstance", "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea")
    context = request["context"]
    context.setdefault("userId", "Practitioner/example")
    context.setdefault("patientId", "example")
    for entry in context["draftOrders"].get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") in ORDER_TYPES:
            resource.pop("medicationReference", None)
            resource["medicationCodeableConcept"] = {"coding": [fb.OCRELIZUMAB], "text": "Ocrevus 300 mg IV"}
    if keys:  # the client's own prefetch values stay; the keys it lacks are answered "nothing found"
        theirs = request.get("prefetch") if isinstance(request.get("prefetch"), dict) else {}
        request["prefetch"] = {**{key: fb.bundle([]) for key in keys}, **theirs}
    return request


def _order_shapes() -> dict[str, tuple[dict[str, Any], str]]:
    """Every request (file or sandbox capture) with a draft medication order: name -> (body, hook)."""
    bodies = [(_name(path), _load(path), path.name) for path in REQUEST_FILES]
    bodies += [(f"sandbox-capture {c['path']}", c["body"], "") for c in CAPTURES if c["method"] == "POST"]
    shapes = {}
    for name, body, file_name in bodies:
        context = body.get("context") if isinstance(body, dict) else None
        drafts = context.get("draftOrders") if isinstance(context, dict) else None
        entries = drafts.get("entry") if isinstance(drafts, dict) else None
        named = next((h for h in SERVICES if h in file_name), None)
        hook = (body.get("hook") if isinstance(body, dict) else None) or named
        if hook in SERVICES and any(isinstance(e, dict) and isinstance(e.get("resource"), dict)
                                    and e["resource"].get("resourceType") in ORDER_TYPES for e in entries or ()):
            shapes[name] = (body, hook)
    return shapes


def _selected(request: dict[str, Any]) -> bool:
    """Whether an order the hook asks about is a medication order (order-select: by `Type/id` selection)."""
    if request["hook"] == "order-sign":
        return True
    selections = set(request["context"].get("selections") or ())
    return any(f"{r['resourceType']}/{r.get('id')}" in selections
               for r in (e["resource"] for e in request["context"]["draftOrders"]["entry"])
               if r.get("resourceType") in ORDER_TYPES)


ORDER_SHAPES = _order_shapes()
SELECTED_SHAPES = [n for n, (body, hook) in ORDER_SHAPES.items() if _selected(_with_ocrelizumab(body, hook, set()))]
BARE_ID_SELECTION = "fhir-corpus/cds-requests/fhir-test-cases/cdshooks-request-order-select-bad.json"


def test_the_corpus_has_order_shapes_to_try():
    assert len(SELECTED_SHAPES) >= 20
    assert any(name.startswith("sandbox-capture") for name in SELECTED_SHAPES)
    assert set(ORDER_SHAPES) - set(SELECTED_SHAPES) == {BARE_ID_SELECTION}


@pytest.mark.parametrize("name", SELECTED_SHAPES)
def test_external_order_shape_with_an_anti_cd20_order_runs_the_rules(client, declared, name):
    body, hook = ORDER_SHAPES[name]
    response = client.post(f"/cds-services/{SERVICES[hook]}", json=_with_ocrelizumab(body, hook, declared))
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    cards = fb.cards_by_rule(response.get_json())
    assert cards["hbv-screening-missing"]["indicator"] == "critical"  # an empty record: nothing screened
    assert "Ocrevus" in cards["hbv-screening-missing"]["summary"]
    assert "data-unavailable" not in cards


def test_a_selection_by_bare_id_does_not_silently_skip_the_checks(client, declared):
    body, hook = ORDER_SHAPES[BARE_ID_SELECTION]
    request = _with_ocrelizumab(body, hook, declared)
    assert request["context"]["selections"] == ["example-rec-11-benzo-trigger-without-opioid-context"]
    response = client.post("/cds-services/cd20-order-select", json=request)
    assert response.status_code >= 400 or fb.cards_by_rule(response.get_json())


@pytest.mark.parametrize("name", list(ORDER_SHAPES))
def test_external_order_shape_without_our_prefetch_is_answered(client, name):
    """No prefetch this service declared and no FHIR server to ask: 412, or cards naming the gaps."""
    body, hook = ORDER_SHAPES[name]
    response = client.post(f"/cds-services/{SERVICES[hook]}", json=_with_ocrelizumab(body, hook, set()))
    assert_lenient(response)
    assert response.status_code in (200, 412)
    if response.status_code == 200 and _selected(_with_ocrelizumab(body, hook, set())):
        assert "data-unavailable" in fb.cards_by_rule(response.get_json())


# --- Synthea and HL7 patient bundles as prefetch ----------------------------------------------------------

def _resources(path: Path) -> list[dict[str, Any]]:
    return [e["resource"] for e in _load(path)["entry"]]


def _split(resources: list[dict[str, Any]], declared: dict[str, str]) -> dict[str, Any]:
    """The bundle's entries under the prefetch key whose query asks for their resource type."""
    return {key: next((r for r in resources if r["resourceType"] == kind), None) if kind == "Patient"
            else fb.bundle(r for r in resources if r["resourceType"] == kind) for key, kind in declared.items()}


def _whole(bundle: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The whole bundle under one key; the other keys answered "nothing found"."""
    return {**{key: fb.bundle([]) for key in keys}, "patient": None, "labs": bundle}


def _ask(client, prefetch: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The record's cards for an order for its own patient (context.patientId is the record's Patient id)."""
    request = fb.hook_request()
    request["prefetch"] = prefetch
    request["context"]["patientId"] = _patient_id(prefetch)
    response = client.post("/cds-services/cd20-order-sign", json=request)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return fb.cards_by_rule(response.get_json())


def _patient_id(prefetch: dict[str, Any]) -> str:
    """The record's Patient id, or the patient its resources name (HL7's bundles carry no Patient)."""
    resources = [r for value in prefetch.values() if isinstance(value, dict)
                 for r in ([e["resource"] for e in value.get("entry", [])] if value["resourceType"] == "Bundle" else [value])]
    named = [r["subject"]["reference"].split("/")[-1] for r in resources if "reference" in r.get("subject", {})]
    return next((r["id"] for r in resources if r["resourceType"] == "Patient"), named[0])


def _recent(resources: list[dict[str, Any]], days_ago: int = 10) -> list[dict[str, Any]]:
    """The bundle moved in time so that its latest lab the rules read was drawn `days_ago` days before NOW."""
    drawn = [datetime.fromisoformat(r["effectiveDateTime"]) for r in resources
             if r["resourceType"] == "Observation" and "effectiveDateTime" in r
             and {c.get("code") for c in r["code"].get("coding", [])} & LAB_CODES]
    if not drawn:
        return resources
    delta = (NOW - timedelta(days=days_ago)) - max(drawn)
    return [fb.shifted(r, delta) if r["resourceType"] == "Observation" else r for r in resources]


@pytest.fixture(scope="module")
def synthea() -> dict[str, list[dict[str, Any]]]:
    return {path.name.split("_")[0]: _resources(path) for path in SYNTHEA}


def test_all_ten_synthea_patients_are_here(synthea):
    assert len(synthea) == 10


@pytest.mark.parametrize("patient", [p.name.split("_")[0] for p in SYNTHEA])
def test_synthea_record_as_it_is_gets_the_missing_checks(client, declared, synthea, patient):
    """Synthea's labs are from 1998-2022: at NOW every one is too old, so each check is owed again."""
    resources = synthea[patient]
    split = _ask(client, _split(resources, declared))
    whole = _ask(client, _whole(fb.bundle(resources, "transaction"), declared))
    assert {r: c["indicator"] for r, c in split.items()} == {r: c["indicator"] for r, c in whole.items()}
    for rule in MISSING_RULES:
        assert rule in split, rule
    for rule in ("hbv-active", "liver-injury", "liver-enzymes-elevated", "neutropenia", "igg-low", "data-unavailable"):
        assert rule not in split, rule


@pytest.mark.parametrize("patient", [p.name.split("_")[0] for p in SYNTHEA])
def test_synthea_record_brought_up_to_date_gets_sensible_cards(client, declared, synthea, patient):
    resources = _recent(synthea[patient])
    split = _ask(client, _split(resources, declared))
    whole = _ask(client, _whole(fb.bundle(resources, "transaction"), declared))
    assert {r: c["indicator"] for r, c in split.items()} == {r: c["indicator"] for r, c in whole.items()}
    for rule in ("hbv-active", "liver-injury", "neutropenia", "igg-low", "data-unavailable"):
        assert rule not in split, rule
    assert split["hbv-screening-missing"]["indicator"] == "critical"  # Synthea has no HBV serology
    assert split["igg-missing"]["indicator"] == "warning"  # nor IgG
    assert ("liver-tests-missing" in split) is (patient in NO_LIVER_TESTS)
    assert ("neutrophils-missing" in split) is (patient not in WITH_ANC)


def test_jordan_alt_142_iu_per_l_is_elevated_enzymes_not_liver_injury(client, declared, synthea):
    """ALT 142.3 IU/L ('IU/L' is not UCUM but is listed); bilirubin 1.25 mg/dL (42719-5) is not > 2 × ULN."""
    cards = _ask(client, _split(_recent(synthea["Jordan"]), declared))
    assert cards["liver-enzymes-elevated"]["indicator"] == "warning"
    assert "ALT 142 U/L" in cards["liver-enzymes-elevated"]["detail"]
    assert "upper 33 U/L" in cards["liver-enzymes-elevated"]["detail"]  # Patient.gender female
    assert "liver-injury" not in cards
    assert "liver-tests-missing" not in cards  # ALT, AST, ALP and a total bilirubin are all there


def test_jordan_as_recorded_in_2017_is_too_old_to_count(client, declared, synthea):
    cards = _ask(client, _split(synthea["Jordan"], declared))
    assert "liver-enzymes-elevated" not in cards
    assert cards["liver-tests-missing"]["indicator"] == "warning"


def test_jana_has_no_liver_tests(client, declared, synthea):
    cards = _ask(client, _split(_recent(synthea["Jana258"]), declared))
    assert cards["liver-tests-missing"]["indicator"] == "warning"
    assert "4 of ALT, AST, ALP and bilirubin" in cards["liver-tests-missing"]["summary"]


def test_leonardo_ancs_are_normal_and_percent_neutrophils_are_not_counts(client, declared, synthea):
    """ANC 1.62-3.85 10*3/uL and 770-8 percentages as low as a few %: no neutropenia."""
    cards = _ask(client, _split(_recent(synthea["Leonardo412"]), declared))
    assert "neutropenia" not in cards
    assert "neutrophils-missing" not in cards  # the latest ANC is 10 days old
    assert "liver-tests-missing" not in cards


def test_leonardo_bilirubin_10_mg_per_dl_is_flagged_without_liver_injury(client, declared, synthea):
    """His last panel: bilirubin 10.14 mg/dL (8.5 × 1.2) with ALT 15 and AST 37 U/L (male limits 41/40)."""
    cards = _ask(client, _split(_recent(synthea["Leonardo412"]), declared))
    assert "Total bilirubin 10.1 mg/dL" in cards["liver-enzymes-elevated"]["summary"]
    assert "liver-injury" not in cards


def _ghp(dated: bool) -> list[dict[str, Any]]:
    """HL7 'General Health Profile': its Observations carry no date; `dated` gives each one 10 days ago."""
    resources = _resources(GHP)
    if dated:
        for r in resources:
            if r["resourceType"] == "Observation":
                r.setdefault("effectiveDateTime", fb.at(10))
    return resources


def test_hl7_general_health_profile_dated_10_days_ago(client, declared):
    cards = _ask(client, _whole(fb.bundle(_ghp(dated=True), "collection"), declared))
    assert cards["neutropenia"]["indicator"] == "warning"  # ANC 0.9 x10*9/L: below 1.0, not below 0.5
    assert "ANC 0.9" in cards["neutropenia"]["summary"]
    assert "liver-enzymes-elevated" not in cards  # ALT 54 U/L against its own 0-45: 1.2 × ULN
    assert "liver-injury" not in cards
    assert "liver-tests-missing" not in cards  # bilirubin 14631-6 in umol/L read (7 umol/L, 0.41 mg/dL)
    assert "data-unavailable" not in cards


def test_hl7_general_health_profile_as_published_has_undated_results(client, declared):
    """A result with no date cannot be known to be recent: reported, not used and not ignored."""
    cards = _ask(client, _whole(fb.bundle(_ghp(dated=False), "collection"), declared))
    assert "neutropenia" not in cards
    assert "has no date" in cards["data-unavailable"]["detail"]
