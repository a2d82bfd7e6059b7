"""CORS for browser-based CDS clients (the CDS Hooks sandbox), over HTTP against the app.

A browser preflights every call (Authorization + JSON), and hides any response, errors included,
that does not name the page's origin: so preflights must work without a token, and every answer to an
allowed origin must carry Access-Control-Allow-Origin.
"""
from __future__ import annotations

import json

import pytest

from cds_service.web.app import create_app
from cds_service.config import Settings
from cds_service.web.cors import Cors, CorsConfigError

from conftest import SHARED
from security_support import SigningEhr, example_request, verifier

EHR_ORIGIN = "https://ehr.example.test"
SANDBOX_ORIGIN = "http://127.0.0.1:8088"
ROUTES = ["/cds-services", "/cds-services/cd20-order-sign", "/cds-services/cd20-order-select/feedback"]
CAPTURES = SHARED / "fhir-corpus" / "sandbox-captures" / "requests.jsonl"


@pytest.fixture(scope="module")
def cors_client(service):
    settings = Settings(auth="off", cors_origins=(EHR_ORIGIN, SANDBOX_ORIGIN), max_body_bytes=64 * 1024)
    return create_app(service, settings).test_client()


@pytest.fixture(scope="module")
def authed_cors_client(service, tmp_path_factory):
    issuers = SigningEhr().issuers_file(tmp_path_factory.mktemp("cors-issuers"))
    return create_app(service, Settings(cors_origins=(EHR_ORIGIN,)), verifier=verifier(issuers)).test_client()


def _preflight(client, path: str, origin: str = EHR_ORIGIN, **headers: str):
    return client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                         "Access-Control-Request-Headers": "authorization,content-type", **headers})


@pytest.mark.parametrize("path", ROUTES)
def test_preflight_on_every_route_allows_the_origin_methods_and_headers(authed_cors_client, path):
    response = _preflight(authed_cors_client, path)
    assert response.status_code in (200, 204)
    assert response.headers["Access-Control-Allow-Origin"] == EHR_ORIGIN
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST", "OPTIONS"} <= methods
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "Origin" in response.headers["Vary"]


@pytest.mark.parametrize("path", ROUTES)
def test_preflight_from_an_origin_not_allowed_gets_no_cors_headers(authed_cors_client, path):
    response = _preflight(authed_cors_client, path, origin="https://evil.example.test")
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Headers" not in response.headers


def test_unauthenticated_error_still_names_the_origin(authed_cors_client):
    response = authed_cors_client.get("/cds-services", headers={"Origin": EHR_ORIGIN})
    assert response.status_code == 401
    assert response.headers["Access-Control-Allow-Origin"] == EHR_ORIGIN


def test_authenticated_call_names_the_origin_and_exposes_the_request_id(service, tmp_path):
    ehr = SigningEhr()
    issuers = ehr.issuers_file(tmp_path, fhir_servers=[example_request()["fhirServer"]])
    client = create_app(service, Settings(cors_origins=(EHR_ORIGIN,)), verifier=verifier(issuers)).test_client()
    path = "/cds-services/cd20-order-sign"
    response = client.post(path, json=example_request(), headers={"Origin": EHR_ORIGIN, **ehr.header(path)})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == EHR_ORIGIN
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]


@pytest.mark.parametrize("send, status", [
    (lambda c, h: c.post("/cds-services/cd20-order-sign", data="{not json", content_type="application/json",
                         headers=h), 400),
    (lambda c, h: c.post("/cds-services/no-such-service", json={}, headers=h), 404),
    (lambda c, h: c.post("/cds-services/cd20-order-sign", json={**example_request(), "prefetch": {}}, headers=h),
     412),
    (lambda c, h: c.post("/cds-services/cd20-order-sign", data=b"x" * 70000, content_type="application/json",
                         headers=h), 413),
    (lambda c, h: c.get("/cds-services/cd20-order-sign", headers=h), 405),
])
def test_error_responses_name_the_origin(cors_client, send, status):
    response = send(cors_client, {"Origin": EHR_ORIGIN})
    assert response.status_code == status
    assert response.headers["Access-Control-Allow-Origin"] == EHR_ORIGIN


def test_private_network_access_is_allowed_only_when_asked_by_an_allowed_origin(cors_client):
    asked = {"Access-Control-Request-Private-Network": "true"}
    assert _preflight(cors_client, ROUTES[1], **asked).headers["Access-Control-Allow-Private-Network"] == "true"
    assert "Access-Control-Allow-Private-Network" not in _preflight(cors_client, ROUTES[1]).headers
    refused = _preflight(cors_client, ROUTES[1], origin="https://evil.example.test", **asked)
    assert "Access-Control-Allow-Private-Network" not in refused.headers


def test_the_captured_sandbox_preflights_are_answered(cors_client):
    captured = [json.loads(line) for line in CAPTURES.read_text().splitlines() if line.strip()]
    preflights = [c for c in captured if c["method"] == "OPTIONS"]
    assert len(preflights) == 3
    for call in preflights:
        path = call["path"].replace("cap-order-sign", "cd20-order-sign")
        method = "GET" if path == "/cds-services" else "POST"
        response = cors_client.options(path, headers={"Origin": call["origin"],
                                                      "Access-Control-Request-Method": method,
                                                      "Access-Control-Request-Headers": "authorization"})
        assert response.headers["Access-Control-Allow-Origin"] == call["origin"], path


def test_production_default_allows_no_origin(service):
    client = create_app(service, Settings.from_env({"CDS_AUTH": "off"})).test_client()
    response = client.get("/cds-services", headers={"Origin": EHR_ORIGIN})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers


def test_development_mode_allows_any_origin(service):
    client = create_app(service, Settings.from_env({"CDS_AUTH": "off", "CDS_DEV": "1"})).test_client()
    response = _preflight(client, ROUTES[0], origin="http://localhost:8080")
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:8080"


def test_wildcard_outside_development_mode_stops_start_up(service):
    with pytest.raises(CorsConfigError, match="development mode"):
        create_app(service, Settings.from_env({"CDS_AUTH": "off", "CDS_CORS_ORIGINS": "*"}))


@pytest.mark.parametrize("origin", ["https://ehr.example.test/", "ehr.example.test", "https://ehr.example.test/app",
                                    "null"])
def test_origins_must_be_scheme_host_and_port(origin):
    with pytest.raises(CorsConfigError):
        Cors((origin,), dev=False)
