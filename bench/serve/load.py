"""Load generator for bench/serve, run as its own process: keep-alive HTTP/1.1 over raw
asyncio streams (an HTTP library would cost more CPU than the servers it measures).

    python bench/serve/load.py URL BODY_FILE --key KEY --concurrency C --seconds S

Prints JSON: requests, errors (non-200), seconds, requests/s, latency percentiles (ms)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

import numpy as np


async def worker(host: str, port: int, request: bytes, stop: float,
                 latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if b" 200 " not in status_line:
                errors.append(int(status_line.split()[1]))
    finally:
        writer.close()


async def run(url: str, body: bytes, key: str | None, concurrency: int, seconds: float) -> dict:
    parts = urlsplit(url)
    headers = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}",
               "Content-Type: application/json", f"Content-Length: {len(body)}"]
    if key:
        headers.append(f"X-API-Key: {key}")
    request = ("\r\n".join(headers) + "\r\n\r\n").encode() + body
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    stop = started + seconds
    await asyncio.gather(*(worker(parts.hostname, parts.port, request, stop, latencies, errors)
                           for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {"requests": len(latencies), "errors": len(errors), "seconds": round(elapsed, 3),
            "rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("body")
    parser.add_argument("--key")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with open(args.body, "rb") as handle:
        body = handle.read()
    print(json.dumps(asyncio.run(run(args.url, body, args.key, args.concurrency, args.seconds))))


if __name__ == "__main__":
    main()
