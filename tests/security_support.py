"""What the security tests share: an EHR that signs tokens with its own test keys, a real
`cds-service serve` process, and a loopback HTTP server that records every request it gets."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import jwt
import requests
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cds_service.web import auth, jwks

BIN = Path(sys.executable).parent
PUBLIC_URL = "https://cds.example.test"
EXAMPLES = Path(__file__).resolve().parent.parent / "fhir_examples"
KEPT_SETTINGS = ("CDS_DATABASE_URL", "CDS_PATIENT_HASH_KEY")  # the test session's scratch store (tests/stores.py)


def example_request(name: str = "clean--first-dose-all-labs-normal.json") -> dict[str, Any]:
    """One of the project's example hook requests (fhir_examples/), as an EHR would send it."""
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


@dataclass
class SigningEhr:
    """An EHR with its own signing key: it mints CDS Hooks client JWTs and publishes its JWK Set."""

    iss: str = "https://ehr.example.test"
    alg: str = "ES384"
    kid: str = field(default_factory=lambda: f"key-{uuid.uuid4().hex[:8]}")

    def __post_init__(self) -> None:
        if self.alg.startswith("ES"):
            self.private_key: Any = ec.generate_private_key(ec.SECP384R1())
            self.jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        else:
            self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        self.jwk.update(kid=self.kid, use="sig", alg=self.alg)

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}

    def claims(self, audience: str, lifetime: int = 300, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": self.iss, "aud": audience, "exp": now + lifetime, "iat": now, "jti": str(uuid.uuid4())}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, path: str, base: str = PUBLIC_URL, headers: dict[str, Any] | None = None,
              **overrides: Any) -> str:
        """A fresh token for a call to base + path, as a CDS client mints one per call."""
        return jwt.encode(self.claims(base + path, **overrides), self.private_key, algorithm=self.alg,
                          headers={"kid": self.kid, "typ": "JWT", **(headers or {})})

    def header(self, path: str, **overrides: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(path, **overrides)}"}

    def issuers_file(self, directory: Path, *others: "SigningEhr", **entry: Any) -> Path:
        """A trusted-issuers file naming this EHR (and others), each with its JWK Set in a file."""
        entries = []
        for ehr in (self, *others):
            key_file = directory / f"jwks-{ehr.kid}.json"
            key_file.write_text(json.dumps(ehr.jwks))
            entries.append({"iss": ehr.iss, "jwks_file": key_file.name, **(entry if ehr is self else {})})
        path = directory / f"issuers-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump({"issuers": entries}))
        return path


def verifier(issuers_file: Path, public_url: str = PUBLIC_URL, keys: jwks.KeyStore | None = None,
             **options: Any) -> auth.Verifier:
    """A verifier as the service builds one, with the key store and options a test wants."""
    keys = keys or jwks.KeyStore()
    return auth.Verifier(auth.load_issuers(issuers_file, keys), public_url, keys, **options)


class RecordingServer:
    """A loopback HTTP server: answers GETs from a dict of path -> JSON (else `default`, else 404) and
    records every request it gets."""

    def __init__(self, routes: dict[str, Any] | None = None, default: Any = None) -> None:
        self.routes = routes or {}
        self.default = default
        self.hits: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                outer.hits.append(("GET", self.path, dict(self.headers)))
                path = self.path.split("?", 1)[0]
                body = outer.routes.get(path, outer.default)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/fhir+json")
                self.end_headers()
                self.wfile.write(json.dumps(body if body is not None else {}).encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "RecordingServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(env: dict[str, str], log_path: Path, port: int | None = None) -> Iterator[str]:
    """`cds-service serve` as its own process on a free loopback port; yields its base URL."""
    with serve_process(env, log_path, port) as (base, _):
        yield base


@contextmanager
def serve_process(env: dict[str, str], log_path: Path,
                  port: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`cds-service serve` as its own process; yields its base URL and the process (gunicorn's master).

    `env` is laid over the environment with the CDS_ settings cleared first (but for the session's
    scratch feedback store), so the caller says exactly how the service is configured.
    """
    port = port or free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_") or k in KEPT_SETTINGS}
    full_env = {**base_env, "WEB_CONCURRENCY": "1", "CDS_THREADS": "4", **env}
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(BIN / "cds-service"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                   env=full_env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, process, log_path)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _wait_until_up(base: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            requests.get(f"{base}/openapi.json", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise AssertionError(f"server did not answer within 30 s:\n{log_path.read_text()}")
