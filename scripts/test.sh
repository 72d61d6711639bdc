#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, property tests, and the integration tests that
# build real topologies (network namespaces, TAP, veth) around the real vswitchd.
#
# Tests that need root are marked #[ignore = "needs root: ..."], so a plain, unprivileged
# `cargo test` runs the others; this script runs them all (--include-ignored) and therefore
# needs root: a root test that cannot run fails, it is never skipped. It first runs the pure
# crates' tests (vxlan, nat, lb, policy) in a debug build, with overflow checks and debug
# assertions on, and ends with every fuzz target for 10 seconds (VSWITCH_FUZZ_SECONDS).
# Installs the system tools the tests use when missing.
#
# Usage: sudo ./scripts/test.sh [cargo test args] [-- test binary args]
#   sudo ./scripts/test.sh                      # everything
#   sudo ./scripts/test.sh --test l2            # one integration test file
#   sudo ./scripts/test.sh tap_and_veth         # tests whose name contains a filter
#   sudo ./scripts/test.sh -p vswitch -- --exact sys::udp::tests::empty_sends_do_nothing
# Arguments before `--` go to cargo test, those after it to the test binaries (after
# --include-ignored). With arguments, only the (filtered) release run is made.
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
    [curl]=curl [promtool]=prometheus
    # vswitch/tests/overlay.rs: the overlay's shared store (etcd 3.4 and its CLI)
    [etcd]=etcd-server [etcdctl]=etcd-client
    # vswitch/tests/service.rs checks the unit file as systemd reads it
    [systemd-analyze]=systemd
    # vswitch/tests/cni.rs: real container runtimes, and a static busybox for their rootfs
    [podman]=podman [runc]=runc [containerd]=containerd [ctr]=containerd [busybox]=busybox-static
    # vswitch/tests/vlan_bond.rs: Open vSwitch's userspace datapath is the VLAN and bond peer
    [ovs-vswitchd]=openvswitch-switch [ovsdb-server]=openvswitch-switch
    [ovs-vsctl]=openvswitch-switch [ovs-appctl]=openvswitch-common
)
missing=()
for cmd in "${!tools[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${tools[$cmd]}")
done
# The reference CNI plugins (ctr's loopback, podman's CNI backend), which are not on PATH.
[ -x /usr/lib/cni/loopback ] || missing+=(containernetworking-plugins)
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

cargo_args=()
test_args=()
separator_seen=0
for arg in "$@"; do
    if [ "$separator_seen" -eq 0 ] && [ "$arg" = "--" ]; then
        separator_seen=1
    elif [ "$separator_seen" -eq 0 ]; then
        cargo_args+=("$arg")
    else
        test_args+=("$arg")
    fi
done

# The whole workspace, unless the arguments name packages (cargo ignores -p with --workspace).
workspace=(--workspace)
for arg in ${cargo_args[@]+"${cargo_args[@]}"}; do
    case "$arg" in
        -p | -p?* | --package | --package=*) workspace=() ;;
    esac
done

if [ "$#" -eq 0 ]; then
    # The pure crates (no I/O, no root) in the debug profile: overflow checks and
    # debug_assert! are off in --release.
    cargo test -p vxlan -p nat -p lb -p policy
fi
cargo test ${workspace[@]+"${workspace[@]}"} --release ${cargo_args[@]+"${cargo_args[@]}"} \
    -- --include-ignored ${test_args[@]+"${test_args[@]}"}
if [ "$#" -eq 0 ]; then
    # Every fuzz target for a few seconds from its checked-in seeds: a crash fails the run
    # (scripts/fuzz.sh SECONDS runs the long version).
    ./scripts/fuzz.sh "${VSWITCH_FUZZ_SECONDS:-10}"
fi
