# node-local-coredns
#
#   make demo   the simulated node, end to end (root)
#   make test   every test (root; installs iptables, nftables, conntrack, podman
#               and debootstrap when missing)
#   make build  the binary in bin/

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
BIN      := bin/node-local-coredns
export CGO_ENABLED ?= 0

.PHONY: all build test unit demo deps monitoring-deps vet clean reliability image image-deps components manifests bench bench-deps

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/node-local-coredns

# deps installs the tools the namespace tests and the demo drive: iptables
# (legacy and nft), nftables, conntrack and iproute2, from the distribution.
deps:
	@missing=""; \
	for t in iptables-legacy iptables-nft nft conntrack ip; do \
		command -v $$t >/dev/null 2>&1 || missing=1; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make: iptables, nftables, conntrack and iproute2 are needed; run as root to install them"; exit 1; fi; \
		echo "installing iptables, nftables, conntrack, iproute2"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables nftables conntrack iproute2 >/dev/null; \
	fi

vet:
	$(GO) vet ./...

# test runs every test. As root the namespace tests are required: a skipped
# one fails the run. The cluster tests (TestCluster) run the image that
# make image writes and the real Kubernetes components, built first (cold:
# minutes; cached after). Then short runs of the fuzz targets: the fast
# path's wire parsing, the TCP stream, the Corefile's values.
# Counts, not durations: with a duration, Go 1.26's fuzz coordinator can
# report its own deadline as a failure (golang/go#75804, fixed in 1.27).
FUZZTIME ?= 100000x
FUZZTIME_SHORT ?= 20000x
test: deps monitoring-deps vet image components
	NODESIM_REQUIRED=$$( [ "$$(id -u)" = 0 ] && echo 1 ) $(GO) test $(GOTESTFLAGS) -count=1 -timeout 45m ./...
	$(GO) test -run '^$$' -fuzz '^FuzzAnswer$$' -fuzztime $(FUZZTIME) ./plugin/fastcache
	$(GO) test -run '^$$' -fuzz '^FuzzTCPStream$$' -fuzztime $(FUZZTIME_SHORT) ./internal/server
	$(GO) test -run '^$$' -fuzz '^FuzzCorefileValues$$' -fuzztime $(FUZZTIME_SHORT) ./internal/agent

# monitoring-deps installs Prometheus and promtool from the distribution,
# for the alert rules' tests; its service is not started.
monitoring-deps:
	@if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then \
		if [ "$$(id -u)" != 0 ]; then echo "make: prometheus and promtool are needed; run as root to install them"; exit 1; fi; \
		echo "installing prometheus (promtool)"; \
		made=""; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made=1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
		status=$$?; [ -z "$$made" ] || rm -f /usr/sbin/policy-rc.d; \
		if command -v systemctl >/dev/null 2>&1; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi; \
		exit $$status; \
	fi

# components builds (or finds cached) kube-apiserver, kube-proxy, etcd and
# CoreDNS at the versions pinned in test/cluster/components.
components:
	$(GO) run ./test/cluster/components

# unit runs the tests that need no root.
unit:
	$(GO) test -count=1 -short ./internal/... ./cmd/...

demo: deps build
	$(GO) run ./test/demo -binary $(BIN)

clean:
	rm -rf bin

# reliability runs the fault scenarios under pod load and writes the
# measured table into docs/reliability.md.
reliability: deps
	RELIABILITY_DOC=$(CURDIR)/docs/reliability.md NODESIM_REQUIRED=1 $(GO) test -count=1 -run 'Scenario' -v ./test/e2e

IMAGE ?= ghcr.io/node-local-coredns/node-local-coredns:$(VERSION)
IMAGE_ARCHIVE := bin/node-local-coredns-image.tar

# image builds the container image with podman (no Docker engine, no
# registry: the Debian base is made by debootstrap) and writes it as an OCI
# archive to bin/node-local-coredns-image.tar.
image: build image-deps
	image/build.sh $(BIN) $(IMAGE) $(IMAGE_ARCHIVE)

image-deps:
	@missing=""; for t in podman runc debootstrap setcap; do command -v $$t >/dev/null 2>&1 || missing=1; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make: podman, runc, debootstrap and setcap are needed; run as root to install them"; exit 1; fi; \
		echo "installing podman, runc, debootstrap, setcap"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap uidmap libcap2-bin >/dev/null; \
	fi

# manifests re-renders deploy/node-local-coredns.yaml and deploy/kustomize
# from the Helm chart (and copies the built-in Corefile into the chart).
manifests:
	$(GO) test ./deploy -run 'TestChartCorefileIsTheBuiltInOne|TestRenderingsAgree' -update

# bench measures node-local-coredns against stock CoreDNS, Unbound and
# dnsmasq (and the simulated node through the agent against DNAT) and
# rewrites docs/benchmarks.md; ARGS picks figures, e.g. ARGS='-only cpu -reps 1'.
bench: deps bench-deps
	$(GO) build -o bin/bench ./bench
	./bin/bench $(ARGS)

bench-deps:
	@missing=""; for t in dnsperf unbound dnsmasq taskset; do command -v $$t >/dev/null 2>&1 || missing=1; done; \
	if [ -n "$$missing" ]; then \
		echo "installing dnsperf, unbound, dnsmasq"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsperf unbound dnsmasq-base util-linux >/dev/null; \
		if command -v systemctl >/dev/null 2>&1; then systemctl disable --now unbound >/dev/null 2>&1 || true; fi; \
	fi
