# kpr: a drop-in replacement for kube-proxy.
GO      ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/kpr-proxy/kpr/internal/version.Version=$(VERSION)
E2E_TIMEOUT ?= 45m

.PHONY: all build deps vet test test-unit test-short e2e e2e-build e2e-upstream e2e-upstream-scenarios e2e-ipvs bench demo clean

all: build

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/proxy ./cmd/proxy
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/podnet ./cmd/podnet

# Installs iptables, ipset, conntrack and iproute2 when missing (Debian).
deps:
	@hack/deps.sh

vet:
	$(GO) vet ./...
	cd e2e && $(GO) vet ./...

# Every test: unit, real-kernel (in throwaway network namespaces; needs root,
# skipped with a reason otherwise), the end-to-end suite against kpr, and the
# same scenarios against upstream kube-proxy (proving they test Kubernetes
# behaviour, not kpr's implementation), and the IPVS mode on a real IPVS
# kernel in a VM.
test: deps vet test-unit e2e e2e-upstream-scenarios e2e-ipvs

test-unit:
	$(GO) test -count=1 -timeout 20m ./...

# Pure-logic tests only (no root needed).
test-short:
	$(GO) test -short -count=1 ./...

# Builds etcd, kube-apiserver, kube-controller-manager and kube-proxy from
# their Go modules into e2e/_cache/bin (minutes on a cold cache, then cached).
e2e-build:
	cd e2e && $(GO) run ./cmd/e2e-build

e2e: build e2e-build
	cd e2e && E2E_PROXY=$${E2E_PROXY:-kpr} $(GO) test -count=1 -timeout $(E2E_TIMEOUT) ./...

# The same scenarios against upstream kube-proxy v1.37.
e2e-upstream: build e2e-build
	cd e2e && E2E_PROXY=upstream $(GO) test -count=1 -timeout $(E2E_TIMEOUT) ./...

# A local cluster in network namespaces with kpr as its kube-proxy: shows
# ClusterIP, NodePort and LoadBalancer traffic, then stays up until Ctrl-C.
# Needs root; the first run builds the control plane (several minutes).
demo:
	@hack/demo.sh

# Real IPVS: node1 runs in a qemu guest (TCG) with Debian's 6.1 kernel, since
# this kernel has no IPVS. The first run downloads Debian packages into
# e2e/_cache/vm and installs qemu-system-x86 and kmod with apt if missing.
e2e-ipvs: build e2e-build
	cd e2e && E2E_VM=1 E2E_PROXY=$${E2E_PROXY:-kpr} $(GO) test -count=1 -timeout 20m ./vm/

e2e-upstream-scenarios: build e2e-build
	cd e2e && E2E_PROXY=upstream $(GO) test -count=1 -timeout $(E2E_TIMEOUT) ./scenarios/

# kpr against upstream kube-proxy v1.37, side by side on a real apiserver:
# cold sync, one-change latency, CPU, RSS, restore sizes, first-packet
# latency, for N Services (BENCH_N, default 1000,10000) on both iptables
# backends. Writes e2e/_cache/bench/<time>/ and copies it to docs/bench/.
# Knobs: e2e/bench/README.md. Not part of `make test` (~16 min at 1k+10k).
BENCH_TIMEOUT ?= 240m
bench: deps build e2e-build
	cd e2e && KPR_BENCH=1 $(GO) test -count=1 -timeout $(BENCH_TIMEOUT) -run '^TestBench$$' -v ./bench/

clean:
	rm -rf $(BIN)
