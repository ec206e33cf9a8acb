# Quick start: `make demo` (set up, export the embeddings example, run its
# worker on its test job through the real runpod SDK) and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kit-installed
PYTHON ?= python3
SHELL  := bash
.SHELLFLAGS := -eu -o pipefail -c

.PHONY: setup demo test bench clean lint

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

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/export_speed.py

lint: setup
	$(VENV)/bin/shellcheck start.sh docker/bake-worker.sh
	$(VENV)/bin/hadolint Dockerfile

clean:
	rm -rf build .pytest_cache
