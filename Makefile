# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test unit bench reliability install clean

$(STAMP): pyproject.toml
	@echo "installing into $(VENV) ..." >&2
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip >&2
	@$(PY) -m pip install --quiet -e '.[dev,local]' >&2
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cxledger demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

unit: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

# make bench [BENCH_EVENTS=N] [BENCH_ARGS='--quick --profile DIR ...']: one JSON document on
# stdout, also written to benchmarks/results/<UTC timestamp>.json; progress on stderr.
bench: $(STAMP)
	@$(PY) -m benchmarks $(if $(BENCH_EVENTS),--events $(BENCH_EVENTS)) $(BENCH_ARGS) \
		--command "make bench$(if $(BENCH_EVENTS), BENCH_EVENTS=$(BENCH_EVENTS))$(if $(BENCH_ARGS), BENCH_ARGS='$(BENCH_ARGS)')"

# make reliability [RELIABILITY_ARGS='--quick']: faults, hostile input, chaos (kills while
# traffic flows) and a 10-minute soak at 5,000 events/s; one JSON summary on stdout.
reliability: $(STAMP)
	@$(PY) -m tests.reliability $(RELIABILITY_ARGS)

clean:
	rm -rf $(VENV) .cxledger
