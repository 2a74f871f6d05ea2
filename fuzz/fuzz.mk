# Fuzzing with cargo-fuzz (libFuzzer); included by the Makefile. `fuzz/` is its own crate and
# workspace, so the top-level build, tests and lints never see it.
# Only stable Rust is at hand: RUSTC_BOOTSTRAP=1 lets it take the nightly-only flags
# cargo-fuzz passes (sanitizers, coverage instrumentation).

FUZZ_TARGETS       := token_verify jwks config path policy authorize wire dpop login token_answer rsa ed25519
# Per target: `make fuzz FUZZ_SECONDS=3600` for a long run; the smoke run is part of `make test`.
FUZZ_SECONDS       ?= 300
FUZZ_SMOKE_SECONDS ?= 4
CARGO_FUZZ_VERSION := 0.13.2
# ring's C is compiled with clang (installed by `make tools`), not the machine's gcc: its address
# sanitizer is LLVM's, the one rustc's instrumentation and runtime are, and its integrated
# assembler writes no temporary files. A CI run once failed there with gcc (stop 33).
CARGO_FUZZ         := cd fuzz && RUSTC_BOOTSTRAP=1 CC=clang CXX=clang++ cargo fuzz
# Debug assertions and overflow checks on: an arithmetic overflow is a crash, not a wrap.
FUZZ_BUILD_FLAGS   := --debug-assertions
FUZZ_BIN_DIR       := fuzz/target/$(shell rustc -vV | sed -n 's/^host: //p')/release

.PHONY: fuzz fuzz-smoke fuzz-tools fuzz-build

fuzz-tools:
	@cargo fuzz --version 2>/dev/null | grep -q $(CARGO_FUZZ_VERSION) || \
		cargo install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)

# Built once; the runs below call the binaries directly.
# A failure prints the disk and memory left, since a C compiler's error can be their lack.
fuzz-build: fuzz-tools tools
	$(CARGO_FUZZ) build $(FUZZ_BUILD_FLAGS) || { df -h . /tmp; free -m; exit 1; }

# Each target from the committed seeds (fuzz/seeds/<target>) plus what earlier local runs found
# (fuzz/corpus/<target>, not committed). A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/ (replay: `$(FUZZ_BIN_DIR)/<target> <file>`).
define fuzz_run
	@mkdir -p fuzz/corpus/$(1) fuzz/artifacts/$(1)
	@$(FUZZ_BIN_DIR)/$(1) fuzz/corpus/$(1) fuzz/seeds/$(1) -max_total_time=$(2) -timeout=10 \
		-rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=fuzz/artifacts/$(1)/ \
		> fuzz/artifacts/$(1)/last-run.log 2>&1 || { tail -40 fuzz/artifacts/$(1)/last-run.log; exit 1; }
	@echo "fuzz $(1): $$(sed -n 's/^stat::number_of_executed_units: *//p' fuzz/artifacts/$(1)/last-run.log) executions in $(2) s, no crash"

endef

fuzz-smoke: fuzz-build
	$(foreach target,$(FUZZ_TARGETS),$(call fuzz_run,$(target),$(FUZZ_SMOKE_SECONDS)))

fuzz: fuzz-build
	$(foreach target,$(FUZZ_TARGETS),$(call fuzz_run,$(target),$(FUZZ_SECONDS)))
