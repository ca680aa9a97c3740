# Two commands do all the set-up on a fresh machine (Python 3.11 and the package registries):
#   make figures   build .venv if missing, execute every notebook (default preset) -> figures/, REPORT.md,
#                  and the executed notebooks as a static site in build/site/
#   make test      build .venv if missing, lint (ruff), run the unit tests and every notebook in the smoke preset
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
# nbval runs every notebook but 03: tests/test_browser.py runs 03's every cell from JupyterLab's UI (and
# tests/test_notebooks.py under papermill), so nbval would be its third smoke run (about 45 s)
NBVAL_NOTEBOOKS := $(filter-out notebooks/03_firm.ipynb,$(NOTEBOOKS))
PRESET ?= cpu
# The Flower extra (flwr + Ray) is optional for users; the tests exercise the adapter, so `make env`
# installs it. `make env EXTRAS=` gives the base install the notebooks need.
EXTRAS ?= flower
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: env browser test figures report lab bench base-model lock clean

env: $(STAMP)

# torch is installed first and alone: otherwise a dependency's unpinned `torch` resolves the CUDA
# build (several GB). Packages that ship data we read are installed without their dependencies.
$(STAMP): pyproject.toml requirements-lock.txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements-lock.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c requirements-lock.txt -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

# Debian's Chromium and ChromeDriver for tests/test_browser.py (JupyterLab in a real browser). Where apt is
# unavailable this says so and the test skips with that reason.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif ! command -v apt-get >/dev/null; then echo "make browser: no apt-get; the browser test will skip"; \
	else SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	  $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null; } || \
	  echo "make browser: apt could not install chromium; the browser test will say why"; fi

test: env browser
	$(BIN)/ruff check .
	FEDALIGN_PRESET=smoke FEDALIGN_FIGURES_DIR=$$(mktemp -d) \
	  $(BIN)/python -m pytest -q tests $(NBVAL_NOTEBOOKS) --nbval-lax --durations=10

figures: env
	mkdir -p build/notebooks
	cd notebooks && for nb in $(notdir $(NOTEBOOKS)); do \
	  ../$(BIN)/papermill $$nb ../build/notebooks/$$nb -p preset $(PRESET) --cwd . || exit 1; done
	$(MAKE) report
	$(BIN)/python -m fedalign_lite.experiments.site --notebooks build/notebooks --out build/site

# REPORT.md and the README's tally, from figures/<paper>/claims.json
report: env
	$(BIN)/python -m fedalign_lite.experiments.report --figures figures --out REPORT.md --readme README.md

lab: env
	$(BIN)/jupyter lab notebooks/

bench: env
	$(BIN)/python benchmarks/dpo_step.py
	$(BIN)/python benchmarks/grpo_step.py
	$(BIN)/python benchmarks/paper_steps.py
	$(BIN)/python benchmarks/fed_round.py

base-model: env
	$(BIN)/python -m fedalign_lite.recipes.base_model

lock: env
	{ echo "# Full resolved set (pip freeze on Python 3.11, CPU, with the [flower] extra), used as constraints by"; \
	  echo "# \`make env\` so that every machine gets the same transitive versions. Regenerate with: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^fedalign'; } > requirements-lock.txt

clean:
	rm -rf build runs
