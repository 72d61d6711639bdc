#!/usr/bin/env bash
# Installs vswitch where a Debian administrator looks for it:
#   PREFIX/bin/vswitchd, PREFIX/bin/vswitchctl      the daemon and the CLI
#   /usr/lib/cni/vswitch-cni                        the CNI plugin, beside the reference ones
#   /etc/systemd/system/vswitchd.service            the unit (/lib/systemd/system with --prefix /usr)
#   /etc/vswitch/00-default.yaml                    the boot config, unless /etc/vswitch has one
#   PREFIX/share/doc/vswitch/                       README, docs and an example CNI conflist
#
# Usage: sudo ./scripts/install.sh [--prefix /usr/local] [--destdir DIR] [--from DIR]
#   --prefix   where the binaries and docs go (default /usr/local)
#   --destdir  stage everything under DIR (for packaging); nothing outside it is touched
#   --from     take the built binaries from DIR instead of building them
#              (default: cargo build --release, then target/release)
# Then: systemctl daemon-reload && systemctl enable --now vswitchd
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local
destdir=
from=
while [ "$#" -gt 0 ]; do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --destdir) destdir="${2:?--destdir needs a directory}"; shift 2 ;;
        --from) from="${2:?--from needs a directory}"; shift 2 ;;
        -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "scripts/install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$destdir" ] && [ "$(id -u)" -ne 0 ]; then
    echo "scripts/install.sh: installing into / needs root (or stage it with --destdir DIR)" >&2
    exit 1
fi
if [ -z "$from" ]; then
    cargo build --release -p vswitch --bins
    from=target/release
fi
for bin in vswitchd vswitchctl vswitch-cni; do
    if [ ! -x "$from/$bin" ]; then
        echo "scripts/install.sh: $from/$bin is missing; build it (cargo build --release -p vswitch --bins) or pass --from" >&2
        exit 1
    fi
done

bindir="$prefix/bin"
if [ "$prefix" = /usr ]; then
    unitdir=/lib/systemd/system
else
    unitdir=/etc/systemd/system
fi
docdir="$prefix/share/doc/vswitch"

install -D -m 0755 "$from/vswitchd" "$destdir$bindir/vswitchd"
install -D -m 0755 "$from/vswitchctl" "$destdir$bindir/vswitchctl"
install -D -m 0755 "$from/vswitch-cni" "$destdir/usr/lib/cni/vswitch-cni"
unit=$(mktemp)
trap 'rm -f "$unit"' EXIT
sed "s|@BINDIR@|$bindir|g" packaging/vswitchd.service >"$unit"
install -D -m 0644 "$unit" "$destdir$unitdir/vswitchd.service"
# The boot config is the administrator's once installed: never overwritten.
install -d -m 0755 "$destdir/etc/vswitch"
if ! compgen -G "$destdir/etc/vswitch/*.yaml" >/dev/null \
    && ! compgen -G "$destdir/etc/vswitch/*.yml" >/dev/null \
    && ! compgen -G "$destdir/etc/vswitch/*.json" >/dev/null; then
    install -m 0644 packaging/00-default.yaml "$destdir/etc/vswitch/00-default.yaml"
fi
install -D -m 0644 README.md "$destdir$docdir/README.md"
for doc in docs/*.md; do
    install -D -m 0644 "$doc" "$destdir$docdir/$doc"
done
install -D -m 0644 fixtures/cni/10-vswitch.conflist "$destdir$docdir/examples/10-vswitch.conflist"

echo "installed vswitch under ${destdir:-/} (binaries in $bindir, unit in $unitdir)"
if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "start it with: systemctl enable --now vswitchd"
fi
