# Quick start: `make demo` (set up, export the embeddings example, run its
# worker on its test job through the real runpod SDK) and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kit-installed
PYTHON ?= python3
SHELL  := bash
.SHELLFLAGS := -eu -o pipefail -c

.PHONY: setup setup-rp2 demo test test-rp2 test-py test-fast bench clean lint js-deps image image-test dist

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
KIT_EXTRAS := '.[examples,dev]'
define install_kit
	@test -x $(1)/bin/python || { echo "==> creating the venv $(1) ($$($(PYTHON) --version))"; $(PYTHON) -m venv $(1); }
	@: > $(1)/pip-install.log
	@$(1)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >> $(1)/pip-install.log 2>&1 || { cat $(1)/pip-install.log; exit 1; }
	@echo "==> installing torch 2.13.0 (CPU build; log: $(1)/pip-install.log)"
	@$(call costed,$(1),$(1)/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0)
	@echo "==> installing the kit, runpod $(2) and the examples' needs (transformers, the embeddings model)"
	@$(call costed,$(1),$(1)/bin/python -m pip install --quiet --disable-pip-version-check -e $(KIT_EXTRAS) runpod==$(2))
	@touch $(1)/.kit-installed
	@echo "==> $(1) is ready: $$(du -sh $(1) | cut -f1) on disk"
endef

# $(call costed,VENV,COMMAND): run an install step, its chatter into VENV/pip-install.log
# (shown only when it fails), then say what it cost: time and disk.
costed = before=$$(du -sm $(1) | cut -f1); start=$$SECONDS; $(2) >> $(1)/pip-install.log 2>&1 || { cat $(1)/pip-install.log; exit 1; }; echo "    done in $$((SECONDS - start)) s, +$$(( $$(du -sm $(1) | cut -f1) - before )) MB on disk"

$(STAMP): pyproject.toml
	$(call install_kit,$(VENV),$(RUNPOD))

$(VENV_RP2)/.kit-installed: pyproject.toml
	$(call install_kit,$(VENV_RP2),$(RUNPOD_2))

# Export the embeddings example, then prove the exported worker: its cold start, its test
# (how similar related and unrelated sentences are) and its job through the runpod SDK.
demo: setup
	@echo "==> exporting notebooks/embeddings.ipynb to build/embeddings"
	$(VENV)/bin/kit export notebooks/embeddings.ipynb -o build/embeddings
	@echo "==> testing the worker: its cold start, its test cells, its job through the runpod SDK"
	$(VENV)/bin/kit test build/embeddings

test: setup js-deps
	$(PY) -m pytest
	$(MAKE) test-rp2
	$(MAKE) test-py PY_VERSIONS="$(PY_OTHER)"

# The SDK-facing suites again, on runpod $(RUNPOD_2) (browser tests run once, in .venv).
test-rp2: setup-rp2
	$(VENV_RP2)/bin/python -m pytest -m "not browser" $(RP2_TESTS)

# The torch-free suites (export, deps, kit new, kit test, serve, emulator, the CLI, watch/reload,
# the worker loop and batching) on every Python 3.10-3.13 this machine has (from pyenv, else PATH),
# each in its own venv .venv-py3.X (the kit, runpod $(RUNPOD) and the test extra; no torch).
# Left out on every version: PY_NEEDS_EXAMPLES (they import torch, transformers or scipy) and
# PY_SLOW (load tests, benchmarks, the longest timeout and kill/restart scenarios), and every
# test parametrized on the SDK's stock loop ([stock]: the SDK's own code; the kit's fast loop is
# what changes). All of these run in .venv, on Python 3.11 with torch, in `make test`'s main run.
PY_VERSIONS := 3.10 3.11 3.12 3.13
# `make test` runs test-py on the versions other than .venv's 3.11, whose main run has these suites and more.
PY_OTHER    := 3.10 3.12 3.13
PY_TESTS    := tests/test_export.py tests/test_deps.py tests/test_new.py tests/test_testing.py \
               tests/test_runtime.py tests/test_batching.py tests/test_serve.py tests/test_emulator.py \
               tests/test_cli.py tests/test_watch.py
PY_NEEDS_EXAMPLES := \
    tests/test_export.py::test_examples_export_and_pass_their_own_test_job \
    tests/test_export.py::test_sentiment_example_exports_with_its_hub_default \
    tests/test_deps.py::test_imports_map_to_installed_distributions_pinned \
    tests/test_deps.py::test_pip_lines_are_kept_as_written \
    tests/test_deps.py::test_embeddings_requirements_install_into_a_fresh_venv_and_run \
    tests/test_testing.py::test_embeddings_example_passes \
    tests/test_testing.py::test_sentiment_example \
    tests/test_testing.py::test_the_batched_embeddings_example_passes \
    "tests/test_testing.py::test_ported_worker_exports_passes_and_matches_the_original[sentence-transformers]"
PY_SLOW := \
    tests/test_export.py::test_a_200000_line_cell_exports_in_memory_proportional_to_the_notebook \
    tests/test_export.py::test_a_read_only_previous_export_fails_cleanly \
    tests/test_cli.py::test_export_speed_benchmark_runs \
    tests/test_testing.py::test_ported_worker_exports_passes_and_matches_the_original \
    tests/test_serve.py::test_sighup_shuts_kit_serve_down_like_sigterm \
    tests/test_serve.py::test_a_load_of_500_jobs_over_3_workers_loses_and_duplicates_nothing \
    tests/test_serve.py::test_the_kill_test_loses_and_duplicates_nothing \
    tests/test_serve.py::test_a_worker_that_cannot_start_is_a_one_line_error \
    tests/test_watch.py::test_a_concurrency_modifier_change_reloads_warm \
    tests/test_batching.py::test_sigterm_lets_the_running_batch_finish_and_post_its_results \
    tests/test_batching.py::test_a_job_cancelled_while_its_batch_runs_ends_cancelled_and_its_batch_mates_complete \
    tests/test_runtime.py::test_a_jobscaler_without_the_attributes_the_fast_loop_uses_runs_the_stock_loop \
    tests/test_new.py::test_kit_new_bad_kind_and_missing_model_are_one_line_errors \
    tests/test_new.py::test_kit_new_bad_names_get_one_line_and_exit_2 \
    tests/test_emulator.py::test_a_result_the_sdk_cannot_serialise_fails_the_job_naming_the_cause \
    tests/test_emulator.py::test_execution_timeout_ends_timed_out_stops_the_task_and_the_worker_keeps_serving \
    tests/test_emulator.py::test_a_frozen_worker_fails_its_job_and_is_not_counted_running \
    tests/test_serve.py::test_execution_timeout_sets_the_endpoint_default \
    tests/test_testing.py::test_timeout_kills_the_worker_and_everything_it_started \
    tests/test_watch.py::test_jobs_in_flight_during_a_reload_are_neither_lost_nor_duplicated

# $(call find_python,3.X): pyenv's newest 3.X, else python3.X on PATH, else nothing.
find_python = $$(ls -d "$$(pyenv root 2>/dev/null)"/versions/$(1).*/bin/python$(1) 2>/dev/null | sort -V | tail -n 1 || true); \
	    [[ -n $$py ]] || py=$$(command -v python$(1) || true)

test-py:
	@start=$$SECONDS; failed=(); for v in $(PY_VERSIONS); do \
	    py=$(call find_python,$$v); \
	    if [[ -z $$py ]]; then echo "==> skipping Python $$v: not installed (pyenv install $$v)"; continue; fi; \
	    $(MAKE) --no-print-directory -s .venv-py$$v/.kit-installed PY_BASE="$$py" || { failed+=("$$v (its venv)"); continue; }; \
	    echo "==> Python $$v: $(PY_TESTS)"; \
	    deselect=(); for t in $(PY_NEEDS_EXAMPLES) $(PY_SLOW); do deselect+=(--deselect "$$t"); done; \
	    .venv-py$$v/bin/python -m pytest -q -p no:cacheprovider -m "not browser and not image" -k "not stock" "$${deselect[@]}" $(PY_TESTS) || failed+=("$$v"); \
	done; echo "==> make test-py took $$((SECONDS - start)) s"; \
	if (( $${#failed[@]} )); then echo "==> failed on Python $${failed[*]}"; exit 1; fi

.venv-py%/.kit-installed: pyproject.toml
	@test -n "$(PY_BASE)" || { echo "make test-py creates .venv-py$*"; exit 1; }
	@test -x .venv-py$*/bin/python || { echo "==> creating .venv-py$* with $(PY_BASE)"; $(PY_BASE) -m venv .venv-py$*; }
	@echo "==> installing the kit, runpod $(RUNPOD) and the test extra into .venv-py$* (no torch)"
	@: > .venv-py$*/pip-install.log
	@$(call costed,.venv-py$*,.venv-py$*/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' runpod==$(RUNPOD))
	@touch $@

# The wheel and sdist a stock pod installs (`pip install runpod_kit-*.whl`), in dist/.
dist: setup
	rm -rf dist
	@mkdir -p build
	$(PY) -m build --outdir dist . > build/dist.log 2>&1 || { cat build/dist.log; exit 1; }
	@ls -l dist

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
	rm -rf build dist .pytest_cache
