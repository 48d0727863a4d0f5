"""The model's contract: raw input columns, their ONNX/OIP v2 datatypes, the label.

This is the one place that says what a request row looks like. Training, export, the package's
`signature.json` and the server's input validation all read it from here.

Columns (all raw, as a client sends them):
    carrier, origin, dest        BYTES (str)   not nullable  airline code, NYC origin, destination
    hour, minute                 INT64         not nullable  scheduled departure, local time
    day_of_week                  INT64         not nullable  0 = Monday ... 6 = Sunday, local date
    distance                     INT64         not nullable  miles
    temp, dewp                   FP32          nullable      degrees F, origin weather at the scheduled hour
    humid                        FP32          nullable      relative humidity, %
    wind_dir                     FP32          nullable      degrees
    wind_speed, wind_gust        FP32          nullable      mph
    precip                       FP32          nullable      inches
    pressure                     FP32          nullable      millibars
    visib                        FP32          nullable      miles
A missing weather value is NaN (or JSON null); both graphs route it like training did.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from driftloop.errors import DataError

CATEGORICAL: tuple[str, ...] = ("carrier", "origin", "dest")
INTEGER: tuple[str, ...] = ("hour", "minute", "day_of_week", "distance")
FLOAT: tuple[str, ...] = (
    "temp",
    "dewp",
    "humid",
    "wind_dir",
    "wind_speed",
    "wind_gust",
    "precip",
    "pressure",
    "visib",
)
FEATURES: tuple[str, ...] = CATEGORICAL + INTEGER + FLOAT
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


def datatype_of(column: str) -> Datatype:
    """OIP v2 datatype of a raw input column."""
    if column in CATEGORICAL:
        return "BYTES"
    if column in INTEGER:
        return "INT64"
    if column in FLOAT:
        return "FP32"
    raise KeyError(column)


def input_specs() -> list[TensorSpec]:
    """One `[-1, 1]` tensor per raw column, in `FEATURES` order."""
    return [TensorSpec(name=c, datatype=datatype_of(c), shape=[-1, 1], nullable=c in FLOAT) for c in FEATURES]


def output_specs() -> list[TensorSpec]:
    """The single output: probability of an arrival delay >= the label threshold, FP32 `[-1, 1]`."""
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
            f"(see the column list in driftloop/schema.py)"
        )


def coerce_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the `FEATURES` columns with the dtypes the graphs expect (object / int64 / float32).

    Raises:
        DataError: a column is missing, an integer column holds nulls, or a value cannot be cast.
    """
    require_columns(frame, FEATURES, "features")
    out = pd.DataFrame(index=frame.index)
    for col in FEATURES:
        kind = datatype_of(col)
        try:
            if kind == "BYTES":
                if frame[col].isna().any():
                    raise ValueError("null values in a non-nullable string column")
                out[col] = frame[col].astype(str).astype(object)
            elif kind == "INT64":
                if frame[col].isna().any():
                    raise ValueError("null values in a non-nullable integer column")
                out[col] = frame[col].astype(np.int64)
            else:
                out[col] = pd.to_numeric(frame[col]).astype(np.float32)
        except (ValueError, TypeError) as exc:
            raise DataError(f"column {col!r} (expected {kind}): {exc}; fix the source data") from None
    return out


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


def to_onnx_feeds(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Feeds for an ONNX Runtime session: one `[n, 1]` array per raw column, typed per `schema`."""
    frame = coerce_features(frame)
    return {c: frame[c].to_numpy().reshape(-1, 1).astype(NUMPY_DTYPE[datatype_of(c)]) for c in FEATURES}
