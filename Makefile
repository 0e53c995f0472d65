# The two commands: `make demo` (the main job) and `make test` (the test suite).
# Both do the whole set-up themselves on a fresh clone: a .venv in the repo, the pinned
# CPU build of torch first (an unpinned torch pulls several GB of CUDA packages), then
# the project with its test extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup test demo bench clean browser

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

test: $(STAMP) browser
	$(PY) -m pytest -q

# The web labelling page is tested in a real browser: Debian's chromium and chromedriver
# (Selenium drives them by path and downloads nothing). Installed here when missing.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  echo "installing chromium and chromium-driver (apt) for the browser tests"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); log=$$(mktemp); \
	  if ! { $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium chromium-driver; } >$$log 2>&1 \
	     || [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	    cat $$log >&2; rm -f $$log; \
	    echo "error: could not install chromium and chromium-driver, which tests/feedback/test_web.py needs; install them with apt-get and rerun make test" >&2; \
	    exit 1; \
	  fi; \
	  rm -f $$log; \
	fi

demo: $(STAMP)
	$(VENV)/bin/llm-gym demo

# The benchmark set at the built-in size with small settings and one summary table (experiments/bench_all.py);
# about 20 s on 2 cores once the built-in model is cached (its first build takes about 2.5 minutes more).
bench: $(STAMP)
	$(PY) experiments/bench_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
