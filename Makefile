# weaktok: `make test` runs the test suite, `make demo` the end-to-end job. Both set everything up first.
PY       ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.setup-stamp
APT_PKGS := sonic-pi-samples prometheus ninja-build chromium chromium-driver
PYTEST_ARGS ?=

.PHONY: setup apt lint format test test-fast test-explore bench demo clean

setup: $(STAMP) apt

# Re-install only when the dependency list changes (idempotent and fast otherwise).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'  # every optional group the tests use (pyproject.toml)
	@touch $(STAMP)

# Debian packages: real CC0 audio (sonic-pi-samples), a real Prometheus server for the tests, ninja for
# DeepSpeed's JIT ops, headless Chromium + chromedriver for the listening page's test. Installed only when
# missing, and only where we are root with apt.
apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "warning: Debian packages missing ($$missing) and not root with apt; install them yourself"; \
	fi

# Two pytest calls: the fast tests first, stopping at the first failure (-x) so a broken unit shows in minutes;
# then the slow ones (real DeepSpeed ranks, Ray, Prometheus, the demo). tests/summary.py prints the combined
# "N passed, N failed" line from both JUnit files. Hypothesis runs its derandomized `ci` profile (tests/conftest.py).
# ruff: formatting and lint are checked first; a failure fails `make test` (and CI). `make format` rewrites.
lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: setup lint
	@rm -f .pytest-fast.xml .pytest-slow.xml
	$(BIN)/python -m pytest -ra -x -m "not slow" --junitxml=.pytest-fast.xml $(PYTEST_ARGS)
	$(BIN)/python -m pytest -ra -m slow --junitxml=.pytest-slow.xml $(PYTEST_ARGS)
	@$(BIN)/python tests/summary.py .pytest-fast.xml .pytest-slow.xml

test-fast: setup
	$(BIN)/python -m pytest -ra -m "not slow" $(PYTEST_ARGS)

# Random exploration for developers (not CI): fresh hypothesis draws, 5x the examples, a local example database.
test-explore: setup
	HYPOTHESIS_PROFILE=explore $(BIN)/python -m pytest -ra tests/properties/test_config_properties.py tests/properties/test_audio_fuzz.py \
		$(PYTEST_ARGS)

bench: setup
	$(BIN)/weaktok bench

# corpus -> shards -> 2-rank DeepSpeed training (CPU without a GPU) -> Table 1 -> generation -> runs/demo/report.md
# and the listening page runs/demo/index.html, whose path is the last line printed
demo: setup
	$(BIN)/weaktok demo

clean:
	rm -rf $(VENV) bench_results .pytest_cache
