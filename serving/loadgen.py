"""A small, bounded HTTP/1.1 load generator for loopback benchmarks (and the release plane's checks).

Raw asyncio streams with one pre-encoded request per connection (keep-alive): a Python client
such as httpx costs several times the server's own work per request, and on a 2-core machine the
generator shares the cores with the server, so the cheaper it is, the more the figures say about
the server. It only understands responses with a Content-Length (all of this server's).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np


@dataclass(frozen=True)
class LoadResult:
    """One load point: requests completed in `seconds`, their latencies, and their statuses."""

    concurrency: int
    seconds: float
    requests: int
    errors: int  # non-2xx answers
    latencies_ms: np.ndarray  # float64, one per completed request

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        """Latency percentile in ms (NaN when nothing completed)."""
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")


def encode_request(url: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """A POST request (or GET when `body` is empty) as raw HTTP/1.1 bytes."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    method = "POST" if body else "GET"
    lines = [f"{method} {path} HTTP/1.1", f"host: {parts.netloc}", "content-type: application/json"]
    lines.append(f"content-length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _worker(
    host: str, port: int, request: bytes, stop_at: float, lat: list[float], codes: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    perf = time.perf_counter
    try:
        while perf() < stop_at:
            t0 = perf()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lower = head.lower()
            i = lower.find(b"\r\ncontent-length:") + 2  # not inference-header-content-length
            length = int(lower[i + 15 : lower.find(b"\r\n", i)]) if i >= 2 else 0
            if length:
                await reader.readexactly(length)
            lat.append(perf() - t0)
            codes.append(status)
            if b"connection: close" in lower:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


async def _run(url: str, request: bytes, concurrency: int, seconds: float, warmup_s: float) -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if warmup_s > 0:
        stop = time.perf_counter() + warmup_s
        await asyncio.gather(*(_worker(host, port, request, stop, [], []) for _ in range(concurrency)))
    lat: list[float] = []
    codes: list[int] = []
    start = time.perf_counter()
    await asyncio.gather(
        *(_worker(host, port, request, start + seconds, lat, codes) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - start
    codes_arr = np.asarray(codes)
    return LoadResult(
        concurrency=concurrency,
        seconds=elapsed,
        requests=len(codes),
        errors=int(((codes_arr < 200) | (codes_arr >= 300)).sum()),
        latencies_ms=np.asarray(lat) * 1000.0,
    )


def run_load(
    url: str,
    body: bytes,
    *,
    concurrency: int,
    seconds: float = 3.0,
    warmup_s: float = 0.5,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """Send `body` to `url` from `concurrency` keep-alive connections for `seconds` (closed loop).

    Args:
        url: full URL on loopback, e.g. "http://127.0.0.1:8080/v1/models/m:predict".
        body: the JSON body (empty = GET).
        concurrency: connections, each with one request in flight.
        seconds: measuring time (bounded), after `warmup_s` of unmeasured load.
        warmup_s: unmeasured warm-up, seconds.
        headers: extra request headers.

    Returns:
        The `LoadResult`.
    """
    request = encode_request(url, body, headers)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    return runner(_run(url, request, concurrency, seconds, warmup_s))


def wait_ready(url: str, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` (GET) until it answers 200.

    Raises:
        RuntimeError: `proc` exited, or `timeout_s` passed.
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def start_process(args: list[str], ready_url: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `python <args>` and wait until `ready_url` answers; the caller terminates it.

    Raises:
        RuntimeError: it did not become ready.
    """
    proc = subprocess.Popen([sys.executable, *args], env={**os.environ, **(env or {})})
    try:
        wait_ready(ready_url, proc=proc)
    except RuntimeError:
        proc.kill()
        raise
    return proc


def stop_process(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM, then wait (kill after `timeout_s`)."""
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
