#!/usr/bin/env bash
# `make demo`: a local cluster made of network namespaces (real etcd,
# kube-apiserver and EndpointSlice controller; 2 nodes; an outside client)
# with kpr as its kube-proxy. It installs missing tools, builds kpr and the
# e2e control plane, shows ClusterIP, NodePort and LoadBalancer traffic
# through kpr's rules, then stays up until Ctrl-C and tears everything down.
# Nothing touches the root network namespace. Needs root.
#
# Usage: hack/demo.sh [--requests=N] [--hold=false]   (callable from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
	echo "demo: needs root (it creates network namespaces); run: sudo make demo" >&2
	exit 1
fi

# The e2e build runs plain "go" from PATH, so make sure the one we use is
# there (root's PATH often lacks /usr/local/go/bin).
GO=${GO:-$(command -v go 2>/dev/null || echo /usr/local/go/bin/go)}
if [ ! -x "$GO" ]; then
	echo "demo: Go is not installed; install Go 1.26 from https://go.dev/dl/ and re-run" >&2
	exit 1
fi
export PATH="$(dirname "$GO"):$PATH"

say "[1/4] Tools: iptables, ipset, conntrack, iproute2 (installed with apt-get when missing)"
hack/deps.sh
# The demo's poke-around hints use curl; it is optional (the hints fall back
# to the echo client).
if ! command -v curl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
	echo "    installing curl for the poke-around hints"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null ||
		echo "    (could not install curl; the hints will use the echo client)"
fi

say "[2/4] Building kpr: bin/proxy, bin/podnet"
if command -v make >/dev/null 2>&1; then
	"${MAKE:-make}" --no-print-directory build
else
	mkdir -p bin
	CGO_ENABLED=0 "$GO" build -trimpath -o bin/proxy ./cmd/proxy
	CGO_ENABLED=0 "$GO" build -trimpath -o bin/podnet ./cmd/podnet
fi

# heartbeat prints a line every 30 s while a slow build runs, so a cold
# first run does not look hung.
heartbeat() {
	local start now
	start=$(date +%s)
	while sleep 30; do
		now=$(date +%s)
		printf '    … still building (%dm%02ds so far)\n' $(((now - start) / 60)) $(((now - start) % 60))
	done
}
HB=""
stop_heartbeat() {
	if [ -n "$HB" ]; then
		kill "$HB" 2>/dev/null || true
		wait "$HB" 2>/dev/null || true
		HB=""
	fi
}
trap stop_heartbeat EXIT

say "[3/4] Building the control plane (etcd, kube-apiserver, kube-controller-manager) into e2e/_cache/bin"
if [ -x e2e/_cache/bin/kube-apiserver ]; then
	echo "    cached from an earlier run: rebuilt only if e2e/go.mod changed"
else
	echo "    first run: this takes several minutes (about 6-8 min on 2 cores, plus module downloads);"
	echo "    later runs reuse the cache and start in seconds"
fi
heartbeat &
HB=$!
(cd e2e && "$GO" run ./cmd/e2e-build >/dev/null)
stop_heartbeat

say "[4/4] Building the demo driver (e2e/demo)"
heartbeat &
HB=$!
# Same flags as the e2e build, so client-go & co come from the Go build cache.
(cd e2e && CGO_ENABLED=0 "$GO" build -trimpath -o _cache/demo/kpr-demo ./demo)
stop_heartbeat
trap - EXIT

# exec: Ctrl-C goes straight to the demo, which tears the cluster down.
cd e2e
exec ./_cache/demo/kpr-demo "$@"
