"""The OpenAPI description at /openapi.json is what the service does: schemathesis generates requests
from it (valid and invalid, a few dozen per operation), signs each with a fresh client JWT for the URL
it calls, and checks every answer against the description: no 5xx, documented statuses, content types
and bodies, and a 401 whenever the token is left out.
"""
from __future__ import annotations

import json

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from cds_service.web.app import OPENAPI, create_app
from cds_service.config import Settings
from cds_service.feedback.settings import StoreSettings
from cds_service.feedback.store import Store

from security_support import SigningEhr, example_request, verifier
from stores import TEST_HASH_KEY, sqlite_url

EHR = SigningEhr()


@pytest.fixture(scope="module")
def app(service, tmp_path_factory):
    home = tmp_path_factory.mktemp("openapi")
    issuers = EHR.issuers_file(home, fhir_servers=[example_request()["fhirServer"]])
    store = Store(StoreSettings(database_url=sqlite_url(home / "cds.db"), patient_hash_key=TEST_HASH_KEY.encode()))
    store.upgrade()
    app = create_app(service, Settings(max_body_bytes=256 * 1024), verifier=verifier(issuers), store=store)
    schema.app = app  # where schemathesis sends its own probes (e.g. the call without a token)
    yield app
    store.close()


schema = schemathesis.openapi.from_path(str(OPENAPI))


@schema.auth(refresh_interval=None, retry_on=[])
class ClientJwt:
    """A fresh token per request, for exactly the URL the request goes to."""

    def get(self, case, context):
        return EHR.token(case.formatted_path)

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_service_behaves_as_its_openapi_description_says(app, case):
    case.operation.schema.app = app  # the schema parametrize() copied
    case.call_and_validate(app=app, excluded_checks=[positive_data_acceptance])


def test_the_description_is_served_and_covers_discovery_hook_calls_and_feedback(app):
    description = app.test_client().get("/openapi.json").get_json()
    assert description == yaml.safe_load(OPENAPI.read_text())
    operations = {(path, method) for path, item in description["paths"].items() for method in item}
    assert {("/cds-services", "get"), ("/cds-services/{service_id}", "post"),
            ("/cds-services/{service_id}/feedback", "post")} <= operations
    assert description["components"]["securitySchemes"]["cdsClientJwt"]["scheme"] == "bearer"


def test_a_real_request_matches_the_request_schema_and_its_answer_the_response_schema(app):
    path = "/cds-services/cd20-order-sign"
    operation = schema["/cds-services/{service_id}"]["POST"]
    case = operation.Case(path_parameters={"service_id": "cd20-order-sign"}, body=example_request(),
                          media_type="application/json", headers={"Authorization": f"Bearer {EHR.token(path)}"})
    response = case.call_and_validate(app=app)
    assert response.status_code == 200
    assert isinstance(json.loads(response.content)["cards"], list)
