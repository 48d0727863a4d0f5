"""Request bodies for the server, from a DataFrame of input columns: what a client sends.

One place for the JSON encoding of rows (NaN -> null, numpy scalars -> Python), used by the
release plane's servability check, the replay of flights, the tests and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd


def json_value(x: Any) -> Any:
    """A JSON-ready scalar: NaN -> None, numpy scalars -> Python."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, np.generic):
        return json_value(x.item())
    return x


def v2_body(
    frame: pd.DataFrame,
    columns: Sequence[str],
    *,
    datatypes: Mapping[str, str],
    request_id: str | None = None,
    nested: bool = False,
) -> dict:
    """An Open Inference Protocol v2 infer body: one `[n, 1]` tensor per column.

    Args:
        frame: rows to send.
        columns: input names, in order (a package's `signature.json` inputs, or `dataset.feature_names`).
        datatypes: {name: v2 datatype} (the same source).
        request_id: the body's `id`, if any.
        nested: `[[v], ...]` data instead of flat.
    """
    inputs = []
    for col in columns:
        data = [json_value(v) for v in frame[col].tolist()]
        kind = datatypes[col]
        inputs.append({"name": col, "datatype": kind, "shape": [len(frame), 1], "data": [[v] for v in data] if nested else data})
    body: dict[str, Any] = {"inputs": inputs}
    if request_id is not None:
        body["id"] = request_id
    return body


def records_body(frame: pd.DataFrame, drop_null: bool = False) -> dict:
    """A records body `{"instances": [{column: value}, ...]}` for every column of `frame`.

    Args:
        drop_null: leave null (nullable) keys out instead of sending null.
    """
    instances = []
    for rec in frame.to_dict("records"):
        inst = {k: json_value(v) for k, v in rec.items()}
        if drop_null:
            inst = {k: v for k, v in inst.items() if v is not None}
        instances.append(inst)
    return {"instances": instances}
