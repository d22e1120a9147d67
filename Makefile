# Two set-up commands: `make run` (the embedded default) and `make test` (everything CI checks).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Ports that do not clash with an MQTT broker (1883) or web server (8080) the machine may run.
RUN_MQTT ?= 127.0.0.1:11883
RUN_HTTP ?= 127.0.0.1:18080

.PHONY: run test lint typecheck imports pytest bench faults-long clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[broker,bridge]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/devicefabric up --demo --mqtt $(RUN_MQTT) --http $(RUN_HTTP)

test: $(VENV)/.dev-installed lint typecheck imports pytest

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

imports: $(VENV)/.dev-installed
	$(BIN)/lint-imports

pytest: $(VENV)/.dev-installed
	$(BIN)/pytest -q

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench

# The long fault run: 10,000 fuzz examples per parser and the 10-minute soak (not part of `test`).
faults-long: $(VENV)/.dev-installed
	FAULTS_LONG=1 $(BIN)/pytest -q -m faults -o timeout=3600

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
