# ipipstack: every step the README shows is a target here.
GO       ?= go
PKGS     ?= ./...
BENCHTIME ?= 3s
COUNT    ?= 6
FUZZTIME ?= 30s
BENCH    ?= .

# Debian packages the tests use: tshark opens the pcap captures, ping is
# the kernel's ping in the TUN test, curl fetches through SOCKS5, forwards and
# the HTTP proxy, ssh is the real client of `ipipstack nc` (e2e TestNCSSH);
# python3 and nc run the README's walk-through (e2e TestREADMEWalkthrough).
DEB_TOOLS := tshark:tshark ping:iputils-ping curl:curl ip:iproute2 ssh:openssh-client python3:python3 nc:netcat-openbsd

.PHONY: all build test deps demo bench mem fuzz lint tools soak clean interop

# staticcheck, pinned: v0.8.2 (2026.2.2) is the first line built for Go 1.26.
# It goes to bin/tools, not the user's GOBIN, so `make lint` never depends on
# (or changes) what else is installed; `make clean` removes it.
STATICCHECK_VERSION := v0.8.2
TOOLS       := $(CURDIR)/bin/tools
STATICCHECK := $(TOOLS)/staticcheck

# checklocks, gVisor's analyzer of `+checklocks:mu` annotations, pinned to
# the gVisor version in go.mod (it is the same module), into bin/tools too.
# It runs without inferred-lock suggestions (-inferred=false): those are
# hints, not findings.
CHECKLOCKS_VERSION = $(shell $(GO) list -m -f '{{.Version}}' gvisor.dev/gvisor)
CHECKLOCKS         := $(TOOLS)/checklocks
CHECKLOCKS_PKGS    = $(PKGS)

all: build

# VERSION is what `ipipstack version` reports for `make build`: the nearest
# tag, the commits since and the revision (git describe), "-dirty" with
# uncommitted changes. -buildvcs=auto also records the revision and its time
# (some environments set GOFLAGS=-buildvcs=false).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null)
LDFLAGS := $(if $(VERSION),-X github.com/ipipstack/ipipstack/internal/buildinfo.version=$(VERSION))

build:
	$(GO) build -buildvcs=auto -ldflags '$(LDFLAGS)' -o bin/ipipstack ./cmd/ipipstack

## demo: the main job on its embedded default (two stacks over loopback UDP).
demo:
	$(GO) run ./cmd/ipipstack demo

## deps: install the Debian packages the tests need, if any is missing.
deps:
	@missing=""; for pair in $(DEB_TOOLS); do \
	  tool=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$tool >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing (install them as root)"; exit 1; fi; \
	  echo "installing:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

## test: vet, then every test with the race detector. Privileged tests run
## as root and skip otherwise (IPIPSTACK_PRIVILEGED=1 makes a skip a failure).
## The tests that forward IPv4 data through a router stack (or the TUN
## device's stack) skip under -race:
## gVisor's IPv4 forwarding reads memory it has just freed (stack/forward.go,
## bug 4), which the race detector reports. A last run without -race runs them.
test: deps
	$(GO) vet $(PKGS)
	@echo "== every benchmark once (-benchtime 1x), so a broken benchmark fails the tests"
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x ./bench/
	$(GO) test -race -count=1 -timeout 20m $(PKGS)
	@echo "== the IPv4 forwarding tests that skip under -race, without it"
	$(GO) test -count=1 -run '^(TestRouterTCPTransfer|TestPathMTUNarrowMiddle|TestForward[A-Za-z0-9]*)$$' ./stack/
	$(GO) test -count=1 -run '^TestDiag(Ping|Traceroute)$$' ./daemon/
	$(GO) test -count=1 -run '^TestEndToEnd$$' ./service/tun/

## interop: the tunnels against a real Linux kernel (root only): Debian's
## kernel package, downloaded and cached under ~/.cache/ipipstack-interop,
## boots in qemu inside a network namespace the test makes, with its ipip,
## sit, ip6tnl and FOU tunnels as the peers of the project's stack (see
## interop/doc.go). The build tag keeps it out of `make test`.
INTEROP_TOOLS := qemu-system-x86_64:qemu-system-x86 busybox:busybox-static ip:iproute2 apt-get:apt dpkg-deb:dpkg
interop:
	@$(MAKE) --no-print-directory deps DEB_TOOLS="$(INTEROP_TOOLS)"
	$(GO) vet -tags interop ./interop/
	$(GO) test -tags interop -count=1 -timeout 10m -v -run '^TestKernelInterop$$' ./interop/

## bench: the benchmarks, COUNT runs each (for benchstat), then a table of
## medians with the ratios to the baselines (bench/out/TABLE.md) and a chart
## (bench/out/throughput.svg). The first lines of bench/out/bench.txt name
## the machine and the run (benchmark configuration lines: benchtable puts
## them in the table's header and the chart; benchstat compares two runs
## with `benchstat -ignore commit,date,args old.txt new.txt`).
bench:
	mkdir -p bench/out
	{ echo "commit: $$(git describe --always --dirty 2>/dev/null || echo unknown)"; \
	  echo "date: $$(date -u +%Y-%m-%dT%H:%MZ)"; \
	  echo "kernel: $$(uname -sr)"; \
	  echo "nproc: $$(nproc)"; \
	  echo "go: $$($(GO) env GOVERSION)"; \
	  echo "cpu: $$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"; \
	  echo "args: make bench BENCH='$(BENCH)' BENCHTIME=$(BENCHTIME) COUNT=$(COUNT)"; } > bench/out/bench.txt
	$(GO) test -run '^$$' -bench '$(BENCH)' -skip 'IdleConnections|IdleTunnels' -benchmem -benchtime $(BENCHTIME) -count $(COUNT) ./bench/ | tee -a bench/out/bench.txt
	$(GO) test -run '^$$' -bench 'IdleConnections|IdleTunnels' -benchtime 1x ./bench/ | tee -a bench/out/bench.txt
	$(GO) run ./bench/benchtable -in bench/out/bench.txt -md bench/out/TABLE.md -svg bench/out/throughput.svg
	@cat bench/out/TABLE.md

## mem: resident memory of an idle tunnel process (examples/two-peers-a.hcl).
mem: build
	@bin/ipipstack run -c examples/two-peers-a.hcl --log-level error & pid=$$!; \
	  sleep 3; grep VmRSS /proc/$$pid/status | sed 's/^/idle ipipstack run: /'; \
	  kill $$pid; wait $$pid

## fuzz: each fuzz target for FUZZTIME.
fuzz:
	@$(GO) list -f '{{.Dir}}' $(PKGS) | while read dir; do \
	  for f in $$(cd $$dir && $(GO) test -list '^Fuzz' . 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$dir $$f"; (cd $$dir && $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) .) || exit 1; \
	  done; \
	done

## soak: two stacks over an impaired loopback tunnel for 10 minutes (not in CI).
soak:
	$(GO) run ./soak -duration 10m

## tools: staticcheck STATICCHECK_VERSION and checklocks CHECKLOCKS_VERSION
## in bin/tools, installed from the Go module proxy only if missing, of
## another version, or built by another Go (a tool built by an older Go
## cannot load this module's packages).
tools:
	@want="$(STATICCHECK_VERSION) $$($(GO) env GOVERSION)"; \
	have="$$($(GO) version -m $(STATICCHECK) 2>/dev/null | awk '$$1 == "mod" && $$2 == "honnef.co/go/tools" {v=$$3} NR == 1 {g=$$2} END {if (v != "") print v, g}')"; \
	if [ "$$have" != "$$want" ]; then \
	  echo "installing staticcheck $(STATICCHECK_VERSION) into bin/tools (have: $${have:-none}, want: $$want)"; \
	  GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION); \
	fi
	@want="$(CHECKLOCKS_VERSION) $$($(GO) env GOVERSION)"; \
	have="$$($(GO) version -m $(CHECKLOCKS) 2>/dev/null | awk '$$1 == "mod" && $$2 == "gvisor.dev/gvisor" {v=$$3} NR == 1 {g=$$2} END {if (v != "") print v, g}')"; \
	if [ "$$have" != "$$want" ]; then \
	  echo "installing checklocks $(CHECKLOCKS_VERSION) into bin/tools (have: $${have:-none}, want: $$want)"; \
	  GOBIN=$(TOOLS) $(GO) install gvisor.dev/gvisor/tools/checklocks/cmd/checklocks@$(CHECKLOCKS_VERSION); \
	fi

## lint: gofmt (lists unformatted files), go vet, then staticcheck on every
## package, tests included, with its default checks, then checklocks (the
## lock annotations; see CHECKLOCKS above), then a cross-compile.
## CROSS_GOOS: the systems lint cross-compiles for.
CROSS_GOOS ?= darwin windows freebsd

lint: tools
	@test -z "$$(gofmt -l .)" || { echo "gofmt -l: these files need gofmt -w:"; gofmt -l .; exit 1; }
	$(GO) vet $(PKGS)
	$(STATICCHECK) -tests $(PKGS)
	$(GO) vet -vettool=$(CHECKLOCKS) -inferred=false $(CHECKLOCKS_PKGS)
	@echo "== cross-compile: the library and the binary build off Linux (raw sockets and TUN say at run time that they need Linux)"
	for os in $(CROSS_GOOS); do GOOS=$$os $(GO) build ./... && GOOS=$$os $(GO) vet ./stack/... ./endpoint/... || exit 1; done

clean:
	rm -rf bin
