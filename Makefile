# The project's commands. `make test` is the one test command: .ci/run calls it.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo

.PHONY: test deps lint unit deps-check fuzz fuzz-smoke sdk e2e crds fmt images images-test

## test: everything CI runs: dependencies, lints, unit and integration tests,
## a fuzzing smoke pass, the SDK suite, and e2e.
test: deps lint unit fuzz-smoke sdk e2e
# One full pass builds each crate once: incremental state would only cost
# disk (about 4 GB of a clean clone's 8), and a full disk fails the build.
test: export CARGO_INCREMENTAL := 0

## deps: install what the tests need (apt and pip packages); idempotent.
deps:
	scripts/install-test-deps.sh

## lint: formatting and clippy with warnings as errors.
lint:
	$(CARGO) fmt --all -- --check
	cd fuzz && $(CARGO) fmt -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## unit: every crate's unit and integration tests (the e2e crate runs in `e2e`),
## with a throwaway PostgreSQL for the recorder's backend suite. The binaries
## are built first: tests start them and never run cargo themselves.
unit: deps-check
	scripts/with-postgres.sh $(CARGO) test --workspace --locked --exclude tollgate-e2e

## deps-check: the gateway's dependency tree and its binary from a workspace
## build hold nothing of the control plane (kube, schemars, databases).
deps-check:
	$(CARGO) build --workspace --bins --locked
	scripts/check-gateway-deps.sh target/debug/tollgate-gateway

## fuzz: every libFuzzer target in fuzz/ for FUZZ_SECONDS each (default 60),
## after its regression inputs; prints executions and coverage (docs/fuzzing.md).
FUZZ_SECONDS ?= 60
fuzz:
	scripts/fuzz.sh --seconds $(FUZZ_SECONDS)

## fuzz-smoke: the same, 10 s per target from a fixed seed and only the
## checked-in seeds (CI).
fuzz-smoke:
	scripts/fuzz.sh --seconds 10 --seed 1 --fresh-corpus

## sdk: the official openai and anthropic Python SDKs against the gateway.
sdk:
	scripts/sdk-tests.sh

## e2e: start a real kube-apiserver and etcd (and PostgreSQL), run the suites, tear down.
e2e:
	e2e/run.sh

## crds: regenerate the CRD YAML and the CRD reference docs from crds/src.
crds:
	$(CARGO) run -q -p tollgate-crds --bin crdgen

## fmt: format the code.
fmt:
	$(CARGO) fmt --all

## images: the operator, recorder and gateway images as target/images/NAME.tar
## (docker-archive, for `ctr images import`), no container engine needed.
## PROFILE=debug uses target/debug; binaries lose debug info (STRIP=none keeps
## it); E2E_IMAGES=1 adds pause and app.
PROFILE ?= release
images:
	PROFILE=$(PROFILE) CARGO="$(CARGO)" images/build.sh

## images-test: the image archives agree with the Dockerfile and the chart
## (no .pytest_cache left in the tree).
images-test:
	python3 -m pytest -q -p no:cacheprovider images/test_images.py
