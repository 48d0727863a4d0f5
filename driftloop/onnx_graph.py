"""Build the ONE ONNX graph per model: raw columns in (named, typed), `probability` [n, 1] out.

Shared by `export` (FP32 graphs) and `optimize` (quantized and pruned graphs), which must produce
graphs with the same signature.

- Trees: the whole scikit-learn pipeline converts with skl2onnx (one input per raw column), and a
  `Slice` keeps the positive-class column of `probabilities`.
- MLP: skl2onnx converts the preprocessing `ColumnTransformer`, the dynamo exporter converts the
  torch network (`[n, d]` float32 in), and `onnx.compose.merge_models` joins them. Quantization is
  done on the network alone (the quantizer cannot infer shapes through string ops), then merged.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from driftloop.schema import OUTPUT, TensorSpec, feeds_for

log = logging.getLogger(__name__)

MLP_INPUT = "features"  # the torch network's input inside the merged graph
ML_OPSET = 3  # ai.onnx.ml opset used by skl2onnx's tree and encoder converters


def initial_types(inputs: list[TensorSpec]):
    """skl2onnx `initial_types`: one `[None, 1]` tensor per input spec, in their order."""
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType

    kinds = {"BYTES": StringTensorType, "INT64": Int64TensorType, "FP32": FloatTensorType}
    return [(s.name, kinds[s.datatype]([None, 1])) for s in inputs]


_ELEM_DATATYPE = {"BYTES": TensorProto.STRING, "INT64": TensorProto.INT64, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE}


def graph_inputs(model: onnx.ModelProto | bytes | str) -> list[TensorSpec]:
    """The raw-column inputs of a graph as specs, in the graph's order (FP32 ones nullable: the
    graphs impute NaN; strings and integers cannot be null in ONNX).

    Raises:
        ValueError: an input of another element type than string, int64, float or double.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load_model_from_string(model) if isinstance(model, bytes) else onnx.load(model)
    by_elem = {v: k for k, v in _ELEM_DATATYPE.items()}
    out = []
    for vi in model.graph.input:
        elem = vi.type.tensor_type.elem_type
        if elem not in by_elem:
            raise ValueError(f"graph input {vi.name}: element type {elem} is not a raw-column type")
        kind = by_elem[elem]
        out.append(TensorSpec(name=vi.name, datatype=kind, shape=[-1, 1], nullable=kind in ("FP32", "FP64")))
    return out


def graph_feeds(model: onnx.ModelProto | bytes | str, frame) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds of `frame` for `model`'s own inputs (`graph_inputs`), `[n, 1]` each.

    Raises:
        DataError: a column is missing, null where it may not be, or not castable.
    """
    return feeds_for(frame, graph_inputs(model))


def sklearn_to_onnx(
    estimator, opset: int, *, name: str, inputs: list[TensorSpec], zipmap_off: object | None = None
) -> onnx.ModelProto:
    """Convert a fitted scikit-learn estimator that takes the raw feature frame.

    Args:
        estimator: a `Pipeline` or `ColumnTransformer` fitted on the columns of `inputs`.
        inputs: the graph's inputs (`Dataset.input_specs()`), in the model's input order.
        opset: the default-domain opset (`ai.onnx.ml` is pinned to `ML_OPSET`).
        name: the graph's name. Fixed, because skl2onnx's default is a random uuid, which would
            make every export a different file and break DVC's caching downstream.
        zipmap_off: the classifier inside `estimator` whose ZipMap output is turned off.
    """
    from skl2onnx import convert_sklearn

    options = {id(zipmap_off): {"zipmap": False}} if zipmap_off is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_sklearn(
            estimator,
            name=name,
            initial_types=initial_types(inputs),
            target_opset={"": opset, "ai.onnx.ml": ML_OPSET},
            options=options,
            doc_string="",
        )
    # skl2onnx lists opset domains in set order: sort them so the same model is the same bytes
    imports = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in imports)
    return model


def keep_positive_class(model: onnx.ModelProto, probabilities: str = "probabilities") -> onnx.ModelProto:
    """Replace a classifier's outputs by `probability` = `probabilities[:, 1:2]` (FP32 `[n, 1]`)."""
    graph = model.graph
    consts = {"_p_start": [1], "_p_end": [2], "_p_axis": [1]}
    for name, value in consts.items():
        graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [1], value))
    graph.node.append(helper.make_node("Slice", [probabilities, "_p_start", "_p_end", "_p_axis"], [OUTPUT], name="positive_class"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 1]))
    return model


def torch_mlp_to_onnx(network: torch.nn.Module, n_inputs: int, opset: int) -> onnx.ModelProto:
    """Export the network (`[n, d]` float32 -> probability `[n, 1]`) with the dynamo exporter.

    The batch dimension is dynamic; the input is named `MLP_INPUT`, the output `probability`.
    """
    network = network.eval()
    example = torch.zeros(2, n_inputs, dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            network,
            (example,),
            dynamo=True,
            input_names=[MLP_INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            verbose=False,
        )
    return strip_node_metadata(program.model_proto)


def strip_node_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's per-node debug metadata (`metadata_props` on nodes), in place.

    torch's dynamo exporter records each node's Python stack trace, FX node and module path
    (`pkg.torch.onnx.stack_trace`, ...). The stack trace holds the checkout's absolute path, so
    the same training run in two folders gave two graphs with different bytes: `dvc.lock` and a
    rebuild's sha256 comparison depended on where the repo lives. The keys carry no semantics
    for ONNX Runtime. Model-level `metadata_props` are kept.
    """
    for node in model.graph.node:
        del node.metadata_props[:]
    for function in model.functions:
        for node in function.node:
            del node.metadata_props[:]
    return model


def merge_preprocess(pre: onnx.ModelProto, network: onnx.ModelProto) -> onnx.ModelProto:
    """Join the preprocessing graph (raw columns -> `[n, d]`) and the network into one graph.

    `merge_models` requires one `ir_version` and one version per shared opset domain: both graphs
    are raised to the higher of the two (skl2onnx picks the lowest opset its ops need, and a
    quantized network declares extra domains). `check_model` then confirms the result.
    """
    pre, network = _copy(pre), _copy(network)
    pre_out = pre.graph.output[0].name
    net_in = network.graph.input[0].name
    ir = max(pre.ir_version, network.ir_version)
    pre.ir_version = network.ir_version = ir
    versions: dict[str, int] = {}
    for imp in [*pre.opset_import, *network.opset_import]:
        versions[imp.domain] = max(versions.get(imp.domain, 0), imp.version)
    for model in (pre, network):
        del model.opset_import[:]
        model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(versions.items()))
    merged = onnx.compose.merge_models(pre, network, io_map=[(pre_out, net_in)])
    onnx.checker.check_model(merged)
    return merged


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def fuse(model: onnx.ModelProto) -> onnx.ModelProto:
    """Apply ONNX Runtime's extended graph optimizations offline and return the saved graph.

    EXTENDED, not ALL: ALL adds layout transforms tied to this CPU, which make a file unportable.
    """
    import tempfile
    from pathlib import Path

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fused.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(out)
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return onnx.load(str(out))


def run_graph(model: onnx.ModelProto | bytes | str, feeds: dict[str, np.ndarray], threads: int = 1) -> np.ndarray:
    """Score with ONNX Runtime; returns `probability` as float32 `[n]`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    blob = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    session = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], feeds)[0].reshape(-1)
