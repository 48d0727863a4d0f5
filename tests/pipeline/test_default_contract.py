"""Issue 18: the default declaration (params.yaml's `dataset`) reproduces the column contract that
`driftloop/schema.py` hard-coded before it: same inputs in the same order, datatypes, nullability,
and so the same `signature.json` inputs and the same preprocessing column lists.

`BEFORE` is `[s.model_dump() for s in driftloop.schema.input_specs()]` printed by the code of main
at commit ca17859 (the last one with the constants), frozen here.
"""

from __future__ import annotations

import json

from driftloop.schema import Signature, output_specs
from serving.testing import TEST_INPUTS
from tests.conftest import default_dataset

BEFORE = json.loads(
    '[{"name": "carrier", "datatype": "BYTES", "shape": [-1, 1], "nullable": false},'
    ' {"name": "origin", "datatype": "BYTES", "shape": [-1, 1], "nullable": false},'
    ' {"name": "dest", "datatype": "BYTES", "shape": [-1, 1], "nullable": false},'
    ' {"name": "hour", "datatype": "INT64", "shape": [-1, 1], "nullable": false},'
    ' {"name": "minute", "datatype": "INT64", "shape": [-1, 1], "nullable": false},'
    ' {"name": "day_of_week", "datatype": "INT64", "shape": [-1, 1], "nullable": false},'
    ' {"name": "distance", "datatype": "INT64", "shape": [-1, 1], "nullable": false},'
    ' {"name": "temp", "datatype": "FP32", "shape": [-1, 1], "nullable": true},'
    ' {"name": "dewp", "datatype": "FP32", "shape": [-1, 1], "nullable": true},'
    ' {"name": "humid", "datatype": "FP32", "shape": [-1, 1], "nullable": true},'
    ' {"name": "wind_dir", "datatype": "FP32", "shape": [-1, 1], "nullable": true},'
    ' {"name": "wind_speed", "datatype": "FP32", "shape": [-1, 1], "nullable": true},'
    ' {"name": "wind_gust", "datatype": "FP32", "shape": [-1, 1], "nullable": true},'
    ' {"name": "precip", "datatype": "FP32", "shape": [-1, 1], "nullable": true},'
    ' {"name": "pressure", "datatype": "FP32", "shape": [-1, 1], "nullable": true},'
    ' {"name": "visib", "datatype": "FP32", "shape": [-1, 1], "nullable": true}]'
)


def test_default_declaration_is_the_old_contract():
    ds = default_dataset()
    assert [s.model_dump() for s in ds.input_specs()] == BEFORE
    assert ds.categorical == ("carrier", "origin", "dest")
    assert ds.integer == ("hour", "minute", "day_of_week", "distance")
    assert ds.floating == ds.nullable == tuple(s["name"] for s in BEFORE if s["datatype"] == "FP32")
    assert ds.label.column == "arr_delay" and ds.label.op == ">=" and ds.label.value == 15.0
    assert ds.time.column == "time_hour" and ds.joins["weather"].keys == ["origin", "time_hour"]


def test_signature_json_inputs_are_byte_identical():
    ds = default_dataset()
    new = Signature(model_name="m", lineage_id="0" * 16, inputs=ds.input_specs(), outputs=output_specs())
    old = Signature(model_name="m", lineage_id="0" * 16, inputs=BEFORE, outputs=output_specs())
    assert new.model_dump_json(indent=2) == old.model_dump_json(indent=2)
    assert [s.model_dump() for s in TEST_INPUTS] == BEFORE  # the test packages mirror it


def test_the_families_see_the_old_column_lists():
    from driftloop.families.hgb import HGBParams, make_hgb
    from driftloop.families.mlp import one_hot_preprocess

    ds = default_dataset()
    trees = make_hgb(HGBParams(), 0, ds).named_steps["encode"].transformers
    assert [(n, cols) for n, _, cols in trees] == [("cat", ["carrier", "origin", "dest"]), ("num", [
        "hour", "minute", "day_of_week", "distance", *ds.floating])]  # fmt: skip
    assert [cols for _, _, cols in one_hot_preprocess(ds).transformers] == [
        ["carrier", "origin", "dest"], ["hour", "minute", "day_of_week", "distance"], list(ds.floating)]  # fmt: skip
