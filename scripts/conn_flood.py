#!/usr/bin/env python3
"""Idle-connection flood against a running `hazel serve` (BENCHMARKS.md).

Opens N TCP connections to the agent that never send a byte, spread over
loopback source addresses 127.0.0.2.. (so the per-IP cap is not the only
limit hit), holds them, then closes them, and prints the agent's RSS
(VmRSS from /proc/PID/status) before, while held and after, and whether
/healthz answered during the flood. Loopback only.

    scripts/conn_flood.py --pid $(pidof hazel) --port 8088 --count 20000

Needs a descriptor limit above N for itself (`ulimit -n`); sockets it
cannot create are counted as failed.
"""

import argparse
import socket
import time


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def fds(pid):
    import os

    return len(os.listdir(f"/proc/{pid}/fd"))


def healthz(port):
    start = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = s.recv(64)
        status = data[9:12].decode(errors="replace") or "closed"
    except OSError as e:
        status = f"error {e}"
    return status, (time.monotonic() - start) * 1000


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--sources", type=int, default=100, help="source addresses 127.0.0.2..")
    p.add_argument("--hold", type=float, default=3.0, help="seconds to hold them")
    args = p.parse_args()

    print(f"before: rss {rss_kb(args.pid)} kB, fds {fds(args.pid)}")
    socks, failed = [], 0
    for i in range(args.count):
        try:
            s = socket.socket()
        except OSError:  # out of descriptors here: count it, keep going
            failed += 1
            continue
        try:
            s.bind((f"127.0.0.{2 + i % args.sources}", 0))
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", args.port))
            socks.append(s)
        except OSError:
            failed += 1
            s.close()
    time.sleep(args.hold)
    # Count the ones the agent closed (past its caps) by a zero-byte read.
    open_now = 0
    for s in socks:
        try:
            if s.recv(1) == b"":
                continue
        except BlockingIOError:
            open_now += 1
        except OSError:
            continue
    status, ms = healthz(args.port)
    print(
        f"held: {len(socks)} opened ({failed} failed), {open_now} still open, "
        f"rss {rss_kb(args.pid)} kB, fds {fds(args.pid)}, /healthz {status} in {ms:.1f} ms"
    )
    for s in socks:
        s.close()
    time.sleep(args.hold)
    status, ms = healthz(args.port)
    print(f"after close: rss {rss_kb(args.pid)} kB, fds {fds(args.pid)}, /healthz {status} in {ms:.1f} ms")


if __name__ == "__main__":
    main()
