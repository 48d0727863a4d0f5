"""Test model packages built with `onnx.helper`: real graphs over the real input columns.

No training code is needed: each builder writes a complete, verifiable package (model.onnx,
signature.json, model_card.json, model_card.md, reference.parquet, SHA256SUMS) whose graph is a
deterministic function of the raw columns of `TEST_INPUTS`: the test packages' own contract, a
fixed copy of the default dataset's inputs (so the serving and release tests exercise a realistic
signature without reading params.yaml: the server never does). The server itself only ever reads a
package's `signature.json`.

Graph of the default ("linear") package, all tensors `[N, 1]`:
    z = sum_i w_i * float(int_i) + sum_j v_j * where(isnan(f_j), 0, f_j) + carrier_term + origin_term + b
    probability = sigmoid(z)           (or sigmoid(-z) for `inverted=True`)
`version_weight` scales every weight, so two versions answer differently on the same rows.
`slow=True` adds a branch of `slow_layers` tanh(matmul) layers of width `slow_width` whose result is
multiplied by 0 and added to z: the scores are unchanged, the latency grows.
`mlp_width > 0` builds a wider MLP instead (16 -> width -> width -> 1), for batching benchmarks.

The release-plane tests reuse these helpers, so they are public and kept stable.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, helper, numpy_helper

from driftloop.package import write_sha256sums
from driftloop.payloads import records_body, v2_body
from driftloop.schema import OUTPUT, Signature, TensorSpec, feeds_for, output_specs

TEST_INPUTS: list[TensorSpec] = [
    *(TensorSpec(name=c, datatype="BYTES", shape=[-1, 1]) for c in ("carrier", "origin", "dest")),
    *(TensorSpec(name=c, datatype="INT64", shape=[-1, 1]) for c in ("hour", "minute", "day_of_week", "distance")),
    *(TensorSpec(name=c, datatype="FP32", shape=[-1, 1], nullable=True)
      for c in ("temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib")),
]  # fmt: skip
"""The test packages' inputs (their `signature.json`), in order."""
FEATURES: tuple[str, ...] = tuple(s.name for s in TEST_INPUTS)
CATEGORICAL: tuple[str, ...] = tuple(s.name for s in TEST_INPUTS if s.datatype == "BYTES")
INTEGER: tuple[str, ...] = tuple(s.name for s in TEST_INPUTS if s.datatype == "INT64")
FLOAT: tuple[str, ...] = tuple(s.name for s in TEST_INPUTS if s.datatype == "FP32")

CARRIERS: tuple[str, ...] = ("UA", "B6", "EV", "DL", "AA", "MQ", "US", "9E", "WN", "VX")
ORIGINS: tuple[str, ...] = ("EWR", "JFK", "LGA")
DESTS: tuple[str, ...] = ("ATL", "ORD", "LAX", "BOS", "MCO", "CLT", "SFO", "FLL", "MIA", "DCA")

# Weights chosen so that z stays around [-3, 3] on realistic rows.
_INT_WEIGHTS = {"hour": 0.08, "minute": 0.002, "day_of_week": 0.05, "distance": -0.0004}
_FLOAT_WEIGHTS = {
    "temp": -0.01,
    "dewp": 0.012,
    "humid": 0.006,
    "wind_dir": 0.0005,
    "wind_speed": 0.03,
    "wind_gust": 0.02,
    "precip": 2.0,
    "pressure": -0.002,
    "visib": -0.05,
}
_CARRIER_TERM = {c: round(0.1 * (i - 4), 2) for i, c in enumerate(CARRIERS)}
_ORIGIN_TERM = {"EWR": 0.2, "JFK": 0.0, "LGA": -0.1}
_BIAS = 0.5


def synthetic_rows(n: int, *, seed: int = 0, null_fraction: float = 0.05) -> pd.DataFrame:
    """Realistic raw input rows (the `FEATURES` columns, schema dtypes), some weather values NaN.

    Args:
        n: number of rows.
        seed: numpy seed; the same seed gives the same rows.
        null_fraction: share of weather values set to NaN, per column.

    Returns:
        DataFrame with `FEATURES` columns: object strings, int64, float32.
    """
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "carrier": rng.choice(CARRIERS, n).astype(object),
            "origin": rng.choice(ORIGINS, n).astype(object),
            "dest": rng.choice(DESTS, n).astype(object),
            "hour": rng.integers(5, 24, n).astype(np.int64),
            "minute": rng.integers(0, 60, n).astype(np.int64),
            "day_of_week": rng.integers(0, 7, n).astype(np.int64),
            "distance": rng.integers(80, 4983, n).astype(np.int64),
            "temp": rng.normal(55, 17, n),
            "dewp": rng.normal(41, 19, n),
            "humid": rng.uniform(12, 100, n),
            "wind_dir": rng.uniform(0, 360, n).round(-1),
            "wind_speed": rng.gamma(2.0, 5.0, n),
            "wind_gust": rng.gamma(2.0, 6.5, n),
            "precip": np.where(rng.random(n) < 0.9, 0.0, rng.exponential(0.05, n)),
            "pressure": rng.normal(1017, 7.5, n),
            "visib": np.clip(rng.normal(9.3, 2.0, n), 0, 10),
        }
    )
    for col in FLOAT:
        values = frame[col].to_numpy(np.float32)
        values[rng.random(n) < null_fraction] = np.nan
        frame[col] = values
    return frame[list(FEATURES)]


def _value_info(name: str, elem: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, ["N", 1])


def _inputs() -> list[onnx.ValueInfoProto]:
    elems = {"BYTES": TensorProto.STRING, "INT64": TensorProto.INT64, "FP32": TensorProto.FLOAT}
    return [_value_info(spec.name, elems[spec.datatype]) for spec in TEST_INPUTS]


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _numeric_block(nodes: list, inits: list, scale: float) -> tuple[str, str, str, str]:
    """Nodes that produce the int block [N,4], the NaN-free float block [N,9] and the two string terms."""
    for col in INTEGER:
        nodes.append(helper.make_node("Cast", [col], [f"{col}_f"], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("Concat", [f"{c}_f" for c in INTEGER], ["ints"], axis=1))
    inits.append(_const("zero", np.zeros((1, 1), np.float32)))
    for col in FLOAT:
        nodes.append(helper.make_node("IsNaN", [col], [f"{col}_isnan"]))
        nodes.append(helper.make_node("Where", [f"{col}_isnan", "zero", col], [f"{col}_clean"]))
    nodes.append(helper.make_node("Concat", [f"{c}_clean" for c in FLOAT], ["floats"], axis=1))
    for col, table in (("carrier", _CARRIER_TERM), ("origin", _ORIGIN_TERM)):
        nodes.append(
            helper.make_node(
                "LabelEncoder",
                [col],
                [f"{col}_term"],
                domain="ai.onnx.ml",
                keys_strings=list(table),
                values_floats=[v * scale for v in table.values()],
                default_float=0.0,
            )
        )
    return "ints", "floats", "carrier_term", "origin_term"


def build_model(
    *,
    version_weight: float = 1.0,
    inverted: bool = False,
    slow: bool = False,
    slow_layers: int = 8,
    slow_width: int = 1024,
    mlp_width: int = 0,
    seed: int = 0,
) -> onnx.ModelProto:
    """Build the test graph (see the module docstring).

    Args:
        version_weight: multiplies every weight; distinguishes versions.
        inverted: score = 1 - the normal score (sigmoid(-z)), a deliberately bad model.
        slow: add a score-neutral branch of `slow_layers` matmuls of width `slow_width` per row.
        slow_layers: number of extra `[N, w] x [w, w]` layers in the slow branch.
        slow_width: width `w` of the slow branch.
        mlp_width: if > 0, an MLP 16 -> mlp_width -> mlp_width -> 1 (ReLU) replaces the linear core.
        seed: seed of the random weights of the slow branch and the MLP.

    Returns:
        A checked `onnx.ModelProto` (opset 17, ai.onnx.ml 3), inputs named as `FEATURES`,
        output `probability` FP32 `[N, 1]`.
    """
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    ints, floats, carrier, origin = _numeric_block(nodes, inits, version_weight)
    if mlp_width > 0:
        for col in ("dest",):
            nodes.append(
                helper.make_node(
                    "LabelEncoder",
                    [col],
                    [f"{col}_term"],
                    domain="ai.onnx.ml",
                    keys_strings=list(DESTS),
                    values_floats=[0.1 * i for i in range(len(DESTS))],
                    default_float=0.0,
                )
            )
        nodes.append(
            helper.make_node("Concat", [ints, floats, carrier, origin, "dest_term"], ["x16"], axis=1)
        )
        # Crude standardisation so the random MLP does not saturate.
        scale = np.array([[1 / 24, 1 / 60, 1 / 7, 1 / 5000] + [1 / 100] * 9 + [1, 1, 1]], np.float32)
        inits.append(_const("x_scale", scale * version_weight))
        nodes.append(helper.make_node("Mul", ["x16", "x_scale"], ["x"]))
        sizes = [16, mlp_width, mlp_width, 1]
        prev = "x"
        for i in range(3):
            w = rng.normal(0, 1 / np.sqrt(sizes[i]), (sizes[i], sizes[i + 1])).astype(np.float32)
            inits += [_const(f"W{i}", w), _const(f"b{i}", np.zeros(sizes[i + 1], np.float32))]
            nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], [f"h{i}"]))
            if i < 2:
                nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]))
                prev = f"r{i}"
        z = "h2"
    else:
        inits.append(
            _const("w_int", np.array([[_INT_WEIGHTS[c]] for c in INTEGER], np.float32) * version_weight)
        )
        inits.append(
            _const("w_float", np.array([[_FLOAT_WEIGHTS[c]] for c in FLOAT], np.float32) * version_weight)
        )
        inits.append(_const("bias", np.array([[_BIAS * version_weight]], np.float32)))
        nodes.append(helper.make_node("MatMul", [ints, "w_int"], ["z_int"]))
        nodes.append(helper.make_node("MatMul", [floats, "w_float"], ["z_float"]))
        nodes.append(helper.make_node("Sum", ["z_int", "z_float", carrier, origin, "bias"], ["z"]))
        z = "z"
    if slow:
        inits.append(_const("slow_in", np.ones((1, slow_width), np.float32) / slow_width))
        w = rng.normal(0, 1 / np.sqrt(slow_width), (slow_width, slow_width)).astype(np.float32)
        inits.append(_const("slow_w", w))
        nodes.append(helper.make_node("MatMul", [z, "slow_in"], ["slow_h0"]))
        for i in range(slow_layers):
            nodes.append(helper.make_node("MatMul", [f"slow_h{i}", "slow_w"], [f"slow_m{i}"]))
            nodes.append(helper.make_node("Tanh", [f"slow_m{i}"], [f"slow_h{i + 1}"]))
        nodes.append(
            helper.make_node("ReduceSum", [f"slow_h{slow_layers}", "slow_axes"], ["slow_sum"], keepdims=1)
        )
        inits.append(_const("slow_axes", np.array([1], np.int64)))
        inits.append(_const("slow_zero", np.zeros((1, 1), np.float32)))
        nodes.append(helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nil"]))
        nodes.append(helper.make_node("Add", [z, "slow_nil"], ["z_slow"]))
        z = "z_slow"
    if inverted:
        nodes.append(helper.make_node("Neg", [z], ["z_neg"]))
        z = "z_neg"
    nodes.append(helper.make_node("Sigmoid", [z], [OUTPUT]))
    graph = helper.make_graph(
        nodes,
        "driftloop_test_model",
        _inputs(),
        [_value_info(OUTPUT, TensorProto.FLOAT)],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
        producer_name="driftloop.serving.testing",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def score_rows(model: onnx.ModelProto | str | os.PathLike[str], rows: pd.DataFrame) -> np.ndarray:
    """Score `rows` with a fresh ONNX Runtime session (1 thread): the reference the tests compare with.

    Returns:
        float32 array `[n, 1]`.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], feeds_for(rows, TEST_INPUTS))[0]


def build_test_package(
    folder: str | os.PathLike[str],
    *,
    model_name: str = "flight_delay",
    version_weight: float = 1.0,
    lineage_id: str | None = None,
    inverted: bool = False,
    slow: bool = False,
    slow_layers: int = 8,
    slow_width: int = 1024,
    mlp_width: int = 0,
    reference_rows: int = 300,
    seed: int = 0,
) -> Path:
    """Write a complete, verifiable model package into `folder` (created; must be empty or absent).

    Args:
        folder: the package folder, e.g. `<repository>/<model>/<version>`.
        model_name: `signature.json`'s model name.
        version_weight: weight multiplier; use a different one per version.
        lineage_id: the package's lineage id; default `test-<model_name>-w<weight>[-inv][-slow]`.
        inverted: build the "inverted scores" variant.
        slow: build the deliberately slow variant (same scores, more latency).
        slow_layers: see `build_model`.
        slow_width: see `build_model`.
        mlp_width: see `build_model`.
        reference_rows: rows of `reference.parquet`.
        seed: seed of the synthetic reference rows and of random weights.

    Returns:
        The folder's path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(
        version_weight=version_weight,
        inverted=inverted,
        slow=slow,
        slow_layers=slow_layers,
        slow_width=slow_width,
        mlp_width=mlp_width,
        seed=seed,
    )
    onnx.save(model, str(folder / "model.onnx"))
    if lineage_id is None:
        lineage_id = (
            f"test-{model_name}-w{version_weight:g}"
            + ("-inv" if inverted else "")
            + ("-slow" if slow else "")
        )
    signature = Signature(
        model_name=model_name, lineage_id=lineage_id, inputs=TEST_INPUTS, outputs=output_specs()
    )
    (folder / "signature.json").write_text(signature.model_dump_json(indent=2) + "\n")
    rows = synthetic_rows(reference_rows, seed=seed)
    reference = rows.copy()
    reference["score"] = score_rows(model, rows)[:, 0]
    reference.to_parquet(folder / "reference.parquet", index=False)
    card = {
        "model_name": model_name,
        "lineage_id": lineage_id,
        "kind": "mlp" if mlp_width else "linear",
        "version_weight": version_weight,
        "inverted": inverted,
        "slow": slow,
        "note": "test package built by serving.testing; not a trained model",
    }
    (folder / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    (folder / "model_card.md").write_text(
        f"# {model_name} (test package)\n\nLineage: `{lineage_id}`. Built by `serving.testing`; not trained.\n"
    )
    write_sha256sums(folder)
    return folder


def build_test_repository(
    root: str | os.PathLike[str],
    *,
    model_name: str = "flight_delay",
    versions: dict[int, float] | None = None,
    **kwargs,
) -> Path:
    """Write `<root>/<model_name>/<version>/` packages, one per `{version: version_weight}`.

    Returns:
        `root`.
    """
    root = Path(root)
    for version, weight in (versions or {1: 1.0}).items():
        build_test_package(
            root / model_name / str(version), model_name=model_name, version_weight=weight, **kwargs
        )
    return root


def v2_payload(frame: pd.DataFrame, nested: bool = False) -> dict:
    """A v2 infer body for `frame`'s `FEATURES` columns (NaN -> null); `nested` gives [[v], ...] data."""
    return v2_body(frame, FEATURES, datatypes={s.name: s.datatype for s in TEST_INPUTS}, nested=nested)


def v2_binary_payload(frame: pd.DataFrame, binary_output: bool = True) -> tuple[bytes, int]:
    """A v2 infer body in the binary tensor extension for `frame`'s `FEATURES` columns.

    Returns:
        (body, JSON header length for the `Inference-Header-Content-Length` header). BYTES
        elements are a 4-byte little-endian length then UTF-8; numbers raw little-endian.
    """
    datatype_of = {s.name: s.datatype for s in TEST_INPUTS}
    feeds = feeds_for(frame, TEST_INPUTS)
    inputs, blobs = [], []
    for name in FEATURES:
        column = feeds[name][:, 0]
        if column.dtype == object:
            blob = b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in column)
        else:
            blob = column.astype(column.dtype.newbyteorder("<"), copy=False).tobytes()
        inputs.append(
            {
                "name": name,
                "datatype": datatype_of[name],
                "shape": [len(column), 1],
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": binary_output}}).encode()
    return header + b"".join(blobs), len(header)


def records_payload(frame: pd.DataFrame, drop_null: bool = False) -> dict:
    """A records body for every column of `frame`; `drop_null` leaves null keys out."""
    return records_body(frame, drop_null=drop_null)


@contextlib.contextmanager
def running_server(
    app,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout_s: float = 30.0,
    ssl_certfile: str | os.PathLike[str] | None = None,
    ssl_keyfile: str | os.PathLike[str] | None = None,
) -> Iterator[str]:
    """Run `app` under a real uvicorn server in a thread; yield its base URL; shut it down gracefully.

    Args:
        app: an ASGI app (e.g. `serving.app.create_app(...)`).
        host: loopback by default.
        port: 0 picks a free port.
        timeout_s: how long start-up and shutdown may take, seconds.
        ssl_certfile: PEM certificate (chain) to serve HTTPS with; with `ssl_keyfile`.
        ssl_keyfile: PEM private key of the certificate.

    Yields:
        "http://127.0.0.1:<port>" (https with a certificate).

    Raises:
        RuntimeError: the server did not start within `timeout_s`.
    """
    import threading
    import time

    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        ssl_certfile=None if ssl_certfile is None else str(ssl_certfile),
        ssl_keyfile=None if ssl_keyfile is None else str(ssl_keyfile),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="driftloop-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"{'https' if ssl_certfile else 'http'}://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


__all__ = [
    "CATEGORICAL",
    "FEATURES",
    "FLOAT",
    "INTEGER",
    "TEST_INPUTS",
    "build_model",
    "build_test_package",
    "build_test_repository",
    "records_payload",
    "running_server",
    "score_rows",
    "synthetic_rows",
    "v2_binary_payload",
    "v2_payload",
]
