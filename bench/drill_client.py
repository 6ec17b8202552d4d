#!/usr/bin/env python3
"""The client of bench/lb_failover.sh: the same user for hastack and for the incumbents.

Every 20 ms it opens a new connection to URL and sends GET (2 s timeout), as the drills'
reader does, and records when it was sent, how long it took and whether it got a 200.
It stops when the file STOP exists, then reads the fault window from the file STOP
("start end" as Unix times) and prints one JSON line: the outage (longest time without a successful answer
in the window, the first gap from its start; answers after its end do not count), the
failed and total requests, and the slowest request; then exits.

Usage: drill_client.py URL HOST STOP
"""

import json
import socket
import sys
import time
from urllib.parse import urlparse

EVERY = 0.02
TIMEOUT = 2.0


def get(host, port, name):
    s = socket.create_connection((host, port), timeout=TIMEOUT)
    try:
        s.settimeout(TIMEOUT)
        s.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        ok = head.split(b" ", 2)[1:2] == [b"200"]
        while s.recv(65536):
            pass
        return ok
    finally:
        s.close()


def main():
    url, name, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    u = urlparse(url)
    samples = []
    nxt = time.time()
    import os

    while not os.path.exists(stop):
        at = time.time()
        try:
            ok = get(u.hostname, u.port or 80, name)
        except OSError:
            ok = False
        samples.append((at, time.time() - at, ok))
        nxt += EVERY
        time.sleep(max(0.0, nxt - time.time()))
        if nxt < time.time():
            nxt = time.time()
    time.sleep(0.1)  # the window is written with the stop file
    for line in open(stop).read().splitlines()[:1]:
        start, end = (float(x) for x in line.split())
        window = [s for s in samples if s[0] + s[1] >= start and s[0] < end]
        answered = sorted(s[0] + s[1] for s in window if s[2] and s[0] + s[1] <= end)
        last, longest = start, 0.0
        for a in answered:
            longest = max(longest, a - last)
            last = max(last, a)
        failed = [i for i, s in enumerate(window) if not s[2]]
        recovered = not failed or any(
            s[2] and s[0] + s[1] <= end for s in window[failed[-1] + 1 :]
        )
        print(
            json.dumps(
                {
                    "outage_s": round(longest, 3) if recovered else None,
                    "failed": len(failed),
                    "requests": len(window),
                    "slowest_s": round(max((s[1] for s in window), default=0.0), 3),
                }
            )
        )


if __name__ == "__main__":
    main()
