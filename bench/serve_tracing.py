"""Benchmark: the cost of OpenTelemetry tracing at 10% sampling on single-row requests.

Three apps over the same package, called in-process through the whole ASGI stack (bench/serve_cpu.py's
`_call`: middleware, fast path, parsing, batcher and its inference thread, prediction log): tracing
off; an identical second app with tracing off (the control: its ratio to the first is the
measurement's own bias and noise); and tracing on with `OTEL_TRACES_SAMPLER=parentbased_traceidratio`,
`OTEL_TRACES_SAMPLER_ARG=0.1` (`--ratio`) and the real OTLP/HTTP exporter behind the server's
`BatchSpanProcessor` (2048 spans or 5 s per export, on its own thread) sending to a sink process on
loopback. The export thread's CPU is measured on its own thread clock, taken out of whichever round it
ran in, and its total (plus the final flush) spread over the traced app's requests.

The machine is shared (2 cores, other jobs), so the apps are interleaved request by request (off,
on, control, the order rotating), each request timed on its own, so the three see the same load from
moment to moment; a round is `--requests` requests per app, and each round gives a ratio against
tracing off in the same round:
- CPU: process CPU time per request: the event loop's and the inference thread's, measured around
  each request; the export thread's as above; the prediction-log writers' (a background flush, the
  same work in every app) left out, as their wake-ups land in random requests; its inverse is single-row req/s on a CPU-bound server. The headline figure:
  load from other processes barely moves it.
- wall: requests per second of wall time in the same rounds (moves with the machine's load).
Reported: the median ratio over rounds and its range (min-max). Target: tracing on keeps >= 95% of
single-row req/s (median CPU ratio off/on >= 0.95).

Run: .venv/bin/python bench/serve_tracing.py [--rounds 20 --requests 200]
Writes bench/results/serve_tracing.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402
from serve_common import MODEL, figure, free_port, print_table, scratch_dir, write_results  # noqa: E402
from serve_cpu import _call  # noqa: E402

from serving.app import create_app  # noqa: E402
from serving.config import ServeSettings  # noqa: E402
from serving.testing import build_test_package, records_payload, synthetic_rows  # noqa: E402

SINK = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds (median and range of their ratios reported)")
    parser.add_argument("--requests", type=int, default=200, help="single-row requests per app per round, interleaved")
    parser.add_argument("--ratio", type=float, default=0.1, help="sampling ratio of the traced app")
    opts = parser.parse_args()
    tmp = scratch_dir("serve_tracing_")
    build_test_package(tmp / "repo" / MODEL / "1", model_name=MODEL)
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    os.environ.update({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(opts.ratio),
                       "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{port}/v1/traces",
                       "OTEL_SERVICE_NAME": "driftloop-bench"})  # fmt: skip
    apps = {
        "tracing off": create_app(ServeSettings(repository=tmp / "repo", log_dir=tmp / "logs-off")),
        # an identical second app: its ratio to the first is the measurement's own bias and noise
        "tracing off (control)": create_app(ServeSettings(repository=tmp / "repo", log_dir=tmp / "logs-ctl")),
        f"tracing on, {opts.ratio:.0%}": create_app(ServeSettings(repository=tmp / "repo", log_dir=tmp / "logs-on", tracing=True)),
    }
    off_name, control_name, on_name = apps
    path, body = f"/v1/models/{MODEL}:predict", orjson.dumps(records_payload(synthetic_rows(1, seed=1)))

    async def run() -> dict[str, list[tuple[float, float]]]:
        per_round: dict[str, list[tuple[float, float]]] = {k: [] for k in apps}  # (cpu s/req, wall s/req)
        contexts = [app.router.lifespan_context(app) for app in apps.values()]
        for c in contexts:
            await c.__aenter__()
        traced = apps[on_name].state.driftloop.tracing
        try:
            for app in apps.values():
                for _ in range(100):
                    await _call(app, path, body, [])  # warm-up
            traced.provider.force_flush()
            (thread,) = [t for t in threading.enumerate() if t.name.startswith("OtelBatchSpan") and t.is_alive()]
            clock = time.pthread_getcpuclockid(thread.ident)  # the export thread's CPU clock (ns)
            export = -time.clock_gettime(clock)
            # background threads (prediction-log writers, the exporter): their CPU lands in whichever request
            # runs when they wake, so it is taken out of every request (the exporter's is added back below)
            clocks = [time.pthread_getcpuclockid(t.ident) for t in threading.enumerate()
                      if t.ident is not None and t is not threading.main_thread() and t.is_alive()
                      and not t.name.startswith("driftloop-infer")]  # fmt: skip

            def background() -> float:
                return sum(map(time.clock_gettime, clocks))

            order = list(apps.items())
            for _ in range(opts.rounds):
                cpu, wall = dict.fromkeys(apps, 0.0), dict.fromkeys(apps, 0.0)
                for i in range(opts.requests):  # one request per app in turn, the order rotating
                    for name, app in order[i % 3:] + order[: i % 3]:
                        x, w, c = background(), time.perf_counter(), time.process_time()
                        await _call(app, path, body, [])
                        c, w = time.process_time() - c, time.perf_counter() - w
                        cpu[name] += c - (background() - x)
                        wall[name] += w
                for name in apps:
                    per_round[name].append((cpu[name] / opts.requests, wall[name] / opts.requests))
            c = time.process_time()
            traced.provider.force_flush()  # what is still queued, exported on this thread
            export += time.clock_gettime(clock) + time.process_time() - c
        finally:
            for c in contexts:
                await c.__aexit__(None, None, None)
        share = export / (opts.rounds * opts.requests)  # every span the traced app made, spread over its requests
        per_round[on_name] = [(c + share, w) for c, w in per_round[on_name]]
        print(f"export thread: {share * 1e6:.1f} us CPU per traced-app request")
        return per_round

    try:
        per_round = asyncio.run(run())
    finally:
        sink.terminate()
        sink.wait(10)
    off = per_round[off_name]

    def ratios(name: str, k: int) -> list[float]:
        """Per round: req/s of `name` over tracing off's (CPU: k=0, wall: k=1)."""
        return [b[k] / a[k] for a, b in zip(per_round[name], off, strict=True)]

    points = []
    for name, rounds in per_round.items():
        cpu, wall = [c for c, _ in rounds], [w for _, w in rounds]
        cpu_r, wall_r = ratios(name, 0), ratios(name, 1)
        points.append({
            "app": name, "cpu us/req": statistics.median(cpu) * 1e6,
            "cpu us/req range": f"{min(cpu) * 1e6:.0f}-{max(cpu) * 1e6:.0f}",
            "req/cpu-s": 1 / statistics.median(cpu), "req/s (wall)": 1 / statistics.median(wall),
            "req/s range": f"{1 / max(wall):,.0f}-{1 / min(wall):,.0f}",
            "cpu ratio": statistics.median(cpu_r), "cpu ratio range": f"{min(cpu_r):.3f}-{max(cpu_r):.3f}",
            "wall ratio": statistics.median(wall_r), "wall ratio range": f"{min(wall_r):.3f}-{max(wall_r):.3f}",
        })  # fmt: skip
    p_off, p_ctl, p_on = points
    label = f"{opts.ratio:.0%}"
    figures = [
        figure(f"single_row_req_per_cpu_s_tracing_{label}", p_on["req/cpu-s"], "req/cpu-s", "tracing off",
               p_on["req/cpu-s"] / p_on["cpu ratio"], 0.95),
        figure(f"single_row_req_per_s_wall_tracing_{label}", p_on["req/s (wall)"], "req/s", "tracing off",
               p_on["req/s (wall)"] / p_on["wall ratio"], 0.95),
        figure("single_row_req_per_cpu_s_control", p_ctl["req/cpu-s"], "req/cpu-s", "tracing off",
               p_ctl["req/cpu-s"] / p_ctl["cpu ratio"]),
    ]  # fmt: skip
    for f, p in zip(figures, (p_on, p_on, p_ctl), strict=True):
        f["ratio"] = p["cpu ratio"] if "cpu" in f["name"] else p["wall ratio"]  # the median of per-round ratios
        f["ratio_range"] = p["cpu ratio range"] if "cpu" in f["name"] else p["wall ratio range"]
        if f["target"] is not None:
            f["met"] = bool(f["ratio"] >= 0.95)
    print_table("serve_tracing", points, ["app", "cpu us/req", "cpu us/req range", "req/cpu-s", "req/s (wall)",
                                          "req/s range", "cpu ratio", "cpu ratio range", "wall ratio",
                                          "wall ratio range"])  # fmt: skip
    out = write_results("serve_tracing", figures, points,
                        f"In-process ASGI calls; {opts.rounds} interleaved rounds of {opts.requests} single-row "
                        "requests per app; ratio = req/s over the tracing-off round of the same round, median "
                        "(range) over rounds; CPU = process CPU time (inference and exporter threads included).")
    for f in figures:
        target = f" (target {f['target']}: {'met' if f['met'] else 'NOT met'})" if f["target"] else ""
        print(f"{f['name']}: {f['value']:,.0f} {f['unit']} = {f['ratio']:.3f}x {f['baseline']} "
              f"(median; rounds {f['ratio_range']}){target}")
    print(f"wrote {out}")

if __name__ == "__main__":
    main()
