# ipipstack: every step the README shows is a target here.
GO       ?= go
PKGS     ?= ./...
BENCHTIME ?= 3s
COUNT    ?= 6
FUZZTIME ?= 30s
BENCH    ?= .

# Debian packages the tests use: tshark opens the pcap captures, ping is
# the kernel's ping in the TUN test, curl fetches through SOCKS5 and forwards.
DEB_TOOLS := tshark:tshark ping:iputils-ping curl:curl ip:iproute2

.PHONY: all build test deps demo bench mem fuzz lint soak clean interop

all: build

build:
	$(GO) build -o bin/ipipstack ./cmd/ipipstack

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
## The tests that forward IPv4 data through a router stack skip under -race:
## gVisor's IPv4 forwarding reads memory it has just freed (stack/forward.go,
## bug 4), which the race detector reports. A last run without -race runs them.
test: deps
	$(GO) vet $(PKGS)
	@echo "== every benchmark once (-benchtime 1x), so a broken benchmark fails the tests"
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x ./bench/
	$(GO) test -race -count=1 -timeout 20m $(PKGS)
	@echo "== the IPv4 forwarding tests that skip under -race, without it"
	$(GO) test -count=1 -run '^(TestRouterTCPTransfer|TestPathMTUNarrowMiddle|TestForward[A-Za-z0-9]*)$$' ./stack/

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
## (bench/out/throughput.svg).
bench:
	mkdir -p bench/out
	$(GO) test -run '^$$' -bench '$(BENCH)' -skip IdleConnections -benchmem -benchtime $(BENCHTIME) -count $(COUNT) ./bench/ | tee bench/out/bench.txt
	$(GO) test -run '^$$' -bench IdleConnections -benchtime 1x ./bench/ | tee -a bench/out/bench.txt
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

lint:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }
	$(GO) vet $(PKGS)

clean:
	rm -rf bin
