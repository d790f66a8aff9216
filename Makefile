# plexsphere-signer. `make run` and `make test` are the two commands a
# newcomer needs; see README.md.
SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/bin
export TESTCONTAINERS_RYUK_DISABLED := true

.PHONY: all build build-fips run test test-fips deps unit generate-check proto lint bench bench-scale fmt clean spire witness cosign fuzz images images-fips kind-node e2e-kind
# Tests and benchmarks include the PKCS#11 provider (cgo); the default build
# and the scratch images do not (see docs/hsm.md).
TAGS  := pkcs11

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/... ./examples/core

## FIPS140: the FIPS 140-3 Go Cryptographic Module of the FIPS build (GOFIPS140). v1.0.0 is the one
## /usr/local/go/lib/fips140/certified.txt names (v1.0.0-c2097c7c, the GOFIPS140=certified alias); v1.26.0 is only
## "in process" (inprocess.txt). See README, FIPS 140-3 build.
FIPS140 ?= v1.0.0

## build-fips: signer, sidecar and signerctl against that module into bin/fips/ (static, like the
## images); each must report fips140=on and the module in --version, or the target fails.
build-fips:
	CGO_ENABLED=0 GOFIPS140=$(FIPS140) $(GO) build -o $(BIN)/fips/ ./cmd/plexsphere-signer ./cmd/plexsphere-sidecar ./cmd/signerctl
	@for b in plexsphere-signer plexsphere-sidecar signerctl; do v=$$($(BIN)/fips/$$b --version); echo "$$v"; \
	  grep -q 'fips140=on module $(FIPS140)' <<<"$$v" || { echo "build-fips: $$b does not report fips140=on module $(FIPS140)" >&2; exit 1; }; done

## test-fips: the three contracts' tests in a FIPS 140-3 build, once (make test runs it): the no-material
## check and the audit contract on Postgres (tests/integration), the mTLS admission contract
## (internal/server), each package with TestFIPSMode, which fails the run unless crypto/fips140 is on
## with module $(FIPS140). No -race and no cgo, as build-fips: both share one build cache (nothing with
## the -race build of make test: the FIPS module changes every package that uses crypto). Measured on
## the 2-core CI machine under load: 301 s with an empty build cache, 16 s cached (26 s after an edit).
FIPS_TESTS := ^(TestFIPSMode|TestCoreBinaryHoldsNoSigningMaterial|TestSignerAuditContract|TestAdmission)$$
test-fips: build-fips
	CGO_ENABLED=0 GOFIPS140=$(FIPS140) PLEXSPHERE_TEST_FIPS140=$(FIPS140) $(GO) test -count=1 -run '$(FIPS_TESTS)' ./tests/integration/ ./internal/server/

## run: signer + sidecar + example core on the embedded store; Ctrl-C stops all. KEEP=1 keeps the
## store, KEK, dev CA and checkpoint key in bin/run across runs; signerctl's settings: bin/run/signerctl.env.
run: build
	RUN_KEEP=$(or $(KEEP),$(RUN_KEEP),0) ./scripts/run-local.sh

## test: what a fresh machine lacks is installed first (scripts/deps.sh), then: generated code is
## current, vet and format are clean, every test runs with -race, the contract tests run once more in
## a FIPS 140-3 build (make test-fips), and the Kubernetes scenarios run on a kind cluster (make e2e-kind).
## The kind node image (about 25 min of CPU cold, seconds when cached), helm and the SPIRE images
## are prepared at low priority while the Go tests run: those wait on containers and fsync much of the
## time. Its log is bin/kind-prepare.log (printed if it fails).
test: deps generate-check lint spire witness cosign
	@rm -f $(BIN)/fault-matrix.txt; mkdir -p $(BIN)
	@echo "test: preparing the kind node image in the background (log: bin/kind-prepare.log)"
	@E2E_PREPARE_ONLY=1 nice -n 15 ./scripts/e2e-kind.sh > $(BIN)/kind-prepare.log 2>&1 & prep=$$!; \
	  FAULT_MATRIX_REPORT=$(BIN)/fault-matrix.txt $(GO) test -race -count=1 -tags $(TAGS) ./...; rc=$$?; \
	  if [ -f $(BIN)/fault-matrix.txt ]; then cat $(BIN)/fault-matrix.txt; fi; \
	  $(MAKE) --no-print-directory test-fips; frc=$$?; \
	  echo "test: waiting for the kind preparation"; wait $$prep; prc=$$?; \
	  if [ $$prc != 0 ]; then cat $(BIN)/kind-prepare.log; echo "test: kind preparation failed (exit $$prc)" >&2; fi; \
	  tail -1 $(BIN)/kind-prepare.log; [ $$rc = 0 ] && [ $$frc = 0 ] && [ $$prc = 0 ]
	$(MAKE) e2e-kind

## deps: apt packages and local images the tests need, when missing (scripts/deps.sh).
deps:
	./scripts/deps.sh

## unit: the tests alone (no generate-check, no lint).
unit: spire witness cosign
	$(GO) test -race -count=1 -tags $(TAGS) ./...

## spire: SPIRE server and agent v1.13.3 for the tests, from their own module (tools/spire).
spire: $(BIN)/spire-server $(BIN)/spire-agent
$(BIN)/spire-server $(BIN)/spire-agent &: tools/spire/go.mod tools/spire/go.sum
	cd tools/spire && $(GO) build -o $(BIN)/ github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent

## witness: the C2SP tlog-witness omniwitness for the tests, from its own module (tools/witness).
witness: $(BIN)/omniwitness
$(BIN)/omniwitness: tools/witness/go.mod tools/witness/go.sum
	cd tools/witness && CGO_ENABLED=0 $(GO) build -o $(BIN)/ github.com/transparency-dev/witness/cmd/omniwitness

## cosign: the sigstore cosign CLI v3.1.3 the KMS plugin's tests drive, from its own module (tools/cosign).
cosign: $(BIN)/cosign
$(BIN)/cosign: tools/cosign/go.mod tools/cosign/go.sum
	cd tools/cosign && CGO_ENABLED=0 $(GO) build -o $(BIN)/ github.com/sigstore/cosign/v3/cmd/cosign

## proto: regenerate Go code from proto/ (protoc from apt, plugins pinned in go.mod) and the descriptor set
## proto/plexsphere-signer.protoset (the schema plus google.rpc error details, for grpcurl).
proto:
	$(GO) build -o $(BIN)/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc
	protoc -I proto \
	  --plugin=protoc-gen-go=$(BIN)/protoc-gen-go --go_out=paths=source_relative:proto \
	  --plugin=protoc-gen-go-grpc=$(BIN)/protoc-gen-go-grpc --go-grpc_out=paths=source_relative:proto \
	  proto/plexsphere/signer/v1/signer.proto
	$(GO) run ./internal/tools/protoset -o proto/plexsphere-signer.protoset

## generate-check: fail if the committed generated code is stale.
generate-check: proto
	@git diff --exit-code -- proto/ || { echo "generated code is stale: run 'make proto' and commit" >&2; exit 1; }
	@test -z "$$(git status --porcelain -- proto/)" || { git status --porcelain -- proto/; echo "untracked generated files: run 'make proto' and commit" >&2; exit 1; }

## lint: go vet, gofmt and shellcheck.
lint:
	$(GO) vet -tags $(TAGS) ./...
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './bin/*')); test -z "$$out" || { echo "gofmt needed:"; echo "$$out"; exit 1; } >&2
	@if command -v shellcheck >/dev/null; then shellcheck scripts/*.sh .ci/run; else echo "shellcheck not installed: skipped" >&2; fi

## fuzz: run every fuzz target for FUZZTIME each (their seed corpora also run in `make test`).
## A count, not a duration: Go 1.26's fuzz coordinator can fail a duration-bounded run with
## "context deadline exceeded" and no crasher when the time runs out mid-call (go.dev/issue/75804,
## fixed in Go 1.27); 10000x is 1-11 s per target here.
FUZZTIME ?= 10000x
FUZZ := ./internal/names:FuzzNames ./client/auditlog:FuzzParseLeaf ./internal/signing:FuzzSignRequest \
	./internal/signing/peeridentity:FuzzFirstSPIFFEID ./internal/localaddr:FuzzSidecarListen \
	./internal/config:FuzzSignerSettings ./sidecar:FuzzMethodFilter
fuzz:
	@for t in $(FUZZ); do pkg=$${t%%:*}; fn=$${t##*:}; echo "fuzz $$fn in $$pkg for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; done

## images: the container images, built locally (scripts/build-images.sh).
images:
	./scripts/build-images.sh dev

## images-fips: signer, sidecar, signerctl and signer-pkcs11 built with GOFIPS140=$(FIPS140), tagged dev-fips. Not part of
## make test (nothing there runs them; test-fips tests the same build as binaries).
images-fips:
	GOFIPS140=$(FIPS140) ./scripts/build-images.sh dev-fips

## kind-node: the kind node image, built from Go modules and Debian packages (cached by input hash).
kind-node:
	./scripts/build-kind-node.sh

## e2e-kind: the end-to-end scenarios on a one-node kind cluster (scripts/e2e-kind.sh).
e2e-kind:
	./scripts/e2e-kind.sh

## bench: throughput, latency and CPU per process, each beside its floor measured in the same run.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 3s -count 1 -timeout 60m -tags '$(TAGS) bench' ./tests/bench/

## bench-scale: 1 to 10,000 scopes, an empty to a large audit log (BENCH_SCALE_ROWS, default 10M), 1,000 connections,
## 1 to 3 signer replicas on one Postgres (each under a CPU quota of BENCH_REPLICA_CPU cores, and unconstrained).
bench-scale:
	BENCH_SCALE=1 $(GO) test -run '^$$' -bench '^Benchmark(S|R)_' -benchtime 3s -count 1 -timeout 180m -tags '$(TAGS) bench' ./tests/bench/

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN) .run
