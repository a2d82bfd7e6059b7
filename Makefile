# Entry points: `make run`, `make test`, `make sandbox` and `make container-test` (the image and the compose
# lab, built and run for real: minutes, gigabytes, root on a machine without an engine). All set up .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080
HOST ?= 127.0.0.1

.PHONY: run test sandbox browser container-test bench clean

$(BIN)/cds-service: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=python3" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,replay]'
	@touch $@

run: $(BIN)/cds-service
	@echo "*** make run: DEVELOPMENT MODE, AUTHENTICATION OFF (CDS_AUTH=off), CORS open to any origin. Not for patient data. ***"
	CDS_DEV=1 CDS_AUTH=off $(BIN)/cds-service serve --host $(HOST) --port $(PORT)

test: $(BIN)/cds-service browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The service, a FHIR server with demo patients (needs node and npm) and URLs for the CDS Hooks sandbox.
sandbox: $(BIN)/cds-service
	$(BIN)/python -m sandbox

# Headless Chromium (Debian's package) for the browser tests; installed as root when missing. Without it
# tests/test_sandbox_browser.py is skipped, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		chromium >/dev/null; } || echo "chromium is not installed (apt-get install chromium, as root)" >&2

container-test: $(BIN)/cds-service
	$(BIN)/python -m pytest --containers tests/test_deploy_files.py tests/test_container_image.py \
		tests/test_compose_lab.py $(PYTEST_ARGS)

bench: $(BIN)/cds-service
	@status=0; for script in bench fetch_bench load_bench replay_bench; do \
		echo "== bench/$$script.py"; $(BIN)/python bench/$$script.py || status=1; echo; \
	done; exit $$status

clean:
	rm -rf $(VENV) .pytest_cache
