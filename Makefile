# Quick start: `make demo` (set up, export the embeddings example, run its
# worker on its test job through the real runpod SDK) and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kit-installed
PYTHON ?= python3
SHELL  := bash
.SHELLFLAGS := -eu -o pipefail -c

.PHONY: setup demo test bench clean lint image image-test

setup: $(STAMP)

# Re-run only when the dependency list changes: `make setup` is idempotent.
# torch is pinned to the CPU build that lies on this machine's disk; an
# unpinned torch would pull a CUDA build of several GB.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[examples,dev]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/kit export notebooks/embeddings.ipynb -o build/embeddings
	@echo "--- the exported worker, through the runpod SDK's local test mode (long lines cut at 300 characters):"
	cd build/embeddings && ../../$(PY) -u handler.py --rp_log_level INFO 2>&1 | cut -c -300

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/export_speed.py

lint: setup
	$(VENV)/bin/shellcheck start.sh docker/bake-worker.sh docker/image.sh
	$(VENV)/bin/hadolint Dockerfile docker/base.Containerfile

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
