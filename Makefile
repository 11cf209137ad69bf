# The two set-up-and-run commands of the README:
#   make demo   the whole pipeline on the bundled DIGITS data (CPU, about eight minutes on two cores)
#   make test   the test suite (with the import contracts over the whole tree)
# Both create .venv and install what they need on first use. The quick loop while developing:
#   make check  the import contracts, ruff, and the tests but the slow ones (cluster, kill-and-rerun, README)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO := --preset demo

.PHONY: demo test check lint bench

$(VENV)/.runtime: envs_requirements/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r envs_requirements/requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime envs_requirements/requirements-dev.txt
	$(PY) -m pip install --quiet -r envs_requirements/requirements-dev.txt
	touch $@

demo: $(VENV)/.runtime
	$(PY) main_train_model.py $(DEMO)
	$(PY) main_train_DeepFailGuard.py $(DEMO)
	$(PY) main_cache_test_distances.py $(DEMO)
	$(PY) main_test_DeepFailGuard.py $(DEMO) --quiet
	$(PY) main_test_DeepFailGuard_from_cached.py $(DEMO)

lint: $(VENV)/.dev
	$(PY) scripts/lint_imports.py
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadgroup tests

check: lint
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadgroup -m "not slow" tests

bench: $(VENV)/.dev
	$(PY) benchmarks/bench_attacker.py
	$(PY) benchmarks/bench_evaluation.py
