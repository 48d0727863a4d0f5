"""Family `mlp`: `ColumnTransformer(one-hot strings, median-impute + standardize numbers)` fitted on
the train split only, then the PyTorch `driftloop.mlp.MLP` trained with early selection on valid.

Graphs: `mlp_preprocess` (raw columns -> `[n, d]` float32), `mlp_network` (`[n, d]` -> probability)
and `mlp`, their merge. Candidates quantize or prune the network alone, then merge it behind the
FP32 preprocessing: the quantizer cannot infer shapes through the string ops, and the network's
float input is where INT8 pays anyway.

    mlp_fp32            mlp.onnx with ONNX Runtime's extended graph optimizations saved (fusion)
    mlp_int8            static INT8 QDQ of the network, calibrated on `calibration_rows` training rows
    mlp_int8_dynamic    dynamic INT8 of the network: always built; whether it is faster than mlp_int8
                        is the gate's business (it scales activations per batch, so scores depend on
                        batch-mates: the gate's batch-invariance rule exists for it)
    mlp_pruned          hidden units physically removed (`prune_keep`), fine-tuned `finetune_epochs`
    mlp_pruned_int8     mlp_pruned, then static INT8 as above
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from driftloop.families.base import Candidate, CandidateContext, FamilyParams

if TYPE_CHECKING:
    from driftloop.dataset import Dataset
    from driftloop.schema import TensorSpec

NAME = "mlp"


class MLPParams(FamilyParams):
    """`train.mlp`: the network's shape and its Adam/BCE training (learning rate per step, L2 weight decay)."""

    hidden: list[int] = Field([128, 128], min_length=1)
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(512, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)


def one_hot_preprocess(dataset: Dataset):
    """The unfitted one-hot preprocessing (shared with `logreg`): one-hot strings (unknown -> all
    zeros), scale integers, median-impute + scale floats (integers are never null; skl2onnx's
    imputer needs one input type), over `dataset`'s BYTES / INT64 / FP32 features. Output: float32 `[n, d]`."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    return ColumnTransformer(
        [
            (
                "cat",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32),
                list(dataset.categorical),
            ),
            ("int", StandardScaler(), list(dataset.integer)),
            ("float", numeric, list(dataset.floating)),
        ]
    )


@dataclass
class FittedMLP:
    """The fitted preprocessing and network."""

    preprocess: Any  # sklearn ColumnTransformer
    network: Any  # driftloop.mlp.MLP

    def matrix(self, frame) -> np.ndarray:
        """The network's input `[n, d]` float32 from the raw columns the preprocessing was fitted on."""
        return self.preprocess.transform(frame[list(self.preprocess.feature_names_in_)]).astype(np.float32)


def quantize_network(network, calibration: np.ndarray | None):
    """INT8 the network graph: static QDQ when `calibration` (`[n, d]` float32) is given, else dynamic."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from driftloop.onnx_graph import MLP_INPUT

    class Calibration(CalibrationDataReader):
        """Feeds the network's input in chunks of 256 rows."""

        def __init__(self, x: np.ndarray, chunk: int = 256) -> None:
            self._batches = iter([{MLP_INPUT: x[i : i + chunk]} for i in range(0, len(x), chunk)])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / n for n in ("net.onnx", "pre.onnx", "q.onnx"))
        onnx.save_model(network, src)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        if calibration is None:
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8)
        else:
            quantize_static(
                str(pre), str(out), Calibration(calibration), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
            )  # fmt: skip
        return onnx.load(str(out))


class MLPFamily:
    name = NAME
    params_model = MLPParams

    def fit(self, train, valid, params: MLPParams, seed: int, dataset: Dataset):
        """Fit preprocessing on train only, then the network (deterministic: `deterministic_torch`)."""
        from driftloop.mlp import MLP, deterministic_torch, fit_mlp
        from driftloop.schema import LABEL

        deterministic_torch(seed)
        pre = one_hot_preprocess(dataset).fit(train[list(dataset.feature_names)])
        fitted = FittedMLP(pre, None)
        xt, xv = fitted.matrix(train), fitted.matrix(valid)
        fitted.network = MLP(xt.shape[1], params.hidden)
        fit = fit_mlp(
            fitted.network, xt, train[LABEL].to_numpy(), xv, valid[LABEL].to_numpy(),
            epochs=params.epochs, batch_size=params.batch_size, learning_rate=params.learning_rate,
            weight_decay=params.weight_decay, seed=seed,
        )  # fmt: skip
        return fitted, fit.curves

    def save(self, fitted: FittedMLP, folder: Path) -> None:
        import joblib

        from driftloop.mlp import save_mlp

        joblib.dump(fitted.preprocess, folder / f"{NAME}_preprocess.joblib")
        save_mlp(fitted.network, folder / f"{NAME}.pt")

    def load(self, folder: Path) -> FittedMLP:
        import joblib

        from driftloop.mlp import load_mlp

        return FittedMLP(joblib.load(folder / f"{NAME}_preprocess.joblib"), load_mlp(folder / f"{NAME}.pt"))

    def predict(self, fitted: FittedMLP, frame) -> np.ndarray:
        from driftloop.mlp import predict_mlp

        return predict_mlp(fitted.network, fitted.matrix(frame))

    def to_onnx(self, fitted: FittedMLP, opset: int, inputs: list[TensorSpec]) -> dict:
        """`{"mlp_preprocess", "mlp_network", "mlp"}`: the two halves and their merge."""
        from driftloop.onnx_graph import merge_preprocess, sklearn_to_onnx, torch_mlp_to_onnx

        pre = sklearn_to_onnx(fitted.preprocess, opset, name=f"{NAME}_preprocess", inputs=inputs)
        net = torch_mlp_to_onnx(fitted.network, fitted.network.n_inputs, opset)
        return {f"{NAME}_preprocess": pre, f"{NAME}_network": net, NAME: merge_preprocess(pre, net)}

    def parity_rows(self, fitted, base):
        return base.iloc[:0]

    def candidates(self, ctx: CandidateContext) -> dict[str, Candidate]:
        """Fused FP32, static and dynamic INT8, pruned + fine-tuned, pruned + INT8 (module docstring)."""
        from driftloop.mlp import deterministic_torch, fit_mlp, prune_mlp
        from driftloop.onnx_graph import fuse, merge_preprocess, torch_mlp_to_onnx
        from driftloop.schema import LABEL

        params: MLPParams = ctx.params  # type: ignore[assignment]
        opt = ctx.optimize
        fitted: FittedMLP = ctx.fitted
        pre_graph, network = ctx.graphs[f"{NAME}_preprocess"], ctx.graphs[f"{NAME}_network"]
        rng = np.random.default_rng(ctx.seed)
        sample = ctx.train.iloc[
            rng.choice(len(ctx.train), size=min(opt.calibration_rows, len(ctx.train)), replace=False)
        ]
        calib = fitted.matrix(sample)

        out = {f"{NAME}_fp32": Candidate(fuse(ctx.graphs[NAME]), NAME, "ORT extended fusion")}
        out[f"{NAME}_int8"] = Candidate(
            merge_preprocess(pre_graph, quantize_network(network, calib)), NAME, "static INT8 QDQ"
        )
        out[f"{NAME}_int8_dynamic"] = Candidate(
            merge_preprocess(pre_graph, quantize_network(network, None)), NAME, "dynamic INT8"
        )

        deterministic_torch(ctx.seed)
        pruned = prune_mlp(fitted.network, opt.prune_keep)
        if opt.finetune_epochs:
            fit_mlp(
                pruned, fitted.matrix(ctx.train), ctx.train[LABEL].to_numpy(), fitted.matrix(ctx.valid),
                ctx.valid[LABEL].to_numpy(), epochs=opt.finetune_epochs, batch_size=params.batch_size,
                learning_rate=params.learning_rate / 2, weight_decay=0.0, seed=ctx.seed,
            )  # fmt: skip
        pruned_net = torch_mlp_to_onnx(pruned, pruned.n_inputs, ctx.opset)
        how = f"structured pruning keep={opt.prune_keep} hidden={pruned.hidden}, fine-tuned {opt.finetune_epochs} epochs"
        out[f"{NAME}_pruned"] = Candidate(fuse(merge_preprocess(pre_graph, pruned_net)), NAME, how)
        out[f"{NAME}_pruned_int8"] = Candidate(
            merge_preprocess(pre_graph, quantize_network(pruned_net, calib)), NAME, how + " + static INT8 QDQ"
        )
        return out


FAMILY = MLPFamily()
