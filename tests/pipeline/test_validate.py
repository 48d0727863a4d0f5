"""Stage `validate`: the expectation suite passes on real data and lists every failure at once."""

from __future__ import annotations

import numpy as np
import pytest

from driftloop.config import ValidateParams
from tasks.validate import validate_snapshot


@pytest.fixture(scope="module")
def report(snapshot):
    return validate_snapshot(snapshot.flights, snapshot.weather, ValidateParams(min_rows=1000))


def test_real_window_passes_with_observed_values(report):
    assert report["success"], report["failures"]
    flights = {(e["expectation"], str(e["column"])) for e in report["tables"]["flights"]["expectations"]}
    assert ("expect_column_values_to_be_in_set", "origin") in flights
    assert ("expect_compound_columns_to_be_unique", str(["year", "month", "day", "carrier", "flight", "origin"])) in flights
    gust = next(e for e in report["tables"]["weather"]["expectations"]
                if e["column"] == "wind_gust" and e["expectation"] == "expect_column_values_to_not_be_null")  # fmt: skip
    assert gust["success"] and gust["observed"]["unexpected_percent"] > 50  # gusts are mostly null, allowed by `mostly`
    row_count = next(e for e in report["tables"]["flights"]["expectations"] if e["expectation"].startswith("expect_table_row_count"))
    assert row_count["observed"] > 20_000


def test_every_failure_is_listed(snapshot):
    flights = snapshot.flights.copy()
    weather = snapshot.weather.copy()
    flights.loc[:9, "origin"] = "BOS"  # not an allowed origin
    flights.loc[:99, "distance"] = -5  # out of range
    flights = flights.drop(columns=["dest"])  # missing column
    flights = flights.astype({"hour": "float64"})  # wrong dtype
    dup = flights.iloc[[20]]
    flights = flights._append(dup, ignore_index=True)  # duplicate flight key
    weather["wind_speed"] = np.where(np.arange(len(weather)) % 5 == 0, 500.0, weather["wind_speed"])  # 20% out of range
    report = validate_snapshot(flights, weather, ValidateParams(min_rows=10**7))
    assert not report["success"]
    text = "\n".join(report["failures"])
    for needle in ("flights.origin: expect_column_values_to_be_in_set", "flights.distance: expect_column_values_to_be_between",
                   "flights.*: expect_table_columns_to_match_set", "flights.hour: column_type",
                   "expect_compound_columns_to_be_unique", "expect_table_row_count_to_be_between",
                   "weather.wind_speed: expect_column_values_to_be_between"):  # fmt: skip
        assert needle in text, needle
    assert "observed" in text and "expected" in text


def test_outlier_within_mostly_passes(snapshot):
    weather = snapshot.weather.copy()
    weather.loc[weather.index[:3], "wind_speed"] = 1048.0  # the known nycflights13 outlier, a few rows
    report = validate_snapshot(snapshot.flights, weather, ValidateParams(min_rows=1000))
    assert report["success"], report["failures"]
