# Two set-up commands: `make run` (the embedded default) and `make test` (everything CI checks).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Ports that do not clash with an MQTT broker (1883) or web server (8080) the machine may run.
RUN_MQTT ?= 127.0.0.1:11883
RUN_HTTP ?= 127.0.0.1:18080

# The packages of the distribution, at the repository's top level (mapped to devicefabric.<pkg>).
PACKAGES := agent bridge broker cli config runtime

.PHONY: run test lint typecheck imports pytest bench faults-long image image-test clean

# The bridge image: name and tag follow the package version (as config/deploy/deployment.yaml does;
# tests/packaging/test_image.py checks they agree).
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
IMAGE   ?= ghcr.io/devicefabric/devicefabric:$(VERSION)

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
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy reads the package through a link tree named `devicefabric` (it cannot follow the editable
# install's import hook, and the checkout's folder has another name).
typecheck: $(VENV)/.dev-installed
	rm -rf build/typecheck && mkdir -p build/typecheck/devicefabric
	for f in __init__.py __main__.py py.typed $(PACKAGES); do ln -s ../../../$$f build/typecheck/devicefabric/$$f; done
	$(BIN)/mypy

imports: $(VENV)/.dev-installed
	$(BIN)/lint-imports

# Three workers: most tests wait on real brokers and subprocesses, so the suite takes ~90 s instead
# of ~200 s on 2 cores. A single file runs serially: `.venv/bin/pytest -q tests/x/test_y.py`.
# The image build (`-m image`) needs root, buildah and debootstrap: `make image-test`, not `test`.
PYTEST_WORKERS ?= 3
pytest: $(VENV)/.dev-installed
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) -m "not image"

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench

# The long fault run: 10,000 fuzz examples per parser and the 10-minute soak (not part of `test`).
faults-long: $(VENV)/.dev-installed
	FAULTS_LONG=1 $(BIN)/pytest -q -m faults -o timeout=3600

# Build ./Containerfile daemonlessly (buildah, vfs storage under build/image; the base is bootstrapped
# with debootstrap unless IMAGE_BASE names one), then smoke-test it in a chroot. See docs/image.md.
image:
	sh image/build.sh $(IMAGE)

image-test: $(VENV)/.dev-installed
	$(BIN)/pytest -q -m image -o timeout=1800

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache
