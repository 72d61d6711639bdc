#!/usr/bin/env bash
# The kill -9 storm, long version: ROUNDS rounds (default 100) of a hub and two runners in
# namespaces, interfaces attached and detached and resources applied and deleted on a runner
# while vswitchd (a runner's or the hub's) is killed with SIGKILL at a random moment and
# started again. Every round checks addresses (none leased twice or lost), runner IDs,
# devices (none leaked) and that the survivors' traffic comes back; the last line is the
# report. The CI runs the same test with 8 rounds (scripts/test.sh).
#
# Usage: sudo ./scripts/storm.sh [ROUNDS] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export VSWITCH_STORM_ROUNDS="${1:-100}"
if [ -n "${2:-}" ]; then
    export VSWITCH_STORM_SEED="$2"
fi
exec ./scripts/test.sh --test storm -- --nocapture
