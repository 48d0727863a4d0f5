"""Drift detectors: small pure functions of a log window and the package's reference, each returning `Check`s.

Every detector states its evidence as `driftloop.checks.Check`s (name, value, threshold, passed,
reason). A check whose `value` is None could not be computed: its reason says why and it is never
read as "no drift" (`passed` is False). The thresholds come in as arguments, from one place: the
`policy` section of params.yaml (`driftloop.config.PolicyParams`); nothing here compares twice.

The reference (`reference.parquet` of the package, built by `build_reference`) is a time-uniform
sample of the whole data window the model was built from, with a `split` column. The feature and
score distributions are compared with all of it (the inputs the model learned from); ROC AUC is
compared only with its held-out rows (`split` valid/test: the model never trained on them), whose
AUC and DeLong variance `reference_stats` measures (also stored in the model card's `reference`).

Why per-column thresholds are calibrated on the reference's own time blocks ("like with like"):
weather is autocorrelated over days, and calendar columns depend on which days a window covers,
so a fortnight of weather inside the training window is already "drifted" from the whole window
at Evidently's fixed 0.1 distance (measured on nycflights13: 6 to 9 of 16 columns in every
fortnight of Jan-Mar against a Jan-Mar reference; docs/orchestration.md). A column drifts here when
its distance exceeds the largest distance that blocks of the reference *of the window's own time
span* show against the whole reference (an empirical null of the block distances, as in the
moving-block bootstrap of Kuensch 1989, Ann. Statist. 17(3)), times `policy.null_margin`, and at
least `policy.column_threshold`. A two-day window is thus held to what two-day blocks of the
training window vary by, a fortnight to what fortnights vary by.

Distances are those of Evidently 0.7's column tests (`evidently.legacy.calculations.stattests`):
normed Wasserstein (numeric: Wasserstein-1 / std of the reference) and Jensen-Shannon distance
(categorical, natural log), computed by `ColumnReference` over prepared arrays (equal to
Evidently's to 1e-9, tested), with nulls dropped first; a column with fewer than
`MIN_NON_NULL` non-null values on either side is "not computed" rather than a crash (Evidently
raises `ValueError` on an all-null column: the default dataset has a weather column null for whole days).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from driftloop.checks import Check, Rule
from driftloop.schema import LABEL, TensorSpec
from driftloop.stats import auc_delong

SCORE = "score"
"""The model's predicted probability in the log and the reference."""

HELD_OUT = ("valid", "test")
"""Reference splits whose ROC AUC is the honest reference (never trained on)."""

MIN_NON_NULL = 30
"""Fewer non-null values than this on either side: the column's distance is not computed.
(Evidently switches its tests at 1,000 rows; below ~30 values a distribution is not estimable.)"""

MAX_BLOCKS = 60
"""At most this many reference blocks per column for the empirical null (cost bound)."""


# ----------------------------------------------------------------------------- distances


class ColumnReference:
    """One reference column prepared once (sorted values and std, or category shares), so that
    many windows and blocks are compared with it cheaply.

    The distances are Evidently 0.7's (`evidently/legacy/calculations/stattests/`
    `wasserstein_distance_norm.py` and `jensenshannon.py` with `utils.get_binned_data`), rewritten
    over prepared arrays: the empirical null calls them about a thousand times per check, and
    Evidently's functions re-sort the reference each time (14 s against 0.2 s here).
    `tests/flows/test_monitoring.py` checks they equal Evidently's to 1e-9 on real columns.

    Args:
        values: the reference column (NaN dropped here).
        categorical: Jensen-Shannon on category shares (True) or normed Wasserstein (False).
    """

    def __init__(self, values: pd.Series, *, categorical: bool) -> None:
        v = values.dropna()
        self.categorical = categorical
        self.count = len(v)
        if categorical:
            self.shares = v.astype(str).value_counts() / max(len(v), 1)
        else:
            self.sorted = np.sort(v.to_numpy(np.float64))
            self.norm = max(float(np.std(self.sorted)), 0.001) if len(v) else 1.0

    def distance(self, current: pd.Series) -> float | None:
        """Distance of `current` (NaN dropped) from the reference; None when either side has
        fewer than `MIN_NON_NULL` non-null values."""
        cur = current.dropna()
        if self.count < MIN_NON_NULL or len(cur) < MIN_NON_NULL:
            return None
        if self.categorical:
            return _jensen_shannon(self.shares, cur.astype(str).value_counts() / len(cur))
        c = np.sort(cur.to_numpy(np.float64))
        grid = np.sort(np.concatenate([self.sorted, c]))
        f_ref = np.searchsorted(self.sorted, grid[:-1], side="right") / len(self.sorted)
        f_cur = np.searchsorted(c, grid[:-1], side="right") / len(c)
        return float(np.sum(np.abs(f_ref - f_cur) * np.diff(grid)) / self.norm)


def _jensen_shannon(ref: pd.Series, cur: pd.Series) -> float:
    """Jensen-Shannon distance (natural log) of two share vectors (Evidently: no zero filling for it)."""
    from scipy.spatial import distance

    keys = ref.index.union(cur.index)
    p, q = ref.reindex(keys, fill_value=0.0).to_numpy(), cur.reindex(keys, fill_value=0.0).to_numpy()
    return float(distance.jensenshannon(p, q))


def column_distance(reference: pd.Series, current: pd.Series, *, categorical: bool) -> float | None:
    """Evidently's drift distance of one column, nulls dropped; None when not estimable.

    Args:
        reference: the reference values.
        current: the window's values.
        categorical: Jensen-Shannon on category shares (True) or normed Wasserstein (False).

    Returns:
        The distance (>= 0; Jensen-Shannon <= sqrt(ln 2)), or None when either side has fewer
        than `MIN_NON_NULL` non-null values.
    """
    return ColumnReference(reference, categorical=categorical).distance(current)


def _null_reason(reference: pd.Series, current: pd.Series) -> str:
    ref, cur = int(reference.notna().sum()), int(current.notna().sum())
    side, n = ("window", cur) if cur < MIN_NON_NULL else ("reference", ref)
    return f"not computed: {n} non-null values in the {side} (< {MIN_NON_NULL})"


def reference_times(reference: pd.DataFrame, time_column: str) -> pd.Series:
    """The reference rows' times (UTC) from `time_column` (`dataset.time.column`).

    Raises:
        ValueError: the reference has no such column.
    """
    if time_column not in reference.columns:
        raise ValueError(
            f"reference lacks column {time_column} (dataset.time.column); rebuild the package (`dvc repro package`) "
            "or fix dataset.time.column"
        )
    return pd.to_datetime(reference[time_column], utc=True)


_NULL_CACHE: dict[tuple, dict[str, float]] = {}
_NULL_CACHE_SIZE = 32


def null_thresholds(
    reference: pd.DataFrame,
    columns: Sequence[str],
    span: pd.Timedelta,
    *,
    time_column: str,
    categorical: Collection[str],
    floor: float,
    margin: float,
) -> dict[str, float]:
    """Per-column thresholds from the reference's own blocks of length `span` (the empirical null).

    Blocks start every max(span / 2, reference span / MAX_BLOCKS); each block with at least
    `MIN_NON_NULL` rows is compared with the whole reference. A column's threshold is
    max(floor, margin * the largest block distance).

    Args:
        reference: the reference sample with `time_column` and `columns`.
        columns: the columns to calibrate.
        time_column: the reference's time column (`dataset.time.column`).
        categorical: the columns of `columns` compared as categories (BYTES inputs).
        span: the window's time span (the blocks' length).
        floor: the smallest threshold (policy.column_threshold).
        margin: multiplier of the largest block distance (policy.null_margin).

    Returns:
        {column: threshold}; a column without any computable block gets `floor`. Results are
        cached per (reference content, columns, span to the hour, floor, margin): a scheduled check
        recomputes against the same reference every run.
    """
    span = pd.Timedelta(hours=max(1, round(span / pd.Timedelta(hours=1))))
    key = (int(pd.util.hash_pandas_object(reference[[*columns, time_column]], index=False).sum()),
           tuple(columns), time_column, tuple(sorted(categorical)), span, floor, margin)  # fmt: skip
    if key in _NULL_CACHE:
        return dict(_NULL_CACHE[key])
    out = _null_thresholds(reference, columns, span, time_column, categorical, floor, margin)
    if len(_NULL_CACHE) >= _NULL_CACHE_SIZE:
        _NULL_CACHE.pop(next(iter(_NULL_CACHE)))
    _NULL_CACHE[key] = out
    return dict(out)


def _null_thresholds(
    reference: pd.DataFrame, columns: Sequence[str], span: pd.Timedelta, time_column: str,
    categorical: Collection[str], floor: float, margin: float,
) -> dict[str, float]:
    times = reference_times(reference, time_column)
    first, last = times.min(), times.max()
    step = max(span / 2, (last - first) / MAX_BLOCKS, pd.Timedelta(hours=1))
    starts = pd.date_range(first, max(first, last - span), freq=step)
    blocks = [reference.loc[(times >= s) & (times < s + span)] for s in starts]
    blocks = [b for b in blocks if len(b) >= MIN_NON_NULL]
    out = {}
    for c in columns:
        prepared = ColumnReference(reference[c], categorical=c in categorical)
        dists = [d for b in blocks if (d := prepared.distance(b[c])) is not None]
        out[c] = max(floor, margin * max(dists)) if dists else floor
    return out


# ----------------------------------------------------------------------------- ROC AUC


def day_clusters(times: pd.Series) -> np.ndarray:
    """The UTC day of each timestamp, as the cluster key of `auc_delong`."""
    return pd.to_datetime(times, utc=True).dt.floor("D").to_numpy()


# ----------------------------------------------------------------------------- the reference


class ReferenceStats(BaseModel):
    """The model card's `reference`: what the package's reference sample holds and its honest ROC AUC.

    Attributes:
        rows: rows of reference.parquet.
        held_out_rows: rows of its valid/test splits (labelled, never trained on).
        roc_auc: ROC AUC of the package's `score` on the held-out rows.
        roc_auc_se: its standard error (DeLong, clustered by day: Obuchowski 1997).
        positives, negatives: held-out rows per class.
        start, end: first and last time of the reference (UTC, ISO-8601).
        splits: rows per split.
    """

    model_config = ConfigDict(frozen=True)

    rows: int
    held_out_rows: int
    roc_auc: float | None
    roc_auc_se: float | None
    positives: int
    negatives: int
    start: str
    end: str
    splits: dict[str, int]


def build_reference(
    splits: dict[str, pd.DataFrame], rows: int, seed: int = 0, *, features: Sequence[str], time_column: str
) -> pd.DataFrame:
    """A time-uniform sample of the whole data window, every split at the same sampling fraction.

    Args:
        splits: {"train" | "valid" | "test": frame} with `features`, `label`, `time_column`.
        rows: rows wanted in total (fewer when the splits hold fewer); split counts by largest remainder.
        seed: sampling seed.
        features: the model's input columns, in input order (`dataset.features`).
        time_column: the time column (`dataset.time.column`).

    Returns:
        `features`, `label`, `time_column`, `split` (str), sorted by time (no `score` yet:
        the package scores it with its own graph).
    """
    sizes = {name: len(frame) for name, frame in splits.items()}
    total = sum(sizes.values())
    want = min(rows, total)
    # Largest-remainder allocation: each split at the same fraction, counts summing to `want`.
    exact = {n: want * k / max(total, 1) for n, k in sizes.items()}
    counts = {n: int(math.floor(x)) for n, x in exact.items()}
    for n in sorted(exact, key=lambda n: exact[n] - counts[n], reverse=True)[: want - sum(counts.values())]:
        counts[n] += 1
    parts = []
    for name, frame in splits.items():
        part = frame.sample(n=counts[name], random_state=seed)[[*features, LABEL, time_column]].copy()
        part["split"] = name
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(time_column, kind="stable").reset_index(drop=True)


def held_out(reference: pd.DataFrame) -> pd.DataFrame:
    """The reference's held-out rows (`split` valid/test); none for an old package without `split`
    (its rows were training rows, whose AUC flatters the model: measured 0.745 vs 0.689 held out)."""
    if "split" not in reference.columns:
        return reference.iloc[0:0]
    return reference[reference["split"].isin(HELD_OUT)]


def reference_stats(reference: pd.DataFrame, time_column: str) -> ReferenceStats:
    """Summarise a scored reference sample (`score`, `label`, `time_column`, `split`) for the model card."""
    hold = held_out(reference)
    est = (
        auc_delong(hold[LABEL].to_numpy(), hold[SCORE].to_numpy(), day_clusters(hold[time_column]))
        if len(hold) and SCORE in hold
        else None
    )
    times = reference_times(reference, time_column)
    splits = reference["split"].value_counts().to_dict() if "split" in reference.columns else {}
    return ReferenceStats(
        rows=len(reference), held_out_rows=len(hold), roc_auc=est.auc if est else None,
        roc_auc_se=est.se if est else None, positives=est.positives if est else 0,
        negatives=est.negatives if est else 0, start=times.min().isoformat(), end=times.max().isoformat(),
        splits={str(k): int(v) for k, v in splits.items()},
    )  # fmt: skip


# ----------------------------------------------------------------------------- detectors

MIN_ROWS = Rule(name="min_rows", what="logged rows of this version in the window", comparison=">=")
MIN_SPAN = Rule(name="min_span_hours", what="time span of the window", comparison=">=", unit="h")
DRIFT_SHARE = Rule(name="drift_share", what="share of feature columns past their threshold", comparison="<",
                   missing_reason="not computed: no feature column was computable")  # fmt: skip
AUC_DROP = Rule(name="auc_drop", what="ROC AUC drop vs held-out reference, lower confidence bound", comparison="<=",
                missing_reason="not measured")  # fmt: skip


@dataclass(frozen=True)
class Thresholds:
    """Every threshold the detectors use; built from `PolicyParams` in one place (`from_policy`).

    Attributes:
        min_rows: rows needed for any verdict.
        min_span_hours: the window's time span needed for any verdict, hours.
        column_threshold: the smallest per-column distance that counts as drift.
        null_margin: multiplier of the largest same-span block distance of the reference.
        drift_share: a share of drifted feature columns >= this is drift, [0, 1].
        score_drift: a drifted score alone is drift (False: reported, advisory).
        min_labelled_rows: labelled rows (each class >= 2) needed for the AUC rule.
        max_auc_drop: the AUC drop that matters (practical margin), in AUC units.
        auc_z: one-sided normal quantile of the drop's confidence bound (1.645 = 95%).
    """

    min_rows: int
    min_span_hours: float
    column_threshold: float
    null_margin: float
    drift_share: float
    score_drift: bool
    min_labelled_rows: int
    max_auc_drop: float | None
    auc_z: float

    @classmethod
    def from_policy(cls, policy: object) -> Thresholds:
        """From a `driftloop.config.PolicyParams` (attribute names match)."""
        return cls(**{k: getattr(policy, k) for k in cls.__dataclass_fields__})


def evidence_checks(current: pd.DataFrame, span_hours: float, th: Thresholds) -> list[Check]:
    """Is there enough evidence for a verdict? Rows and time span of the window."""
    return [
        MIN_ROWS.check(float(len(current)), th.min_rows),
        MIN_SPAN.check(span_hours, th.min_span_hours),
    ]


def column_checks(
    current: pd.DataFrame, reference: pd.DataFrame, columns: Sequence[str], thresholds: dict[str, float],
    categorical: Collection[str] = (),
) -> list[Check]:
    """One check per column: its distance against its calibrated threshold (passed = no drift).

    `categorical` columns are compared as categories (Jensen-Shannon), the others as numbers.

    Returns:
        Checks named `column_drift` with `subject` the column; value None = not computed (passed False).
    """
    out = []
    for c in columns:
        thr = thresholds[c]
        if c not in current.columns or c not in reference.columns:
            out.append(Check(name="column_drift", value=None, threshold=thr, passed=False, subject=c,
                             reason=f"{c}: not computed: column missing"))  # fmt: skip
            continue
        d = column_distance(reference[c], current[c], categorical=c in categorical)
        if d is None:
            out.append(Check(name="column_drift", value=None, threshold=thr, passed=False, subject=c,
                             reason=f"{c}: {_null_reason(reference[c], current[c])}"))  # fmt: skip
            continue
        sign = "<" if d < thr else ">="
        out.append(Check(name="column_drift", value=d, threshold=thr, passed=d < thr, subject=c,
                         reason=f"{c}: distance {d:.3f} {sign} {thr:.3f}"))  # fmt: skip
    return out


def share_check(columns: Sequence[Check], th: Thresholds) -> Check:
    """The share of computed feature columns that drifted, against `drift_share`.

    Not computed when fewer than half the columns could be computed (a share of a few columns is
    not the share the threshold was set for).
    """
    computed = [c for c in columns if c.value is not None]
    if len(computed) * 2 < len(columns):
        return DRIFT_SHARE.check(None, th.drift_share)
    drifted = [c.subject for c in computed if not c.passed]
    share = len(drifted) / len(computed)
    skipped = len(columns) - len(computed)
    detail = f"({', '.join(str(d) for d in drifted) or 'none'}" + (f"; {skipped} not computed)" if skipped else ")")
    return DRIFT_SHARE.check(share, th.drift_share, detail=detail)


def auc_check(current: pd.DataFrame, reference: ReferenceStats | None, th: Thresholds) -> list[Check]:
    """ROC AUC drop vs the held-out reference, judged on its confidence bound.

    drop = AUC_ref - AUC_window; its standard error sqrt(se_ref^2 + se_window^2) (independent
    samples; each a DeLong variance clustered by day, Obuchowski 1997: see `auc_delong`); the rule fails when drop - auc_z * se > max_auc_drop, i.e. when
    the drop exceeds the practical margin at one-sided confidence Phi(auc_z).

    Returns:
        [auc_drop]; "not measured" (value None, passed True: labels arrive late, their absence is
        not a failure of the window) when the rule is off, the reference has no held-out AUC, or
        fewer than `min_labelled_rows` labels (or fewer than 2 of a class) have arrived.
    """
    labels = current[LABEL] if LABEL in current.columns else pd.Series(np.nan, index=current.index)
    labelled = current[labels.notna()]
    counts = labelled[LABEL].value_counts() if len(labelled) else pd.Series(dtype=np.int64)
    both = min(int(counts.get(0, 0)), int(counts.get(1, 0))) >= 2
    missing = None
    if th.max_auc_drop is None:
        missing = "the rule is off (policy.max_auc_drop null)"
    elif reference is None or reference.roc_auc is None or reference.roc_auc_se is None:
        missing = "the reference has no held-out rows (a package built before `split`: rebuild it)"
    elif not both or len(labelled) < th.min_labelled_rows:
        missing = f"{len(labelled)} labelled rows < {th.min_labelled_rows} (or one class)"
    if missing:
        return [Check(name="auc_drop", value=None, threshold=th.max_auc_drop, passed=True,
                              reason=f"ROC AUC drop: not measured: {missing}")]  # fmt: skip
    assert reference is not None and reference.roc_auc is not None and reference.roc_auc_se is not None
    assert th.max_auc_drop is not None
    clusters = day_clusters(labelled["ts"]) if "ts" in labelled.columns else None
    est = auc_delong(labelled[LABEL].to_numpy(), labelled[SCORE].to_numpy(), clusters)
    assert est is not None
    drop = reference.roc_auc - est.auc
    se = math.hypot(reference.roc_auc_se, est.se)
    bound = drop - th.auc_z * se
    detail = (f"({reference.roc_auc:.3f} held-out -> {est.auc:.3f} on {len(labelled)} rows; "
              f"drop {drop:.3f} - {th.auc_z:g} x SE {se:.3f})")  # fmt: skip
    return [AUC_DROP.check(bound, th.max_auc_drop, detail=detail)]


def assess(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    stats: ReferenceStats | None,
    span_hours: float,
    th: Thresholds,
    *,
    inputs: Sequence[TensorSpec],
    time_column: str,
) -> list[Check]:
    """Every detector on one window of one model version. Pure: no I/O, no clock.

    Args:
        current: the window's rows of one version: the input columns, `score`, optionally `label`
            (NaN = not yet labelled).
        reference: the package's reference sample: the input columns, `score`, `time_column`.
        stats: `reference_stats(reference)` (held-out AUC), or None.
        span_hours: the time span the window's rows cover, hours.
        th: the thresholds (`Thresholds.from_policy(policy)`).
        inputs: the package's inputs (`signature.json`): their names, and which are categorical (BYTES).
        time_column: the reference's time column (`dataset.time.column`).

    Returns:
        Checks in this order: min_rows, min_span_hours, then (only when both pass) one
        `column_drift` per feature, `drift_share`, `score_drift`, `auc_drop`.
    """
    checks = evidence_checks(current, span_hours, th)
    if not all(c.passed for c in checks):
        return checks
    span = pd.Timedelta(hours=span_hours)
    features = [s.name for s in inputs]
    categorical = {s.name for s in inputs if s.datatype == "BYTES"}
    thresholds = null_thresholds(reference, [*features, SCORE], span, time_column=time_column, categorical=categorical,
                                 floor=th.column_threshold, margin=th.null_margin)  # fmt: skip
    columns = column_checks(current, reference, features, thresholds, categorical)
    score = column_checks(current, reference, [SCORE], thresholds)[0]
    score = score.model_copy(update={"name": "score_drift"})
    if not th.score_drift and not score.passed:
        score = score.model_copy(update={"passed": True, "reason": f"{score.reason} (advisory: policy.score_drift off)"})
    return [*checks, *columns, share_check(columns, th), score, *auc_check(current, stats, th)]


def verdict(checks: Sequence[Check]) -> tuple[str, list[str]]:
    """Read a list of checks from `assess` as one verdict and its reasons.

    Returns:
        ("insufficient evidence" | "not computed" | "drift" | "no drift", reasons). "no drift"
        needs the share and the score computed and passed (the AUC rule may be "not measured").
    """
    by = {c.name: c for c in checks if c.name != "column_drift"}
    short = [c for c in checks if c.name in ("min_rows", "min_span_hours") and not c.passed]
    if short:
        return "insufficient evidence", [c.reason for c in short]
    evidence = [by[n] for n in ("drift_share", "score_drift", "auc_drop") if n in by]
    fired = [c for c in evidence if c.value is not None and not c.passed]
    if fired:
        return "drift", [c.reason for c in fired]
    unknown = [c for c in evidence if c.value is None and c.name != "auc_drop"]
    if unknown or len(evidence) < 3:
        return "not computed", [c.reason for c in unknown] or ["drift detectors missing"]
    return "no drift", [c.reason for c in evidence]
