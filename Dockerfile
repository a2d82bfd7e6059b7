# cd20-cds: the CDS Hooks service as a container. Configuration is by environment only (see README).
#   docker build -t cd20-cds .
#   docker run --rm -p 127.0.0.1:8080:8080 -e CDS_AUTH=... cd20-cds
# The lab (service, PostgreSQL, a FHIR server) is docker-compose.yml; Kubernetes manifests are in deploy/.

FROM python:3.11-slim AS build
# durable-rules ships no wheel: its C rules engine is compiled here, and only the result moves on.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cds_service ./cds_service
COPY rules ./rules
COPY config ./config
# Editable, so that the code finds rules/ and config/ beside it in /app, exactly as in a checkout (where a
# mounted or edited rules/ takes effect); pyproject.toml maps both into the package, so both are needed here.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/venv/bin/pip install --no-cache-dir -e .

FROM python:3.11-slim
# One id for the user and its group (10001:10001, as USER says): useradd --user-group would pick a system gid.
RUN groupadd --gid 10001 cds \
    && useradd --uid 10001 --gid cds --home-dir /app --no-create-home --shell /usr/sbin/nologin cds
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY cds_service ./cds_service
COPY rules ./rules
COPY config ./config
COPY fhir_examples ./fhir_examples
COPY deploy/load_fhir_examples.py ./deploy/
# var/ holds the SQLite feedback database when CDS_DATABASE_URL names none: the only place the service writes.
RUN mkdir var && chown cds:cds var
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/cds-metrics
USER 10001:10001
EXPOSE 8080
# Liveness only: readiness (/readyz) is for load balancers and orchestrators, which route around an instance
# whose database is down instead of restarting it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/healthz', timeout=4)"]
CMD ["cds-service", "serve"]
