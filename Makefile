# rkms developer commands. `make test` is what CI runs (.ci/run) on a clean
# checkout, so every tool it needs is installed here, idempotently.

CARGO       ?= cargo
PYTHON      ?= python3
VENV        := .venv-moto
MOTO_REQS   := tests/moto/requirements.txt
MOTO_STAMP  := $(VENV)/.installed

export AWS_EC2_METADATA_DISABLED := true
export RKMS_MOTO_PYTHON := $(CURDIR)/$(VENV)/bin/python

include mk/deploy.mk
include mk/audit.mk
include mk/api.mk
include mk/fuzz.mk

# `make` alone runs the server, whatever the included files define first.
.DEFAULT_GOAL := run

.PHONY: run test lint fmt unit bench bench-instructions bench-tools moto-venv tools clean

run:
	$(CARGO) run --release --locked

# The moto venv is rebuilt only when the pinned, hash-locked requirements change.
$(MOTO_STAMP): $(MOTO_REQS)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --no-deps --require-hashes -r $(MOTO_REQS)
	touch $@

moto-venv: $(MOTO_STAMP)

# Debian tools used by tests and benchmarks, installed only when missing:
# $(call need,COMMAND,PACKAGE). promtool checks /metrics output; wrk drives
# the benchmark; valgrind counts its instructions per request.
define need
@command -v $(1) >/dev/null 2>&1 || { \
  echo "installing $(1) (Debian package $(2))"; \
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) >/dev/null) \
  || (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) >/dev/null); }
endef

tools:
	$(call need,promtool,prometheus)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

test: moto-venv tools lint deploy-check api-check
	$(CARGO) test --locked

bench: moto-venv bench-tools
	$(CARGO) build --release --locked --bin rkms
	$(CARGO) bench --locked --bench load

# Only the instructions per warm and per cold read (callgrind), in about two minutes.
bench-instructions: bench-tools
	RKMS_BENCH_INSTRUCTIONS_ONLY=1 $(CARGO) bench --locked --bench load

bench-tools:
	$(call need,wrk,wrk)
	$(call need,valgrind,valgrind)

clean:
	rm -rf $(VENV) target data
