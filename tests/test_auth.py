"""Only trusted EHRs get in: CDS Hooks 2.0 client JWTs, checked over HTTP against the app.

Each EHR here signs with a key generated for the test (EC P-384 or RSA). A token is accepted only when
everything is right; each test then breaks one thing and expects 401 with a body that says nothing
about what was wrong.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings, strategies as st

from cds_service.web import auth, jwks
from cds_service.web.app import create_app
from cds_service.config import Settings
from cds_service.record.fhir_client import FhirFetcher
from cds_service.service import CdsService

from conftest import NOW, SHARED
from security_support import BIN, PUBLIC_URL, RecordingServer, SigningEhr, example_request, free_port, verifier

SIGN = "/cds-services/cd20-order-sign"
DISCOVERY = "/cds-services"
SANDBOX = SHARED / "cds-hooks" / "examples" / "sandbox"
CAPTURES = SHARED / "fhir-corpus" / "sandbox-captures" / "requests.jsonl"
SPEC = SHARED / "cds-hooks" / "examples" / "spec-2.0"
PRESET = Path(__file__).resolve().parent.parent / "config" / "issuers-sandbox.yaml"


@pytest.fixture(scope="module")
def ehr() -> SigningEhr:
    return SigningEhr(alg="ES384")


@pytest.fixture(scope="module")
def rsa_ehr() -> SigningEhr:
    return SigningEhr(iss="https://rsa-ehr.example.test", alg="RS384")


@pytest.fixture(scope="module")
def issuers(tmp_path_factory, ehr, rsa_ehr) -> Path:
    return ehr.issuers_file(tmp_path_factory.mktemp("issuers"), rsa_ehr,
                            fhir_servers=[example_request()["fhirServer"]])


@pytest.fixture
def app_client(service, issuers):
    """The app with authentication required; a new verifier per test, so no jti carries over."""
    return create_app(service, Settings(), verifier=verifier(issuers)).test_client()


def _assert_refused(response) -> None:
    assert response.status_code == 401
    assert response.get_json()["error"] == "authentication required"
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_valid_es384_token_lets_discovery_and_a_hook_call_through(app_client, ehr):
    assert app_client.get(DISCOVERY, headers=ehr.header(DISCOVERY)).status_code == 200
    response = app_client.post(SIGN, json=example_request(), headers=ehr.header(SIGN))
    assert response.status_code == 200
    assert "cards" in response.get_json()


def test_valid_rs384_token_is_accepted(app_client, rsa_ehr):
    assert app_client.get(DISCOVERY, headers=rsa_ehr.header(DISCOVERY)).status_code == 200


def test_aud_may_be_a_list_holding_the_called_url(app_client, ehr):
    headers = ehr.header(DISCOVERY, aud=["https://other.example.test/cds-services", PUBLIC_URL + DISCOVERY])
    assert app_client.get(DISCOVERY, headers=headers).status_code == 200


@pytest.mark.parametrize("path", [DISCOVERY, SIGN, SIGN + "/feedback", "/cds-services/no-such-service"])
def test_every_path_under_cds_services_needs_a_token(app_client, path):
    response = app_client.get(path) if path == DISCOVERY else app_client.post(path, json={})
    _assert_refused(response)


def test_openapi_description_is_public(app_client):
    assert app_client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize("authorization", ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not.a.jwt",
                                           "Bearer " + "A" * 20000])
def test_missing_or_malformed_authorization_is_refused(app_client, authorization):
    _assert_refused(app_client.get(DISCOVERY, headers={"Authorization": authorization} if authorization else {}))


@pytest.mark.parametrize("claims", [
    pytest.param({"exp": int(time.time()) - 120, "iat": int(time.time()) - 420}, id="expired"),
    pytest.param({"iat": int(time.time()) + 600, "exp": int(time.time()) + 900}, id="issued-in-the-future"),
    pytest.param({"exp": int(time.time()) + 30 * 86400}, id="valid-for-a-month"),
    pytest.param({"aud": PUBLIC_URL + DISCOVERY + "/"}, id="aud-trailing-slash"),
    pytest.param({"aud": PUBLIC_URL.replace("https:", "http:") + DISCOVERY}, id="aud-http-not-https"),
    pytest.param({"aud": PUBLIC_URL + SIGN}, id="aud-another-endpoint"),
    pytest.param({"aud": "https://evil.example.test" + DISCOVERY}, id="aud-another-host"),
    pytest.param({"iss": "https://not-trusted.example.test"}, id="untrusted-iss"),
    pytest.param({"jti": None}, id="no-jti"),
    pytest.param({"exp": None}, id="no-exp"),
    pytest.param({"iat": None}, id="no-iat"),
    pytest.param({"aud": None}, id="no-aud"),
    pytest.param({"exp": "tomorrow"}, id="exp-not-a-number"),
    pytest.param({"iat": "today"}, id="iat-not-a-number"),
    pytest.param({"nbf": "tomorrow"}, id="nbf-not-a-number"),
    pytest.param({"nbf": True}, id="nbf-a-boolean"),
])
def test_a_token_with_one_claim_wrong_is_refused(app_client, ehr, claims):
    _assert_refused(app_client.get(DISCOVERY, headers=ehr.header(DISCOVERY, **claims)))


def test_aud_is_checked_against_the_public_url_not_the_host_header(app_client, ehr):
    token = ehr.token(DISCOVERY, base="http://attacker.example.test")
    response = app_client.get(DISCOVERY, headers={"Authorization": f"Bearer {token}",
                                                  "Host": "attacker.example.test"})
    _assert_refused(response)


def test_a_key_of_another_party_is_refused(app_client, ehr):
    impostor = SigningEhr(iss=ehr.iss, kid=ehr.kid)  # same iss and kid, its own key
    _assert_refused(app_client.get(DISCOVERY, headers=impostor.header(DISCOVERY)))


def test_unknown_kid_is_refused(app_client, ehr):
    token = ehr.token(DISCOVERY, headers={"kid": "no-such-key"})
    _assert_refused(app_client.get(DISCOVERY, headers={"Authorization": f"Bearer {token}"}))


def test_a_token_signed_by_one_trusted_issuer_cannot_claim_another(app_client, ehr, rsa_ehr):
    _assert_refused(app_client.get(DISCOVERY, headers=rsa_ehr.header(DISCOVERY, iss=ehr.iss)))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(ehr: SigningEhr, header: dict[str, Any], path: str) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(ehr.claims(PUBLIC_URL + path)).encode())}"


def test_alg_none_is_refused(app_client, ehr):
    token = _unsigned(ehr, {"alg": "none", "typ": "JWT", "kid": ehr.kid}, DISCOVERY) + "."
    _assert_refused(app_client.get(DISCOVERY, headers={"Authorization": f"Bearer {token}"}))


def test_hs256_signed_with_the_public_key_is_refused(app_client, ehr):
    public_pem = ehr.private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = _unsigned(ehr, {"alg": "HS256", "typ": "JWT", "kid": ehr.kid}, DISCOVERY)
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{_b64(signature)}"
    _assert_refused(app_client.get(DISCOVERY, headers={"Authorization": f"Bearer {token}"}))


def _signed(ehr: SigningEhr, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A token with exactly this header and these claims, whatever their types, validly signed."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    algorithm = jwt.algorithms.get_default_algorithms()[ehr.alg]
    return f"{signing_input}.{_b64(algorithm.sign(signing_input.encode(), ehr.private_key))}"


def test_a_validly_signed_token_with_nan_expiry_is_refused(app_client, ehr):
    claims = {**ehr.claims(PUBLIC_URL + DISCOVERY), "exp": float("nan")}
    token = _signed(ehr, {"alg": ehr.alg, "kid": ehr.kid}, claims)
    _assert_refused(app_client.get(DISCOVERY, headers={"Authorization": f"Bearer {token}"}))


ODD_VALUES = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8)
              | st.lists(st.text(max_size=4), max_size=2)
              | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(claims=st.dictionaries(st.sampled_from(["iss", "aud", "exp", "iat", "nbf", "jti", "tenant"]), ODD_VALUES),
       header=st.dictionaries(st.sampled_from(["kid", "jku", "typ", "crit", "alg"]), ODD_VALUES))
def test_odd_claim_and_header_values_in_a_signed_token_give_a_caller_or_unauthorized(issuers, ehr, claims, header):
    checker = verifier(issuers)
    token = _signed(ehr, {"alg": ehr.alg, "kid": ehr.kid, **header},
                    {**ehr.claims(PUBLIC_URL + DISCOVERY), **claims})
    try:
        caller = checker.verify(f"Bearer {token}", DISCOVERY)
    except auth.Unauthorized:
        return
    assert caller.issuer.iss == ehr.iss


def test_es384_token_naming_an_rsa_key_is_refused(app_client, ehr, rsa_ehr):
    token = ehr.token(DISCOVERY, headers={"kid": rsa_ehr.kid}, iss=rsa_ehr.iss)
    _assert_refused(app_client.get(DISCOVERY, headers={"Authorization": f"Bearer {token}"}))


def test_a_replayed_token_is_refused(app_client, ehr):
    headers = ehr.header(DISCOVERY)
    assert app_client.get(DISCOVERY, headers=headers).status_code == 200
    _assert_refused(app_client.get(DISCOVERY, headers=headers))


def test_a_reused_jti_is_refused_even_in_a_new_token(app_client, ehr):
    assert app_client.get(DISCOVERY, headers=ehr.header(DISCOVERY, jti="once")).status_code == 200
    _assert_refused(app_client.get(SIGN, headers=ehr.header(SIGN, jti="once")))


def test_refused_tokens_do_not_use_up_their_jti(app_client, ehr):
    _assert_refused(app_client.get(DISCOVERY, headers=ehr.header(DISCOVERY, jti="j-1", aud="https://x.test")))
    assert app_client.get(DISCOVERY, headers=ehr.header(DISCOVERY, jti="j-1")).status_code == 200


def test_the_reason_is_logged_without_the_token(app_client, ehr, caplog):
    token = ehr.token(DISCOVERY, aud=PUBLIC_URL + "/elsewhere")
    with caplog.at_level(logging.INFO):
        response = app_client.get(DISCOVERY, headers={"Authorization": f"Bearer {token}"})
    _assert_refused(response)
    assert "InvalidAudience" not in response.get_data(as_text=True)
    reasons = [r.fields["reason"] for r in caplog.records if r.getMessage() == "authentication failed"]
    assert reasons == ["token rejected (InvalidAudienceError)"]
    logged = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert token not in logged and token.split(".")[2] not in logged


# --- keys named by URL: jku allow-list, rotation, caching ---------------------------------------------------

def _issuers_with(directory: Path, ehr: SigningEhr, **entry: Any) -> Path:
    path = directory / "issuers.yaml"
    path.write_text(yaml.safe_dump({"issuers": [{"iss": ehr.iss, **entry}]}))
    return path


def test_a_jku_on_the_allow_list_is_fetched_and_one_not_on_it_never_is(service, tmp_path):
    ehr = SigningEhr()
    with RecordingServer({"/keys.json": ehr.jwks, "/evil.json": ehr.jwks}) as keys_host:
        issuers = _issuers_with(tmp_path, ehr, jku_allowed=[keys_host.url + "/keys.json"])
        client = create_app(service, Settings(), verifier=verifier(issuers)).test_client()
        allowed = ehr.token(DISCOVERY, headers={"jku": keys_host.url + "/keys.json"})
        assert client.get(DISCOVERY, headers={"Authorization": f"Bearer {allowed}"}).status_code == 200
        assert [path for _, path, _ in keys_host.hits] == ["/keys.json"]
        evil = ehr.token(DISCOVERY, headers={"jku": keys_host.url + "/evil.json"})
        _assert_refused(client.get(DISCOVERY, headers={"Authorization": f"Bearer {evil}"}))
        assert [path for _, path, _ in keys_host.hits] == ["/keys.json"]


def test_a_jku_not_on_the_allow_list_is_refused_even_when_the_kid_is_known(app_client, ehr):
    with RecordingServer({"/jwks.json": ehr.jwks}) as evil:
        token = ehr.token(DISCOVERY, headers={"jku": evil.url + "/jwks.json"})
        _assert_refused(app_client.get(DISCOVERY, headers={"Authorization": f"Bearer {token}"}))
        assert evil.hits == []


def test_an_allowed_jku_does_not_need_the_network_when_configured_keys_hold_the_kid(service, tmp_path):
    ehr = SigningEhr()
    (tmp_path / "keys.json").write_text(json.dumps(ehr.jwks))
    unreachable = f"http://127.0.0.1:{free_port()}/jwks.json"  # nothing listens there
    issuers = _issuers_with(tmp_path, ehr, jwks_file="keys.json", jku_allowed=[unreachable])
    client = create_app(service, Settings(), verifier=verifier(issuers)).test_client()
    token = ehr.token(DISCOVERY, headers={"jku": unreachable})
    assert client.get(DISCOVERY, headers={"Authorization": f"Bearer {token}"}).status_code == 200


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_jwks_url_is_cached_refetched_on_rotation_and_rate_limited(tmp_path):
    ehr, rotated = SigningEhr(), None
    clock = _Clock()
    with RecordingServer({"/jwks": ehr.jwks}) as keys_host:
        issuers = _issuers_with(tmp_path, ehr, jwks_url=keys_host.url + "/jwks")
        checker = verifier(issuers, keys=jwks.KeyStore(ttl=3600, refresh_interval=60, clock=clock))

        def fetches() -> int:
            return len(keys_host.hits)

        checker.verify("Bearer " + ehr.token(DISCOVERY), DISCOVERY)
        checker.verify("Bearer " + ehr.token(DISCOVERY), DISCOVERY)
        assert fetches() == 1  # cached

        rotated = SigningEhr(iss=ehr.iss)
        keys_host.routes["/jwks"] = {"keys": [ehr.jwk, rotated.jwk]}
        clock.now += 61
        checker.verify("Bearer " + rotated.token(DISCOVERY), DISCOVERY)
        assert fetches() == 2  # an unknown kid made it look again

        for n in range(5):  # made-up kids: at most one look per refresh interval
            with pytest.raises(auth.Unauthorized):
                checker.verify("Bearer " + ehr.token(DISCOVERY, headers={"kid": f"made-up-{n}"}), DISCOVERY)
        assert fetches() == 2
        clock.now += 61
        with pytest.raises(auth.Unauthorized):
            checker.verify("Bearer " + ehr.token(DISCOVERY, headers={"kid": "made-up-again"}), DISCOVERY)
        assert fetches() == 3

        clock.now += 3601  # past the TTL: fetched again even for a known kid
        checker.verify("Bearer " + ehr.token(DISCOVERY), DISCOVERY)
        assert fetches() == 4


def test_keys_held_before_are_kept_when_the_jwks_url_fails(tmp_path):
    ehr, clock = SigningEhr(), _Clock()
    with RecordingServer({"/jwks": ehr.jwks}) as keys_host:
        issuers = _issuers_with(tmp_path, ehr, jwks_url=keys_host.url + "/jwks")
        checker = verifier(issuers, keys=jwks.KeyStore(ttl=10, refresh_interval=1, clock=clock))
        checker.verify("Bearer " + ehr.token(DISCOVERY), DISCOVERY)
        del keys_host.routes["/jwks"]  # the key server now answers 404
        clock.now += 11
        checker.verify("Bearer " + ehr.token(DISCOVERY), DISCOVERY)
        assert len(keys_host.hits) == 2


# --- the FHIR server a caller names -------------------------------------------------------------------------

def test_a_fetch_from_a_fhir_server_not_on_the_issuers_list_is_refused_on_a_card_and_never_gets_the_token(
        book, tmp_path):
    ehr = SigningEhr()
    request = example_request()
    patient = request["prefetch"]["patient"]
    empty = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    with RecordingServer({f"/fhir/Patient/{patient['id']}": patient}, default=empty) as trusted, \
            RecordingServer(default=empty) as other:
        (tmp_path / "keys.json").write_text(json.dumps(ehr.jwks))
        issuers = _issuers_with(tmp_path, ehr, jwks_file="keys.json", fhir_servers=[trusted.url + "/fhir/"])
        service = CdsService(book, fetcher=FhirFetcher(), clock=lambda: NOW)
        client = create_app(service, Settings(), verifier=verifier(issuers)).test_client()

        def call(fhir_server: str):
            body = {**request, "prefetch": {}, "fhirServer": fhir_server,
                    "fhirAuthorization": {"access_token": "secret-ehr-token", "token_type": "Bearer"}}
            return client.post(SIGN, json=body, headers=ehr.header(SIGN))

        assert call(trusted.url + "/fhir").status_code == 200
        assert trusted.hits and all(h["Authorization"] == "Bearer secret-ehr-token" for _, _, h in trusted.hits)

        for elsewhere in (other.url + "/fhir", trusted.url + "/fhir/../other", trusted.url + "/fhir?x=1",
                          f"http://user@{trusted.url[7:]}/fhir"):
            hits_before = len(trusted.hits)
            response = call(elsewhere)
            assert response.status_code == 200, elsewhere  # shown to the clinician, not a 412 the EHR hides
            refused = [c for c in response.get_json()["cards"] if c["source"]["topic"]["code"] == "data-unavailable"]
            assert len(refused) == 1 and refused[0]["indicator"] == "warning", elsewhere
            assert "the problem list was not prefetched and was not fetched" in refused[0]["detail"]
            assert "not a FHIR server this EHR's issuer is trusted for" in refused[0]["detail"]
            assert len(trusted.hits) == hits_before
        assert other.hits == []


def test_a_medication_named_only_by_reference_is_not_fetched_from_an_untrusted_fhir_server(book, tmp_path):
    """Every key prefetched, but a past dose names its drug only as "Medication/ocr-1": reading it would
    send the EHR's token to fhirServer, so on a server the issuer is not trusted for it is not read, and
    the card says why the dose history is incomplete."""
    ehr = SigningEhr()
    request = example_request()
    patient = request["prefetch"]["patient"]["id"]
    dose = {"resourceType": "MedicationAdministration", "id": "past-dose", "status": "completed",
            "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": "2026-06-01",
            "medicationReference": {"reference": "Medication/ocr-1"}}
    request["prefetch"]["administrations"] = {"resourceType": "Bundle", "type": "searchset",
                                              "entry": [{"resource": dose}]}
    with RecordingServer(default={"resourceType": "Bundle", "type": "searchset", "entry": []}) as other:
        (tmp_path / "keys.json").write_text(json.dumps(ehr.jwks))
        issuers = _issuers_with(tmp_path, ehr, jwks_file="keys.json", fhir_servers=["https://ehr.example.test/fhir"])
        service = CdsService(book, fetcher=FhirFetcher(), clock=lambda: NOW)
        client = create_app(service, Settings(), verifier=verifier(issuers)).test_client()
        body = {**request, "fhirServer": other.url + "/fhir",
                "fhirAuthorization": {"access_token": "secret-ehr-token", "token_type": "Bearer"}}
        response = client.post(SIGN, json=body, headers=ehr.header(SIGN))
        assert response.status_code == 200
        assert other.hits == []
    refused = [c for c in response.get_json()["cards"] if c["source"]["topic"]["code"] == "data-unavailable"]
    assert len(refused) == 1
    assert "issuer is not trusted for" in refused[0]["detail"]


def test_a_complete_prefetch_is_answered_whatever_fhir_server_names(app_client, ehr):
    """Nothing to fetch, so nothing is sent anywhere: the cards are those of the trusted server's call."""
    request = example_request("hbv-active--hbsag-positive.json")
    expected = app_client.post(SIGN, json=request, headers=ehr.header(SIGN)).get_json()["cards"]
    for named in ("http://fhir.elsewhere.example.test/fhir", "not a URL at all"):
        response = app_client.post(SIGN, json={**request, "fhirServer": named}, headers=ehr.header(SIGN))
        assert response.status_code == 200, named
        cards = response.get_json()["cards"]
        assert [(c["source"]["topic"]["code"], c["indicator"]) for c in cards] == \
            [(c["source"]["topic"]["code"], c["indicator"]) for c in expected]
        assert "hbv-active" in {c["source"]["topic"]["code"] for c in cards}


def test_cds_trusted_fhir_servers_adds_a_fhir_server_to_every_issuer(book, tmp_path, ehr, rsa_ehr):
    request = example_request()
    patient = request["prefetch"]["patient"]
    empty = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    issuers = ehr.issuers_file(tmp_path, rsa_ehr, fhir_servers=["https://ehr.example.test/fhir"])
    with RecordingServer({f"/fhir/Patient/{patient['id']}": patient}, default=empty) as local:
        settings = Settings.from_env({"CDS_TRUSTED_ISSUERS": str(issuers), "CDS_PUBLIC_URL": PUBLIC_URL,
                                      "CDS_TRUSTED_FHIR_SERVERS": f"http://127.0.0.1:1/fhir, {local.url}/fhir/"})
        checker = auth.from_settings(settings)
        assert all(i.allows_fhir_server(local.url + "/fhir") for i in checker.issuers.values())
        assert checker.issuers[ehr.iss].allows_fhir_server("https://ehr.example.test/fhir")  # the file's list stays
        service = CdsService(book, fetcher=FhirFetcher(), clock=lambda: NOW)
        client = create_app(service, Settings(), verifier=checker).test_client()
        body = {**request, "prefetch": {}, "fhirServer": local.url + "/fhir",
                "fhirAuthorization": {"access_token": "ehr-token", "token_type": "Bearer"}}
        response = client.post(SIGN, json=body, headers=rsa_ehr.header(SIGN))
        assert response.status_code == 200
        assert local.hits and all(h["Authorization"] == "Bearer ehr-token" for _, _, h in local.hits)


# --- real requests captured from the CDS Hooks sandbox, and the spec's example ------------------------------

def _captured() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CAPTURES.read_text().splitlines() if line.strip()]


def _claims(token: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def test_captured_sandbox_tokens_verify_with_the_shipped_preset_at_their_issue_time():
    calls = [c for c in _captured() if c["auth"]]
    assert len(calls) >= 3
    for call in calls:
        claims = _claims(call["auth"].split()[1])
        base = claims["aud"][: -len(call["path"])]
        checker = verifier(PRESET, public_url=base, clock=lambda: claims["iat"] + 5)
        caller = checker.verify(call["auth"], call["path"])
        assert caller.issuer.iss == "https://sandbox.cds-hooks.org"
        with pytest.raises(auth.Unauthorized):  # and only once
            checker.verify(call["auth"], call["path"])


def test_captured_sandbox_tokens_are_refused_now_and_at_another_address():
    call = next(c for c in _captured() if c["auth"])
    claims = _claims(call["auth"].split()[1])
    base = claims["aud"][: -len(call["path"])]
    with pytest.raises(auth.Unauthorized, match="expired"):
        verifier(PRESET, public_url=base).verify(call["auth"], call["path"])
    with pytest.raises(auth.Unauthorized, match="InvalidAudience"):
        verifier(PRESET, public_url="https://cds.example.test", clock=lambda: claims["iat"]).verify(
            call["auth"], call["path"])


def test_captured_sandbox_discovery_call_gets_through_the_app(service):
    call = next(c for c in _captured() if c["auth"] and c["method"] == "GET")
    claims = _claims(call["auth"].split()[1])
    checker = verifier(PRESET, public_url=claims["aud"][: -len(call["path"])], clock=lambda: claims["iat"] + 1)
    client = create_app(service, Settings(), verifier=checker).test_client()
    response = client.get(call["path"], headers={"Authorization": call["auth"], "Origin": call["origin"]})
    assert response.status_code == 200


def test_the_spec_example_token_verifies_against_the_spec_example_keys(tmp_path):
    (tmp_path / "issuers.yaml").write_text(yaml.safe_dump({"issuers": [{
        "iss": "https://fhir-ehr.example.com/", "jwks_file": str(SPEC / "jwks-public.json"),
        "jku_allowed": ["https://fhir-ehr.example.com/jwk_uri"]}]}))
    authorization = (SPEC / "jwt-example-authorization-header.txt").read_text().split(":", 1)[1].strip()
    exp = _claims(authorization.split()[1])["exp"]
    checker = verifier(tmp_path / "issuers.yaml", public_url="https://cds.example.org", clock=lambda: exp - 10)
    caller = checker.verify(authorization, "/cds-services/some-service")
    assert caller.tenant == "2ddd6c3a-8e9a-44c6-a305-52111ad302a2"


# --- configuration --------------------------------------------------------------------------------------------

def test_app_refuses_to_start_with_auth_required_and_no_issuers(service):
    with pytest.raises(auth.AuthConfigError, match="CDS_TRUSTED_ISSUERS"):
        create_app(service, Settings())


def test_serve_without_configuration_refuses_to_run_unauthenticated():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDS_") or k == "CDS_PATIENT_HASH_KEY"}
    done = subprocess.run([str(BIN / "cds-service"), "serve", "--port", str(free_port())], env=clean,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "CDS_TRUSTED_ISSUERS" in done.stderr and "CDS_AUTH=off" in done.stderr


@pytest.mark.parametrize("env, message", [
    ({"CDS_TRUSTED_ISSUERS": "{issuers}"}, "CDS_PUBLIC_URL"),
    ({"CDS_TRUSTED_ISSUERS": "{issuers}", "CDS_PUBLIC_URL": "cds.example.test"}, "CDS_PUBLIC_URL"),
    ({"CDS_AUTH": "maybe"}, "CDS_AUTH must be"),
    ({"CDS_TRUSTED_ISSUERS": "{issuers}", "CDS_PUBLIC_URL": PUBLIC_URL, "CDS_JWT_ALGORITHMS": "ES384,HS256"},
     "CDS_JWT_ALGORITHMS"),
    ({"CDS_TRUSTED_ISSUERS": "{issuers}", "CDS_PUBLIC_URL": PUBLIC_URL, "CDS_JWT_ALGORITHMS": "none"},
     "CDS_JWT_ALGORITHMS"),
    ({"CDS_TRUSTED_ISSUERS": "/nonexistent/issuers.yaml", "CDS_PUBLIC_URL": PUBLIC_URL}, "cannot read"),
    ({"CDS_TRUSTED_ISSUERS": "{issuers}", "CDS_PUBLIC_URL": PUBLIC_URL,
      "CDS_TRUSTED_FHIR_SERVERS": "https://ehr.example.test/fhir?tenant=1"}, "CDS_TRUSTED_FHIR_SERVERS"),
    ({"CDS_TRUSTED_ISSUERS": "{issuers}", "CDS_PUBLIC_URL": PUBLIC_URL, "CDS_TRUSTED_FHIR_SERVERS": "localhost:8081"},
     "CDS_TRUSTED_FHIR_SERVERS"),
])
def test_unusable_auth_settings_stop_start_up(issuers, env, message):
    settings = Settings.from_env({k: v.format(issuers=issuers) for k, v in env.items()})
    with pytest.raises(auth.AuthConfigError, match=message):
        auth.from_settings(settings)


@pytest.mark.parametrize("entry, message", [
    ({"jwks_url": "http://keys.example.test/jwks"}, "must be https"),
    ({"jku_allowed": ["ftp://keys.example.test/jwks"]}, "must be https"),
    ({}, "needs 'jwks_url', 'jwks_file' or 'jku_allowed'"),
    ({"jwks_file": "missing.json"}, "cannot use JWK Set file"),
    ({"jwks_file": "private.json"}, "no usable public signing key"),
    ({"jwks_file": "keys.json", "fhir_servers": {"a": 1}}, "must be a string or a list"),
])
def test_unusable_issuer_entries_stop_start_up(tmp_path, entry, message):
    ehr = SigningEhr()
    (tmp_path / "keys.json").write_text(json.dumps(ehr.jwks))
    private_and_secret = [{**ehr.jwk, "d": "AAAA"}, {"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]
    (tmp_path / "private.json").write_text(json.dumps({"keys": private_and_secret}))
    with pytest.raises(auth.AuthConfigError, match=message):
        auth.load_issuers(_issuers_with(tmp_path, ehr, **entry), jwks.KeyStore())
