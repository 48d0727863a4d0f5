"""A small, fixed slice of the real data pushed through the build plane's pure functions.

(The folder is not called `build`: pytest skips folders of that name by default.)
"""

from __future__ import annotations

import pandas as pd
import pytest

from driftloop.config import DataParams, FeaturesParams, TrainParams, parse_section
from driftloop.dataset import Dataset
from tasks.features import build_features
from tasks.snapshot import take_snapshot
from tests.conftest import small_params


@pytest.fixture(scope="session")
def params() -> dict:
    """Small params with the third family (`logreg`, off in the repo's params) turned on, so every
    stage's test goes through all three families via the registry."""
    out = small_params()
    out["train"]["logreg"]["enabled"] = True
    return out


@pytest.fixture(scope="session")
def dataset(params) -> Dataset:
    """The params' `dataset` declaration (the nycflights13 default)."""
    return parse_section("dataset", params["dataset"], Dataset)


@pytest.fixture(scope="session")
def snapshot(nycflights13, params, dataset):
    """2013-01-15 .. 2013-02-14 of flights and weather."""
    flights, weather = nycflights13
    return take_snapshot({"flights": flights, "weather": weather}, parse_section("data", params["data"], DataParams), dataset)


@pytest.fixture(scope="session")
def splits(snapshot, params, dataset) -> dict[str, pd.DataFrame]:
    out, _ = build_features(snapshot.tables, dataset, parse_section("features", params["features"], FeaturesParams))
    return out


@pytest.fixture(scope="session")
def train_params(params) -> TrainParams:
    return parse_section("train", params["train"], TrainParams)


@pytest.fixture(scope="session")
def fitted(splits, train_params, dataset) -> dict:
    """Every enabled family fitted on the slice, through the train stage's loop: {family: (model, curves)}."""
    from tasks.train import train_models

    return train_models(splits["train"], splits["valid"], train_params, dataset)


@pytest.fixture(scope="session")
def trained(fitted) -> dict:
    """{family: fitted model}."""
    return {name: model for name, (model, _) in fitted.items()}


@pytest.fixture(scope="session")
def exported(trained, dataset) -> dict:
    """Every family's graphs, one flat map: {"hgb", "mlp", "mlp_preprocess", "mlp_network", "logreg"}."""
    from driftloop.families import FAMILIES

    out = {}
    for name, model in trained.items():
        out |= FAMILIES[name].to_onnx(model, 18, dataset.input_specs())
    return out
