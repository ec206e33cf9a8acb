# Quick start: `make demo` (set up, export the embeddings example, run its
# worker on its test job through the real runpod SDK) and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kit-installed
PYTHON ?= python3
SHELL  := bash
.SHELLFLAGS := -eu -o pipefail -c

.PHONY: setup demo test test-fast bench clean lint js-deps image image-test

setup: $(STAMP)

# Re-run only when the dependency list changes: `make setup` is idempotent.
# torch is pinned to the CPU build that lies on this machine's disk; an
# unpinned torch would pull a CUDA build of several GB.
# pip's and setuptools' chatter goes to $(PIPLOG), shown only when an install fails.
PIPLOG := $(VENV)/pip-install.log
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the kit into $(VENV) (log: $(PIPLOG))"
	@: > $(PIPLOG)
	@$(PIP) --upgrade pip >> $(PIPLOG) 2>&1 || { cat $(PIPLOG); exit 1; }
	@$(PIP) torch==2.13.0 >> $(PIPLOG) 2>&1 || { cat $(PIPLOG); exit 1; }
	@$(PIP) -e '.[examples,dev]' >> $(PIPLOG) 2>&1 || { cat $(PIPLOG); exit 1; }
	touch $(STAMP)

# Export the embeddings example, then prove the exported worker: its cold start, its test
# (how similar related and unrelated sentences are) and its job through the runpod SDK.
demo: setup
	$(VENV)/bin/kit export notebooks/embeddings.ipynb -o build/embeddings
	$(VENV)/bin/kit test build/embeddings

test: setup js-deps
	$(PY) -m pytest

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

lint: setup
	$(VENV)/bin/shellcheck start.sh docker/bake-worker.sh docker/image.sh
	$(VENV)/bin/hadolint Dockerfile

# The image with podman (as root; apt-get install podman runc mmdebstrap):
# docker/image.sh builds a stand-in for runpod/pytorch once, then the images.
IMAGES := localhost/kit-base:bookworm localhost/kit-hello:latest localhost/kit-embeddings:latest

image:
	docker/image.sh build localhost/kit-hello:latest NOTEBOOK=notebooks/hello.ipynb
	docker/image.sh build localhost/kit-embeddings:latest NOTEBOOK=notebooks/embeddings.ipynb
	docker/image.sh sizes $(IMAGES)

# Builds what is missing, then runs both images in every mode (tests/test_image.py -m image).
image-test: setup
	$(PY) -m pytest -m image tests/test_image.py
	docker/image.sh sizes $(IMAGES)

clean:
	rm -rf build .pytest_cache
