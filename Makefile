# Quick start: `make demo` (set up, export the embeddings example, run its
# worker on its test job through the real runpod SDK) and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kit-installed
PYTHON ?= python3
SHELL  := bash
.SHELLFLAGS := -eu -o pipefail -c

.PHONY: setup setup-rp2 demo test test-rp2 test-fast bench clean lint js-deps image image-test

# The runpod versions CI proves the kit on (pyproject.toml accepts a range):
# .venv gets RUNPOD, .venv-rp2 gets RUNPOD_2 and runs the suites that drive
# the SDK (kit test, kit serve, kit bench, the worker loop, the panel).
RUNPOD     := 1.12.0
RUNPOD_2   := 2.0.0rc2
VENV_RP2   := .venv-rp2
RP2_TESTS  := tests/test_testing.py tests/test_serve.py tests/test_runtime.py tests/test_bench.py \
              tests/test_emulator.py tests/test_panel.py tests/test_cli.py tests/test_deps.py

setup: $(STAMP)
setup-rp2: $(VENV_RP2)/.kit-installed

# Re-run only when the dependency list changes: `make setup` is idempotent.
# torch is pinned to the CPU build that lies on this machine's disk; an
# unpinned torch would pull a CUDA build of several GB.
# $(call install_kit,VENV,RUNPOD_VERSION): pip's and setuptools' chatter goes to VENV/pip-install.log,
# shown only when an install fails.
define install_kit
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	@echo "installing the kit into $(1) (log: $(1)/pip-install.log)"
	@: > $(1)/pip-install.log
	@$(1)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >> $(1)/pip-install.log 2>&1 || { cat $(1)/pip-install.log; exit 1; }
	@$(1)/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0 >> $(1)/pip-install.log 2>&1 || { cat $(1)/pip-install.log; exit 1; }
	@$(1)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[examples,dev]' runpod==$(2) >> $(1)/pip-install.log 2>&1 || { cat $(1)/pip-install.log; exit 1; }
	touch $(1)/.kit-installed
endef

$(STAMP): pyproject.toml
	$(call install_kit,$(VENV),$(RUNPOD))

$(VENV_RP2)/.kit-installed: pyproject.toml
	$(call install_kit,$(VENV_RP2),$(RUNPOD_2))

# Export the embeddings example, then prove the exported worker: its cold start, its test
# (how similar related and unrelated sentences are) and its job through the runpod SDK.
demo: setup
	$(VENV)/bin/kit export notebooks/embeddings.ipynb -o build/embeddings
	$(VENV)/bin/kit test build/embeddings

test: setup js-deps
	$(PY) -m pytest
	$(MAKE) test-rp2

# The SDK-facing suites again, on runpod $(RUNPOD_2) (browser tests run once, in .venv).
test-rp2: setup-rp2
	$(VENV_RP2)/bin/python -m pytest -m "not browser" $(RP2_TESTS)

# The edit loop's tier: no processes, servers, browsers or images (well under a minute).
test-fast: setup
	$(PY) -m pytest -q -m "not process and not browser and not image"

# RunPod's JavaScript SDK, for tests/test_js_client.py (npm, pinned in tests/js/package.json).
JS_DIR := .cache/js
js-deps: $(JS_DIR)/node_modules/runpod-sdk/package.json

$(JS_DIR)/node_modules/runpod-sdk/package.json: tests/js/package.json
	mkdir -p $(JS_DIR) && cp tests/js/package.json $(JS_DIR)/
	npm install --prefix $(JS_DIR) --no-audit --no-fund --loglevel=error
	touch $@

bench: setup
	$(PY) bench/export_speed.py

# ruff (rules in pyproject.toml), its formatter, mypy on kit/ (strict on the contract modules),
# shellcheck and hadolint.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/shellcheck start.sh docker/bake-worker.sh docker/image.sh
	$(VENV)/bin/hadolint Dockerfile docker/base.Containerfile

# The image with podman (as root; apt-get install podman runc mmdebstrap):
# docker/image.sh builds a stand-in for runpod/pytorch once, then the images.
IMAGES := localhost/kit-base:bookworm localhost/kit-hello:latest localhost/kit-embeddings:latest

image:
	docker/image.sh build localhost/kit-hello:latest NOTEBOOK=notebooks/hello.ipynb
	docker/image.sh build localhost/kit-embeddings:latest NOTEBOOK=notebooks/embeddings.ipynb
	docker/image.sh sizes $(IMAGES)

# Builds what is missing, then runs both images in every mode (tests/test_image.py -m image)
# and way A of kit deploy on the kit image and on the stand-in base (tests/test_deploy_image.py).
image-test: setup
	$(PY) -m pytest -m image tests/test_image.py tests/test_deploy_image.py
	docker/image.sh sizes $(IMAGES)

clean:
	rm -rf build .pytest_cache
