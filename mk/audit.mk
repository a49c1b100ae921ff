# Supply-chain checks. The Makefile includes this file; `make audit` is run by
# CI (.ci/run) after `make test`, on a clean machine, so the tools are
# installed here, pinned and idempotently, into a repo-local root under the
# git-ignored target/ directory: nothing global is assumed or touched.
#
#   cargo deny   licences, banned crates, duplicate versions and sources,
#                configured in deny.toml.
#   cargo audit  RustSec advisories, read offline from the snapshot of the
#                advisory database that CI keeps beside the checkout.
#
# The only network access is to crates.io (cargo install, cargo fetch).
#
# Why advisories are checked by cargo-audit and not by cargo-deny: cargo-deny
# only opens an advisory database that is a git checkout under its own
# db-path (it reads the fetch time from git and takes a lock file there);
# the CI snapshot is a plain, read-only directory. cargo-audit --no-fetch
# reads such a directory directly, so `cargo deny check` runs only
# licenses, bans and sources.
#
# Versions: the newest releases at the time of writing. Both build with
# rustc 1.95 (MSRV 1.88) and both parse the snapshot's format, including its
# CVSS 4.0 scores (cargo-audit 0.22 uses rustsec 0.33). Bump both together
# when the snapshot's format moves on.

# Included anywhere in the Makefile, this file must not become the default
# goal: the goal in force before it is restored at the end.
audit_saved_default_goal := $(.DEFAULT_GOAL)

CARGO               ?= cargo
CARGO_DENY_VERSION  := 0.20.2
CARGO_AUDIT_VERSION := 0.22.2
AUDIT_TOOLS_ROOT    := $(CURDIR)/target/tools
# Relative to the repository root, where make runs the recipes.
ADVISORY_DB         ?= ../shared/advisory-db
# Each duplicate-version warning prints a dependency tree (hundreds of
# lines); `make audit DENY_FLAGS=` shows them, and the tree of a banned crate.
DENY_FLAGS          ?= --hide-inclusion-graph
# cargo-audit fails on vulnerabilities by default; unsound and unmaintained
# crates fail too: for a key broker an unsound or abandoned crate (in its
# crypto or TLS stack above all) needs a decision, not a log line. Yanked
# crates are not denied: with --no-fetch the yanked check can only use
# whatever index cache the machine happens to have.
# Exceptions: add `--ignore RUSTSEC-YYYY-NNNN` here, each with a comment
# saying why it does not affect rkms and when to drop it. None today.
AUDIT_FLAGS         := --deny unsound --deny unmaintained

.PHONY: audit audit-tools

# Installs cargo-<tool> <version> into $(AUDIT_TOOLS_ROOT) unless `cargo <tool>
# --version` already reports that version, then checks that cargo resolves the
# pinned binary (the tools' bin directory is first on PATH). Only the version,
# the last word, is compared: cargo-audit prints "cargo-audit-audit 0.22.2".
# $(1): tool name as cargo calls it (deny, audit); $(2): pinned version.
define audit_install
	@v="$$($(CARGO) $(1) --version 2>/dev/null | awk '{ print $$NF }')"; \
	if [ "$$v" != "$(2)" ]; then \
	  echo "installing cargo-$(1) $(2) into $(AUDIT_TOOLS_ROOT) (found: $${v:-none}; ~10 minutes on 2 cores)"; \
	  $(CARGO) install --quiet --locked --force --root "$(AUDIT_TOOLS_ROOT)" \
	    --version "$(2)" "cargo-$(1)" || exit 1; \
	  v="$$($(CARGO) $(1) --version 2>&1 | awk '{ print $$NF }')"; \
	  if [ "$$v" != "$(2)" ]; then \
	    echo "cargo $(1) resolves to version '$$v', not $(2) from $(AUDIT_TOOLS_ROOT)/bin" >&2; \
	    exit 1; \
	  fi; \
	fi
endef

audit-tools: export PATH := $(AUDIT_TOOLS_ROOT)/bin:$(PATH)
audit-tools:
	$(call audit_install,deny,$(CARGO_DENY_VERSION))
	$(call audit_install,audit,$(CARGO_AUDIT_VERSION))

audit: export PATH := $(AUDIT_TOOLS_ROOT)/bin:$(PATH)
audit: audit-tools
	$(CARGO) fetch --locked
	$(CARGO) deny --offline --locked --config deny.toml check --show-stats $(DENY_FLAGS) licenses bans sources
	@if [ -d "$(ADVISORY_DB)/crates" ]; then \
	  echo "$(CARGO) audit --no-fetch --db $(ADVISORY_DB) $(AUDIT_FLAGS): $$(cut -d, -f1 "$(ADVISORY_DB)/SNAPSHOT" 2>/dev/null)"; \
	  $(CARGO) audit --no-fetch --db "$(ADVISORY_DB)" $(AUDIT_FLAGS); \
	else \
	  echo "audit: advisory check skipped: no RustSec advisory-db snapshot at $(ADVISORY_DB) (CI keeps one beside the checkout; set ADVISORY_DB=path to use another)"; \
	fi

.DEFAULT_GOAL := $(audit_saved_default_goal)
