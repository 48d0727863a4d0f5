"""The score histogram takes a batch in one call and exposes what prometheus-client's own would."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serving.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, SCORE_BUCKETS, BulkHistogram

_EDGES = [0.0, 0.1, 0.2, 0.30000000000000004, 0.3, 1.0, -0.0, math.inf, -math.inf, math.nan, 1e-45, 0.99999994,
          0.0005, 0.001, 0.0025, 2.0, 4.0, 512.0, 1024.0, 4096.0, 1023.0]


def _samples(registry: CollectorRegistry) -> dict:
    """{(sample name, labels): value} without `_created` (a creation time)."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


@settings(max_examples=200, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.floats(width=32) | st.sampled_from(_EDGES), min_size=1, max_size=40), min_size=1, max_size=4
    ),
    dtype=st.sampled_from([np.float32, np.float64]),
    buckets=st.sampled_from([SCORE_BUCKETS, LATENCY_BUCKETS, BATCH_BUCKETS]),
)
def test_bulk_observation_is_one_observe_per_value(batches, dtype, buckets):
    """Bucket counts, count and sum equal `Histogram.observe` per value: bounds, NaN, infinities,
    float32 values next to a bound, single values and batches alike, for each bucket set served."""
    library, bulk = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("driftloop_score", "predicted probability", ["model", "version"], buckets=buckets,
                          registry=library)  # fmt: skip
    ours = BulkHistogram("driftloop_score", "predicted probability", ["model", "version"], buckets, bulk)
    for values in batches:
        array = np.asarray(values, dtype=dtype).reshape(-1, 1)
        for v in array[:, 0]:
            reference.labels("m", "1").observe(float(v))
        with np.errstate(invalid="ignore"):
            ours.labels("m", "1").observe_many(array)
    expected, got = _samples(library), _samples(bulk)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if key[0].endswith("_sum"):  # summed pairwise here, one by one there
            assert value == got[key] or math.isclose(value, got[key], rel_tol=1e-9) or (math.isnan(value) and math.isnan(got[key]))
        else:
            assert got[key] == value, key


def test_exposition_names_the_same_samples_as_the_library():
    library, bulk = CollectorRegistry(), CollectorRegistry()
    Histogram("driftloop_score", "predicted probability", ["model", "version"], buckets=SCORE_BUCKETS,
              registry=library).labels("m", "1").observe(0.5)  # fmt: skip
    BulkHistogram("driftloop_score", "predicted probability", ["model", "version"], SCORE_BUCKETS, bulk).labels(
        "m", "1"
    ).observe(0.5)
    strip = [line.split(" ")[0] for line in generate_latest(library).decode().splitlines()]
    assert [line.split(" ")[0] for line in generate_latest(bulk).decode().splitlines()] == strip
