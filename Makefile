# The two commands: `make demo` (the main job) and `make test` (the test suite).
# Both do the whole set-up themselves on a fresh clone: a .venv in the repo, the pinned
# CPU build of torch first (an unpinned torch pulls several GB of CUDA packages), then
# the project with its test extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/llm-gym demo

bench: $(STAMP)
	$(PY) experiments/bench_sampling.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
