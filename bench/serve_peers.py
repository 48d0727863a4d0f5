"""Benchmark: this server against peer servers on the same ONNX graph (MLServer, LitServe, BentoML).

Each peer runs in its own virtualenv under bench/.peers/<peer>/ (git-ignored), created on the
first run with pip: MLServer 1.7.1 (with uvloop==0.21.0: 1.7.1's worker crashes with uvloop 0.23),
LitServe, BentoML, each with uvicorn[standard] (httptools) so every peer gets the fast HTTP parser.
Every server runs one worker with one ONNX Runtime thread; MLServer with parallel workers and
adaptive batching off, and in its two other configurations (`MLSERVER_CONFIGS`); the bulk targets
are against the best of them. A small ONNX Runtime runtime (MLServer), LitAPI (LitServe) and service
(BentoML) are written into a temporary folder. Before measuring, each peer's answer to the same
rows is checked equal to `session.run` of the graph.

Loads (serving.loadgen, on the same 2 cores): single rows at concurrency 16 and 1,000-row requests
at concurrency 4; each peer in its own format (MLServer: v2 JSON; LitServe and BentoML: records),
this server in all of them (and v2 binary for bulk). Rounds are interleaved across servers;
the median and the range over rounds are reported.

Run: .venv/bin/python bench/serve_peers.py [--rounds 3] [--seconds 3] [--peers mlserver mlserver-batching ...]
(`make bench-peers`; not part of `make test` or `make bench`). Writes bench/results/serve_peers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
from serve_common import MODEL, figure, free_port, print_table, scratch_dir, server_args, write_results  # noqa: E402

from driftloop.schema import NUMPY_DTYPE  # noqa: E402
from serving.loadgen import run_load, start_process, stop_process, wait_ready  # noqa: E402
from serving.testing import (  # noqa: E402
    TEST_INPUTS,
    build_test_package,
    records_payload,
    score_rows,
    synthetic_rows,
    v2_binary_payload,
    v2_payload,
)

PEERS_DIR = Path(__file__).resolve().parent / ".peers"
REQUIREMENTS = {
    "mlserver": ["mlserver==1.7.1", "uvloop==0.21.0", "uvicorn[standard]", "onnxruntime==1.32.0"],
    "litserve": ["litserve==0.2.19", "uvicorn[standard]", "onnxruntime==1.32.0"],
    "bentoml": ["bentoml==1.4.40", "uvicorn[standard]", "onnxruntime==1.32.0"],
}
# MLServer in the three configurations its docs offer for one model on one machine; the targets
# compare with the best of those measured: parallel workers off and adaptive batching off (the
# issue's 326k rows/s), adaptive batching on (requests merged up to 4,000 rows or 2 ms), and one
# parallel inference worker (decoding in the front process, inference in the worker: two processes).
MLSERVER_CONFIGS = {
    "mlserver": {"parallel_workers": 0, "max_batch_size": 0, "max_batch_time": 0.0},
    "mlserver-batching": {"parallel_workers": 0, "max_batch_size": 4000, "max_batch_time": 0.002},
    "mlserver-workers": {"parallel_workers": 1, "max_batch_size": 0, "max_batch_time": 0.0},
}
PEERS = [*MLSERVER_CONFIGS, "litserve", "bentoml"]
VENV = {**{name: "mlserver" for name in MLSERVER_CONFIGS}, "litserve": "litserve", "bentoml": "bentoml"}
FORMAT = {**{name: "v2" for name in MLSERVER_CONFIGS}, "litserve": "records", "bentoml": "records"}

# Records -> feeds, shared by the LitServe and BentoML peers (they cannot import driftloop).
_COLUMNS = {s.name: np.dtype(NUMPY_DTYPE[s.datatype]).name for s in TEST_INPUTS}
_RECORDS_TO_FEEDS = f"""
import numpy as np
import onnxruntime as ort

COLUMNS = {_COLUMNS!r}


def make_session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def feeds_of(instances):
    feeds = {{}}
    for name, dtype in COLUMNS.items():
        values = [r.get(name) for r in instances]
        if dtype == "object":
            array = np.empty(len(values), dtype=object)
            array[:] = values
        elif dtype.startswith("float"):
            array = np.array([np.nan if v is None else v for v in values], dtype=dtype)
        else:
            array = np.array(values, dtype=dtype)
        feeds[name] = array.reshape(-1, 1)
    return feeds
"""

_MLSERVER_RUNTIME = """
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.settings.parameters.uri, options, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {}
        for tensor in payload.inputs:
            if tensor.datatype == "BYTES":
                values = StringCodec.decode_input(tensor)
                array = np.empty(len(values), dtype=object)
                array[:] = values
            else:
                array = NumpyCodec.decode_input(tensor)
            feeds[tensor.name] = array.reshape(-1, 1)
        scores = self.session.run(["probability"], feeds)[0]
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("probability", scores)])
"""

_LITSERVE_APP = """
import sys

import litserve as ls

from feeds import feeds_of, make_session


class FlightDelayAPI(ls.LitAPI):
    def setup(self, device):
        self.session = make_session(sys.argv[2])

    def decode_request(self, request):
        return request["instances"]

    def predict(self, instances):
        return self.session.run(["probability"], feeds_of(instances))[0][:, 0].tolist()

    def encode_response(self, output):
        return {"predictions": output}


if __name__ == "__main__":
    server = ls.LitServer(FlightDelayAPI(), accelerator="cpu", workers_per_device=1)
    server.run(port=int(sys.argv[1]), host="127.0.0.1", generate_client_file=False)
"""

_BENTOML_SERVICE = """
import os

import bentoml

from feeds import feeds_of, make_session


@bentoml.service(workers=1)
class FlightDelay:
    def __init__(self) -> None:
        self.session = make_session(os.environ["PEER_MODEL"])

    @bentoml.api
    def predict(self, instances: list[dict]) -> dict:
        scores = self.session.run(["probability"], feeds_of(instances))[0][:, 0].tolist()
        return {"predictions": scores}
"""


def ensure_venv(peer: str) -> Path:
    """The peer's python, creating its virtualenv on the first run."""
    python = PEERS_DIR / peer / "bin" / "python"
    marker = PEERS_DIR / peer / ".installed"
    if not marker.exists():
        PEERS_DIR.mkdir(parents=True, exist_ok=True)
        print(f"creating {PEERS_DIR / peer} (first run; pip install {' '.join(REQUIREMENTS[peer])})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_DIR / peer)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS[peer]], check=True)
        marker.write_text("\n".join(REQUIREMENTS[peer]) + "\n")
    return python


def start_peer(peer: str, python: Path, folder: Path, model: Path) -> tuple[subprocess.Popen, str]:
    """Write the peer's app into `folder`, start it, wait until ready; (process, base URL)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(folder), "PEER_MODEL": str(model)}
    env.pop("VIRTUAL_ENV", None)
    (folder / "feeds.py").write_text(_RECORDS_TO_FEEDS)
    if peer in MLSERVER_CONFIGS:
        config = MLSERVER_CONFIGS[peer]
        (folder / "runtime.py").write_text(_MLSERVER_RUNTIME)
        settings = {
            "http_port": port,
            "grpc_port": free_port(),
            "metrics_port": free_port(),
            "parallel_workers": config["parallel_workers"],
            "host": "127.0.0.1",
        }
        (folder / "settings.json").write_text(json.dumps(settings))
        model_settings = {
            "name": MODEL,
            "implementation": "runtime.OnnxRuntimeModel",
            "max_batch_size": config["max_batch_size"],
            "max_batch_time": config["max_batch_time"],
            "parameters": {"uri": str(model)},
        }
        (folder / "model-settings.json").write_text(json.dumps(model_settings))
        args = [str(python.parent / "mlserver"), "start", str(folder)]
        ready = f"{base}/v2/models/{MODEL}/ready"
    elif peer == "litserve":
        (folder / "app.py").write_text(_LITSERVE_APP)
        args = [str(python), str(folder / "app.py"), str(port), str(model)]
        ready = f"{base}/health"
    else:
        (folder / "service.py").write_text(_BENTOML_SERVICE)
        args = [str(python.parent / "bentoml"), "serve", "service:FlightDelay", "--port", str(port), "--host", "127.0.0.1"]
        ready = f"{base}/readyz"
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed with the process
    # Own session: LitServe and BentoML start worker processes that outlive a SIGTERM to the parent
    # alone; `stop_peer` signals the whole group.
    proc = subprocess.Popen(args, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(ready, timeout_s=180, proc=proc)
    except RuntimeError:
        stop_peer(proc)
        raise RuntimeError(f"{peer} did not start; see {folder / 'server.log'}") from None
    return proc, base


def stop_peer(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM to the peer's process group, then SIGKILL to what is left after `timeout_s`."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; give its workers a moment, then make sure
            time.sleep(1.0)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def check_answer(name: str, url: str, fmt: str, frame, expected: np.ndarray) -> None:
    """The server's scores for `frame` equal `session.run`'s (1e-5)."""
    body = v2_payload(frame) if fmt == "v2" else records_payload(frame)
    r = httpx.post(url, json=body, timeout=30)
    r.raise_for_status()
    out = r.json()
    got = np.asarray(out["outputs"][0]["data"] if fmt == "v2" else out["predictions"], dtype=np.float64)
    np.testing.assert_allclose(got.reshape(-1), expected.reshape(-1), rtol=1e-5, atol=1e-6, err_msg=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--peers", nargs="+", default=PEERS, choices=PEERS)
    opts = parser.parse_args()
    tmp = scratch_dir("serve_peers_")
    repo = tmp / "repo"
    build_test_package(repo / MODEL / "1", model_name=MODEL)
    model = repo / MODEL / "1" / "model.onnx"
    check_rows = synthetic_rows(7, seed=3, null_fraction=0.0)  # peers' v2 codecs take no JSON null
    expected = score_rows(model, check_rows)
    one, bulk = synthetic_rows(1, seed=1, null_fraction=0.0), synthetic_rows(1000, seed=2, null_fraction=0.0)
    bodies = {
        "v2": (orjson.dumps(v2_payload(one)), orjson.dumps(v2_payload(bulk)), {}),
        "records": (orjson.dumps(records_payload(one)), orjson.dumps(records_payload(bulk)), {}),
    }
    binary, header_length = v2_binary_payload(bulk)

    procs: list[subprocess.Popen] = []
    peer_procs: list[subprocess.Popen] = []
    targets: dict[str, tuple[str, str]] = {}  # label: (url, format)
    try:
        port = free_port()
        procs.append(start_process(server_args("driftloop", repo, port), f"http://127.0.0.1:{port}/v2/health/ready"))
        ours = f"http://127.0.0.1:{port}"
        targets["driftloop v2"] = (f"{ours}/v2/models/{MODEL}/infer", "v2")
        targets["driftloop records"] = (f"{ours}/v1/models/{MODEL}:predict", "records")
        for peer in opts.peers:
            python = ensure_venv(VENV[peer])
            folder = tmp / peer
            folder.mkdir()
            proc, base = start_peer(peer, python, folder, model)
            peer_procs.append(proc)
            path = f"/v2/models/{MODEL}/infer" if peer in MLSERVER_CONFIGS else "/predict"
            targets[f"{peer} {FORMAT[peer]}"] = (base + path, FORMAT[peer])
        for name, (url, fmt) in targets.items():
            check_answer(name, url, fmt, check_rows, expected)
        print("every server's answer equals session.run", flush=True)

        single: dict[str, list[float]] = {k: [] for k in targets}
        bulk_rows: dict[str, list[float]] = {k: [] for k in [*targets, "driftloop v2 binary"]}
        for _ in range(opts.rounds):
            for name, (url, fmt) in targets.items():
                small, big, headers = bodies[fmt]
                single[name].append(run_load(url, small, concurrency=16, seconds=opts.seconds).rps)
                bulk_rows[name].append(1000 * run_load(url, big, concurrency=4, seconds=opts.seconds).rps)
            url = targets["driftloop v2"][0]
            res = run_load(url, binary, concurrency=4, seconds=opts.seconds,
                           headers={"inference-header-content-length": str(header_length)})  # fmt: skip
            bulk_rows["driftloop v2 binary"].append(1000 * res.rps)
    finally:
        for proc in procs:
            stop_process(proc)
        for proc in peer_procs:
            stop_peer(proc)

    points = []
    for name in bulk_rows:
        row = {"server": name}
        if single.get(name):
            row.update({"1-row req/s": statistics.median(single[name]),
                        "1-row range": f"{min(single[name]):,.0f}-{max(single[name]):,.0f}"})  # fmt: skip
        row.update({"1000-row rows/s": statistics.median(bulk_rows[name]),
                    "1000-row range": f"{min(bulk_rows[name]):,.0f}-{max(bulk_rows[name]):,.0f}"})  # fmt: skip
        points.append(row)
    print_table("serve_peers", points, ["server", "1-row req/s", "1-row range", "1000-row rows/s", "1000-row range"])
    figures = []
    for peer in opts.peers:
        label = f"{peer} {FORMAT[peer]}"
        ours = f"driftloop {FORMAT[peer]}"
        figures.append(figure(f"one_row_req_per_s_vs_{peer}", statistics.median(single[ours]), "req/s", label,
                              statistics.median(single[label])))  # fmt: skip
        figures.append(figure(f"rows_per_s_1000_vs_{peer}", statistics.median(bulk_rows[ours]), "rows/s", label,
                              statistics.median(bulk_rows[label])))  # fmt: skip
    measured = [f"{peer} v2" for peer in MLSERVER_CONFIGS if peer in opts.peers]
    if measured:  # the targets are against MLServer's best configuration measured in this run
        best = max(measured, key=lambda label: statistics.median(bulk_rows[label]))
        ml = statistics.median(bulk_rows[best])
        figures.append(figure("v2_json_rows_per_s_vs_best_mlserver", statistics.median(bulk_rows["driftloop v2"]),
                              "rows/s", best, ml, 1.5))  # fmt: skip
        figures.append(figure("records_rows_per_s_vs_best_mlserver", statistics.median(bulk_rows["driftloop records"]),
                              "rows/s", best, ml, 1.0))  # fmt: skip
    path = write_results("serve_peers", figures, points, "Loopback; one worker and one ORT thread each; interleaved.")
    print()
    for f in figures:
        target = f" (target {f['target']}: {'met' if f['met'] else 'NOT met'})" if f["target"] else ""
        print(f"{f['name']}: {f['value']:,.0f} {f['unit']} = {f['ratio']:.2f}x {f['baseline']}{target}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
