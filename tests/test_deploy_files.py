"""The container, the compose lab and the Kubernetes manifests, read as their tools read them.

Each file is parsed by the real parser or schema (BuildKit's Dockerfile parser, the Compose specification,
the Kubernetes 1.37 API schemas, strict, offline: kubernetes-validate ships them), then checked for what the
service needs from it, and the health-check commands the image and the lab run are run against a real
`cds-service serve`. `make container-test` runs these too, then builds and runs the image and the lab
(tests/test_container_image.py, tests/test_compose_lab.py); no cluster runs here.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dockerfile
import jsonschema
import kubernetes_validate
import pytest
import yaml

from cds_service.web import auth, jwks
from cds_service.feedback.settings import ConfigError, StoreSettings
from conftest import ROOT
from security_support import serve

COMPOSE = ROOT / "docker-compose.yml"
LAB = ROOT / "deploy" / "lab"
OVERRIDES = sorted(LAB.glob("*.yml"))
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.37.0"
APP_DIR = "/app"  # the image's WORKDIR: where the repository's files land


# ---- Dockerfile -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def instructions() -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(ROOT / "Dockerfile")))


def final_stage(instructions: list[dockerfile.Command]) -> list[dockerfile.Command]:
    starts = [i for i, c in enumerate(instructions) if c.cmd == "FROM"]
    return instructions[starts[-1]:]


def image_env(instructions: list[dockerfile.Command]) -> dict[str, str]:
    env: dict[str, str] = {}
    for command in final_stage(instructions):
        if command.cmd == "ENV":
            env.update(zip(command.value[::2], command.value[1::2], strict=True))
    return env


def test_every_stage_is_python_3_11_slim(instructions):
    bases = [c.value[0] for c in instructions if c.cmd == "FROM"]
    assert bases and set(bases) == {"python:3.11-slim"}


def test_the_image_runs_cds_service_serve_as_a_non_root_user(instructions):
    stage = final_stage(instructions)
    users = [c.value[0] for c in stage if c.cmd == "USER"]
    assert users, "the final stage sets no USER: the service would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("0", "root")
    assert [c.value for c in stage if c.cmd == "CMD"][-1] == ("cds-service", "serve")
    assert [c.cmd for c in stage].index("USER") < [c.cmd for c in stage].index("CMD")


def test_the_image_holds_the_code_rules_examples_and_lab_loader(instructions):
    copied = {c.value[0] for c in final_stage(instructions) if c.cmd == "COPY" and not c.flags}
    assert {"cds_service", "rules", "fhir_examples", "config", "deploy/load_fhir_examples.py"} <= copied
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for command in instructions:
        if command.cmd == "COPY" and not command.flags:
            for source in command.value[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not [p for p in ignored if fnmatch.fnmatch(source, p) or source.startswith(p + "/")], \
                    f"COPY {source}: excluded from the build context by .dockerignore"


def test_the_image_is_configured_by_environment_only_and_carries_no_secret(instructions):
    env = image_env(instructions)
    assert env["HOST"] == "0.0.0.0"  # reachable through the published port; serve's own default is loopback
    assert [c.value[0] for c in final_stage(instructions) if c.cmd == "EXPOSE"] == [env["PORT"]]
    secret_like = re.compile(r"KEY|TOKEN|PASSWORD|SECRET|DATABASE_URL|TRUSTED_ISSUERS")
    declared = list(env) + [c.value[0].split("=")[0] for c in instructions if c.cmd == "ARG"]
    assert not [name for name in declared if secret_like.search(name)]
    assert "CDS_AUTH" not in env  # serve's secure default (required) stays in force


def test_metrics_of_all_workers_go_to_a_writable_temporary_folder(instructions):
    assert image_env(instructions)["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")


# ---- docker-compose.yml -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def interpolated(value: str) -> str:
    """The value docker compose uses when the variable is not set: ${NAME:-default} -> default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def service_env(compose: dict[str, Any], name: str) -> dict[str, str]:
    return {k: interpolated(str(v)) for k, v in compose["services"][name].get("environment", {}).items()}


def published(compose: dict[str, Any], name: str) -> dict[int, tuple[str, int]]:
    """container port -> (host address, host port)"""
    ports = {}
    for spec in compose["services"][name].get("ports", []):
        address, host, container = interpolated(str(spec)).split(":")
        ports[int(container)] = (address, int(host))
    return ports


def test_the_compose_file_is_valid_against_the_compose_specification(compose):
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text(encoding="utf-8"))
    errors = [e.message for e in jsonschema.validators.validator_for(schema)(schema).iter_errors(compose)]
    assert not errors


@pytest.mark.parametrize("path", OVERRIDES, ids=lambda p: p.name)
def test_each_lab_override_is_valid_compose_and_changes_only_services_of_the_lab(path, compose):
    override = yaml.safe_load(path.read_text(encoding="utf-8"))
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text(encoding="utf-8"))
    assert not [e.message for e in jsonschema.validators.validator_for(schema)(schema).iter_errors(override)]
    assert set(override) == {"services"} and set(override["services"]) <= set(compose["services"])
    for service in override["services"].values():
        if "build" in service:  # paths are the project directory's, the first file's (docker-compose.yml)
            context = ROOT / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file()


def test_the_lab_fhir_server_image_runs_the_glue_and_the_medplum_version_the_tests_run():
    from devtools.fhir_server import GLUE, MEDPLUM_VERSION
    built = list(dockerfile.parse_file(str(LAB / "fhir-server.Dockerfile")))
    args = dict(c.value[0].split("=", 1) for c in built if c.cmd == "ARG")
    assert args["MEDPLUM_VERSION"] == MEDPLUM_VERSION
    service = yaml.safe_load((LAB / "fhir-medplum.yml").read_text())["services"]["fhir"]
    assert ROOT / service["build"]["context"] == GLUE.parent
    assert [c.value[0] for c in built if c.cmd == "COPY"] == [GLUE.name]


def test_the_published_ports_are_configurable_and_default_to_the_documented_ones(compose):
    ports = compose["services"]["cds"]["ports"]
    assert ports == ["127.0.0.1:${CDS_PORT:-8080}:8080", "127.0.0.1:${FHIR_PORT:-8081}:8081"]


def test_the_lab_runs_the_service_its_database_a_fhir_server_and_the_loader(compose):
    services = compose["services"]
    assert set(services) == {"cds", "db", "fhir", "fhir-loader"}
    assert services["cds"]["build"] == "."
    assert services["db"]["image"].startswith("postgres:")
    assert services["fhir"]["image"] == "hapiproject/hapi:latest"
    assert services["fhir-loader"]["image"] == services["cds"]["image"]  # the loader runs from the service image


def test_every_long_running_service_has_a_health_check(compose):
    for name, service in compose["services"].items():
        if service.get("restart") == "no":
            continue  # a one-shot job
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), name


def test_every_published_port_is_bound_to_loopback(compose):
    bindings = [(name, spec) for name, s in compose["services"].items() for spec in s.get("ports", [])]
    assert bindings
    for name, spec in bindings:
        assert isinstance(spec, str) and spec.startswith("127.0.0.1:"), (name, spec)


def test_services_start_in_order_of_what_they_need(compose):
    services = compose["services"]
    assert services["cds"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["fhir"]["depends_on"]["cds"]["condition"] == "service_started"
    assert services["fhir-loader"]["depends_on"]["fhir"]["condition"] == "service_healthy"


def test_the_service_is_wired_to_the_lab_database(compose):
    url = urlsplit(service_env(compose, "cds")["CDS_DATABASE_URL"])
    db = service_env(compose, "db")
    assert url.scheme.startswith("postgresql") and url.hostname == "db"
    assert (url.username, url.password, url.path.lstrip("/")) == (
        db["POSTGRES_USER"], db["POSTGRES_PASSWORD"], db["POSTGRES_DB"])


def test_the_service_fetches_from_the_lab_fhir_server_at_the_url_its_callers_use(compose):
    """The sandbox, curl and the service must all reach the FHIR server at one URL, and the trusted
    issuer must allow that URL as fhirServer, or the service never fetches from the lab's FHIR server."""
    env = service_env(compose, "cds")
    fhir_port = int(service_env(compose, "fhir")["SERVER_PORT"])
    assert compose["services"]["fhir"]["network_mode"] == "service:cds"
    assert published(compose, "cds")[fhir_port] == ("127.0.0.1", fhir_port)
    loader = compose["services"]["fhir-loader"]
    loader_url = loader["command"][-1]
    assert urlsplit(loader_url).port == fhir_port and loader["network_mode"] == "service:cds"
    assert env["CDS_ALLOW_UNAUTHENTICATED_FETCH"] == "1"  # the sandbox sends no access token
    issuers = auth.load_issuers(repository_path(env["CDS_TRUSTED_ISSUERS"]), jwks.KeyStore())
    assert any(issuer.allows_fhir_server(loader_url) for issuer in issuers.values())
    public = urlsplit(env["CDS_PUBLIC_URL"])
    assert published(compose, "cds")[int(env["PORT"])] == ("127.0.0.1", public.port)


def test_the_lab_loader_command_is_a_script_the_image_holds(compose, instructions):
    command = compose["services"]["fhir-loader"]["command"]
    assert command[0] == "python" and (ROOT / command[1]).is_file()
    assert command[1] in {c.value[0] for c in final_stage(instructions) if c.cmd == "COPY"}


def repository_path(image_path: str) -> Path:
    assert image_path.startswith(APP_DIR + "/"), image_path
    path = ROOT / image_path.removeprefix(APP_DIR + "/")
    assert path.is_file(), f"{image_path} is not a file of the repository copied into the image"
    return path


# ---- health checks, run for real --------------------------------------------------------------------

def test_the_health_checks_of_the_image_and_the_lab_pass_on_a_running_service_and_fail_without(
        instructions, compose, tmp_path):
    image_check = [c for c in final_stage(instructions) if c.cmd == "HEALTHCHECK"][-1].value
    lab_check = compose["services"]["cds"]["healthcheck"]["test"]
    checks = {"image": list(image_check[1:]), "lab": list(lab_check[1:])}
    with serve({"CDS_DEV": "1", "CDS_AUTH": "off"}, tmp_path / "server.log") as base:
        port = str(urlsplit(base).port)
        for name, argv in checks.items():
            assert _run_check(argv, port).returncode == 0, name
    for name, argv in checks.items():
        assert _run_check(argv, port).returncode != 0, name


def _run_check(argv: list[str], port: str) -> subprocess.CompletedProcess:
    """The check as the container runs it, with its python, on the port the server listens on."""
    assert argv[0] == "python"
    return subprocess.run([sys.executable, *argv[1:]], env={**os.environ, "PORT": port},
                          capture_output=True, timeout=30)


# ---- Kubernetes -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    """Every object in deploy/kubernetes by kind (one of each), kustomization aside."""
    found = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
                assert document["kind"] not in found
                found[document["kind"]] = document
    return found


def container(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    [only] = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def test_every_manifest_is_valid_against_the_kubernetes_api_schema(manifests):
    for document in manifests.values():
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "Secret", "ConfigMap"} <= set(manifests)


def test_the_kustomization_applies_every_manifest():
    listed = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def test_the_deployment_probes_liveness_and_readiness_on_its_port(manifests):
    spec = container(manifests)
    ports = {p["name"] for p in spec["ports"]} | {p["containerPort"] for p in spec["ports"]}
    assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert spec[probe]["httpGet"]["port"] in ports, probe


def test_the_deployment_limits_resources_and_runs_locked_down(manifests, instructions):
    spec = container(manifests)
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(spec["resources"][bound]), bound
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {m["mountPath"] for m in spec["volumeMounts"] if not m.get("readOnly")}
    metrics_dir = image_env(instructions)["PROMETHEUS_MULTIPROC_DIR"]
    assert any(metrics_dir.startswith(path.rstrip("/") + "/") for path in writable), "metrics need a writable folder"


def test_several_replicas_run_behind_the_service_and_scale_on_cpu(manifests):
    pod_labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert manifests["Service"]["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in container(manifests)["ports"]}
    assert {p["targetPort"] for p in manifests["Service"]["spec"]["ports"]} <= port_names
    hpa = manifests["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["scaleTargetRef"]["name"] == manifests["Deployment"]["metadata"]["name"]
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]


def test_the_deployment_requires_tokens_for_its_public_https_url(manifests, tmp_path):
    env = {e["name"]: e["value"] for e in container(manifests)["env"]}
    assert env["CDS_AUTH"] == "required"
    assert urlsplit(env["CDS_PUBLIC_URL"]).scheme == "https"
    mounts = {m["name"]: m["mountPath"] for m in container(manifests)["volumeMounts"]}
    volumes = {v["name"]: v for v in manifests["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    issuers_file = Path(env["CDS_TRUSTED_ISSUERS"])
    [volume] = [name for name, path in mounts.items() if issuers_file.parent == Path(path)]
    assert volumes[volume]["configMap"]["name"] == manifests["ConfigMap"]["metadata"]["name"]
    written = tmp_path / issuers_file.name
    written.write_text(manifests["ConfigMap"]["data"][issuers_file.name])
    assert auth.load_issuers(written, jwks.KeyStore())


def test_the_secret_holds_the_store_settings_and_its_placeholders_fail_closed(manifests):
    secret = manifests["Secret"]
    refs = [s["secretRef"]["name"] for s in container(manifests)["envFrom"] if "secretRef" in s]
    assert refs == [secret["metadata"]["name"]]
    values = secret["stringData"]
    assert {"CDS_DATABASE_URL", "CDS_PATIENT_HASH_KEY", "CDS_ADMIN_TOKEN"} <= set(values)
    assert urlsplit(values["CDS_DATABASE_URL"]).scheme.startswith("postgresql")
    with pytest.raises(ConfigError, match="CDS_PATIENT_HASH_KEY"):
        StoreSettings.from_env(dev=False, env=values)
    assert StoreSettings.from_env(dev=False, env={**values, "CDS_PATIENT_HASH_KEY": "k" * 64}).admin_token is None
