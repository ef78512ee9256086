# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= $(shell nproc)
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test test-slow lint dryrun clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-test.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	@if [ -n "$$(ls -A .snakemake/locks 2>/dev/null)" ] && ! pgrep -f "snakemake.*--cores" >/dev/null; then \
	  echo "make demo: .snakemake/locks holds a lock but no snakemake is running: a killed run left it stale."; \
	  echo "make demo: run '$(BIN)/snakemake --unlock' (outputs of killed jobs are rerun), then 'make demo' again."; \
	  exit 1; fi
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --cores $(CORES) --report results/demo/report.html
	@echo
	@echo "Metrics:     results/demo/eval/summary.csv (per fold: results/demo/eval/<task>/<model>/<encoder>/metrics.csv)"
	@echo "QC table:    results/demo/qc.tsv"
	@echo "HTML report: results/demo/report.html"
	@cat results/demo/eval/summary.csv

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The real-SLURM run, the kill -9 recovery runs and the Visium expression workflow (~25 min on 2 cores); .ci/run runs them after `make test`.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakemake --lint --cores 1 > .lint.log 2>&1 || { cat .lint.log; exit 1; }
	@grep -q "Congratulations" .lint.log || { cat .lint.log; echo "snakemake --lint has findings"; exit 1; }

dryrun: $(STAMP)
	$(BIN)/snakemake -n --quiet rules

clean:
	rm -rf results .snakemake
