"""`make sandbox` (python -m sandbox): start the stack, print one ready URL per demo patient, wait for Ctrl-C.

Ports come from PORT (the service, 8080), FHIR_PORT (8081) and SANDBOX_PORT (the local sandbox, 8082); 0
picks a free one. SANDBOX_DIR (default var/) holds the demo's feedback database and the service's log.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from .demo import MEDICATIONS, choose_drug
from .stack import PUBLIC_SANDBOX, ROOT, SANDBOX_BUILD, Ports, Stack


def main() -> int:
    ports = Ports(int(os.environ.get("PORT", "8080")), int(os.environ.get("FHIR_PORT", "8081")),
                  int(os.environ.get("SANDBOX_PORT", "8082")))
    folder = Path(os.environ.get("SANDBOX_DIR") or ROOT / "var")
    log_path = folder / "sandbox.log"
    signal.signal(signal.SIGTERM, _interrupt)  # stop as Ctrl-C does, servers included, even while starting
    print("Starting the service, the demo FHIR server and the local sandbox (the first run installs the FHIR "
          "server from npm)...", flush=True)
    try:
        with Stack(ports, f"sqlite:///{folder / 'sandbox.db'}", log_path) as stack:
            print(banner(stack, log_path), flush=True)
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    except (RuntimeError, OSError) as e:  # a port in use, no node or npm, a service that would not start
        print(f"make sandbox could not start: {e}\n(ports: PORT, FHIR_PORT, SANDBOX_PORT; 0 picks free ones)",
              file=sys.stderr)
        return 1
    print("Stopped.")
    return 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def banner(stack: Stack, log_path: Path) -> str:
    lines = ["", "*** CDS Hooks sandbox demo: DEVELOPMENT MODE, synthetic patients only. The sandbox signs its "
             "tokens with a published key. ***", "",
             f"Service:     {stack.service_url}/cds-services  (authentication on: the sandbox's tokens; "
             f"log {log_path})",
             f"FHIR server: {stack.fhir_url}  (demo records; dates moved so the examples' 2026-11-21 is now)",
             f"Feedback:    {stack.service_url}/admin/report", ""]
    local = stack.ui_url or f"(no local copy: {SANDBOX_BUILD} is missing)"
    lines.append(f"Local sandbox {local}, public sandbox {PUBLIC_SANDBOX}; one URL each per patient:")
    for patient in stack.patients:
        lines += ["", f"  {patient.patient_id}: {patient.title}  [{patient.screen}]"]
        if stack.ui_url:
            lines.append(f"    {stack.sandbox_url(patient, stack.ui_url)}")
        lines.append(f"    {stack.sandbox_url(patient, PUBLIC_SANDBOX)}")
    lines += ["", "Rx View and Rx Sign need an anti-CD20 drug, which the sandbox's picker does not offer. Open the "
              "browser's console (F12)", "on the page and paste one of these (Chrome first asks you to type "
              "'allow pasting'), then, in Rx Sign, press Sign Order:"]
    for name, medication in MEDICATIONS.items():
        lines += [f"  {name}:", "    " + choose_drug(medication)]
    lines += ["", "Ctrl-C stops everything."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
