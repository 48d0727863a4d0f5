"""The backtest's HTML report: one chart (weekly ROC AUC per policy, retrain markers), the totals, the settings.

Plotly draws the chart; its JavaScript is inlined (`include_plotlyjs=True`), so the page renders
offline, from a file, with no network.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

MARKERS = {"promoted": ("triangle-up", "promoted"), "gate rejected": ("x", "rejected by the gate"),
           "rolled back": ("triangle-down", "rolled back by the canary")}  # fmt: skip
"""Event kind -> (plotly marker symbol, legend text)."""

TOTAL_COLUMNS = (
    ("mean_weekly_roc_auc", "mean weekly ROC AUC"),
    ("overall_roc_auc", "overall ROC AUC"),
    ("retrains", "retrains started"),
    ("promoted", "promoted"),
    ("rejected_by_gate", "rejected by gate"),
    ("rolled_back", "rolled back"),
    ("training_cpu_s", "training CPU-s"),
    ("rows", "rows served"),
)


def _week_of(day: str) -> str:
    import datetime as dt

    d = dt.date.fromisoformat(day)
    return (d - dt.timedelta(days=d.weekday())).isoformat()


def chart(figures: dict[str, Any]):
    """The plotly figure: weekly ROC AUC per policy, a marker per promotion, gate rejection, rollback."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, p in figures["policies"].items():
        weeks = [w["week"] for w in p["weekly"]]
        aucs = [w["roc_auc"] for w in p["weekly"]]
        mean = p.get("mean_weekly_roc_auc")
        label = f"{name} (mean {mean:.3f})" if mean is not None else name
        fig.add_trace(go.Scatter(x=weeks, y=aucs, mode="lines+markers", name=label, legendgroup=name,
                                 marker={"size": 4}))  # fmt: skip
        by_week = dict(zip(weeks, aucs, strict=True))
        for kind, (symbol, text) in MARKERS.items():
            hits = [e for e in p["events"] if e["kind"] == kind]
            if not hits:
                continue
            xs = [_week_of(e["day"]) for e in hits]
            fig.add_trace(go.Scatter(
                x=xs, y=[by_week.get(x) for x in xs], mode="markers", name=f"{name}: {text}", legendgroup=name,
                marker={"symbol": symbol, "size": 11, "line": {"width": 1}},
                hovertext=[f"{e['day']} {e.get('version', '')}: {e.get('reason', '')[:160]}" for e in hits],
                showlegend=True,
            ))  # fmt: skip
    fig.update_layout(
        title="ROC AUC of what was served, per week (measured: prediction log joined with labels)",
        xaxis_title="week (Monday)", yaxis_title="ROC AUC", template="plotly_white", height=520,
        legend={"font": {"size": 10}},
    )  # fmt: skip
    return fig


def totals_table(figures: dict[str, Any]) -> str:
    """The totals as an HTML table, one row per policy."""

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.3f}" if isinstance(v, float) and abs(v) < 10 else (f"{v:,.1f}" if isinstance(v, float) else f"{v:,}")

    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in TOTAL_COLUMNS)
    rows = []
    for name, p in figures["policies"].items():
        cells = "".join(f"<td>{fmt(p.get(k))}</td>" for k, _ in TOTAL_COLUMNS)
        served = ", ".join(f"{v}: {d:g}" for v, d in p["days_served"].items())
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}<td>{html.escape(served)}</td></tr>")
    return f"<table><tr><th>policy</th>{head}<th>days served per version</th></tr>{''.join(rows)}</table>"


def write_html(path: str | os.PathLike[str], figures: dict[str, Any]) -> Path:
    """Write the report (one self-contained file, no external script or style) atomically."""
    import plotly.io as pio

    from driftloop.io import write_text

    span = figures["span"]
    plot = pio.to_html(chart(figures), include_plotlyjs=True, full_html=False)
    settings = {k: figures[k] for k in ("settings", "policy_params", "release_params")}
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>driftloop backtest {span['start']}..{span['end']}</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style>
</head><body>
<h1>Backtest: retraining policies on {span['start']} .. {span['end']}</h1>
<p>{span['days']} days, {span['rows']:,} flights replayed through the model server per policy; every policy starts
from the model built on the window ending {span['initial_as_of']}. Markers: promotion (triangle up), rejection by the
gate (x), rollback by the canary (triangle down), at the week they happened.</p>
{plot}
<h2>Totals</h2>
{totals_table(figures)}
<h2>Parameters used</h2>
<pre>{html.escape(json.dumps(settings, indent=2))}</pre>
</body></html>
"""
    path = Path(path)
    write_text(path, page)
    return path
