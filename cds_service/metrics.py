"""The metrics measured below the web layer, and how they are stored (web/observability.py serves them).

Under gunicorn every worker is its own process: prometheus_client's multiprocess mode has each one write
its samples to files in MULTIPROCESS_DIR (see web/server.py), which /metrics adds up.
"""
from __future__ import annotations

import os

from prometheus_client import Histogram

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
SECONDS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # histogram buckets

if os.environ.get(MULTIPROCESS_DIR):  # an unlabelled metric writes its file the moment it is defined
    os.makedirs(os.environ[MULTIPROCESS_DIR], exist_ok=True)

EVALUATION_SECONDS = Histogram(
    "cds_evaluation_seconds", "Turning one call's patient record into findings: FHIR facts and the rules engine "
    "(prefetch gathering and HTTP excluded)", buckets=SECONDS)
