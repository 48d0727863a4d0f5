"""`driftloop gc` on the prediction log: past days compacted into one file with the same rows, old days
expired unless something reads them, labels deleted only when every row labels an expired prediction."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from driftloop.lifecycle import GcPlan, compact_day, execute, plan_log
from driftloop.predlog import read_log, write_labels
from serving.predlog import PredictionLog
from serving.testing import TEST_INPUTS, synthetic_rows

MODEL = "m"
TODAY = dt.date(2026, 6, 30)


def write_day(log_dir: Path, day: dt.date, parts: int, rows: int = 5) -> list[str]:
    """`parts` files of `rows` rows each in `date=<day>`, written by the server's own log writer."""
    from driftloop.schema import feeds_for

    ids = []
    plog = PredictionLog(log_dir, flush_interval_s=3600, max_rows_per_file=10**6)
    for k in range(parts):
        feeds = feeds_for(synthetic_rows(rows, seed=k + day.toordinal()), TEST_INPUTS)
        rid = f"{day}-{k}"
        plog.append(model=MODEL, version="1", request_id=rid, feeds=feeds, scores=np.full((rows, 1), 0.5, np.float32),
                    latency_ms=1.0, service_ms=0.5, ts=dt.datetime.combine(day, dt.time(8, k), tzinfo=dt.UTC))  # fmt: skip
        plog.flush()  # one file per request: the small files compaction is for
        ids.append(rid)
    return ids


def files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_compaction_keeps_every_row_and_expiry_spares_what_is_read(tmp_path):
    log_dir = tmp_path / "logs"
    old = write_day(log_dir, TODAY - dt.timedelta(days=100), parts=2)
    read_by_canary = write_day(log_dir, TODAY - dt.timedelta(days=40), parts=2)
    write_day(log_dir, TODAY - dt.timedelta(days=5), parts=3)
    write_day(log_dir, TODAY, parts=2)  # still being written: never touched
    labels = log_dir / MODEL / "labels"
    at = pd.Timestamp("2026-06-01", tz="UTC")
    all_old = write_labels(log_dir, MODEL, pd.DataFrame({"request_id": old, "label": [1, 0], "observed_at": [at] * 2}),
                           name="old")  # fmt: skip
    mixed = write_labels(log_dir, MODEL, pd.DataFrame({"request_id": [old[0], read_by_canary[0]], "label": [1, 1],
                                                       "observed_at": [at] * 2}), name="mixed")  # fmt: skip
    window = (TODAY - dt.timedelta(days=10), TODAY + dt.timedelta(days=1))
    before = read_log(log_dir, MODEL, *window)
    everything = files(tmp_path)

    actions, kept = plan_log(log_dir, MODEL, today=TODAY, log_days=30, keep_from=TODAY - dt.timedelta(days=45))
    by_kind = {}
    for a in actions:
        by_kind.setdefault(a.kind, []).append(a.path)
    old_day = log_dir / MODEL / f"date={TODAY - dt.timedelta(days=100)}"
    assert by_kind["expire"] == [old_day]  # day -40 is past log_days but on or after keep_from
    assert by_kind["expire_labels"] == [all_old] and any(str(mixed) in k for k in kept)
    assert [p.name for p in by_kind["compact"]] == [f"date={TODAY - dt.timedelta(days=40)}", f"date={TODAY - dt.timedelta(days=5)}"]
    plan = GcPlan(actions, kept)
    assert plan.bytes == sum(a.bytes for a in actions) > 0

    done = execute(plan, root=tmp_path, keep_runs=1)
    assert done["freed_bytes"] == plan.bytes
    gone = everything - files(tmp_path)
    planned = {f for a in actions for f in ([a.path] if a.path.is_file() or a.kind == "expire_labels" else [])}
    planned |= {f for a in actions if a.kind == "expire" for f in everything if a.path in f.parents}
    planned |= {f for a in actions if a.kind == "compact" for f in a.sources}
    assert gone == planned  # exactly what the plan listed, nothing else
    assert mixed.is_file() and not all_old.exists() and labels.is_dir()
    after = read_log(log_dir, MODEL, *window)
    pd.testing.assert_frame_equal(before, after)  # compaction keeps every row and column
    compacted = sorted((log_dir / MODEL / f"date={TODAY - dt.timedelta(days=5)}").iterdir())
    assert [p.name for p in compacted] == ["part-" + (TODAY - dt.timedelta(days=5)).strftime("%Y%m%d") + "T000000000000-daily.parquet"]
    assert len(list((log_dir / MODEL / f"date={TODAY}").iterdir())) == 2
    # a second run has nothing left to do
    assert plan_log(log_dir, MODEL, today=TODAY, log_days=30, keep_from=TODAY - dt.timedelta(days=45))[0] == []


def test_an_interrupted_compaction_is_finished_not_duplicated(tmp_path):
    log_dir = tmp_path / "logs"
    write_day(log_dir, TODAY - dt.timedelta(days=2), parts=3)
    day = log_dir / MODEL / f"date={TODAY - dt.timedelta(days=2)}"
    before = read_log(log_dir, MODEL, TODAY - dt.timedelta(days=3), TODAY)
    (action,) = plan_log(log_dir, MODEL, today=TODAY, log_days=30, keep_from=None)[0]
    parts = sorted(day.iterdir())
    for p in parts:  # as if the process died after the rename, before deleting the parts
        (tmp_path / p.name).write_bytes(p.read_bytes())
    compact_day(action)
    for p in parts:
        (tmp_path / p.name).rename(p)
    assert len(read_log(log_dir, MODEL, TODAY - dt.timedelta(days=3), TODAY)) == 2 * len(before)
    actions, _ = plan_log(log_dir, MODEL, today=TODAY, log_days=30, keep_from=None)
    assert sorted(a.kind for a in actions) == ["finish"] * 3 and {a.path for a in actions} == set(parts)
    execute(GcPlan(actions), root=tmp_path, keep_runs=1)
    pd.testing.assert_frame_equal(read_log(log_dir, MODEL, TODAY - dt.timedelta(days=3), TODAY), before)
    assert pq.read_schema(next(day.iterdir())).metadata is not None
