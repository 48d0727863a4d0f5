"""The model contract's dataset-independent types: tensor specs, the signature, the output, the label column.

What the columns are is the `dataset` declaration (driftloop/dataset.py, the `dataset:` section of
params.yaml): it produces the `TensorSpec` list (`Dataset.input_specs()`) that the ONNX graphs,
the package's `signature.json` and the server's input validation use. Everything here works on
such a list, whatever the dataset: `coerce_to_specs` / `feeds_for` type a frame as the graphs
take it (strings -> object, INT64 -> int64, FP32 -> float32, NaN only where nullable).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from driftloop.errors import DataError

LABEL = "label"
OUTPUT = "probability"

Datatype = Literal["BYTES", "INT64", "FP32", "FP64", "BOOL"]

NUMPY_DTYPE: dict[str, type] = {"BYTES": np.object_, "INT64": np.int64, "FP32": np.float32, "FP64": np.float64}


class TensorSpec(BaseModel):
    """One named tensor of the model's signature (Open Inference Protocol v2 datatypes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    datatype: Datatype
    shape: list[int]
    nullable: bool = False


class Signature(BaseModel):
    """What `signature.json` holds: inputs, outputs, and which model and lineage they belong to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str
    lineage_id: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


def output_specs() -> list[TensorSpec]:
    """The single output: P(label = 1) (the `dataset.label` rule holds), FP32 `[-1, 1]`."""
    return [TensorSpec(name=OUTPUT, datatype="FP32", shape=[-1, 1])]


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...] | list[str], where: str) -> None:
    """Raise `DataError` naming every column of `columns` that `frame` lacks.

    Raises:
        DataError: "<where>: missing column(s) a, b; ...".
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {', '.join(missing)}; the source must provide them "
            "(the dataset section of params.yaml declares them)"
        )


def coerce_to_specs(frame: pd.DataFrame, specs: list[TensorSpec]) -> pd.DataFrame:
    """Return the columns of `specs`, in their order, typed as the graphs expect.

    BYTES -> object (str), INT64 -> int64, FP32 -> float32, FP64 -> float64. Only a nullable spec
    may hold nulls (NaN in a float column).

    Raises:
        DataError: a column is missing, a non-nullable column holds nulls, or a value cannot be cast.
    """
    require_columns(frame, [s.name for s in specs], "features")
    out = pd.DataFrame(index=frame.index)
    for spec in specs:
        col, kind = spec.name, spec.datatype
        try:
            if not spec.nullable and frame[col].isna().any():
                what = {"BYTES": "string", "INT64": "integer"}.get(kind, "numeric")
                raise ValueError(f"null values in a non-nullable {what} column")
            if kind == "BYTES":
                out[col] = frame[col].astype(str).astype(object)
            elif kind == "INT64":
                out[col] = frame[col].astype(np.int64)
            elif kind in ("FP32", "FP64"):
                out[col] = pd.to_numeric(frame[col]).astype(NUMPY_DTYPE[kind])
            else:
                raise ValueError(f"datatype {kind} is not a model input type")
        except (ValueError, TypeError) as exc:
            raise DataError(f"column {col!r} (expected {kind}): {exc}; fix the source data") from None
    return out


def feeds_for(frame: pd.DataFrame, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Feeds for an ONNX Runtime session: one `[n, 1]` array per spec, typed per its datatype.

    Raises:
        DataError: as `coerce_to_specs`.
    """
    frame = coerce_to_specs(frame, specs)
    return {s.name: frame[s.name].to_numpy().reshape(-1, 1).astype(NUMPY_DTYPE[s.datatype]) for s in specs}
