#!/usr/bin/env bash
# Resident memory of vswitchd: idle (the embedded default configuration), then with N
# attached interfaces (default 1000, TAP, one namespace each), read from /proc/PID/status
# (VmRSS, VmHWM) and the daemon's own view (interfaces listed). The conntrack table's heap
# per connection comes from `cargo bench -p perf --bench scale -- conntrack` (its `memory:`
# lines).
#
#   sudo scripts/memory.sh [N] [KIND]        # N interfaces (default 1000), KIND tap|veth
#
# Needs root, iproute2 and the release binaries (cargo build --release -p vswitch). Every
# namespace, link and process it creates is removed on exit, interrupted or not.
set -euo pipefail

count=${1:-1000}
kind=${2:-tap}
root=$(cd "$(dirname "$0")/.." && pwd)
vswitchd=$root/target/release/vswitchd
vswitchctl=$root/target/release/vswitchctl
[ "$(id -u)" = 0 ] || { echo "memory.sh: must run as root (namespaces, TAP devices)" >&2; exit 2; }
for tool in ip "$vswitchd" "$vswitchctl"; do
    command -v "$tool" >/dev/null || { echo "memory.sh: missing $tool (apt-get install iproute2; cargo build --release -p vswitch)" >&2; exit 2; }
done

tag=vsmem$$
node=$tag-node
dir=$(mktemp -d)
socket=$dir/vs.sock
pid=
cleanup() {
    set +e
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    for ns in $(ip netns list | awk '{print $1}' | grep "^$tag-"); do
        ip netns del "$ns"
    done
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

rss() {
    awk '/^VmRSS|^VmHWM/ {printf "%s %.1f MiB  ", $1, $2 / 1024}' "/proc/$pid/status"
}

ip netns add "$node"
ip netns exec "$node" "$vswitchd" --socket "$socket" --state-dir "$dir/state" \
    --log-level warn >"$dir/vswitchd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    [ -S "$socket" ] && break
    sleep 0.1
done
[ -S "$socket" ] || { echo "memory.sh: vswitchd did not start:" >&2; cat "$dir/vswitchd.log" >&2; exit 1; }
sleep 2
echo "idle:                 $(rss)"

started=$(date +%s.%N)
for i in $(seq "$count"); do
    ns=$tag-c$i
    ip netns add "$ns"
    "$vswitchctl" --socket "$socket" attach "$ns" --kind "$kind" >/dev/null
    if [ $((i % 250)) = 0 ]; then
        echo "$i interfaces ($kind):   $(rss)"
    fi
done
elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
listed=$("$vswitchctl" --socket "$socket" get networkinterfaces -o json | grep -c '"kind": *"NetworkInterface"' || true)
sleep 2
echo "$count interfaces ($kind): $(rss)(listed $listed; attached in $elapsed s)"
