"""Storage lifecycle (`driftloop gc`): what may be deleted, listed first, then deleted exactly as listed.

Four kinds of garbage, each planned as `Action`s (path, bytes, reason) before anything is touched:

- compact: a past day of the prediction log (`<log_dir>/<model>/date=D/`, D before today, UTC) held in
  more than one `part-*.parquet` file is rewritten as one `part-<D>T000000000000-daily.parquet` (rows
  sorted by ts, request_id, row; schema unchanged) and the small files are deleted. The daily file is
  written to a hidden temporary and renamed into place, then the parts go; its Parquet metadata lists
  the parts it replaced, so a run interrupted between the two steps is completed by the next one
  ("finish": until then a reader could see those rows twice).
- expire: a day older than `retention.log_days` is deleted, unless something still reads it: the drift
  check's window (`monitor.window_hours`) and, while a canary is open, everything from its start minus
  the analysis baseline (`release.baseline_window_s`); an open canary whose start is unknown keeps
  every day. Labels are joined to the expiring rows first: a label file is deleted only when every one
  of its rows labels an expiring prediction, so no label of a kept prediction is ever lost.
- retire: a version folder of the model repository (`<repository>/<model>/<N>/`) that is neither
  stable, nor the canary, nor the rollback target (the last non-deprecated stable before the current
  one), per the serving state the release plane wrote and the registry. Nothing is retired while a
  release holds the repository's lock, or before a first release wrote a serving state.
- dvc: `dvc gc --workspace --all-tags --rev HEAD --num N`: the cache keeps the workspace, every git tag
  (GTO's registered versions and stage assignments: each registered version's files) and the last N
  commits. Its dry run (`--dry`) names the objects; the real run uses the same flags.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

DAILY_SUFFIX = "-daily.parquet"
SOURCES_KEY = b"driftloop.compacted_from"


@dataclass(frozen=True)
class Action:
    """One thing `gc` does.

    Attributes:
        kind: "compact" | "finish" (a part an interrupted compaction already copied) | "expire" |
            "expire_labels" | "retire" | "dvc".
        path: what is deleted (a file or folder; "compact": the day's folder).
        bytes: bytes it frees (compact: the parts' size; the daily file written instead is reported after the run).
        reason: why, for people.
        sources: compact: the part files replaced.
    """

    kind: str
    path: Path
    bytes: int
    reason: str
    sources: tuple[Path, ...] = ()


@dataclass
class GcPlan:
    """Everything `gc` would do, and what it keeps on purpose (`kept`: one line each)."""

    actions: list[Action] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        """Bytes of everything deleted (compact: the parts; the daily files written instead are extra)."""
        return sum(a.bytes for a in self.actions)


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (0 when missing)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _day(folder: Path) -> dt.date | None:
    try:
        return dt.date.fromisoformat(folder.name.removeprefix("date="))
    except ValueError:
        return None


def plan_log(
    log_dir: Path, model: str, *, today: dt.date, log_days: int, keep_from: dt.date | None
) -> tuple[list[Action], list[str]]:
    """Compaction and retention of one model's prediction log.

    Args:
        log_dir: the log root.
        model: the model's folder in it.
        today: the current UTC date (its folder is still being written: never touched).
        log_days: days kept; a day D with D < today - log_days expires.
        keep_from: days on or after this date are kept whatever their age (drift window, open canary);
            None keeps no extra days.

    Returns:
        (actions, kept notes).
    """
    root = log_dir / model
    actions: list[Action] = []
    kept: list[str] = []
    if not root.is_dir():
        return actions, kept
    cutoff = today - dt.timedelta(days=log_days)
    expiring: list[Path] = []
    for folder in sorted(root.glob("date=*")):
        day = _day(folder)
        if day is None or day >= today:
            continue
        if day < cutoff:
            if keep_from is not None and day >= keep_from:
                kept.append(f"{folder}: older than {log_days} days, but read by the drift window or an open canary")
            else:
                expiring.append(folder)
                actions.append(Action("expire", folder, size_of(folder), f"log day {day} older than {log_days} days"))
                continue
        parts = sorted(p for p in folder.glob("part-*.parquet"))
        held = _held_by_daily(folder)
        for part in (p for p in parts if p.name in held):  # a compaction stopped between its two steps
            actions.append(Action("finish", part, part.stat().st_size, f"rows already in {held[part.name]}"))
        parts = [p for p in parts if p.name not in held]
        if len(parts) > 1:
            actions.append(Action("compact", folder, sum(p.stat().st_size for p in parts),
                                  f"{len(parts)} files of {day} into one", tuple(parts)))  # fmt: skip
    if expiring:
        actions += _expiring_labels(root, expiring, kept)
    return actions, kept


def _held_by_daily(folder: Path) -> dict[str, str]:
    """{part name: daily file name} of the parts the day's daily file lists as compacted into it."""
    import pyarrow.parquet as pq

    held = {}
    for daily in folder.glob(f"part-*{DAILY_SUFFIX}"):
        meta = pq.read_schema(daily).metadata or {}
        for name in meta.get(SOURCES_KEY, b"").decode().split("\n"):
            if name and name != daily.name:
                held[name] = daily.name
    return held


def _expiring_labels(root: Path, expiring: Sequence[Path], kept: list[str]) -> list[Action]:
    """Label files all of whose rows label predictions of the expiring days (joined on request_id, row)."""
    import pyarrow.parquet as pq

    folder = root / "labels"
    if not folder.is_dir():
        return []
    keys: set[tuple[str, int]] = set()
    for day in expiring:
        for part in day.glob("part-*.parquet"):
            t = pq.read_table(part, columns=["request_id", "row"]).to_pandas()
            keys |= set(zip(t["request_id"].astype(str), t["row"].astype(int), strict=True))
    out = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix not in (".parquet", ".csv"):
            continue
        labels = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"request_id": str})
        rows = labels["row"].fillna(0).astype(int) if "row" in labels else pd.Series(0, index=labels.index)
        mine = [(str(r), int(n)) in keys for r, n in zip(labels["request_id"], rows, strict=True)]
        if mine and all(mine):
            out.append(Action("expire_labels", path, path.stat().st_size,
                              f"all {len(mine)} labels are of expiring predictions"))  # fmt: skip
        elif any(mine):
            kept.append(f"{path}: {sum(mine)} of {len(mine)} labels are of expiring predictions; the rest are kept")
    return out


def plan_models(
    repository: Path, model: str, *, keep: set[str], release_running: bool
) -> tuple[list[Action], list[str]]:
    """Retired version folders of one model in the model repository.

    Args:
        repository: the model repository root.
        model: the model's folder.
        keep: version folder names (integers as strings) that must stay: stable, canary, rollback target.
        release_running: a release holds the repository lock (then nothing is planned).
    """
    folder = repository / model
    if not folder.is_dir():
        return [], []
    if release_running:
        return [], [f"{folder}: a release is running; version folders are left alone"]
    actions = []
    for path in sorted(folder.iterdir(), key=lambda p: (len(p.name), p.name)):
        if path.is_dir() and path.name.isdigit() and path.name not in keep:
            actions.append(Action("retire", path, size_of(path), f"version folder {path.name}: not stable, canary "
                                  "or the rollback target"))  # fmt: skip
    return actions, [f"{folder / v}: serving or the rollback target" for v in sorted(keep) if (folder / v).is_dir()]


_REMOVING = re.compile(r"^Removing (.+)$", re.M)


def dvc_gc_command(keep_runs: int, *, dry: bool) -> list[str]:
    """`dvc gc` keeping the workspace, every git tag (every registered version) and the last `keep_runs` commits.

    Run as `<this python> -m dvc`: the DVC of this environment, found without `dvc` on PATH.
    """
    cmd = [sys.executable, "-m", "dvc", "gc", "--workspace", "--all-tags", "--rev", "HEAD", "--num", str(keep_runs), "--force"]
    return [*cmd, "--dry"] if dry else cmd


def plan_dvc(root: Path, keep_runs: int) -> list[Action]:
    """The cache objects `dvc gc` would remove (its dry run), with their sizes.

    Raises:
        RuntimeError: `dvc gc --dry` failed (its message).
    """
    proc = subprocess.run(dvc_gc_command(keep_runs, dry=True), cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc gc --dry failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    out = []
    for line in _REMOVING.findall(proc.stdout + proc.stderr):
        path = Path(line.strip())
        out.append(Action("dvc", path, size_of(path), f"DVC cache object of no tag, not in the last {keep_runs} commits"))
    return out


def compact_day(action: Action) -> int:
    """Rewrite the day's parts as one daily file, then delete the parts; returns the daily file's bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = [p for p in action.sources if p.is_file()]
    table = pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")
    table = table.sort_by([("ts", "ascending"), ("request_id", "ascending"), ("row", "ascending")])
    meta = dict(table.schema.metadata or {})
    meta[SOURCES_KEY] = "\n".join(p.name for p in parts).encode()
    table = table.replace_schema_metadata(meta)
    day = action.path.name.removeprefix("date=").replace("-", "")
    target = action.path / f"part-{day}T000000000000{DAILY_SUFFIX}"
    tmp = action.path / f".{target.name}.tmp"
    pq.write_table(table, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)  # an earlier daily file of the day is among the parts: its rows are in `table`
    for p in parts:
        if p != target:
            p.unlink(missing_ok=True)
    return target.stat().st_size


def execute(plan: GcPlan, *, root: Path, keep_runs: int) -> dict[str, int]:
    """Do exactly what `plan` lists.

    Returns:
        {"freed_bytes": bytes deleted, "written_bytes": bytes of daily files written}.
    """
    freed = written = 0
    dvc = [a for a in plan.actions if a.kind == "dvc"]
    for a in plan.actions:
        if a.kind == "compact":
            written += compact_day(a)
            freed += a.bytes
        elif a.kind in ("expire", "retire"):
            shutil.rmtree(a.path, ignore_errors=True)
            freed += a.bytes
        elif a.kind in ("expire_labels", "finish"):
            a.path.unlink(missing_ok=True)
            freed += a.bytes
    if dvc:
        proc = subprocess.run(dvc_gc_command(keep_runs, dry=False), cwd=root, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"dvc gc failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
        freed += sum(a.bytes for a in dvc)
    return {"freed_bytes": freed, "written_bytes": written}


def plan_gc(root: Path, params_path: Path | None = None, *, now: dt.datetime | None = None,
            with_dvc: bool = True) -> GcPlan:  # fmt: skip
    """Plan every action of `driftloop gc` for the project at `root` (nothing is touched).

    Reads params `retention`, `monitor` (log dir, drift window), `release` (model, repository, stages,
    baseline window), the serving state in the model repository and the GTO registry.

    Args:
        root: the project (git + DVC repository).
        params_path: default `<root>/params.yaml`.
        now: the current time (UTC); default the clock.
        with_dvc: also plan `dvc gc` (False: the log and the model repository only).

    Raises:
        ParamsError: a section is invalid. StateError: the serving state is unreadable.
        RuntimeError: `dvc gc --dry` failed.
    """
    from driftloop.config import MonitorParams, ReleaseParams, RetentionParams, load_section
    from driftloop.model_repository import read_state, release_in_progress, version_number

    params_path = params_path or root / "params.yaml"
    retention = load_section(params_path, "retention", RetentionParams)
    monitor = load_section(params_path, "monitor", MonitorParams)
    release = load_section(params_path, "release", ReleaseParams)
    now = now or dt.datetime.now(dt.UTC)

    def at_root(p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else root / p

    repository = at_root(release.repository)
    state = read_state(repository, release.model)
    plan = GcPlan()
    keep_from = (now - dt.timedelta(hours=monitor.window_hours)).date()
    keep: set[str] = set()
    if state is None:
        plan.kept.append(f"{repository / release.model}: no serving state (never released); version folders left alone")
    else:
        tenures = _tenures(root, release.artifact)
        keep = {str(version_number(v)) for v in state.versions}
        previous = _rollback_target(tenures, release.stable_stage, _deprecated(root, release.artifact))
        if previous is not None:
            keep.add(str(version_number(previous)))
        if state.canary is not None:
            start = next((t.start for t in reversed(tenures) if t.stage == release.canary_stage
                          and t.version == state.canary and t.end is None), None)  # fmt: skip
            canary_from = dt.date.min if start is None else (start - dt.timedelta(seconds=release.baseline_window_s)).date()
            keep_from = min(keep_from, canary_from)
            plan.kept.append(f"canary {state.canary} open: its prediction log from {canary_from} is kept")
    log_actions, log_kept = plan_log(at_root(monitor.log_dir), release.model, today=now.date(),
                                     log_days=retention.log_days, keep_from=keep_from)  # fmt: skip
    plan.actions += log_actions
    plan.kept += log_kept
    if state is not None:
        actions, kept = plan_models(repository, release.model, keep=keep, release_running=release_in_progress(repository))
        plan.actions += actions
        plan.kept += kept
    if with_dvc:
        plan.actions += plan_dvc(root, retention.keep_runs)
    return plan


def _tenures(root: Path, artifact: str):
    from driftloop.registry import GtoRegistry, stage_tenures

    return stage_tenures(GtoRegistry(root, artifact).events())


def _deprecated(root: Path, artifact: str) -> set[str]:
    from driftloop.registry import GtoRegistry

    return {v.version for v in GtoRegistry(root, artifact).versions() if v.deprecated}


def _rollback_target(tenures, stable_stage: str, deprecated: set[str]) -> str | None:
    """The last version before the current stable that held the stable stage and is not deprecated
    (what `driftloop rollback` goes back to: driftloop.release.plane.previous_stable)."""
    from driftloop.registry import holder

    stable = [t for t in tenures if t.stage == stable_stage]
    current = holder(stable, stable_stage)
    for t in reversed(stable):
        if t.version != current and t.version not in deprecated:
            return t.version
    return None
