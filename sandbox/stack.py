"""The servers the CDS Hooks sandbox needs, started together and stopped together.

- the service: `cds-service serve` in development mode, but with authentication on (the sandbox's tokens,
  checked with config/issuers-sandbox.yaml), CORS for the public sandbox and the local copy, and the demo
  FHIR server trusted for fetching (CDS_TRUSTED_FHIR_SERVERS);
- the FHIR server: devtools/fhir_server.js (Medplum's in-memory FHIR router behind our glue, which answers
  CORS) holding the demo patients (sandbox/demo.py);
- a local copy of the sandbox: the build in ../shared/cds-hooks/sandbox-build served on loopback, when that
  folder is there.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

from devtools import fhir_server

from . import demo

ROOT = Path(__file__).resolve().parent.parent
SANDBOX_BUILD = ROOT.parent / "shared" / "cds-hooks" / "sandbox-build"
PUBLIC_SANDBOX = "https://sandbox.cds-hooks.org"
ISSUERS = ROOT / "config" / "issuers-sandbox.yaml"
TENANT = "sandbox"  # the FHIR server's repository for the demo: http://127.0.0.1:<port>/sandbox/fhir
HOOKS = {"patient-view": "patient-view", "rx-view": "order-select", "rx-sign": "order-sign"}
START_SECONDS = 60


@dataclass(frozen=True)
class Ports:
    """Where each server listens on 127.0.0.1; 0 picks a free port."""

    service: int = 8080
    fhir: int = 8081
    ui: int = 8082


class Stack:
    """The service, the demo FHIR server and the local sandbox, as a context manager."""

    def __init__(self, ports: Ports, database_url: str, log_path: Path, build: Path = SANDBOX_BUILD,
                 patients: list[demo.DemoPatient] = demo.PATIENTS) -> None:
        self.ports, self.database_url, self.log_path, self.build, self.patients = (
            ports, database_url, log_path, build, patients)
        self.fhir: fhir_server.FhirServer | None = None
        self.ui: ThreadingHTTPServer | None = None
        self.service: subprocess.Popen | None = None
        self.service_url = ""

    @property
    def fhir_url(self) -> str:
        return self.fhir.base(TENANT) if self.fhir else ""

    @property
    def ui_url(self) -> str | None:
        return f"http://127.0.0.1:{self.ui.server_port}" if self.ui else None

    def __enter__(self) -> "Stack":
        try:
            self.fhir = fhir_server.start(port=self.ports.fhir)
            self.fhir.seed(TENANT, demo.records(self.patients, datetime.now(timezone.utc)))
            if (self.build / "index.html").is_file():
                self.ui = _static_server(self.build, self.ports.ui)
            self._start_service()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: Any) -> None:
        if self.service:
            self.service.terminate()
            try:
                self.service.wait(15)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait(5)
            self.service = None
        if self.ui:
            self.ui.shutdown()
            self.ui.server_close()
            self.ui = None
        if self.fhir:
            self.fhir.stop()
            self.fhir = None

    def sandbox_url(self, patient: demo.DemoPatient, sandbox: str, screen: str | None = None) -> str:
        """The sandbox (public or local) opened on this patient, our services and the demo FHIR server."""
        screen = screen or patient.screen
        query = {"serviceDiscoveryURL": f"{self.service_url}/cds-services", "fhirServiceUrl": self.fhir_url,
                 "patientId": patient.patient_id, "hook": HOOKS[screen], "screen": screen}
        return f"{sandbox}/?{urlencode(query)}"

    def _start_service(self) -> None:
        port = self.ports.service or _free_port()
        self.service_url = f"http://127.0.0.1:{port}"
        origins = [PUBLIC_SANDBOX] + ([self.ui_url, self.ui_url.replace("127.0.0.1", "localhost")] if self.ui_url else [])
        env = {**os.environ, "CDS_DEV": "1", "CDS_AUTH": "required", "CDS_TRUSTED_ISSUERS": str(ISSUERS),
               "CDS_PUBLIC_URL": self.service_url, "CDS_CORS_ORIGINS": " ".join(origins),
               "CDS_TRUSTED_FHIR_SERVERS": self.fhir_url, "CDS_DATABASE_URL": self.database_url}
        # Development mode also fetches without an access token (the sandbox sends none) and opens /admin/report.
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.service = subprocess.Popen(
                [str(Path(sys.executable).parent / "cds-service"), "serve", "--host", "127.0.0.1", "--port",
                 str(port), "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        _wait_ready(f"{self.service_url}/readyz", self.service, self.log_path)


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """The sandbox's page loads are not worth a line each on the console."""


def _static_server(folder: Path, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(_QuietFiles, directory=str(folder)))
    threading.Thread(target=server.serve_forever, name="sandbox-ui", daemon=True).start()
    return server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}; its log: {log_path}\n"
                               + log_path.read_text(errors="replace")[-2000:])
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the service did not get ready in {START_SECONDS} s; its log: {log_path}")
