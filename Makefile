# slaprobe: every target installs what it needs first, so each works on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Two workers: the slow tests mostly wait (outages, backoffs, real servers), so they overlap well.
PYTEST_ARGS ?= --durations=15 -n 2 --dist worksteal

.PHONY: install system-deps demo test lint proto proto-check bench bench-ingest bench-install bench-query bench-probes bench-evidence clean

$(STAMP): pyproject.toml scripts/build-deps.sh speedups/pyproject.toml speedups/setup.py speedups/can_build.py $(wildcard speedups/src/*.c speedups/slaprobe_speedups/*)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# The collector's compiled hot paths (speedups/): built where a C compiler and Python's
	@# headers are (scripts/build-deps.sh installs them on Debian as root: gcc, python3.X-dev);
	@# without them slaprobe runs the same paths in Python.
	@bash scripts/build-deps.sh $(BIN)/python
	@if $(BIN)/python speedups/can_build.py; then \
	  $(BIN)/python -m pip install --quiet --no-build-isolation --force-reinstall --no-deps ./speedups; \
	else \
	  echo "slaprobe-speedups not built (no C compiler or no Python.h): the collector runs its Python paths, slower"; \
	fi
	touch $(STAMP)

## install: create .venv and install slaprobe with its development tools
install: $(STAMP)

## system-deps: Debian packages the test suite runs as real peers (installed only when missing)
system-deps:
	@bash scripts/system-deps.sh

## demo: a local collector on SQLite + a local agent probing real local targets, then the compliance table
demo: install
	$(BIN)/python examples/demo.py

## test: install everything and run the whole suite (slow end-to-end and fault tests included)
test: install system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## lint: ruff and mypy, both must be clean
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

## proto: regenerate the gRPC/protobuf code from protos/*.proto
proto: install
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. protos/slaprobe_v1.proto

## bench: every benchmark; figures are appended to bench/RESULTS.md
bench: bench-ingest bench-install bench-query bench-agent bench-probes bench-evidence

bench-ingest: install
	$(BIN)/python bench/ingest.py --markdown

## bench-install: `slaprobe agent install` on 10 real sshd hosts at once (runs as root; needs openssh-server)
bench-install: install system-deps
	$(BIN)/python bench/install.py --markdown

## bench-query: a month's compliance report over 1,000 checks (43 M results), from rollups and raw rows (~8 GB in bench/out)
bench-query: install
	$(BIN)/python bench/query.py --markdown

## bench-agent: one agent, 1,000 http checks at 10 s (100 probes/s), then a 1,000,000-result backlog drain
bench-agent: install
	$(BIN)/python bench/agent.py --markdown

## bench-evidence: export and verify a month's evidence bundle of one site, 50 checks at 60 s (2.2 M sealed results; database cached in bench/out)
bench-evidence: install
	$(BIN)/python bench/evidence.py --markdown

## bench-probes: our HTTP, HTTPS, TCP, DNS and ICMP probes against Prometheus blackbox_exporter, same local targets (as root; installs blackbox_exporter, dnsmasq, curl)
BENCH_PROBES_DEBS := prometheus-blackbox-exporter dnsmasq curl
bench-probes: install
	@missing=$$(for p in $(BENCH_PROBES_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	$(BIN)/python bench/probes.py --markdown

clean:
	rm -rf $(VENV) build *.egg-info speedups/build .pytest_cache .mypy_cache .ruff_cache demo-data
