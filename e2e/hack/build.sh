#!/usr/bin/env bash
# Builds (or finds cached) the e2e harness binaries: etcd, kube-apiserver,
# kube-controller-manager, kube-proxy, echo, reference CNI plugins.
# Usage: e2e/hack/build.sh [-force] [binary ...]   (callable from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."
exec go run ./cmd/e2e-build "$@"
