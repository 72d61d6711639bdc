#!/usr/bin/env python3
"""Control-plane read latency: `GET /v1/networkinterfaces` while N attaches run.

Reads must never wait behind writes: an attach holds the controller's state lock across
netlink work (creating the TAP, moving it into the namespace, addressing it), and a read that
takes the same lock waits for it. This starts a real vswitchd, creates N namespaces, then
measures the latency of back-to-back reads on the control socket, first idle, then while N
`vswitchctl attach` run at once. It prints p50, p99 and max per phase, as JSON on the last line.

Usage (root):  perf/control_reads.py --vswitchd target/release/vswitchd \
                   --vswitchctl target/release/vswitchctl [--attaches 20] [--idle-seconds 2]

Everything it creates (namespaces vscr<pid>-<i>, a temporary state directory and socket, the
daemon) is removed on exit. Traffic stays on the Unix socket. Nothing here asserts on timing.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REQUEST = b"GET /v1/networkinterfaces HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def read_once(path):
    """One request on a fresh connection; returns (seconds, status line)."""
    start = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        conn.sendall(REQUEST)
        chunks = []
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    elapsed = time.perf_counter() - start
    head = b"".join(chunks).split(b"\r\n", 1)[0].decode(errors="replace")
    return elapsed, head


def percentile(values, q):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(samples):
    if not samples:
        return {"reads": 0}
    ms = [s * 1000 for s in samples]
    return {
        "reads": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(percentile(ms, 0.99), 3),
        "max_ms": round(max(ms), 3),
    }


def reader(path, stop, samples, errors):
    while not stop.is_set():
        try:
            elapsed, head = read_once(path)
        except OSError as err:
            errors.append(str(err))
            time.sleep(0.01)
            continue
        if " 200 " not in head:
            errors.append(head)
        samples.append(elapsed)


def wait_for_socket(path, daemon, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            sys.exit(f"vswitchd exited with {daemon.returncode} before serving")
        if os.path.exists(path):
            try:
                read_once(path)
                return
            except OSError:
                pass
        time.sleep(0.05)
    sys.exit(f"vswitchd did not serve {path} within {timeout} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vswitchd", required=True)
    parser.add_argument("--vswitchctl", required=True)
    parser.add_argument("--attaches", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("control_reads.py needs root: it creates network namespaces and TAP devices")
    for tool in ("ip",):
        if shutil.which(tool) is None:
            sys.exit(f"control_reads.py needs {tool} (iproute2)")

    tmp = tempfile.mkdtemp(prefix="vscr")
    sock = os.path.join(tmp, "vs.sock")
    names = [f"vscr{os.getpid()}-{i}" for i in range(args.attaches)]
    daemon = None
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
        daemon = subprocess.Popen(
            [args.vswitchd, "--socket", sock, "--state-dir", os.path.join(tmp, "state"),
             "--workers", "1", "--log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "vswitchd.log"), "w"))
        wait_for_socket(sock, daemon)

        result = {"label": args.label, "attaches": args.attaches}
        for phase in ("idle", "attaching"):
            stop = threading.Event()
            samples, errors = [], []
            thread = threading.Thread(target=reader, args=(sock, stop, samples, errors))
            thread.start()
            started = time.monotonic()
            if phase == "idle":
                time.sleep(args.idle_seconds)
            else:
                attaches = [
                    subprocess.Popen([args.vswitchctl, "--socket", sock, "attach", name],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    for name in names
                ]
                failed = [p.stderr.read().decode() for p in attaches if p.wait() != 0]
                if failed:
                    sys.exit(f"{len(failed)} attaches failed: {failed[0]}")
            result[phase + "_seconds"] = round(time.monotonic() - started, 3)
            stop.set()
            thread.join()
            if errors:
                sys.exit(f"{len(errors)} reads failed during {phase}: {errors[0]}")
            result[phase] = summary(samples)
            print(f"{phase:9} {result[phase]}  ({result[phase + '_seconds']} s)", flush=True)
        print(json.dumps(result))
    finally:
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
        for name in names:
            subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
