"""Artifact markdown survives the Prefect CLI: `prefect artifact inspect` prints it through rich markup,
where "[/tmp/x.html](file://...)" is a closing tag that matches nothing (a MarkupError)."""

from __future__ import annotations

import pytest
from rich.errors import MarkupError
from rich.markup import render

from driftloop.checks import Check
from flows.monitoring import DriftCheckResult, summary_markdown
from flows.policy import Decision, DriftSummary


def test_the_drift_check_artifact_renders_as_rich_markup(tmp_path):
    with pytest.raises(MarkupError):  # what the old links did
        render(f"Report: [{tmp_path}/drift_report.html](file://{tmp_path}/drift_report.html)")
    summary = DriftSummary(status="checked", model_version="v0.0.1", rows=5000,
                           checks=[Check(name="temp", value=0.31, threshold=0.12, passed=False, reason="0.31 > 0.12")])  # fmt: skip
    result = DriftCheckResult(summary=summary, decision=Decision(retrain=True, drift=True, verdict="drift", reasons=["temp"]),
                              report_html=str(tmp_path / "drift_report.html"), summary_json=str(tmp_path / "s.json"))  # fmt: skip
    markdown = summary_markdown(result)
    assert f"file://{tmp_path}/drift_report.html" in markdown
    render(markdown)  # raises MarkupError if any bracketed text reads as a tag
