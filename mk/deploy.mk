# Deployment artefacts: the container image, the Helm chart and the Terraform
# module, checked offline by `make deploy-check` (part of `make test`): no
# Docker engine, cluster or cloud account is needed. deploy/check.py runs the
# checks; the tools come from PyPI, pinned with hashes, into venvs under
# target/ that are rebuilt only when their requirements change.

DEPLOY_PYTHON       ?= $(or $(PYTHON),python3)
DEPLOY_VENV         := target/venv-deploy
DEPLOY_REQS         := deploy/requirements.txt
DEPLOY_STAMP        := $(DEPLOY_VENV)/.installed
CHECKOV_VENV        := target/venv-checkov
CHECKOV_REQS        := deploy/requirements-checkov.txt
CHECKOV_STAMP       := $(CHECKOV_VENV)/.installed
IMAGE               ?= rkms:dev

# Included near the top of the Makefile: keep its first target the default.
_deploy_default_goal := $(.DEFAULT_GOAL)

.PHONY: deploy-check deploy-venv image

$(DEPLOY_STAMP): $(DEPLOY_REQS)
	rm -rf $(DEPLOY_VENV)
	$(DEPLOY_PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install --quiet --no-deps --require-hashes -r $(DEPLOY_REQS)
	touch $@

# checkov has a venv of its own: its HCL parser installs a module named
# `hcl2`, as python-hcl2 does.
$(CHECKOV_STAMP): $(CHECKOV_REQS)
	rm -rf $(CHECKOV_VENV)
	$(DEPLOY_PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --no-deps --require-hashes -r $(CHECKOV_REQS)
	touch $@

deploy-venv: $(DEPLOY_STAMP) $(CHECKOV_STAMP)

# The binary checks the config the chart renders, so it is built first
# (cargo does nothing when it is up to date).
deploy-check: deploy-venv
	$(CARGO) build --locked --bin rkms
	$(DEPLOY_VENV)/bin/python deploy/check.py \
	  --rkms target/debug/rkms --checkov $(CHECKOV_VENV)/bin/checkov

# Needs a Docker engine; `make test` does not (it checks the Dockerfile
# with hadolint and checkov instead).
image:
	docker build -t $(IMAGE) .

.DEFAULT_GOAL := $(_deploy_default_goal)
