# Make targets are the project's interface (STYLE.md §12). CI runs `make test` through .ci/run.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export CGO_ENABLED := 1

BINARIES := oras-attest attest-bootstrap notation-attested-kv ratify-maa-verifier
TOOLS := notation oras
FUZZTIME ?= 20s
FUZZRETRY ?= 3000x
BENCHTIME ?= 1s

.PHONY: all build tools dist ratify-plugin baseline-current test test-unit test-unprivileged test-e2e lint fuzz bench demo clean help

all: build

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# The commands that run in builds and admissions are static (CGO_ENABLED=0), as in make dist and as
# notation and oras ship: no dynamic loader at every start (2 ms of each plugin process, measured
# with 61 runs of get-plugin-metadata). attest-bootstrap links the TPM simulator, which needs cgo.
build: ## build every binary of the project into ./bin
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/oras-attest ./oras-attach
	$(GO) build -trimpath -o $(BIN)/attest-bootstrap ./bootstrap
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/notation-attested-kv ./notation-plugin
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ratify-maa-verifier ./policy/ratify

# The tarball is reproducible: same sources, same bytes (file order, times, owners and modes
# fixed whatever the builder's umask; gzip -n records no name or time), so its SHA-256, which Image Builder checks, can be rebuilt.
dist: tools baseline-current ## linux/amd64 tarball of notation, notation-attested-kv and oras-attest for the build-agent image, and its .sha256
	@mkdir -p $(BIN)/dist
	GOOS=linux GOARCH=amd64 CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/dist/notation-attested-kv ./notation-plugin
	GOOS=linux GOARCH=amd64 CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/dist/oras-attest ./oras-attach
	cd tools && GOOS=linux GOARCH=amd64 CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/dist/ github.com/notaryproject/notation/cmd/notation
	tar -C $(BIN)/dist --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --mode=a+rX,u+w,go-w -cf - notation notation-attested-kv oras-attest | gzip -n > $(BIN)/attested-kv-linux-amd64.tar.gz
	cd $(BIN) && sha256sum attested-kv-linux-amd64.tar.gz | tee attested-kv-linux-amd64.tar.gz.sha256

ratify-plugin: baseline-current ## linux/amd64 ratify-maa-verifier for the Ratify image (policy/k8s/Dockerfile)
	GOOS=linux GOARCH=amd64 CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/linux-amd64/ratify-maa-verifier ./policy/ratify

# The compiled baseline rules (policy/rules/baseline.celpb) decide what the shipped binaries accept:
# what ships is built only if they are byte for byte what baseline.cel compiles to.
baseline-current: ## check that policy/rules/baseline.celpb is what baseline.cel compiles to
	$(GO) test -count=1 -run '^TestCompiledBaselineCurrent$$' ./policy/rules

tools: $(BIN)/notation $(BIN)/oras ## build the pinned notation and oras CLIs (tools/go.mod) into ./bin

# One recipe builds both (a grouped target: make -j runs it once).
$(BIN)/notation $(BIN)/oras &: tools/go.mod tools/go.sum
	@mkdir -p $(BIN)
	cd tools && CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ github.com/notaryproject/notation/cmd/notation oras.land/oras/cmd/oras

test: lint ## vet, format check, all tests with the race detector (as root, those that skip as root again as nobody), end-to-end tests, short fuzzing
	$(GO) test -race -count=1 ./...
	$(MAKE) --no-print-directory test-unprivileged
	$(MAKE) --no-print-directory test-e2e
	$(MAKE) --no-print-directory fuzz FUZZTIME=5s

test-unit: ## unit tests only, with the race detector
	$(GO) test -race -count=1 ./...

# Run as root (CI is: .ci/run installs Debian packages), go test skips the tests whose check only
# a user without root's privileges sees (a file of mode 0000, a read-only directory); this runs
# them as nobody and fails unless they pass. As any other user it does nothing.
test-unprivileged: ## as root, the tests that skip as root, run as the unprivileged user nobody (65534)
	GO=$(GO) ./scripts/test-unprivileged.sh

test-e2e: build tools $(BIN)/ratify ## end-to-end: the built binaries and the real notation, oras and ratify CLIs against the local stack
	ATTEST_E2E_BIN=$(BIN) $(GO) test -count=1 -tags e2e ./test/e2e/...

# Ratify v1.4.6, which the end-to-end tests run the token verifier under: a module of its own
# (tools/ratify/tools.go says why), and only for test-e2e (a 122 MB binary, minutes to build).
$(BIN)/ratify: tools/ratify/go.mod tools/ratify/go.sum
	@mkdir -p $(BIN)
	cd tools/ratify && CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ratify github.com/ratify-project/ratify/cmd/ratify

# The end-to-end tests are behind the e2e build tag, which ./... leaves out: vetted on their own.
lint: $(BIN)/staticcheck ## gofmt, go vet and staticcheck (staticcheck.conf)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(BIN)/staticcheck ./...
	$(GO) vet -tags e2e ./test/e2e/...
	$(BIN)/staticcheck -tags e2e ./test/e2e/...

$(BIN)/staticcheck: tools/lint/go.mod tools/lint/go.sum
	@mkdir -p $(BIN)
	cd tools/lint && $(GO) build -trimpath -o $(BIN)/staticcheck honnef.co/go/tools/cmd/staticcheck

# Every fuzz target of the module runs for FUZZTIME (go test -fuzz takes one target at a time).
# The targets are read from the test files (func FuzzXxx(f *testing.F), gofmt's spelling) rather
# than listed with go test -list, which links every package's test binary (a minute here); a name
# go test then does not find fails the run instead of fuzzing nothing.
# Its seeds are the f.Add calls in the target and testdata/fuzz/<Target> (inputs that widened
# coverage in earlier runs, kept so that every plain go test replays them).
# A run that ends with Go's "context deadline exceeded" coordinator error but found no failing
# input (none written under testdata/fuzz) is run once more, for FUZZRETRY executions instead of a
# time: that error is a race in Go 1.26's fuzzing coordinator at the end of a timed run
# (go.dev/issue/75804, fixed in Go 1.27), not a finding, and a run bounded by a count has no
# deadline to race (3 of 19 targets hit it in one make test on this 2-core machine).
fuzz: ## run each fuzz target for FUZZTIME (default 20s)
	@set -e; for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for f in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)([A-Za-z_][A-Za-z0-9_]* \*testing\.F) {$$/\1/p' $$dir/*_test.go 2>/dev/null); do \
	    echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
	    if ! $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg > /tmp/fuzz.$$$$.log 2>&1; then \
	      cat /tmp/fuzz.$$$$.log; \
	      if grep -q 'context deadline exceeded' /tmp/fuzz.$$$$.log && ! git -C $$dir status --porcelain -- testdata/fuzz | grep -q .; then \
	        echo "retrying $$f for $(FUZZRETRY) executions (Go fuzzing coordinator deadline race, no failing input)"; \
	        $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZRETRY) $$pkg; \
	      else rm -f /tmp/fuzz.$$$$.log; exit 1; fi; \
	    fi; \
	    if grep -q 'no fuzz tests to fuzz' /tmp/fuzz.$$$$.log; then \
	      echo "$$f is not a fuzz target go test finds in $$pkg (a build constraint?)"; rm -f /tmp/fuzz.$$$$.log; exit 1; fi; \
	    rm -f /tmp/fuzz.$$$$.log; \
	  done; \
	done

bench: build tools $(BIN)/ratify ## Go benchmarks and command timings on the local stack -> bench/results.md
	./scripts/bench.sh

demo: build tools ## run the whole chain locally on the local stack
	./scripts/demo.sh

clean: ## remove build outputs
	rm -rf $(BIN)
