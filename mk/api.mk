# The HTTP contract: openapi.yaml, checked against the running binary by
# Schemathesis (`make api-check`). tests/schemathesis/run.py starts
# target/debug/rkms in token mode on a free loopback port with a temporary
# data directory, waits for /readyz, runs `schemathesis run openapi.yaml`
# with a bounded number of examples, prints Schemathesis's summary line and
# always stops the server. It fails on any 5xx and on any response whose
# status, headers, content type or body the document does not describe.
# (tests/api/openapi.rs, part of `cargo test`, keeps the document and the
# routes, error types and statuses in step without Python.)
#
# Schemathesis comes from PyPI, pinned with hashes (tests/schemathesis/
# requirements.txt, compiled from requirements.in with
# `pip-compile --generate-hashes` for CPython 3.11), into a venv under the
# git-ignored target/ that is rebuilt only when the requirements change.

API_PYTHON          ?= $(or $(PYTHON),python3)
CARGO               ?= cargo
API_VENV            := target/venv-schemathesis
API_REQS            := tests/schemathesis/requirements.txt
API_STAMP           := $(API_VENV)/.installed
# Examples per operation and phase: about 20 s on two cores.
API_CHECK_EXAMPLES  ?= 100
# Fixed so that a CI failure replays; API_CHECK_SEED=random for a new one.
API_CHECK_SEED      ?= 20261126

# Included near the top of the Makefile: keep its first target the default.
_api_default_goal := $(.DEFAULT_GOAL)

.PHONY: api-check api-venv

$(API_STAMP): $(API_REQS)
	rm -rf $(API_VENV)
	$(API_PYTHON) -m venv $(API_VENV)
	$(API_VENV)/bin/pip install --quiet --no-deps --require-hashes -r $(API_REQS)
	touch $@

api-venv: $(API_STAMP)

api-check: api-venv
	$(CARGO) build --locked --bin rkms
	$(API_VENV)/bin/python tests/schemathesis/run.py \
	  --rkms target/debug/rkms \
	  --schemathesis $(API_VENV)/bin/schemathesis \
	  --spec openapi.yaml \
	  --max-examples $(API_CHECK_EXAMPLES) \
	  --seed $(API_CHECK_SEED)

.DEFAULT_GOAL := $(_api_default_goal)
