#!/usr/bin/env python3
"""Fallback HTTP/1.1 keep-alive load generator (used when `wrk` is missing).

Usage: rps.py URL SECONDS CONNECTIONS PROCESSES [MAX_REQUESTS] [Header: value ...]

Each process runs CONNECTIONS asyncio keep-alive connections, each sending one
GET at a time (no pipelining) until SECONDS elapse or MAX_REQUESTS (total, split
over processes; 0 = unbounded) are done. Prints one line:
    requests=<n> seconds=<s> rps=<r> non2xx=<n> errors=<n>
Python is the bottleneck well before a fast server is, so treat the figure as
a lower bound.
"""
import asyncio
import multiprocessing
import sys
import time
from urllib.parse import urlsplit


async def one_conn(host, port, request, deadline, budget, stats):
    reader = writer = None
    while time.monotonic() < deadline and budget[0] > 0:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            budget[0] -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split()[1])
            length = 0
            close = False
            for h in lines[1:]:
                k, _, v = h.partition(b":")
                k = k.strip().lower()
                if k == b"content-length":
                    length = int(v.strip())
                elif k == b"connection" and v.strip().lower() == b"close":
                    close = True
            if length:
                await reader.readexactly(length)
            stats["n"] += 1
            if not 200 <= status < 300:
                stats["non2xx"] += 1
            if close:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            stats["errors"] += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


async def worker(url, seconds, conns, max_requests, headers):
    u = urlsplit(url)
    path = u.path + (("?" + u.query) if u.query else "")
    hdrs = "".join(f"{h}\r\n" for h in headers)
    request = f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\n{hdrs}\r\n".encode()
    stats = {"n": 0, "non2xx": 0, "errors": 0}
    budget = [max_requests if max_requests > 0 else 1 << 62]
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(one_conn(u.hostname, u.port or 80, request, deadline, budget, stats)
                           for _ in range(conns)))
    return stats


def run(args):
    return asyncio.run(worker(*args))


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    url, seconds, conns, procs = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    max_requests = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    headers = sys.argv[6:]
    per_proc = (max_requests + procs - 1) // procs if max_requests > 0 else 0
    t0 = time.monotonic()
    with multiprocessing.Pool(procs) as pool:
        results = pool.map(run, [(url, seconds, conns, per_proc, headers)] * procs)
    elapsed = time.monotonic() - t0
    total = {k: sum(r[k] for r in results) for k in ("n", "non2xx", "errors")}
    print(f"requests={total['n']} seconds={elapsed:.2f} rps={total['n'] / elapsed:.0f} "
          f"non2xx={total['non2xx']} errors={total['errors']}")


if __name__ == "__main__":
    main()
