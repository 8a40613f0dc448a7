#!/usr/bin/env bash
# Installs what kpr's build and tests need on a Debian/Ubuntu machine:
# iptables (legacy + nft), ipset, conntrack, iproute2, nftables (nft: the
# bench resets nf_tables rules between runs). Does nothing when they
# are already there; needs root (or sudo) only when something is missing.
set -euo pipefail
need=()
for bin in iptables-legacy-restore iptables-nft-restore ip6tables-legacy-restore ipset conntrack ip nft; do
	command -v "$bin" >/dev/null 2>&1 || need+=("$bin")
done
if ! command -v go >/dev/null 2>&1 && [ ! -x /usr/local/go/bin/go ]; then
	echo "deps: Go is not installed; install Go 1.26 from https://go.dev/dl/ and re-run" >&2
	exit 1
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "deps: missing ${need[*]}; installing iptables ipset conntrack iproute2 nftables"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq iptables ipset conntrack iproute2 nftables >/dev/null
