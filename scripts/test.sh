#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, property tests, and the integration tests that
# build real topologies (network namespaces, TAP, veth) around the real vswitchd.
#
# Needs root (namespaces, TAP devices). Installs the system tools the tests use when missing.
# Usage: sudo ./scripts/test.sh [extra cargo test args, e.g. a test name filter]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: the integration tests create network namespaces and TAP devices;" >&2
    echo "run as root: sudo ./scripts/test.sh" >&2
    exit 1
fi

# command -> Debian package that provides it
declare -A tools=(
    [ip]=iproute2 [ping]=iputils-ping [tracepath]=iputils-tracepath [iperf3]=iperf3
    [tcpdump]=tcpdump [ethtool]=ethtool [python3]=python3 [nft]=nftables
)
missing=()
for cmd in "${!tools[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${tools[$cmd]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "scripts/test.sh: installing missing tools: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -c /dev/net/tun ]; then
    echo "scripts/test.sh: /dev/net/tun is missing: TAP ports cannot be tested (load the tun module)" >&2
    exit 1
fi

# Integration tests start several daemons with iperf3 at once; on a 2-core machine two test
# threads per binary keep them from starving each other.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"
exec cargo test --workspace --release "$@"
