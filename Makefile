# Two commands: `make run` (set up, load sample data, serve) and `make test` (every test).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PACS := $(VENV)/bin/pacs
export PACS_DATA_DIR ?= ./data

.PHONY: run test test-sqlite test-postgresql install bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

## Set up, load the sample studies once, fetch the OHIF viewer once (when npm is there),
## and serve DIMSE on 11112 and HTTP on 8080 (viewer at http://127.0.0.1:8080/viewer/).
run: install
	@test -f $(PACS_DATA_DIR)/.sample-loaded || ($(PACS) sample-data && touch $(PACS_DATA_DIR)/.sample-loaded)
	@if command -v npm >/dev/null; then $(PACS) viewer install || echo "viewer install failed: serving without /viewer"; \
	else echo "npm not found: no OHIF viewer at /viewer (apt-get install npm, then $(PACS) viewer install)"; fi
	$(PACS) serve

## Every test, on SQLite and on PostgreSQL (PACS_TEST_POSTGRES_URL, default 127.0.0.1:5432/test).
test: install
	PACS_TEST_DB=sqlite $(PY) -m pytest -q
	PACS_TEST_DB=postgresql $(PY) -m pytest -q

test-sqlite: install
	PACS_TEST_DB=sqlite $(PY) -m pytest -q

test-postgresql: install
	PACS_TEST_DB=postgresql $(PY) -m pytest -q

bench: install
	$(PY) bench/ingest.py --dataset ct --associations 1,4

clean:
	rm -rf $(VENV) build *.egg-info
