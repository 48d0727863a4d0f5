"""Shared pieces of the serving benchmarks (bench/serve_http.py, bench/serve_batching.py).

Not a benchmark itself: running it only prints this note. Servers run as subprocesses
(`python bench/serve_common.py serve ...`) so the load generator (this process) has its own GIL;
all traffic stays on 127.0.0.1.
"""

import argparse
import atexit
import shutil
import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODEL = "flight_delay"

from common import figure, print_table, write_results  # noqa: E402,F401  (re-exported for the serve benches)


def scratch_dir(prefix: str) -> Path:
    """A new temporary folder (`tempfile.mkdtemp`), removed with everything in it when the benchmark exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- server processes
def serve_driftloop(args) -> None:
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import Response

    from serving.app import create_app
    from serving.config import ServeSettings

    settings = ServeSettings(
        repository=Path(args.repo),
        max_batch_size=args.max_batch_size,
        max_queue_delay_ms=args.max_queue_delay_ms,
        intra_op_threads=args.intra_op_threads,
        max_queue_rows=100_000,
    )
    app = create_app(settings)

    @app.post("/v2/noop")
    async def noop(request: Request) -> Response:
        """The ceiling: same app, middleware and body read; no parsing, no inference."""
        await request.body()
        return Response(b'{"ok":true}', media_type="application/json")

    # The ceiling rides the same dispatch as the scoring routes (serving.app._FastPath).
    app.state.fast_routes.append((next(r for r in app.router.routes if getattr(r, "path", "") == "/v2/noop"), noop))

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def serve_naive(args) -> None:
    """A naive server: FastAPI + a pydantic body model, session.run per request on the event loop."""
    import numpy as np
    import onnxruntime as ort
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel

    from driftloop.schema import NUMPY_DTYPE
    from serving.testing import FEATURES, TEST_INPUTS

    datatype_of = {s.name: s.datatype for s in TEST_INPUTS}.__getitem__

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.intra_op_threads
    session = ort.InferenceSession(str(Path(args.repo) / MODEL / "1" / "model.onnx"), options)

    class Instance(BaseModel):
        carrier: str
        origin: str
        dest: str
        hour: int
        minute: int
        day_of_week: int
        distance: int
        temp: float | None = None
        dewp: float | None = None
        humid: float | None = None
        wind_dir: float | None = None
        wind_speed: float | None = None
        wind_gust: float | None = None
        precip: float | None = None
        pressure: float | None = None
        visib: float | None = None

    class Body(BaseModel):
        instances: list[Instance]

    app = FastAPI()

    @app.post("/v1/models/{name}:predict")
    async def predict(name: str, body: Body) -> dict:
        feeds = {}
        for c in FEATURES:
            values = [getattr(i, c) for i in body.instances]
            dtype = NUMPY_DTYPE[datatype_of(c)]
            if dtype is np.float32:
                values = [np.nan if v is None else v for v in values]
            feeds[c] = np.array(values, dtype=dtype).reshape(-1, 1)
        scores = session.run(["probability"], feeds)[0]
        return {"predictions": scores[:, 0].tolist(), "model_name": name}

    @app.get("/v2/health/ready")
    async def ready() -> dict:
        return {"ready": True}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def server_args(kind: str, repo: Path, port: int, **kw) -> list[str]:
    args = [str(Path(__file__).resolve()), "serve", kind, "--repo", str(repo), "--port", str(port)]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    s = sub.add_parser("serve")
    s.add_argument("kind", choices=["driftloop", "naive"])
    s.add_argument("--repo", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--max-batch-size", type=int, default=256)
    s.add_argument("--max-queue-delay-ms", type=float, default=0.0)
    s.add_argument("--intra-op-threads", type=int, default=1)
    args = parser.parse_args()
    if args.cmd != "serve":
        print(__doc__)
        return
    import logging

    logging.basicConfig(level="WARNING")
    (serve_driftloop if args.kind == "driftloop" else serve_naive)(args)


if __name__ == "__main__":
    main()
