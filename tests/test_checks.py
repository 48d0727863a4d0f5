"""The one result type of every rule-based decision (gate, canary, drift policy)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from driftloop.checks import Check, Rule, all_passed, failed, markdown_table


@given(value=st.floats(allow_nan=False, allow_infinity=False, width=32),
       threshold=st.floats(allow_nan=False, allow_infinity=False, width=32))  # fmt: skip
def test_rule_verdict_follows_its_comparison(value, threshold):
    assert Rule(name="r", what="x", comparison="<=").check(value, threshold).passed == (value <= threshold)
    assert Rule(name="r", what="x", comparison=">=").check(value, threshold).passed == (value >= threshold)
    assert Rule(name="r", what="x", comparison="<").check(value, threshold).passed == (value < threshold)
    assert Rule(name="r", what="x", comparison=">").check(value, threshold).passed == (value > threshold)


def test_reason_names_measurement_bound_and_unit():
    c = Rule(name="max_p99_latency_ms", what="p99 latency at batch 1", comparison="<=", unit="ms").check(6.5, 5.0)
    assert not c.passed
    assert c.reason == "p99 latency at batch 1 6.5 ms > 5 ms"
    assert (c.value, c.threshold, c.unit) == (6.5, 5.0, "ms")


def test_missing_value_passes_only_when_declared():
    strict = Rule(name="r", what="x", comparison="<=")
    lenient = Rule(name="r", what="x", comparison="<=", missing_passes=True, missing_reason="no champion yet")
    assert not strict.check(None, 1.0).passed
    assert not strict.check(math.nan, 1.0).passed
    ok = lenient.check(None, 1.0)
    assert ok.passed and ok.value is None and "no champion yet" in ok.reason


def test_markdown_table_escapes_pipes():
    checks = [Check(name="parity", value=1e-7, threshold=1e-4, passed=True, reason="ONNX vs native max |diff| 1e-07")]
    table = markdown_table(checks)
    row = table.splitlines()[2]
    assert "max \\|diff\\|" in row
    # an unescaped pipe would add cells: the row has exactly as many separators as the header
    assert row.replace("\\|", "").count("|") == table.splitlines()[0].count("|")


def test_all_passed_and_failed():
    a = Check(name="a", value=1.0, threshold=2.0, passed=True, reason="")
    b = Check(name="b", value=3.0, threshold=2.0, passed=False, reason="")
    assert all_passed([a]) and not all_passed([a, b])
    assert failed([a, b]) == [b]
    assert Check.model_validate(b.model_dump()) == b
