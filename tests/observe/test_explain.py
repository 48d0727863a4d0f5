"""`POST /v1/models/{name}:explain`: SHAP attributions of the served graph, on a real server."""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pytest

from driftloop.schema import Signature, feeds_for
from serving.app import create_app
from serving.config import ServeSettings
from serving.explain import ADDITIVITY_TOLERANCE, Explainer
from serving.testing import (
    TEST_INPUTS,
    build_test_package,
    records_payload,
    running_server,
    score_rows,
    synthetic_rows,
)

pytest.importorskip("shap")
MODEL = "flight_delay"


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain_repo")
    build_test_package(root / MODEL / "1", model_name=MODEL, mlp_width=16, lineage_id="lin-explain")
    return root


@pytest.mark.slow
def test_explain_route_names_every_input_and_adds_up(package):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    rows = synthetic_rows(3, seed=11, null_fraction=0.2)
    spans = InMemorySpanExporter()  # traced too: the explain request's span names the version that answered
    app = create_app(ServeSettings(repository=package), span_exporter=spans)
    with running_server(app) as base, httpx.Client(base_url=base, timeout=60) as c:
        r = c.post(f"/v1/models/{MODEL}:explain", json=records_payload(rows), headers={"x-request-id": "why-1"})
        assert r.status_code == 200, r.text
        again = c.post(f"/v1/models/{MODEL}:explain", json=records_payload(rows)).json()
        too_many = c.post(f"/v1/models/{MODEL}:explain", json=records_payload(synthetic_rows(5)))
        bad = c.post(f"/v1/models/{MODEL}:explain", json={"instances": [{"nope": 1}]})
        metrics = c.get("/metrics").text
    body = r.json()
    assert r.headers["x-model-version"] == "1" and body["lineage_id"] == "lin-explain" and body["request_id"] == "why-1"
    expected = score_rows(package / MODEL / "1" / "model.onnx", rows)[:, 0]
    assert len(body["explanations"]) == 3
    for e, score in zip(body["explanations"], expected, strict=True):
        assert list(e["attributions"]) == [t.name for t in TEST_INPUTS]  # the model's input names, in its order
        assert e["score"] == pytest.approx(float(score), abs=1e-6)
        assert abs(sum(e["attributions"].values()) - (e["score"] - e["base_value"])) <= ADDITIVITY_TOLERANCE
    assert again["explanations"] == body["explanations"]  # seeded: the same answer twice
    assert too_many.status_code == 422 and "at most 4" in too_many.json()["error"]
    assert bad.status_code == 400
    assert 'driftloop_requests_total{endpoint="/v1/models/{name}:explain",status="200"}' in metrics
    assert 'driftloop_predictions_total{' not in metrics  # an explanation is not a prediction
    (span,) = [s for s in spans.get_finished_spans() if s.attributes.get("driftloop.request_id") == "why-1"]
    assert span.name == "POST /v1/models/{name}:explain" and span.attributes["driftloop.lineage_id"] == "lin-explain"
    assert span.attributes["driftloop.model_version"] == "1"


def test_a_column_that_alone_differs_from_the_background_takes_the_whole_difference(package):
    """With one background row, a row equal to it but in one column: that column's attribution is
    f(x) - f(background) and every other one is 0 (Shapley's dummy and efficiency axioms)."""
    import onnxruntime as ort

    folder = package / MODEL / "1"
    signature = Signature.model_validate_json((folder / "signature.json").read_text())
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [s.name for s in signature.inputs]

    def run(feeds):
        return session.run(None, {n: feeds[n] for n in names})[0]

    background = synthetic_rows(1, seed=5, null_fraction=0.0)
    explainer = Explainer(run, signature, background, background_rows=1)
    column = signature.inputs[-1].name  # whatever the last input is: no dataset names here
    row = background.copy()
    other = synthetic_rows(50, seed=6, null_fraction=0.0)[column]
    row[column] = other[other != background[column].iloc[0]].iloc[0]
    (e,) = explainer.explain(feeds_for(row, TEST_INPUTS))
    f_row, f_bg = (float(run(feeds_for(x, TEST_INPUTS))[0, 0]) for x in (row, background))
    assert e["base_value"] == pytest.approx(f_bg, abs=1e-7) and e["score"] == pytest.approx(f_row, abs=1e-7)
    assert e["attributions"][column] == pytest.approx(f_row - f_bg, abs=ADDITIVITY_TOLERANCE)
    assert np.allclose([v for k, v in e["attributions"].items() if k != column], 0.0, atol=1e-9)


def test_without_shap_the_route_answers_501(package, monkeypatch):
    import serving.explain
    from serving.explain import ExplainUnavailable

    def missing():
        raise ExplainUnavailable("explanations need SHAP: pip install 'driftloop[explain]'")

    monkeypatch.setattr(serving.explain, "_shap", missing)
    with running_server(create_app(ServeSettings(repository=package))) as base, httpx.Client(base_url=base) as c:
        r = c.post(f"/v1/models/{MODEL}:explain", json=records_payload(synthetic_rows(1)))
        assert c.post(f"/v1/models/{MODEL}:predict", json=records_payload(synthetic_rows(1))).status_code == 200
    assert r.status_code == 501 and "driftloop[explain]" in r.json()["error"]


def test_the_drift_report_names_the_feature_whose_attribution_moved(package):
    """A window whose most-used input is frozen to one value: that input's mean |SHAP| moves the most."""
    from flows.monitoring import attribution_shift

    folder = package / MODEL / "1"
    reference = pd.read_parquet(folder / "reference.parquet")
    import onnxruntime as ort

    signature = Signature.model_validate_json((folder / "signature.json").read_text())
    names = [s.name for s in signature.inputs]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    explainer = Explainer(lambda f: session.run(None, {n: f[n] for n in names})[0], signature, reference)
    phi = explainer.explain(feeds_for(reference.sample(n=4, random_state=1), TEST_INPUTS))
    used = max(names, key=lambda n: np.mean([abs(e["attributions"][n]) for e in phi]))
    window = reference.copy()
    window[used] = window[used].mode().iloc[0]
    moved, note = attribution_shift(folder, window, reference, rows=8)
    assert note == "" and next(iter(moved)) == used, moved  # the only input whose values changed
    assert attribution_shift(package / "nowhere", window, reference)[1].startswith("no attribution shift")
