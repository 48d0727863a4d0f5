"""Backtest retraining policies: replay a span of history day by day through the real loop, once per policy.

Per policy, from the same starting model (built on the months before the span), for each day:
1. the day's flights go to the real model server over HTTP (`serving.app`, uvicorn on loopback),
   in bulk requests, or one row per request while a canary is under analysis (its
   `min_requests` counts requests, and the split is sticky per request id); the server logs them;
2. their labels arrive `label_delay_days` later (a flight's label is known when it lands), in
   the prediction log's label format;
3. the policy decides: `never`; `monthly` (after a month's last day); `weekly` (after each
   Sunday); `drift`: the drift check of flows/monitoring.py (`measure_drift`: the detectors of
   driftloop/drift.py against the prod package's reference, on the last `monitor.window_hours`
   of the log) and the configured policy (`flows.policy.decide_and_record`, its state on disk);
4. a retrain runs the build plane: every stage of dvc.yaml, in DVC's order, as the stage's own
   `python -m tasks.<stage>` entry called in-process (`main(argv)` with the stage's cmd) in a
   scratch working copy, with the project's params.yaml plus the window and `build` overrides;
   the gate judges the candidates against the policy's champion (`champion/package`);
5. a passing package is registered and released by the real release plane
   (`driftloop.release.release_version`): servability check, canary at `release.canary_weight`,
   the canary analysis on the next days' replayed traffic (its waiting loop driven in simulated
   days), then promotion or rollback, and the champion follows.

Why in-process stage functions, not `dvc repro` in a scratch copy: a full year with weekly
retraining is ~40 builds per policy run; `dvc repro` would spend most of each on process start,
imports (Great Expectations, torch, onnx: ~10 s cold) and hashing outputs for a cache the
backtest never reuses (every window is new). The same `main(argv)` of each stage, with the
argv of dvc.yaml's `cmd`, in one warm process costs ~5 CPU-s per build here. The stage order
is DVC's own (`flows.dag.stage_order`).

Time is compressed: the log's `ts` is when the server answered, so the drift check's window is
the last `monitor.window_hours / 24` replayed days (their log files), and the time span it
stands for is those days' real span; the policy's clock (cooldown, daily limit) is the replayed
day's end.

Parallel: each policy is a function of its settings and the data (`run_policy(PolicySpec)`: plain
data, the replayed rows read by path), so the policies run as Prefect tasks on prefect-dask's
`DaskTaskRunner` (`run_backtest(workers=2)`: a `LocalCluster` of worker processes, as
`flows.sweep.dask_runner` builds it; or an existing scheduler), the costliest first, one task per
worker at a time; each worker runs its policy's server, replay, checks and builds. The figures are
the same as one policy after another in one process (`workers=0`): the tests compare them.

Resumable: after each day with no release under way, the policy's state (registry, model
repository, champion, policy state: hard links, since every writer replaces files atomically)
and the list of its log and label files are checkpointed; a resumed run restores the newest
checkpoint, deletes log and label files written after it, and goes on. A run killed during a
canary replays the canary's days again, from the day the retrain was decided.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib
import json
import logging
import os
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from driftloop.config import (
    DataParams,
    FeaturesParams,
    MonitorParams,
    PackageParams,
    PolicyParams,
    ReleaseParams,
    parse_section,
    read_params_file,
)
from driftloop.dataset import Dataset
from driftloop.errors import DriftloopError
from driftloop.io import read_json, write_json

log = logging.getLogger(__name__)

POLICIES: tuple[str, ...] = ("never", "monthly", "weekly", "drift")
"""Policies the backtest knows, in report order."""

REQUEST_PREFIX = "bt"
"""Replayed requests are `bt-<YYYYMMDD>-<seq>`: the flight day is in the id, so the figures are
computed from the log alone."""

DEFAULT_BUILD: dict[str, Any] = {
    "train.mlp.enabled": False,
    "optimize.throughput_runs": 3,
    "optimize.latency_clock": "cpu",
}
"""params.yaml keys a backtest build overrides by default (dotted key -> value): the gradient-boosted
trees only (the MLP's training, pruning and INT8 fine-tuning are most of a build's cost, and the
gate picks the HGB on this data anyway), a shorter throughput benchmark (it decides nothing), and
the gate's p99 single-row latency measured as the calling thread's CPU time (`driftloop.bench.CLOCKS`):
the policies build in parallel on a shared machine, where wall time counts the time a build waited
for a core (p99 7 and 30 ms against the 5 ms budget, measured at load 14, for models that take
0.1 ms) and the rule would decide on the machine's load, not the model. Every other param, the
gate's rules and thresholds included, is the project's."""

DEFAULT_RELEASE: dict[str, Any] = {
    "min_requests": 200,
    "min_labelled_rows": 200,
    "label_wait_s": 86_400.0,
    "analysis_timeout_s": 7 * 86_400.0,
    "poll_interval_s": 86_400.0,
    "keep_previous_s": 0.0,
    "latency_slack_ms": 10.0,
}
"""`release:` keys overridden by default. The canary analysis runs in simulated time (one
poll per replayed day, seconds of the replayed calendar): 200 single-row canary requests at
the project's canary weight (10%: about two days of flights), then up to one day for 200 of
its rows to be labelled, so the paired ROC AUC decides (not the score PSI, which a model
retrained after drift is meant to fail); no verdict within 7 days rolls back. The replay's
client threads share a process (and its GIL) with the server, so single-row service times carry
the client's noise (p99 2.9 vs 5.0 ms for two copies of one model, measured): a 10 ms latency
slack keeps that noise from deciding."""


class BacktestConfig(BaseModel):
    """What to replay and how; every field has a default (the showcase: Apr-Dec 2013).

    Attributes:
        start, end: first and last replayed day (local dates of the flights, inclusive).
        initial_as_of: the starting model's window ends here (default: the day before `start`).
        window_months: months of every build's window (`policy.retrain_window_months` for drift).
        policies: which to run, from `POLICIES`.
        label_delay_days: labels of day d's flights arrive at the end of day d + this.
        rows_per_day: sample this many flights per day (seeded); None = every flight.
        batch_rows: rows per request outside canary windows.
        canary_rows_per_request: rows per request while a canary is under analysis.
        sender_threads: concurrent requests.
        seed: sampling seed.
        time_column, timezone: the source's event time (UTC) and the local zone whose dates
            the snapshot windows use.
        build: params.yaml overrides (dotted key -> value), for every build and the drift policy
            (e.g. `policy.cooldown_hours`).
        release: `release:` overrides for the canary (keys of `ReleaseParams`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: dt.date = dt.date(2013, 4, 1)
    end: dt.date = dt.date(2013, 12, 31)
    initial_as_of: dt.date | None = None
    window_months: int = Field(3, ge=1, le=24)
    policies: tuple[str, ...] = POLICIES
    label_delay_days: int = Field(0, ge=0)
    rows_per_day: int | None = Field(None, ge=10)
    batch_rows: int = Field(500, ge=1)
    canary_rows_per_request: int = Field(1, ge=1)
    sender_threads: int = Field(4, ge=1, le=32)
    seed: int = 0
    time_column: str | None = None  # None: the dataset declaration's `time.column`
    timezone: str = "America/New_York"
    build: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_BUILD))
    release: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_RELEASE))

    @field_validator("policies")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in value if p not in POLICIES]
        if bad or not value:
            raise ValueError(f"unknown policy {', '.join(bad) or '(none given)'}: choose from {', '.join(POLICIES)}")
        return tuple(dict.fromkeys(value))

    @property
    def first_as_of(self) -> dt.date:
        """The starting model's last day."""
        return self.initial_as_of or self.start - dt.timedelta(days=1)

    def days(self) -> list[dt.date]:
        """Every replayed day, in order."""
        return [self.start + dt.timedelta(days=i) for i in range((self.end - self.start).days + 1)]

    def digest(self) -> str:
        """A hash of every setting but the list of policies (a resumed policy must have the same)."""
        settings = self.model_dump(mode="json", exclude={"policies"})
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class SpanEnded(BaseException):  # noqa: N818 - a signal, not an error: the replayed span ran out mid-canary
    """Raised from the canary's waiting loop when no replayed day is left."""


# ---------------------------------------------------------------------------------------------
# History: the rows to replay


def history_rows(params: dict[str, Any], root: Path, config: BacktestConfig) -> pd.DataFrame:
    """The labelled rows of every replayed day, built as the features stage builds them.

    Args:
        params: the project's params.yaml (raw); `data`, `dataset` and `features` are read.
        root: the project root (a relative `data.source_dir` resolves against it).
        config: the span, the sampling and the time column.

    Returns:
        The features stage's columns plus `day` (local date), sorted by `day` then event time.

    Raises:
        DriftloopError: the source cannot be read or lacks the time column.
    """
    from tasks.features import build_features
    from tasks.snapshot import read_source

    data = parse_section("data", params.get("data"), DataParams)
    if not Path(data.source_dir).is_absolute():
        data = data.model_copy(update={"source_dir": str(root / data.source_dir)})
    features = parse_section("features", params.get("features"), FeaturesParams)
    dataset = parse_section("dataset", params.get("dataset"), Dataset)
    tables = read_source(dataset, data)
    splits, _ = build_features(tables, dataset, features.model_copy(update={"test_days": 1, "valid_days": 1}))
    rows = pd.concat(splits.values(), ignore_index=True)
    time_column = config.time_column or dataset.time.column
    if time_column not in rows:
        raise DriftloopError(f"backtest: the features lack time column {time_column!r}; check dataset.time.column in params.yaml")
    when = pd.to_datetime(rows[time_column], utc=True)
    rows["day"] = when.dt.tz_convert(config.timezone).dt.date
    rows = rows[(rows["day"] >= config.start) & (rows["day"] <= config.end)]
    rows = rows.assign(_t=when).sort_values(["day", "_t"], kind="stable").drop(columns="_t")
    if config.rows_per_day:
        draw = np.random.default_rng(config.seed).random(len(rows))
        rank = pd.Series(draw, index=rows.index).groupby(rows["day"]).rank(method="first")
        rows = rows[rank <= config.rows_per_day]
    return rows.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# The build plane, in-process


def _set_dotted(doc: dict[str, Any], key: str, value: Any) -> None:
    node = doc
    *parents, leaf = key.split(".")
    for p in parents:
        if not isinstance(node.get(p), dict):
            raise DriftloopError(f"backtest build override {key}: params.yaml has no section {p!r}")
        node = node[p]
    node[leaf] = value


@dataclass
class BuildResult:
    """One build: `verdict` pass | reject | failed, CPU and wall seconds, the gate's chosen candidate."""

    as_of: str
    window_months: int
    verdict: str
    cpu_s: float
    wall_s: float
    chosen: str | None = None
    reason: str = ""
    test_roc_auc: float | None = None


class Builder:
    """Runs dvc.yaml's stages in-process in a scratch working copy (see the module docstring)."""

    def __init__(self, root: Path, params: dict[str, Any], overrides: dict[str, Any]) -> None:
        """Args: root: the project (dvc.yaml, params.yaml); params: its params; overrides: dotted keys."""
        import yaml

        from flows.dag import stage_order

        self.root = root
        self.params = json.loads(json.dumps(params, default=str))
        for key, value in overrides.items():
            _set_dotted(self.params, key, value)
        stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
        self.commands: list[tuple[str, str, list[str]]] = []
        for name in stage_order(root):
            argv = shlex.split(stages[name]["cmd"])
            if argv[:2] != ["python", "-m"]:
                raise DriftloopError(f"backtest: stage {name}'s cmd is not `python -m <module> ...`: {argv[:3]}")
            self.commands.append((name, argv[2], argv[3:]))
        source_dir = Path(self.params["data"].get("source_dir", "data/source"))
        self.source_dir = source_dir if source_dir.is_absolute() else root / source_dir

    def build(self, project: Path, as_of: dt.date, window_months: int) -> BuildResult:
        """Build a package in `project` (`artifacts/model`) on the window ending `as_of`.

        `project/champion/package` (when present) is the champion the gate compares with.

        Returns:
            The result; a gate rejection is `reject`, any other stage's `DriftloopError` is
            `failed` (both end the build without a package).
        """
        import yaml

        from driftloop.gate_report import GATE_REPORT, GateReport

        params = json.loads(json.dumps(self.params))
        params["data"]["as_of"] = as_of.isoformat()
        params["data"]["window_months"] = window_months
        project.mkdir(parents=True, exist_ok=True)
        source = self.source_dir if self.source_dir.is_dir() else project / "data" / "source"
        source.mkdir(parents=True, exist_ok=True)
        params["data"]["source_dir"] = str(source)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        (project / "champion").mkdir(exist_ok=True)
        shutil.rmtree(project / "artifacts", ignore_errors=True)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        verdict, reason = "pass", ""
        with contextlib.chdir(project):
            for name, module, argv in self.commands:
                try:
                    importlib.import_module(module).main(argv)
                except SystemExit as exc:
                    if exc.code in (0, None):
                        continue
                    gate = project / GATE_REPORT
                    if gate.is_file() and not GateReport.read(gate).passed:
                        report = GateReport.read(gate)
                        verdict, reason = "reject", "; ".join(report.failed_lines())[:500]
                    else:
                        verdict, reason = "failed", f"stage {name} exited {exc.code}"
                    break
        result = BuildResult(as_of.isoformat(), window_months, verdict, time.process_time() - cpu0,
                             time.perf_counter() - wall0, reason=reason)  # fmt: skip
        gate_path = project / GATE_REPORT
        if verdict == "pass" and gate_path.is_file():
            gate = GateReport.read(gate_path)
            result.chosen = gate.chosen
            result.test_roc_auc = (gate.chosen_metrics or {}).get("roc_auc")
        return result


# ---------------------------------------------------------------------------------------------
# The prediction log, read as it grows


class LogTail:
    """The server's log files of one model, read once each: new files belong to the day being replayed."""

    def __init__(self, log_dir: Path, model: str) -> None:
        """Args: log_dir: the server's `--log-dir`; model: the model's folder in it."""
        self.folder = log_dir / model
        self.known: set[str] = set()

    def files(self) -> list[str]:
        """Every complete log file now (paths relative to the model's folder); the server writes atomically."""
        return sorted(str(p.relative_to(self.folder)) for p in self.folder.glob("date=*/part-*.parquet"))

    def read_new(self) -> tuple[list[str], pd.DataFrame]:
        """Files not read before, and their rows."""
        new = [f for f in self.files() if f not in self.known]
        self.known.update(new)
        frames = [pd.read_parquet(self.folder / f) for f in new]
        return new, (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())


# ---------------------------------------------------------------------------------------------
# One policy's run


@dataclass
class DayRecord:
    """What happened on one replayed day (the JSON keeps every one)."""

    day: str
    rows: int = 0
    requests: int = 0
    canary: bool = False
    decision: str = ""
    detail: str = ""


@dataclass
class PolicyRun:
    """One policy over the span: its scratch folders, server, and day loop.

    Folders under `work`: `project/` (the build's working copy, `champion/package` in it),
    `registry/`, `model_repository/`, `logs/` (the server's log and the labels),
    `policy_state.json` (drift), `progress.json` and `ckpt-<day>/` (resume).
    """

    name: str
    work: Path
    config: BacktestConfig
    builder: Builder
    rows: pd.DataFrame
    columns: list[str]
    label: str
    model: str
    release_params: dict[str, Any]
    monitor: MonitorParams
    policy: PolicyParams
    initial_package: Path
    time_column: str  # the dataset declaration's `time.column` (the reference's time)
    on_day: Callable[[str, int, dict[str, int]], None] | None = None
    url: str = ""
    # state (persisted in progress.json at each checkpoint)
    day_files: dict[str, list[str]] = field(default_factory=dict)
    label_files: list[str] = field(default_factory=list)
    records: dict[str, dict] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    builds: list[dict] = field(default_factory=list)
    # in memory
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    labels: dict[str, pd.DataFrame] = field(default_factory=dict)
    canary_live: bool = False
    ticks: int = 0
    client: Any = None  # one httpx.Client for the run (a client per day re-reads the CA bundle: ~50 ms)
    started: tuple[float, float] = field(default_factory=lambda: (time.process_time(), time.perf_counter()))
    spent_before: tuple[float, float] = (0.0, 0.0)  # CPU and wall seconds of earlier (killed) sessions

    # -- paths
    @property
    def project(self) -> Path:
        return self.work / "project"

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    @property
    def repository(self) -> Path:
        return self.work / "model_repository"

    @property
    def state_file(self) -> Path:
        return self.work / "policy_state.json"

    def _stateful(self) -> list[tuple[str, Path]]:
        return [("registry", self.work / "registry"), ("model_repository", self.repository),
                ("champion", self.project / "champion"), ("policy_state.json", self.state_file)]  # fmt: skip

    # -- the release plane
    def plane(self):
        from driftloop.release import ReleasePlane
        from flows.backtest_registry import FolderRegistry

        params = ReleaseParams(**{
            **self.release_params, "repository": str(self.repository), "log_dir": str(self.logs),
            "champion_dir": "champion/package", "package_dir": "artifacts/model", "server_url": self.url,
            "model": self.model,
        })  # fmt: skip
        registry = FolderRegistry(self.work / "registry", self.project / "artifacts" / "model")
        return ReleasePlane(root=self.project, params=params, registry=registry, server_url=self.url)

    # -- replay
    def _send(self, day: dt.date, canary: bool) -> tuple[int, int]:
        from driftloop.payloads import records_body

        part = self.rows[self.rows["day"] == day]
        per = self.config.canary_rows_per_request if canary else self.config.batch_rows
        bodies = []
        for k, i in enumerate(range(0, len(part), per)):
            chunk = part.iloc[i : i + per]
            bodies.append((f"{REQUEST_PREFIX}-{day:%Y%m%d}-{k:06d}", records_body(chunk[self.columns])))
        client = self.client

        def post(item: tuple[str, dict]) -> None:
            rid, body = item
            resp = client.post(f"/v1/models/{self.model}:predict", json=body, headers={"x-request-id": rid})
            resp.raise_for_status()

        with ThreadPoolExecutor(self.config.sender_threads) as pool:
            list(pool.map(post, bodies))
        return len(part), len(bodies)

    def _collect(self, day: dt.date, sent: int, tail: LogTail, timeout_s: float = 120.0) -> None:
        """Wait (bounded) until the log holds the day's `sent` rows; keep the new files and rows."""
        key, prefix = day.isoformat(), f"{REQUEST_PREFIX}-{day:%Y%m%d}-"
        files, frames, have = [], [], 0
        deadline = time.monotonic() + timeout_s
        while True:
            new, frame = tail.read_new()
            files += new
            if len(frame):
                frames.append(frame)
                have += int(frame["request_id"].astype(str).str.startswith(prefix).sum())
            if have >= sent:
                break
            if time.monotonic() > deadline:
                raise DriftloopError(f"backtest: the prediction log holds {have} of {sent} rows of {key} after {timeout_s:g} s")
            time.sleep(0.05)
        self.day_files[key] = sorted(set(self.day_files.get(key, [])) | set(files))
        self.frames[key] = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def _write_labels(self, day: dt.date) -> None:
        """Labels of the flights of `day - label_delay_days` arrive now."""
        from driftloop.predlog import write_labels

        flown = day - dt.timedelta(days=self.config.label_delay_days)
        key = flown.isoformat()
        frame = self.frames.get(key)
        if frame is None or frame.empty:
            return
        prefix = f"{REQUEST_PREFIX}-{flown:%Y%m%d}-"
        ours = frame[frame["request_id"].astype(str).str.startswith(prefix)]
        part = self.rows[self.rows["day"] == flown].reset_index(drop=True)
        per = self.config.canary_rows_per_request if self.records.get(key, {}).get("canary") else self.config.batch_rows
        seq = ours["request_id"].astype(str).str.rsplit("-", n=1).str[-1].astype(int).to_numpy()
        idx = seq * per + ours["row"].astype(int).to_numpy()
        labels = pd.DataFrame({
            "request_id": ours["request_id"].astype(str).to_numpy(), "row": ours["row"].astype(np.int64).to_numpy(),
            "label": part[self.label].astype(np.int64).to_numpy()[idx],
            "observed_at": pd.Timestamp(dt.datetime.now(dt.UTC)),
        })  # fmt: skip
        path = write_labels(self.logs, self.model, labels, name=f"{REQUEST_PREFIX}-{key}")
        self.labels[key] = labels
        self.label_files = sorted(set(self.label_files) | {path.name})

    def replay_day(self, day: dt.date, tail: LogTail) -> None:
        """Send the day's rows, wait for the log, write the labels that arrive today."""
        canary = self.canary_live
        sent, requests = self._send(day, canary)
        self._collect(day, sent, tail)
        self.records[day.isoformat()] = DayRecord(day.isoformat(), sent, requests, canary).__dict__
        self._write_labels(day)

    # -- the drift check (flows/monitoring.py's detectors, flows/policy.py's policy)
    def window(self, day: dt.date, days: int) -> tuple[pd.DataFrame, list[str]]:
        """The log rows of the last `days` replayed days up to `day`, labels joined; and those days."""
        keys = [(day - dt.timedelta(days=i)).isoformat() for i in range(days - 1, -1, -1)]
        keys = [k for k in keys if k in self.frames and len(self.frames[k])]
        if not keys:
            return pd.DataFrame(), []
        frame = pd.concat([self.frames[k].assign(_day=k) for k in keys], ignore_index=True)
        labels = [self.labels[k] for k in keys if k in self.labels]
        if labels:
            lab = pd.concat(labels, ignore_index=True)[["request_id", "row", "label"]]
            frame = frame.assign(row=frame["row"].astype(np.int64)).merge(lab, on=["request_id", "row"], how="left")
        else:
            frame["label"] = np.nan
        frame["label"] = frame["label"].astype(float)
        frame["model_version"] = frame["model_version"].astype(str)  # the server's version folder, as logged
        return frame, keys

    def drift_decision(self, day: dt.date) -> tuple[bool, str]:
        """The drift check on the window ending with `day`, and the policy's decision (state on disk)."""
        from flows.monitoring import measure_drift, package_inputs, reference_version
        from flows.policy import decide_and_record

        champion = self.project / "champion" / "package"
        version = reference_version(self.repository, self.model, champion)
        frame, keys = self.window(day, max(1, round(self.monitor.window_hours / 24)))
        reference = pd.read_parquet(champion / "reference.parquet")
        judged_days = sorted({k for k, v in zip(frame["_day"], frame["model_version"], strict=True) if v == version}) if len(frame) else []
        summary = measure_drift(frame.drop(columns="_day", errors="ignore"), reference, self.policy,
                                max_rows=self.monitor.max_rows, seed=self.monitor.seed,
                                data_span_hours=24.0 * len(judged_days), model_version=version,
                                inputs=package_inputs(champion, []), time_column=self.time_column)  # fmt: skip
        now = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        decision = decide_and_record(self.state_file, summary, self.policy, now)
        share = summary.drift_share
        detail = f"{decision.verdict}" + (f", drift share {share:.2f}" if share is not None else "")
        if summary.status != "checked":
            detail += f": {summary.reason}"
        if summary.drifted_columns:
            detail += f" ({', '.join(summary.drifted_columns)})"
        auc = summary.check("auc_drop")
        if auc is not None and auc.value is not None:
            detail += f"; {auc.name} {auc.value:.3f}"
        return decision.retrain, detail

    def wants_retrain(self, day: dt.date) -> tuple[bool, str]:
        """The policy's decision at the end of `day`: (retrain, why)."""
        if self.name == "never":
            return False, "never retrains"
        if self.name == "weekly":
            return day.weekday() == 6, "end of week" if day.weekday() == 6 else ""
        if self.name == "monthly":
            last = (day + dt.timedelta(days=1)).month != day.month
            return last, "end of month" if last else ""
        return self.drift_decision(day)

    # -- a retrain: build, gate, register, release
    def retrain(self, day: dt.date, why: str, days: list[dt.date], position: int, tail: LogTail) -> int:
        """Build on the window ending `day`; release a passing package (the canary consumes the next
        days). Returns the index of the next day to replay."""
        from driftloop.release import register_package, release_version

        months = self.policy.retrain_window_months if self.name == "drift" else self.config.window_months
        result = self.builder.build(self.project, day, months)
        self.builds.append({**result.__dict__, "day": day.isoformat(), "why": why})
        event = {"day": day.isoformat(), "kind": "retrain", "verdict": result.verdict, "reason": why,
                 "cpu_s": round(result.cpu_s, 2)}  # fmt: skip
        self.events.append(event)
        if result.verdict != "pass":
            self.events.append({"day": day.isoformat(), "kind": "gate rejected" if result.verdict == "reject" else "build failed",
                                "reason": result.reason})  # fmt: skip
            return position + 1
        plane = self.plane()
        reg = register_package(plane.registry, plane.package_dir, commit=plane.registry.producing_commit())
        nxt = position + 1
        self.ticks = 0

        def tick(_seconds: float) -> None:
            nonlocal nxt
            if nxt >= len(days):
                raise SpanEnded()
            self.replay_day(days[nxt], tail)
            self.records[days[nxt].isoformat()]["decision"] = "canary under analysis"
            self._report(nxt)
            nxt += 1
            self.ticks += 1

        hooks = {"clock": lambda: self.ticks * 86_400.0, "sleep": tick, "read_window": self._read_window}
        self.canary_live = True
        try:
            outcome = release_version(plane, reg.version, on_progress=lambda line: log.debug("%s", line),
                                      analysis_hooks=hooks)  # fmt: skip
        except SpanEnded:
            self.events.append({"day": days[-1].isoformat(), "kind": "unfinished", "version": reg.version,
                                "reason": "the span ended during the canary (rolled back)"})  # fmt: skip
            return nxt
        except DriftloopError as exc:
            self.events.append({"day": day.isoformat(), "kind": "release failed", "version": reg.version, "reason": str(exc)})
            return nxt
        finally:
            self.canary_live = False
        end_day = days[nxt - 1].isoformat()
        kind = "promoted" if outcome.decision == "promoted" else "rolled back"
        self.events.append({"day": end_day, "kind": kind, "version": reg.version, "reason": outcome.reasons[:500]})
        return nxt

    def _read_window(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """The canary analysis's window reader over the replayed days (log rows, labels joined, semver)."""
        keys = sorted(self.frames)  # a canary's window is days long: the last 14 replayed days hold it
        frame, _ = self.window(dt.date.fromisoformat(keys[-1]), 14) if keys else (pd.DataFrame(), [])
        if frame.empty:
            from driftloop.release.analysis import log_window_reader

            return log_window_reader(self.logs, self.model)(start, end)
        from driftloop.model_repository import registry_name

        ts = pd.to_datetime(frame["ts"], utc=True)
        frame = frame[(ts >= start) & (ts < end)].drop(columns="_day").reset_index(drop=True)
        frame["model_version"] = frame["model_version"].map(registry_name)  # the plane speaks semver
        return frame

    def _report(self, position: int) -> None:
        if self.on_day is not None:
            self.on_day(self.name, position + 1, self.counts())

    def counts(self) -> dict[str, int]:
        """Retrains started, promoted, rejected by the gate, rolled back, so far."""
        kinds = [e["kind"] for e in self.events]
        return {"retrains": kinds.count("retrain"), "promoted": kinds.count("promoted"),
                "rejected": kinds.count("gate rejected"), "rolled_back": kinds.count("rolled back")}  # fmt: skip

    # -- checkpoints
    def checkpoint(self, day: dt.date) -> None:
        """Snapshot the policy's state after `day` (no release under way); `progress.json` last."""
        key = day.isoformat()
        target = self.work / f"ckpt-{key}"
        shutil.rmtree(target, ignore_errors=True)
        tmp = self.work / f".ckpt-{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, path in self._stateful():
            if path.is_dir():
                shutil.copytree(path, tmp / name, copy_function=os.link)
            elif path.is_file():
                os.link(path, tmp / name)
        tmp.rename(target)
        write_json(self.work / "progress.json", {
            "config": self.config.digest(), "day": key, "checkpoint": target.name, "day_files": self.day_files,
            "label_files": self.label_files, "records": self.records, "events": self.events, "builds": self.builds,
            **self._spent(), "done": False,
        })  # fmt: skip
        for old in self.work.glob("ckpt-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)

    def restore(self) -> dt.date | None:
        """Restore the newest checkpoint; returns its day (None: nothing to resume)."""
        path = self.work / "progress.json"
        if not path.is_file():
            return None
        state = read_json(path)
        if state["config"] != self.config.digest():
            raise DriftloopError(f"backtest: {self.work} holds a run with other settings; pass --fresh to start over")
        ckpt = self.work / state["checkpoint"]
        for name, live in self._stateful():
            if live.is_dir():
                shutil.rmtree(live)
            elif live.exists():
                live.unlink()
            saved = ckpt / name
            if saved.is_dir():
                shutil.copytree(saved, live, copy_function=os.link)
            elif saved.is_file():
                os.link(saved, live)
        self.day_files, self.label_files = state["day_files"], state["label_files"]
        self.records, self.events, self.builds = state["records"], state["events"], state["builds"]
        self.spent_before = (state.get("process_cpu_s", 0.0), state.get("wall_s", 0.0))
        keep = {f for files in self.day_files.values() for f in files}
        folder = self.logs / self.model
        for f in folder.glob("date=*/part-*.parquet"):
            if str(f.relative_to(folder)) not in keep:
                f.unlink()
        for f in (folder / "labels").glob("*"):
            if f.name not in self.label_files:
                f.unlink()
        for key, files in self.day_files.items():
            self.frames[key] = pd.concat([pd.read_parquet(folder / f) for f in files], ignore_index=True) if files else pd.DataFrame()
        labels = {f.name: pd.read_parquet(folder / "labels" / f) for f in map(Path, self.label_files)}
        for name, frame in labels.items():
            self.labels[name.removeprefix(f"{REQUEST_PREFIX}-").removesuffix(".parquet")] = frame
        self.records = {k: v for k, v in self.records.items() if k <= state["day"]}
        return dt.date.fromisoformat(state["day"])

    # -- the loop
    def run(self) -> None:
        """Replay every day of the span (resuming after the newest checkpoint when there is one)."""
        import httpx

        from driftloop.release import register_package, release_version
        from serving.app import create_app
        from serving.config import ServeSettings
        from serving.testing import running_server

        self.work.mkdir(parents=True, exist_ok=True)
        progress = self.work / "progress.json"
        if progress.is_file() and read_json(progress).get("done"):
            return
        resumed = self.restore()
        self.repository.mkdir(parents=True, exist_ok=True)
        settings = ServeSettings(repository=self.repository, log_dir=self.logs, flush_interval_s=0.1)
        with running_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60.0) as client:
            self.url, self.client = url, client
            tail = LogTail(self.logs, self.model)
            tail.known.update(tail.files())
            days = self.config.days()
            if resumed is None:
                (self.project / "artifacts").mkdir(parents=True, exist_ok=True)
                shutil.rmtree(self.project / "artifacts" / "model", ignore_errors=True)
                shutil.copytree(self.initial_package, self.project / "artifacts" / "model")
                plane = self.plane()
                reg = register_package(plane.registry, plane.package_dir, commit=plane.registry.producing_commit())
                release_version(plane, reg.version, on_progress=lambda line: log.debug("%s", line))
                self.events.append({"day": days[0].isoformat(), "kind": "start", "version": reg.version,
                                    "reason": f"starting model, window to {self.config.first_as_of}"})  # fmt: skip
                i, pending = 0, False
            else:
                i, pending = days.index(resumed), True
            while i < len(days):
                day = days[i]
                if not pending:
                    self.replay_day(day, tail)
                    self._report(i)
                    self.checkpoint(day)
                pending = False
                if i == len(days) - 1:
                    self.records[day.isoformat()]["decision"] = "last day"
                    break
                retrain, why = self.wants_retrain(day)
                self.records[day.isoformat()]["decision"] = "retrain" if retrain else "keep"
                self.records[day.isoformat()]["detail"] = why
                i = self.retrain(day, why, days, i, tail) if retrain else i + 1
                self._report(i - 1)
        final = read_json(progress) if progress.is_file() else {}
        write_json(progress, {**final, "config": self.config.digest(), "day_files": self.day_files,
                              "label_files": self.label_files, "records": self.records, "events": self.events,
                              "builds": self.builds, **self._spent(), "done": True})  # fmt: skip

    def _spent(self) -> dict[str, float]:
        """CPU seconds of this process (replay client, server, drift checks, builds: one policy per process
        on Dask) and wall seconds, since the run started, over every resumed session."""
        cpu, wall = self.spent_before
        return {"process_cpu_s": round(cpu + time.process_time() - self.started[0], 2),
                "wall_s": round(wall + time.perf_counter() - self.started[1], 2)}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Figures, from the prediction log and the labels on disk


def served_figures(log_dir: Path, model: str) -> dict[str, Any]:
    """ROC AUC of what was served, per ISO week (Monday first) and overall, and days served per version.

    Reads the whole prediction log of `model` and every label file, joins them by
    (request_id, row), and keeps the replayed rows (`bt-<YYYYMMDD>-...`): the flight day comes
    from the request id, so no simulated figure enters.

    Returns:
        {"weekly": [{"week": Monday ISO date, "rows", "labelled", "roc_auc", "versions"}],
         "mean_weekly_roc_auc", "overall_roc_auc", "days_served": {version: days (fractional,
         by share of the day's rows)}, "rows"}.
    """
    from sklearn.metrics import roc_auc_score

    from driftloop.model_repository import registry_name
    from driftloop.predlog import read_log_with_labels

    frame = read_log_with_labels(log_dir, model, pd.Timestamp("1970-01-01", tz="UTC"), pd.Timestamp("2200-01-01", tz="UTC"))
    rid = frame["request_id"].astype(str) if len(frame) else pd.Series(dtype=str)
    frame = frame[rid.str.startswith(f"{REQUEST_PREFIX}-")].copy()
    frame["day"] = pd.to_datetime(frame["request_id"].astype(str).str.split("-").str[1], format="%Y%m%d")
    frame["week"] = (frame["day"] - pd.to_timedelta(frame["day"].dt.weekday, unit="D")).dt.date
    frame["version"] = frame["model_version"].astype(str).map(registry_name)
    weekly = []
    for week, part in frame.groupby("week", sort=True):
        lab = part[part["label"].notna()]
        auc = float(roc_auc_score(lab["label"].astype(int), lab["score"])) if lab["label"].nunique() == 2 else None
        weekly.append({"week": week.isoformat(), "rows": len(part), "labelled": len(lab), "roc_auc": auc,
                       "versions": {str(k): int(v) for k, v in part["version"].value_counts().sort_index().items()}})  # fmt: skip
    lab = frame[frame["label"].notna()]
    aucs = [w["roc_auc"] for w in weekly if w["roc_auc"] is not None]
    shares = frame.groupby("day")["version"].value_counts(normalize=True)
    days_served = {str(v): round(float(s), 3) for v, s in shares.groupby(level=1).sum().sort_index().items()}
    return {
        "weekly": weekly,
        "mean_weekly_roc_auc": float(np.mean(aucs)) if aucs else None,
        "overall_roc_auc": float(roc_auc_score(lab["label"].astype(int), lab["score"])) if lab["label"].nunique() == 2 else None,
        "days_served": days_served,
        "rows": len(frame),
    }


# ---------------------------------------------------------------------------------------------
# The whole backtest


class BacktestResult(BaseModel):
    """Paths of what a backtest wrote and its figures (`figures` is the JSON's content)."""

    json_path: str
    html_path: str
    figures: dict[str, Any]


class PolicySpec(BaseModel):
    """Everything one policy's run needs, as plain data (it travels to a Dask worker).

    Attributes:
        name: the policy (a key of `POLICIES`).
        work: its scratch and resume folder.
        root: the project (dvc.yaml, the data source).
        config: the backtest's settings.
        params: params.yaml with the `build` overrides applied.
        release: the `release:` section with the backtest's overrides.
        rows_path: the replayed rows (Parquet, `history_rows`' output), read by path so nothing
            large travels through the scheduler.
        columns: the model's inputs, in order.
        initial_package: the starting model's package folder.
    """

    name: str
    work: str
    root: str
    config: BacktestConfig
    params: dict[str, Any]
    release: dict[str, Any]
    rows_path: str
    columns: list[str]
    initial_package: str


def run_policy(spec: PolicySpec, on_day: Callable[[str, int, dict[str, int]], None] | None = None) -> str:
    """Run one policy over the span (resuming its work folder); returns its name. Its figures are on disk."""
    from driftloop.schema import LABEL

    params = spec.params
    run = PolicyRun(
        name=spec.name, work=Path(spec.work), config=spec.config, builder=Builder(Path(spec.root), params, {}),
        rows=pd.read_parquet(spec.rows_path), columns=spec.columns, label=LABEL,
        model=parse_section("package", params.get("package"), PackageParams).model_name, release_params=spec.release,
        monitor=parse_section("monitor", params.get("monitor"), MonitorParams),
        policy=parse_section("policy", params.get("policy"), PolicyParams), initial_package=Path(spec.initial_package),
        time_column=parse_section("dataset", params.get("dataset"), Dataset).time.column, on_day=on_day,
    )  # fmt: skip
    run.run()
    return spec.name


def _policy_task():
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return task(name="backtest-policy", cache_policy=NO_CACHE)(run_policy)


def _backtest_flow():
    from prefect import flow

    policy_task = _policy_task()

    @flow(name="backtest", log_prints=False)
    def backtest_flow(specs: list[PolicySpec]) -> list[str]:
        """Every policy as a task on the flow's task runner (submitted in the given order)."""
        futures = [policy_task.submit(spec) for spec in specs]
        return [f.result() for f in futures]

    return backtest_flow


COST_ORDER: tuple[str, ...] = ("weekly", "drift", "monthly", "never")
"""Submission order on Dask: the costliest first (about 40, 4-8, 8 and 0 builds over a year), so
the longest run starts at once and the cheap ones fill the other worker."""


@contextlib.contextmanager
def dask_cluster_config() -> Iterator[None]:
    """Dask settings for the backtest's cluster, for the `with` block: a worker takes one task at a time,
    the rest wait on the scheduler (the default saturation 1.1 would hand two 5-minute policies to one
    worker up front).

    `distributed` is imported first: it adds its defaults to dask's config on first import, and a
    `dask.config.set` of a key in a section that does not exist yet removes the whole section on exit,
    so every later LocalCluster in this process failed (`KeyError: 'comm'`).
    """
    import dask
    import distributed  # noqa: F401

    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        yield


@contextlib.contextmanager
def prefect_api() -> Any:
    """A Prefect API for the flow and its Dask workers: the configured one (PREFECT_API_URL), else one
    ephemeral server started here and named in the environment, so worker processes spawned now use
    it (each would otherwise start its own ephemeral server). Stopped on exit."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=180)  # a loaded machine starts it slowly (migrations on a new SQLite file)
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
        server.stop()


class _ProgressPoller:
    """Reports each policy's progress from its `progress.json` (written at each checkpoint), in a thread."""

    def __init__(self, specs: list[PolicySpec], on_day: Callable[[str, int, dict[str, int]], None], interval_s: float = 1.0):
        import threading

        self.specs, self.on_day, self.interval_s = specs, on_day, interval_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="backtest-progress")

    def _loop(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        for spec in self.specs:
            path = Path(spec.work) / "progress.json"
            try:
                state = read_json(path)
            except (OSError, ValueError):
                continue
            kinds = [e["kind"] for e in state.get("events", [])]
            counts = {"retrains": kinds.count("retrain"), "promoted": kinds.count("promoted"),
                      "rejected": kinds.count("gate rejected"), "rolled_back": kinds.count("rolled back")}  # fmt: skip
            days = spec.config.days()
            done = len(days) if state.get("done") else (dt.date.fromisoformat(state["day"]) - days[0]).days + 1
            self.on_day(spec.name, done, counts)

    def __enter__(self) -> _ProgressPoller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.poll()


def run_backtest(
    config: BacktestConfig,
    *,
    root: str | os.PathLike[str] = ".",
    out_dir: str | os.PathLike[str] = "reports/backtest",
    work_dir: str | os.PathLike[str] | None = None,
    fresh: bool = False,
    initial_package: str | os.PathLike[str] | None = None,
    on_day: Callable[[str, int, dict[str, int]], None] | None = None,
    workers: int = 0,
    dask_address: str | None = None,
) -> BacktestResult:
    """Run every policy of `config` over its span and write `backtest.json` and `backtest.html`.

    Args:
        config: the span, policies and settings.
        root: the project (params.yaml, dvc.yaml, the data source).
        out_dir: where the JSON and HTML go.
        work_dir: scratch and resume state (default `<out_dir>/work`); a second call with the
            same config resumes there.
        fresh: delete `work_dir` first.
        initial_package: a built package to start from instead of building one on
            `config.first_as_of` (must be built on that window with the same params).
        on_day: called after each replayed day with (policy, days done, counts so far); on Dask,
            from a thread that reads each policy's `progress.json` every second.
        workers: 0 = the policies one after another in this process; N > 0 = in parallel, as Prefect
            tasks on prefect-dask's `DaskTaskRunner` over a `distributed.LocalCluster` of N worker
            processes (`flows.sweep.dask_runner`; needs a Prefect API or starts an ephemeral one).
        dask_address: an existing Dask scheduler (`tcp://host:8786`) instead of a LocalCluster; its
            workers must see `root` and `work_dir` at the same paths.

    Returns:
        The paths and figures (the same whichever way the policies ran: each policy's run is a
        function of its settings and the data).

    Raises:
        DriftloopError: bad params, a source without the configured columns, a log that never
            held the replayed rows, or a work folder of another configuration.
    """
    from driftloop.io import atomic_path
    from driftloop.schema import LABEL
    from flows.backtest_report import write_html

    rootp = Path(root).resolve()
    out = Path(out_dir).resolve()
    work = Path(work_dir).resolve() if work_dir else out / "work"
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    params = json.loads(json.dumps(read_params_file(rootp / "params.yaml"), default=str))
    for key, value in config.build.items():  # the builds and the drift policy read the same params
        _set_dotted(params, key, value)
    release_raw = {**(params.get("release") or {}), **config.release}
    parse_section("release", release_raw, ReleaseParams)
    parse_section("monitor", params.get("monitor"), MonitorParams)
    policy = parse_section("policy", params.get("policy"), PolicyParams)
    model = parse_section("package", params.get("package"), PackageParams).model_name
    parse_section("dataset", params.get("dataset"), Dataset)
    builder = Builder(rootp, params, {})
    initial = Path(initial_package).resolve() if initial_package else work / "initial" / "project" / "artifacts" / "model"
    if initial_package is None and not (initial / "SHA256SUMS").is_file():
        result = builder.build(work / "initial" / "project", config.first_as_of, config.window_months)
        if result.verdict != "pass":
            raise DriftloopError(f"backtest: the starting model (window to {config.first_as_of}) did not build: "
                                 f"{result.verdict}: {result.reason}")  # fmt: skip
        write_json(work / "initial" / "build.json", result.__dict__)
    signature = read_json(initial / "signature.json")
    columns = [spec["name"] for spec in signature["inputs"]]
    rows = history_rows(params, rootp, config)
    missing = [c for c in [*columns, LABEL] if c not in rows]
    if missing:
        raise DriftloopError(f"backtest: the source lacks column(s) {', '.join(missing)} the model's signature needs")
    rows_path = work / "rows.parquet"
    with atomic_path(rows_path) as tmp:
        rows.to_parquet(tmp, index=False)
    specs = [PolicySpec(name=name, work=str(work / name), root=str(rootp), config=config, params=params,
                        release=release_raw, rows_path=str(rows_path), columns=columns, initial_package=str(initial))
             for name in config.policies]  # fmt: skip
    if workers or dask_address:
        from flows.sweep import dask_runner

        ordered = sorted(specs, key=lambda s: COST_ORDER.index(s.name) if s.name in COST_ORDER else -1)
        poller = _ProgressPoller(specs, on_day) if on_day is not None else contextlib.nullcontext()
        with prefect_api(), dask_cluster_config(), poller:
            _backtest_flow().with_options(task_runner=dask_runner(dask_address, max(1, workers)))(ordered)
    else:
        for spec in specs:
            run_policy(spec, on_day)
    states = {s.name: read_json(Path(s.work) / "progress.json") for s in specs}
    figures = collect_figures(config, {s.name: Path(s.work) / "logs" for s in specs}, states, model, policy,
                              release_raw, rows)  # fmt: skip
    json_path, html_path = out / "backtest.json", out / "backtest.html"
    write_json(json_path, figures)
    write_html(html_path, figures)
    return BacktestResult(json_path=str(json_path), html_path=str(html_path), figures=figures)


def collect_figures(config: BacktestConfig, logs: dict[str, Path], states: dict[str, dict], model: str,
                    policy: PolicyParams, release: dict[str, Any], rows: pd.DataFrame) -> dict[str, Any]:  # fmt: skip
    """The JSON: settings, then per policy the served figures (from its log folder), counts, CPU and events
    (from its finished `progress.json` state)."""
    out: dict[str, Any] = {
        "span": {"start": config.start.isoformat(), "end": config.end.isoformat(), "days": len(config.days()),
                 "rows": len(rows), "initial_as_of": config.first_as_of.isoformat()},
        "settings": json.loads(config.model_dump_json()),
        "policy_params": policy.model_dump(mode="json"),
        "release_params": release,
        "policies": {},
    }
    for name, state in states.items():
        served = served_figures(logs[name], model)
        kinds = [e["kind"] for e in state["events"]]
        counts = {"retrains": kinds.count("retrain"), "promoted": kinds.count("promoted"),
                  "rejected": kinds.count("gate rejected"), "rolled_back": kinds.count("rolled back")}  # fmt: skip
        out["policies"][name] = {
            **served,
            **counts,
            "rejected_by_gate": counts["rejected"],
            "build_failed": kinds.count("build failed"),
            "release_unfinished": kinds.count("unfinished") + kinds.count("release failed"),
            "training_cpu_s": round(sum(b["cpu_s"] for b in state["builds"]), 2),
            "training_wall_s": round(sum(b["wall_s"] for b in state["builds"]), 2),
            "process_cpu_s": state.get("process_cpu_s"),
            "wall_s": state.get("wall_s"),
            "builds": state["builds"],
            "events": state["events"],
            "days": [state["records"][k] for k in sorted(state["records"])],
        }
    return out
