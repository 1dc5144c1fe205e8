# Two entry points for a newcomer: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# `reference`: captum, zennit, pytorch-grad-cam, torchcam, timm, which the tests compare against.
EXTRAS ?= data,test,reference,serve

.PHONY: demo test bench bench-quick lint typecheck venv clean system-deps

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests need: Fashion-MNIST (real images) and Chromium for the browser test.
system-deps:
	@if ! dpkg -s dataset-fashion-mnist chromium chromium-driver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist chromium chromium-driver >/dev/null; \
	  else echo "note: run as root to install dataset-fashion-mnist chromium chromium-driver; dependent tests will skip"; fi; \
	fi

demo: $(STAMP)
	$(VENV)/bin/cnnlens report -o demo/report.html

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) system-deps lint typecheck
	CNNLENS_REQUIRE_REFERENCES=1 $(PY) -m pytest -n 2 tests

# One process, interleaved rounds: every method against its floor and the peers (captum,
# zennit, pytorch-grad-cam, torchcam), ratios, peak memory, CPU and wall time.
bench: EXTRAS = data,test,reference,serve,bench
bench: $(STAMP)
	$(PY) benchmarks/run.py --out docs/benchmarks.md
	$(PY) benchmarks/pointing_game.py --out docs/pointing_game.md
	nice -n 19 $(PY) benchmarks/trust.py --out docs/trust.md

# The same table on a subset (EfficientNet-Lite0 at 128 px, 2 rounds): under 5 minutes.
# Written to out/ (not tracked): docs/benchmarks.md keeps the full run.
bench-quick: EXTRAS = data,test,reference,serve,bench
bench-quick: $(STAMP)
	$(PY) benchmarks/run.py --quick --out out/benchmarks-quick.md

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
