"""Benchmark: CPU time per request through the whole server app, without sockets.

Each request runs the full ASGI app in-process (middleware, fast path, body read, decoding,
validation, batcher and its inference thread, statistics, response encoding); only the socket
and uvicorn's HTTP parsing are left out. Time is process CPU time (`time.process_time`, every
thread), not wall time, so a shared, loaded machine inflates it far less than req/s figures. Raw
`session.run` at batch 1,000 is measured in the same rounds, interleaved, for the ratio.

Formats: 1,000 rows as v2 binary tensors, v2 JSON, records; one row as v2 JSON and records.

With `--log` the prediction log is on (as `driftloop serve --log-dir` runs in the loop) and each
case ends its round with a flush, so its CPU includes writing its rows to Parquet.
`--profile CASE` runs that case under pyinstrument instead and prints where the time goes.
On a shared machine the minimum over rounds is the steadier figure; both are printed.

Run: .venv/bin/python bench/serve_cpu.py [--rounds 5] [--log] [--profile "v2 JSON"]
Writes bench/results/serve_cpu.json (not with --profile).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402
from serve_common import MODEL, figure, print_table, scratch_dir, write_results  # noqa: E402

from serving.app import create_app  # noqa: E402
from serving.config import ServeSettings  # noqa: E402
from serving.testing import (  # noqa: E402
    build_test_package,
    records_payload,
    synthetic_rows,
    v2_binary_payload,
    v2_payload,
)


async def _call(app, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
        "root_path": "",
    }
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # pragma: no cover - never reached: the body is complete

    status: list[int] = []

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    if status != [200]:
        raise RuntimeError(f"{path}: status {status}")


async def _profile(app, case) -> None:
    """Run one case (warm) under pyinstrument and print the call tree."""
    from pyinstrument import Profiler

    _, path, body, headers, n = case
    async with app.router.lifespan_context(app):
        for _ in range(5):
            await _call(app, path, body, headers)
        profiler = Profiler(interval=0.0002, async_mode="disabled")
        profiler.start()
        for _ in range(n * 10):
            await _call(app, path, body, headers)
        plog = app.state.driftloop.predlog
        if plog is not None:
            plog.flush()
        profiler.stop()
    print(profiler.output_text(unicode=False, color=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is reported)")
    parser.add_argument("--log", action="store_true", help="prediction log on; each case pays its flush")
    parser.add_argument("--profile", metavar="CASE", help="profile one case with pyinstrument (e.g. 'v2 JSON')")
    opts = parser.parse_args()
    tmp = scratch_dir("serve_cpu_")
    build_test_package(tmp / "repo" / MODEL / "1", model_name=MODEL)
    log_dir = tmp / "log" if opts.log else None
    app = create_app(ServeSettings(repository=tmp / "repo", max_queue_rows=100_000, log_dir=log_dir,
                                   flush_interval_s=3600))  # fmt: skip
    bulk = synthetic_rows(1000, seed=2)
    one = synthetic_rows(1, seed=1)
    binary, header_length = v2_binary_payload(bulk)
    infer, predict = f"/v2/models/{MODEL}/infer", f"/v1/models/{MODEL}:predict"
    cases = {  # name: (rows, path, body, headers, requests per round)
        "v2 binary": (1000, infer, binary, [(b"inference-header-content-length", str(header_length).encode())], 20),
        "v2 JSON": (1000, infer, orjson.dumps(v2_payload(bulk)), [], 20),
        "records": (1000, predict, orjson.dumps(records_payload(bulk)), [], 10),
        "v2 JSON, 1 row": (1, infer, orjson.dumps(v2_payload(one)), [], 300),
        "records, 1 row": (1, predict, orjson.dumps(records_payload(one)), [], 300),
    }

    import onnxruntime as ort

    from driftloop.schema import feeds_for
    from serving.testing import TEST_INPUTS

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(tmp / "repo" / MODEL / "1" / "model.onnx"), options)
    feeds = feeds_for(bulk, TEST_INPUTS)

    if opts.profile is not None:
        asyncio.run(_profile(app, cases[opts.profile]))
        return

    async def run() -> tuple[dict[str, list[float]], list[float]]:
        per_request: dict[str, list[float]] = {k: [] for k in cases}
        raw: list[float] = []
        async with app.router.lifespan_context(app):
            plog = app.state.driftloop.predlog
            for _, path, body, headers, _ in cases.values():
                await _call(app, path, body, headers)  # warm-up
            for _ in range(opts.rounds):
                for name, (_, path, body, headers, n) in cases.items():
                    if plog is not None:
                        plog.flush()
                    start = time.process_time()
                    for _ in range(n):
                        await _call(app, path, body, headers)
                    if plog is not None:
                        plog.flush()
                    per_request[name].append((time.process_time() - start) / n)
                start = time.process_time()
                for _ in range(20):
                    session.run(None, feeds)
                raw.append((time.process_time() - start) / 20)
        return per_request, raw

    per_request, raw = asyncio.run(run())
    raw_s = statistics.median(raw)
    points = [{"format": "raw session.run", "rows/req": 1000, "cpu ms/req": raw_s * 1e3,
               "min ms/req": min(raw) * 1e3, "rows/cpu-s": 1000 / raw_s, "x raw": 1.0}]  # fmt: skip
    figures = []
    for name, (rows, *_rest) in cases.items():
        s = statistics.median(per_request[name])
        points.append({"format": name, "rows/req": rows, "cpu ms/req": s * 1e3, "min ms/req": min(per_request[name]) * 1e3,
                       "rows/cpu-s": rows / s, "x raw": rows / s / (1000 / raw_s)})  # fmt: skip
        if rows == 1000:
            target = 0.5 if name == "v2 binary" else None
            figures.append(figure(f"rows_per_cpu_s_{name.replace(' ', '_').lower()}", 1000 / s, "rows/cpu-s",
                                  "raw session.run, batch 1000", 1000 / raw_s, target))  # fmt: skip
    v2_one = statistics.median(per_request["v2 JSON, 1 row"])
    rec_one = statistics.median(per_request["records, 1 row"])
    figures.append(figure("cpu_per_request_v2_vs_records_1_row", v2_one * 1e6, "us", "records, 1 row",
                          rec_one * 1e6, 1.05, higher_is_better=False))  # fmt: skip  ("level": within 5%)
    print_table("serve_cpu", points, ["format", "rows/req", "cpu ms/req", "min ms/req", "rows/cpu-s", "x raw"])
    note = "In-process ASGI calls; process CPU time; interleaved rounds" + ("; prediction log on." if opts.log else ".")
    path = write_results("serve_cpu" + ("_log" if opts.log else ""), figures, points, note)
    print()
    for f in figures:
        target = f" (target {f['target']}: {'met' if f['met'] else 'NOT met'})" if f["target"] else ""
        print(f"{f['name']}: {f['value']:,.0f} {f['unit']} = {f['ratio']:.2f}x {f['baseline']}{target}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
