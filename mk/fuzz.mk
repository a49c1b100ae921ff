# Fuzzing with cargo-fuzz and libFuzzer. The Makefile includes this file;
# `make fuzz` is for developers, not CI. Targets (fuzz/fuzz_targets/):
#
#   parse_query  the strict /key query parser: no panic; an accepted id is a
#                valid KeyId and survives form-urlencoding round trips.
#   key_id       KeyId::parse accepts exactly the ids it should.
#   keyring      decoding of the local KMS keyring document: no panic, one-
#                line errors that never quote a master key.
#   record       stored record decoding (decode_header, decode_keys).
#
# `make fuzz` builds every target, then runs each for FUZZ_SECONDS, starting
# from the seed corpus committed in fuzz/corpus/<target>/ plus whatever
# earlier runs found (kept, git-ignored, in fuzz/target/corpus/<target>/).
# A crash stops the run; its input is in fuzz/artifacts/<target>/, and
# `make fuzz-<target>` reruns one target. To replay one input:
#   RUSTC_BOOTSTRAP=1 target/tools/bin/cargo-fuzz run --fuzz-dir fuzz <target> <file>
#
# cargo-fuzz needs nightly rustc flags (-Zsanitizer=address, sancov); the
# toolchain here is stable only, so RUSTC_BOOTSTRAP=1 unlocks them for this
# build alone. The fuzz crate has its own [workspace] and Cargo.lock, so the
# main crate's build and `cargo test` never see it.
#
# cargo-fuzz is installed pinned and idempotently into the git-ignored
# target/tools, like the audit tools: nothing global is touched.

CARGO              ?= cargo
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_TOOLS_ROOT    := $(CURDIR)/target/tools
FUZZ_DIR           := fuzz
FUZZ_TARGETS       := parse_query key_id keyring record
# Seconds each target runs for in `make fuzz`.
FUZZ_SECONDS       ?= 60
# Extra libFuzzer flags, e.g. FUZZ_ARGS=-max_len=4096.
FUZZ_ARGS          ?=
# Extra `cargo fuzz build` flags. Many codegen units build the large AWS
# dependency tree in minutes rather than tens of minutes on two cores, at a
# small cost in executions per second.
FUZZ_BUILD_FLAGS   ?= --codegen-units 16

.PHONY: fuzz fuzz-tools fuzz-build fuzz-lock $(addprefix fuzz-,$(FUZZ_TARGETS))

fuzz-tools:
	@if [ "$$("$(FUZZ_TOOLS_ROOT)/bin/cargo-fuzz" --version 2>/dev/null | head -n 1)" != "cargo-fuzz $(CARGO_FUZZ_VERSION)" ]; then \
	  echo "installing cargo-fuzz $(CARGO_FUZZ_VERSION) into $(FUZZ_TOOLS_ROOT) (takes a few minutes)"; \
	  $(CARGO) install --quiet --locked --force --root "$(FUZZ_TOOLS_ROOT)" \
	    --version "$(CARGO_FUZZ_VERSION)" cargo-fuzz || exit 1; \
	fi

fuzz-build: export PATH := $(FUZZ_TOOLS_ROOT)/bin:$(PATH)
fuzz-build: export RUSTC_BOOTSTRAP := 1
# The fuzz crate's Cargo.lock is committed: `fetch --locked` refuses to change
# it. When the main crate's dependencies change, `make fuzz-lock` brings it
# up to date (commit the result).
fuzz-build: fuzz-tools
	@$(CARGO) fetch --quiet --locked --manifest-path $(FUZZ_DIR)/Cargo.toml || { \
	  echo "fuzz/Cargo.lock is out of date with Cargo.toml or Cargo.lock: run 'make fuzz-lock' and commit it" >&2; exit 1; }
	$(CARGO) fuzz build --fuzz-dir $(FUZZ_DIR) $(FUZZ_BUILD_FLAGS)

# Start from the main crate's Cargo.lock, so the fuzz targets build the same
# dependency versions as rkms, and add only what the fuzz crate needs.
fuzz-lock:
	cp Cargo.lock $(FUZZ_DIR)/Cargo.lock
	$(CARGO) metadata --format-version 1 --manifest-path $(FUZZ_DIR)/Cargo.toml > /dev/null

# fuzz-<target>: run one target for FUZZ_SECONDS. New inputs go to the
# git-ignored working corpus; the committed seeds are only read.
$(addprefix fuzz-,$(FUZZ_TARGETS)): export PATH := $(FUZZ_TOOLS_ROOT)/bin:$(PATH)
$(addprefix fuzz-,$(FUZZ_TARGETS)): export RUSTC_BOOTSTRAP := 1
$(addprefix fuzz-,$(FUZZ_TARGETS)): fuzz-%: fuzz-build
	@mkdir -p $(FUZZ_DIR)/target/corpus/$*
	$(CARGO) fuzz run --fuzz-dir $(FUZZ_DIR) $(FUZZ_BUILD_FLAGS) $* \
	  $(FUZZ_DIR)/target/corpus/$* $(FUZZ_DIR)/corpus/$* \
	  -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(FUZZ_ARGS)

fuzz: $(addprefix fuzz-,$(FUZZ_TARGETS))
	@echo "fuzz: $(FUZZ_TARGETS) each ran $(FUZZ_SECONDS)s with no crash"
