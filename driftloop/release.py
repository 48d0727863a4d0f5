"""The release plane: register a package, release it (canary or blue-green), analyse, promote or roll back.

Plain functions, free of Prefect, that the CLI (driftloop/cli_release.py) and the Prefect flows call.
The registry is reached through `driftloop.registry.ModelRegistry` only; the server through its
public HTTP API (`ServerClient`): v2 repository load/unload, the traffic endpoint, `/metrics`, and
version-pinned v2 inference for the servability check.

Canary analysis reads two things (see docs/release.md):
    - the server's prediction log (`serve --log-dir`, `release.log_dir`): per version, the requests
      answered (distinct request ids), their latency in the server (ms) and their scores;
    - `/metrics`: `driftloop_requests_total` with a 5xx status on the scoring endpoints. The server
      does not label errors by version, so every 5xx during the window counts against the canary:
      the conservative choice, because rolling back is the safe side.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from driftloop.config import ReleaseParams
from driftloop.errors import DriftloopError, PackageError
from driftloop.io import atomic_path, read_json
from driftloop.package import verify_package
from driftloop.payloads import v2_body
from driftloop.predlog import read_log_with_labels
from driftloop.protocol import SCORING_ENDPOINTS
from driftloop.registry import (
    ModelRegistry,
    RegistryError,
    Tenure,
    VersionInfo,
    holder,
    normalize_version,
    stage_tenures,
)

log = logging.getLogger(__name__)

PSI_EPSILON = 1e-4


class ReleaseError(DriftloopError):
    """A release or rollback could not start or could not finish; the message says what holds."""


class ServerDown(ReleaseError):
    """The model server does not answer at its URL."""


class ReleaseLocked(ReleaseError):
    """Another release or rollback holds the lock."""


class ServabilityFailed(ReleaseError):
    """The server refused to load the version, or its sample answer had the wrong shape."""


# ---------------------------------------------------------------------------------------- the server
class ServerClient:
    """The few calls the release plane makes to the model server (its public HTTP API).

    Args:
        url: base URL, e.g. `http://127.0.0.1:8080`.
        timeout_s: per-request timeout, seconds.
        api_key: sent as `x-api-key` when set (default: `DRIFTLOOP_API_KEY`).
    """

    def __init__(self, url: str, timeout_s: float = 30.0, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        key = api_key if api_key is not None else os.environ.get("DRIFTLOOP_API_KEY")
        headers = {"x-api-key": key} if key else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServerDown(
                f"model server at {self.url} does not answer ({type(exc).__name__}); start it with `driftloop serve`"
            ) from None

    @staticmethod
    def _error(resp: httpx.Response) -> str:
        try:
            return str(resp.json().get("error", resp.text))
        except ValueError:
            return resp.text[:200]

    def check_live(self) -> None:
        """Raises `ServerDown` unless `/v2/health/live` answers 200."""
        resp = self._call("GET", "/v2/health/live")
        if resp.status_code != 200:
            raise ServerDown(f"model server at {self.url}: /v2/health/live answered {resp.status_code}")

    def traffic(self, model: str) -> dict[str, float]:
        """{version: percent} now; {} when the model is not loaded."""
        resp = self._call("GET", f"/v2/repository/models/{model}/traffic")
        if resp.status_code == 404:
            return {}
        if resp.status_code != 200:
            raise ReleaseError(f"traffic of {model}: {resp.status_code} {self._error(resp)}")
        return {str(k): float(v) for k, v in resp.json()["traffic_pct"].items()}

    def set_traffic(self, model: str, weights: Mapping[str, float]) -> dict[str, float]:
        """Set explicit weights (sticky per request id) and return the effective percentages."""
        resp = self._call("POST", f"/v2/repository/models/{model}/traffic", json={"weights": dict(weights)})
        if resp.status_code != 200:
            raise ReleaseError(f"setting traffic of {model} to {dict(weights)}: {self._error(resp)}")
        return resp.json()["traffic_pct"]

    def loaded_versions(self, model: str) -> list[str]:
        """Versions of `model` in state READY."""
        resp = self._call("GET", "/v2/repository/index")
        if resp.status_code != 200:
            raise ReleaseError(f"repository index: {resp.status_code} {self._error(resp)}")
        return [r["version"] for r in resp.json() if r["name"] == model and r["state"] == "READY"]

    def load(self, model: str, version: str) -> None:
        """Load (verify, warm up) a version; raises `ServabilityFailed` with the server's reason."""
        resp = self._call(
            "POST", f"/v2/repository/models/{model}/load", json={"parameters": {"version": version}}
        )
        if resp.status_code != 200:
            raise ServabilityFailed(f"server refused to load {model} {version}: {self._error(resp)}")

    def unload(self, model: str, version: str) -> None:
        """Unload a version; a version that is not loaded is not an error."""
        resp = self._call(
            "POST", f"/v2/repository/models/{model}/unload", json={"parameters": {"version": version}}
        )
        if resp.status_code not in (200, 404):
            raise ReleaseError(f"unloading {model} {version}: {self._error(resp)}")

    def infer(self, model: str, version: str, body: dict) -> httpx.Response:
        """Version-pinned v2 inference (bypasses the traffic split)."""
        return self._call("POST", f"/v2/models/{model}/versions/{version}/infer", json=body)

    def server_errors(self) -> int:
        """Total 5xx responses of the scoring endpoints so far (from `/metrics`)."""
        from prometheus_client.parser import text_string_to_metric_families

        resp = self._call("GET", "/metrics")
        if resp.status_code != 200:
            raise ReleaseError(f"/metrics answered {resp.status_code}")
        total = 0
        for family in text_string_to_metric_families(resp.text):
            if family.name != "driftloop_requests":
                continue
            for sample in family.samples:
                if (
                    sample.name.endswith("_total")
                    and sample.labels.get("endpoint") in SCORING_ENDPOINTS
                    and sample.labels.get("status", "").startswith("5")
                ):
                    total += int(sample.value)
        return total


# ---------------------------------------------------------------------------------------- lock
class ReleaseLock:
    """One release at a time: a lock file created with O_EXCL that holds the owner's pid.

    A lock whose pid is no longer alive (a killed release) is taken over, with a warning.

    Args:
        path: the lock file, e.g. `<repository>/.release.lock` (the server ignores dot-files).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __enter__(self) -> ReleaseLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = self._owner()
                if pid is not None and _alive(pid):
                    raise ReleaseLocked(
                        f"another release or rollback is running (pid {pid}, lock {self.path}); wait for it"
                    ) from None
                log.warning("taking over stale release lock %s (pid %s is gone)", self.path, pid)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{os.getpid()}\n")
            return self
        raise ReleaseLocked(f"could not take the release lock {self.path}")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def __exit__(self, *exc: object) -> None:
        if self._owner() == os.getpid():
            self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------- register
@dataclass(frozen=True)
class Registered:
    """The outcome of `register_package`: the version, its commit, lineage id and files pushed."""

    version: str
    commit: str
    lineage_id: str
    verdict: str
    pushed: int


def register_package(
    registry: ModelRegistry,
    package: str | os.PathLike[str],
    *,
    version: str | None = None,
    bump: str = "patch",
) -> Registered:
    """Register the package in `package` as a new version, after checking it and pushing its files.

    Order: verify SHA256SUMS, read the gate verdict, find the commit whose `dvc.lock` produced the
    files, push them to the DVC remote, then tag. A failure before the tag leaves the registry as
    it was.

    Args:
        registry: a `GtoRegistry` (needs `producing_commit` and `push`) or any registry with them.
        package: the package folder (`artifacts/model`).
        version: explicit semver (`v1.2.0`); None bumps the latest by `bump`.
        bump: `major`, `minor` or `patch`.

    Returns:
        What was registered.

    Raises:
        PackageError: files do not match SHA256SUMS, or model_card.json lacks the verdict.
        RegistryError: the gate verdict is not `pass`, no committed dvc.lock produced the
            package, the push failed, or the version is taken.
    """
    folder = Path(package)
    verify_package(folder)
    card = read_json(folder / "model_card.json")
    verdict = str((card.get("gate") or {}).get("verdict", "")) if isinstance(card.get("gate"), dict) else ""
    lineage = str(card.get("lineage_id", ""))
    if verdict != "pass":
        raise RegistryError(
            f"{folder}: gate verdict is {verdict or 'missing'!r}, not 'pass'; only a gated package can be registered"
        )
    if version is not None:
        version = normalize_version(version)
    commit = registry.producing_commit()  # type: ignore[attr-defined]
    pushed = registry.push(commit)  # type: ignore[attr-defined]
    info = registry.register(
        commit, f"gate verdict: {verdict}; lineage: {lineage}", version=version, bump=bump
    )
    log.info("registered %s at %s (lineage %s, %d files pushed)", info.version, commit[:7], lineage, pushed)
    return Registered(info.version, commit, lineage, verdict, pushed)


# ---------------------------------------------------------------------------------------- install
def install_version(registry: ModelRegistry, version: str, repository: Path, model: str) -> tuple[Path, bool]:
    """Put a version's package at `<repository>/<model>/<version>/`, atomically and verified.

    Fetch into a hidden temp folder next to the target (the server ignores dot-folders), verify
    its SHA256SUMS, then rename it into place. A folder already there that verifies is kept.

    Returns:
        (the folder, True when this call created it).

    Raises:
        UnknownVersion / FilesMissing: from the registry.
        PackageError: the fetched files do not verify.
    """
    target = Path(repository) / model / version
    if target.is_dir():
        try:
            verify_package(target)
            return target, False
        except PackageError:
            log.warning("%s does not verify; fetching it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=target.parent))
    try:
        staged = registry.fetch(version, tmp / "pkg")
        verify_package(staged)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, True


def uninstall_version(repository: Path, model: str, version: str) -> None:
    """Remove a rolled-back version's folder from the model repository.

    A deprecated version left on disk would be the newest folder there, and a server restarted
    without the release plane loads the newest: it would serve again. The registry can fetch it
    back by version at any time.
    """
    target = Path(repository) / model / version
    try:
        if target.is_dir():
            shutil.rmtree(target)
            log.info("removed %s from the model repository", target)
    except OSError as exc:
        log.warning("could not remove %s (%s); remove it by hand", target, exc)


def sample_body(folder: Path, rows: int = 1) -> dict:
    """A v2 infer body of the first `rows` reference rows, typed by `signature.json`."""

    sig = read_json(folder / "signature.json")
    frame = pd.read_parquet(folder / "reference.parquet").head(rows)
    datatypes = {spec["name"]: spec["datatype"] for spec in sig["inputs"]}
    return v2_body(frame, list(datatypes), datatypes=datatypes, request_id="driftloop-servability-check")


def check_servable(client: ServerClient, model: str, version: str, folder: Path) -> None:
    """Load `version` (the server verifies and warms it up) and send one pinned sample request.

    Expected answer: 200, header `x-model-version` = version, one output of shape [1, 1] with a
    finite probability in [0, 1].

    Raises:
        ServabilityFailed: the load was refused or the answer had another shape.
    """
    client.load(model, version)
    resp = client.infer(model, version, sample_body(folder))
    if resp.status_code != 200:
        raise ServabilityFailed(
            f"{model} {version}: sample request answered {resp.status_code}: {client._error(resp)}"
        )
    try:
        out = resp.json()["outputs"][0]
        value = float(out["data"][0])
        ok = out["shape"] == [1, 1] and math.isfinite(value) and 0.0 <= value <= 1.0
    except (KeyError, IndexError, TypeError, ValueError):
        ok = False
    if not ok or resp.headers.get("x-model-version") != version:
        raise ServabilityFailed(
            f"{model} {version}: sample answer is not one probability from this version: {resp.text[:200]}"
        )


# ---------------------------------------------------------------------------------------- analysis
@dataclass(frozen=True)
class Check:
    """One rule of the canary analysis: measured value, bound, verdict, and why."""

    name: str
    value: float | None
    bound: float
    passed: bool
    reason: str


@dataclass(frozen=True)
class Analysis:
    """The canary analysis: per-version figures and the checks (all must pass to promote)."""

    stable: str | None
    canary: str
    canary_requests: int
    stable_requests: int
    errors: int
    checks: list[Check]

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return all(c.passed for c in self.checks)

    def summary(self) -> str:
        """One line: each check's reason, `; `-separated (goes into the registry's tag message)."""
        return "; ".join(c.reason for c in self.checks)


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """Population Stability Index of two score samples on `bins` equal-width bins of [0, 1].

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i) over the bins' shares, each count smoothed by +0.5
    (Jeffreys) so that an empty bin does not blow the sum up. Rule of thumb (Siddiqi, "Credit
    Risk Scorecards", 2006): < 0.1 no shift, 0.1-0.25 moderate, > 0.25 significant. Equal-width
    bins match the server's `driftloop_score` histogram buckets (0.1 wide).

    Args:
        expected: stable's scores (probabilities).
        actual: canary's scores.
        bins: number of bins.

    Returns:
        The PSI (>= 0, unitless); NaN when either sample is empty.
    """
    if len(expected) == 0 or len(actual) == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    e = np.histogram(np.clip(expected, 0, 1), edges)[0] + 0.5
    a = np.histogram(np.clip(actual, 0, 1), edges)[0] + 0.5
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def psi_noise(n_expected: int, n_actual: int, bins: int = 10) -> float:
    """PSI expected from sampling alone when nothing shifted: (bins - 1) * (1/n + 1/m).

    PSI is asymptotically chi-square distributed with bins - 1 degrees of freedom, scaled by
    1/n + 1/m (Yurdakul, "Statistical properties of the population stability index", 2018), so
    with 40 requests per side pure noise already reads about 0.45. The analysis adds this to
    `max_score_psi`, which keeps the rule of thumb meaningful at small `min_requests`.
    """
    if n_expected == 0 or n_actual == 0:
        return float("inf")
    return (bins - 1) * (1.0 / n_expected + 1.0 / n_actual)


def _per_request(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.drop_duplicates("request_id") if len(rows) else rows


def auc_with_error(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float] | None:
    """ROC AUC and its standard error (Hanley & McNeil 1982, "The meaning and use of the area under
    a ROC curve", eq. 2); None unless both classes are present.
    """
    from sklearn.metrics import roc_auc_score

    n_pos = int((labels == 1).sum())
    n_neg = int((labels == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    a = float(roc_auc_score(labels, scores))
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return a, math.sqrt(max(var, 0.0))


def _labelled(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["label"].notna()] if "label" in rows else rows.iloc[0:0]


def quality_check(stable_rows: pd.DataFrame, canary_rows: pd.DataFrame, params: ReleaseParams) -> Check | None:
    """Canary vs stable ROC AUC on the rows whose labels have arrived; None when too few.

    The canary passes when its AUC >= stable's - `max_auc_drop` - 2 x the standard error of the
    difference (Hanley-McNeil errors of both, independent samples): a few hundred labelled rows
    cannot tell AUCs 0.03 apart, so the rule only fails a canary that is surely worse.
    """
    s_lab, c_lab = _labelled(stable_rows), _labelled(canary_rows)
    if min(len(s_lab), len(c_lab)) < params.min_labelled_rows:
        return None
    s_auc = auc_with_error(s_lab["label"].to_numpy(int), s_lab["score"].to_numpy(float))
    c_auc = auc_with_error(c_lab["label"].to_numpy(int), c_lab["score"].to_numpy(float))
    if s_auc is None or c_auc is None:
        return None
    noise = 2 * math.hypot(s_auc[1], c_auc[1])
    allowed = s_auc[0] - params.max_auc_drop - noise
    return Check(
        "roc_auc",
        c_auc[0],
        allowed,
        c_auc[0] >= allowed,
        f"ROC AUC {c_auc[0]:.3f} on {len(c_lab)} labelled rows vs stable {s_auc[0]:.3f} on {len(s_lab)} "
        f"(allowed down to {allowed:.3f}: drop {params.max_auc_drop} + 2 SE {noise:.3f})",
    )


def analyse(
    stable_rows: pd.DataFrame,
    canary_rows: pd.DataFrame,
    errors: int,
    *,
    stable: str | None,
    canary: str,
    params: ReleaseParams,
) -> Analysis:
    """Compare canary with stable on error rate, p50/p99 latency, and quality: ROC AUC where enough
    labels have arrived (`quality_check`), else the score distribution (PSI) as its proxy.

    Args:
        stable_rows: prediction-log rows answered by stable (the baseline).
        canary_rows: prediction-log rows answered by the canary.
        errors: 5xx responses of the scoring endpoints during the window, all counted against
            the canary (the server does not label errors by version).
        stable: stable's version (None: no baseline).
        canary: canary's version.
        params: the bounds (`min_requests`, `max_error_rate_increase`, `max_p99_latency_ratio`,
            `latency_slack_ms`, `max_score_psi`).

    Returns:
        The analysis; a check fails when its figure cannot be measured (no verdict = roll back).
    """
    c_req, s_req = _per_request(canary_rows), _per_request(stable_rows)
    n_c, n_s = len(c_req), len(s_req)
    checks = [
        Check(
            "requests",
            n_c,
            params.min_requests,
            n_c >= params.min_requests,
            f"canary answered {n_c} requests (need {params.min_requests})",
        )
    ]
    rate = errors / (n_c + errors) if (n_c + errors) else 0.0
    checks.append(
        Check(
            "error_rate",
            rate,
            params.max_error_rate_increase,
            rate <= params.max_error_rate_increase,
            f"error rate {rate:.2%} (bound {params.max_error_rate_increase:.2%}; every one of the window's "
            f"{errors} 5xx counts against the canary: the server does not label errors by version)",
        )
    )
    if n_s == 0 or n_c == 0:
        checks.append(
            Check(
                "latency",
                None,
                params.max_p99_latency_ratio,
                False,
                "p99 latency: no stable baseline or no canary rows to compare",
            )
        )
        checks.append(
            Check(
                "score_psi",
                None,
                params.max_score_psi,
                False,
                "score PSI: no stable baseline or no canary rows to compare",
            )
        )
    else:
        # p50 as well as p99: the server's micro-batcher is shared, so a slow canary's batches
        # also delay stable's requests and lift stable's p99 tail; the median shows the canary.
        for q in (50, 99):
            q_c = float(np.percentile(c_req["latency_ms"].astype(float), q))
            q_s = float(np.percentile(s_req["latency_ms"].astype(float), q))
            allowed = max(q_s * params.max_p99_latency_ratio, q_s + params.latency_slack_ms)
            checks.append(
                Check(
                    f"p{q}_latency",
                    q_c,
                    allowed,
                    q_c <= allowed,
                    f"p{q} latency {q_c:.2f} ms vs stable {q_s:.2f} ms (allowed {allowed:.2f} ms)",
                )
            )
        s_scores, c_scores = stable_rows["score"].to_numpy(float), canary_rows["score"].to_numpy(float)
        value = psi(s_scores, c_scores)
        bound = params.max_score_psi + psi_noise(len(s_scores), len(c_scores))
        quality = quality_check(stable_rows, canary_rows, params)
        text = f"score PSI {value:.3f} (bound {params.max_score_psi} + sampling noise = {bound:.3f})"
        if quality is None:  # no ground truth yet: a shifted score distribution is the warning sign
            checks.append(Check("score_psi", value, bound, value <= bound, text))
        else:
            # Ground truth beats a proxy: a model retrained after drift is *meant* to score
            # differently from stable, so with labels the PSI is reported but does not decide.
            checks.append(Check("score_psi", value, bound, True, f"{text}; advisory: labels decide"))
            checks.append(quality)
    return Analysis(stable, canary, n_c, n_s, errors, checks)


def _read_window(log_dir: Path, model: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:

    frame = read_log_with_labels(log_dir, model, start, end)  # label NaN = not arrived (yet)
    if "latency_ms" not in frame:
        frame["latency_ms"] = pd.Series(dtype=float)
    return frame


def run_analysis(
    client: ServerClient,
    *,
    model: str,
    stable: str | None,
    canary: str,
    params: ReleaseParams,
    log_dir: Path,
    baseline_s: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    on_progress: Callable[[str], None] | None = None,
) -> Analysis:
    """Watch live traffic until the canary answered `min_requests` (then up to `label_wait_s` more for
    labels), errors doom it, or `analysis_timeout_s` runs out.

    Args:
        client: the server.
        model: model name on the server (the prediction log's folder).
        stable, canary: versions.
        params: bounds and timings (`analysis_timeout_s`, `poll_interval_s`).
        log_dir: the server's prediction log root.
        baseline_s: also use stable's rows from this many seconds before the window (blue-green,
            where stable takes no traffic during the window).
        on_progress: called every 5 s with the canary's request, label and error counts.

    Returns:
        The analysis of the window.
    """
    start = pd.Timestamp.now(tz="UTC")
    errors0 = client.server_errors()
    deadline = clock() + params.analysis_timeout_s
    doomed_at = max(1, math.floor(params.max_error_rate_increase * params.min_requests) + 1)
    say = on_progress or (lambda line: log.info("%s", line))
    enough_at: float | None = None  # when the canary reached min_requests
    last_said = clock()
    while True:
        time.sleep(params.poll_interval_s)
        errors = client.server_errors() - errors0
        rows = _read_window(
            log_dir,
            model,
            start - pd.Timedelta(seconds=baseline_s),
            pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=1),
        )
        canary_rows = rows[(rows["model_version"] == canary) & (rows["ts"] >= start)]
        n = canary_rows["request_id"].nunique()
        labelled = min(
            len(_labelled(canary_rows)),
            len(_labelled(rows[rows["model_version"] == stable])) if stable else 0,
        )
        if errors >= doomed_at or clock() >= deadline:
            break
        if n >= params.min_requests:
            # Labels turn the verdict from a proxy (score PSI) into ground truth (ROC AUC): give
            # them up to `label_wait_s` to arrive, then decide with what there is.
            enough_at = enough_at if enough_at is not None else clock()
            if labelled >= params.min_labelled_rows or clock() - enough_at >= params.label_wait_s:
                break
        if clock() - last_said >= 5.0:
            say(f"canary {canary}: {n}/{params.min_requests} requests, {labelled} labelled rows, {errors} errors")
            last_said = clock()
    stable_rows = rows[rows["model_version"] == stable] if stable else rows.iloc[0:0]
    return analyse(stable_rows, canary_rows, errors, stable=stable, canary=canary, params=params)


# ---------------------------------------------------------------------------------------- release
@dataclass
class Outcome:
    """What a release or rollback did: `decision` is `promoted`, `rolled back` or `restored`."""

    version: str
    decision: str
    reasons: str
    previous: str | None = None
    analysis: Analysis | None = None
    traffic: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ReleasePlane:
    """Where things are: the project root, the params, the registry and the server URL."""

    root: Path
    params: ReleaseParams
    registry: ModelRegistry
    server_url: str

    @property
    def repository(self) -> Path:
        """The server's model repository folder."""
        return _abs(self.root, self.params.repository)

    @property
    def package_dir(self) -> Path:
        """The build plane's package folder (`release.package_dir`)."""
        return _abs(self.root, self.params.package_dir)

    @property
    def lock(self) -> ReleaseLock:
        """The release lock, `<repository>/.release.lock`."""
        return ReleaseLock(self.repository / ".release.lock")

    def client(self) -> ServerClient:
        """A client of the server."""
        return ServerClient(self.server_url, timeout_s=self.params.http_timeout_s)

    def tenures(self) -> list[Tenure]:
        """Who held which stage, from when to when."""
        return stage_tenures(self.registry.events())


def open_plane(
    root: str | os.PathLike[str] = ".",
    *,
    params_path: str | os.PathLike[str] | None = None,
    server_url: str | None = None,
) -> ReleasePlane:
    """The release plane of the project at `root`: `release:` params, GTO registry, server URL.

    This is the entry point for callers (CLI, Prefect flows): `plane = open_plane(root)`, then
    `register_package(plane.registry, plane.package_dir)`, `release_version(plane, version)`,
    `rollback_release(plane)`.

    Args:
        root: the project's git repository.
        params_path: params file (default `<root>/params.yaml`).
        server_url: overrides `release.server_url`.

    Raises:
        ParamsError: `release:` is missing or invalid.
        RegistryError: `root` is not a git repository.
    """
    from driftloop.config import load_section
    from driftloop.registry import GtoRegistry

    root = Path(root).resolve()
    section = load_section(params_path or root / "params.yaml", "release", ReleaseParams)
    registry = GtoRegistry(root, section.artifact, section.package_dir)
    return ReleasePlane(
        root=root, params=section, registry=registry, server_url=server_url or section.server_url
    )


def _abs(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def update_champion(plane: ReleasePlane, version: str) -> Path:
    """Copy `<repository>/<model>/<version>/` to `release.champion_dir`, atomically.

    The evaluate stage (`--champion champion/package`) scores it on the test split.
    """
    src = plane.repository / plane.params.model / version
    target = _abs(plane.root, plane.params.champion_dir)
    with atomic_path(target) as tmp:
        shutil.copytree(src, tmp)
    log.info("champion is now %s (%s)", version, target)
    return target


def _pin_traffic(client: ServerClient, model: str) -> dict[str, float]:
    """Make the current split explicit, so a version loaded next gets weight 0, not 100%."""
    current = client.traffic(model)
    if current:
        client.set_traffic(model, current)
    return current


def release_version(
    plane: ReleasePlane,
    version: str,
    *,
    strategy: str | None = None,
    weight: float | None = None,
    keep_previous_s: float | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Outcome:
    """Release a registered version: install, load, canary (or blue-green), analyse, promote or roll back.

    With nothing in `stable_stage`, the version is promoted once it is servable (load, warm-up,
    one sample request). Otherwise it takes `weight` percent of traffic (100 for blue-green),
    sticky per request id, until the analysis decides; stable keeps answering throughout.

    Args:
        plane: root, params, registry, server.
        version: a registered version (`v1.2.0` or `1.2.0`).
        strategy: `canary` or `blue-green` (default `release.strategy`).
        weight: canary percent (default `release.canary_weight`).
        keep_previous_s: after a promotion, the old stable stays loaded this many seconds
            (weight 0) for a fast rollback, then unloads (default `release.keep_previous_s`).
        on_progress: called with one line per step (the CLI prints them).

    Returns:
        The outcome (`promoted` or `rolled back`) with the analysis.

    Raises:
        ReleaseLocked: another release is running.
        UnknownVersion / FilesMissing / ServerDown / ServabilityFailed / ReleaseError: before any
            traffic moved; nothing changed.
    """
    p = plane.params
    strategy = strategy or p.strategy
    if strategy not in ("canary", "blue-green"):
        raise ReleaseError(f"strategy {strategy!r}: expected canary or blue-green")
    weight = 100.0 if strategy == "blue-green" else float(weight if weight is not None else p.canary_weight)
    if not 0 < weight <= 100:
        raise ReleaseError(f"weight {weight}: expected a percentage in (0, 100]")
    keep = p.keep_previous_s if keep_previous_s is None else keep_previous_s
    say = on_progress or (lambda line: log.info("%s", line))
    model = p.model
    with plane.lock:
        info = plane.registry.get(version)
        version = info.version
        if info.deprecated:
            raise ReleaseError(f"{version} is deprecated ({info.deprecation}); register a new version")
        tenures = plane.tenures()
        stable = holder(tenures, p.stable_stage)
        if stable == version:
            raise ReleaseError(f"{version} already holds {p.stable_stage}; nothing to release")
        client = plane.client()
        try:
            client.check_live()
            folder, created = install_version(plane.registry, version, plane.repository, model)
            say(f"installed {version} at {folder}")
            if stable is not None and stable not in client.loaded_versions(model):
                install_version(plane.registry, stable, plane.repository, model)
                _pin_traffic(client, model)
                client.load(model, stable)
                client.set_traffic(model, {stable: 100})
                say(f"stable {stable} was not loaded: loaded it")
            _pin_traffic(client, model)
            try:
                check_servable(client, model, version, folder)
            except ServabilityFailed as exc:
                _safe(lambda: client.unload(model, version))
                if created:
                    shutil.rmtree(folder, ignore_errors=True)
                if "refused to load" in str(exc):
                    plane.registry.deprecate(version, f"rolled back: not servable: {exc}")
                raise
            say(f"{version} loaded, warmed up, sample answer ok")
            if stable is None:
                client.set_traffic(model, {version: 100})
                reason = "first release: servability check passed (load, warm-up, sample request)"
                plane.registry.assign(p.stable_stage, version, f"promoted: {reason}")
                update_champion(plane, version)
                say(f"promoted {version}: {reason}")
                return Outcome(version, "promoted", reason, None, None, client.traffic(model))
            return _canary(plane, client, version, stable, strategy, weight, keep, say)
        finally:
            client.close()


def _safe(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except DriftloopError as exc:
        log.warning("cleanup step failed: %s", exc)


def _canary(
    plane: ReleasePlane,
    client: ServerClient,
    version: str,
    stable: str,
    strategy: str,
    weight: float,
    keep: float,
    say: Callable[[str], None],
) -> Outcome:
    p = plane.params
    model = p.model
    reg = plane.registry
    weights = {version: 100.0} if weight >= 100 else {stable: 100.0 - weight, version: weight}
    reg.assign(p.canary_stage, version, f"{strategy} at {weight:g}% vs {stable}")
    decided = False
    try:
        client.set_traffic(model, weights)
        say(f"{strategy}: {version} takes {weight:g}% of traffic (sticky per request id); analysing")
        analysis = run_analysis(
            client,
            model=model,
            stable=stable,
            canary=version,
            params=p,
            log_dir=_abs(plane.root, p.log_dir),
            baseline_s=p.baseline_window_s if strategy == "blue-green" else 0.0,
            on_progress=say,
        )
        for c in analysis.checks:
            say(f"  [{'ok' if c.passed else 'FAIL'}] {c.reason}")
        if analysis.passed:
            client.set_traffic(model, {version: 100})
            decided = True
            reasons = analysis.summary()
            reg.assign(p.stable_stage, version, f"promoted from {strategy} over {stable}: {reasons}")
            reg.unassign(p.canary_stage, version, f"promoted to {p.stable_stage}")
            update_champion(plane, version)
            say(f"promoted {version}; {stable} stays loaded at weight 0 for {keep:g} s")
            outcome = Outcome(version, "promoted", reasons, stable, analysis, client.traffic(model))
        else:
            client.set_traffic(model, {stable: 100})
            decided = True
            _safe(lambda: client.unload(model, version))
            failed = "; ".join(c.reason for c in analysis.checks if not c.passed)
            reg.unassign(p.canary_stage, version, f"rolled back: {failed}")
            reg.deprecate(version, f"rolled back from {strategy}: {failed}")
            _safe(lambda: uninstall_version(plane.repository, model, version))
            say(f"rolled back {version}: {failed}")
            return Outcome(version, "rolled back", failed, stable, analysis, client.traffic(model))
    finally:
        if not decided:  # an exception mid-analysis: stable takes everything back
            _safe(lambda: client.set_traffic(model, {stable: 100}))
            _safe(lambda: client.unload(model, version))
            _safe(lambda: reg.unassign(p.canary_stage, version, "rolled back: the release was interrupted"))
    retire_version(plane, stable, after_s=keep, on_progress=say)
    return outcome


def retire_version(
    plane: ReleasePlane, version: str, *, after_s: float = 0.0, on_progress: Callable[[str], None] | None = None
) -> bool:
    """Unload `version` after `after_s` seconds, unless it holds the stable stage or takes traffic again.

    Runs outside the release lock, so a `rollback` during the wait is not blocked.

    Returns:
        True when it was unloaded.
    """
    if after_s > 0:
        time.sleep(after_s)
    p = plane.params
    if holder(plane.tenures(), p.stable_stage) == version:
        return False
    client = plane.client()
    try:
        if client.traffic(p.model).get(version, 0.0) > 0:
            return False
        client.unload(p.model, version)
        (on_progress or log.info)(f"unloaded previous stable {version}")
        return True
    except DriftloopError as exc:
        log.warning("could not unload %s: %s", version, exc)
        return False
    finally:
        client.close()


def previous_stable(plane: ReleasePlane) -> tuple[str | None, str | None]:
    """(current stable, the version that held the stable stage before it and is not deprecated)."""
    p = plane.params
    tenures = [t for t in plane.tenures() if t.stage == p.stable_stage]
    current = holder(tenures, p.stable_stage)
    deprecated = {v.version for v in plane.registry.versions() if v.deprecated}
    for t in reversed(tenures):
        if t.version != current and t.version not in deprecated:
            return current, t.version
    return current, None


def rollback_release(
    plane: ReleasePlane, *, reason: str = "manual rollback", on_progress: Callable[[str], None] | None = None
) -> Outcome:
    """Put the previous stable version back, on the server and in the registry, without a rebuild.

    The current stable is deprecated (so a second rollback goes one further back), the previous
    one is fetched if it left the model repository, loaded, checked, and takes 100% of traffic.

    Raises:
        ReleaseLocked: a release is running.
        ReleaseError: nothing to roll back to.
        ServerDown / FilesMissing / ServabilityFailed: before any traffic moved.
    """
    p = plane.params
    say = on_progress or (lambda line: log.info("%s", line))
    with plane.lock:
        current, previous = previous_stable(plane)
        if current is None:
            raise ReleaseError(f"nothing holds {p.stable_stage}; nothing to roll back")
        if previous is None:
            raise ReleaseError(
                f"{current} is the only {p.stable_stage} version so far; nothing to roll back to"
            )
        client = plane.client()
        try:
            client.check_live()
            folder, _ = install_version(plane.registry, previous, plane.repository, p.model)
            if previous not in client.loaded_versions(p.model):
                _pin_traffic(client, p.model)
            check_servable(client, p.model, previous, folder)
            client.set_traffic(p.model, {previous: 100})
            _safe(lambda: client.unload(p.model, current))
            plane.registry.assign(p.stable_stage, previous, f"rollback from {current}: {reason}")
            plane.registry.deprecate(current, f"rolled back: {reason}")
            _safe(lambda: uninstall_version(plane.repository, p.model, current))
            update_champion(plane, previous)
            say(f"{previous} serves again; {current} unloaded and deprecated")
            return Outcome(previous, "restored", reason, current, None, client.traffic(p.model))
        finally:
            client.close()


# ---------------------------------------------------------------------------------------- history
def parse_time(text: str) -> dt.datetime:
    """ISO-8601 (naive = UTC) or `now` -> aware UTC datetime.

    Raises:
        ReleaseError: not a time.
    """
    if text.strip().lower() == "now":
        return dt.datetime.now(dt.UTC)
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ReleaseError(f"time {text!r}: expected ISO-8601, e.g. 2026-11-29T14:05:00Z") from None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def served_at(plane: ReleasePlane, at: dt.datetime) -> dict[str, str | None]:
    """{stage: version that held it at `at`} for the stable and canary stages."""
    tenures = plane.tenures()
    return {s: holder(tenures, s, at) for s in (plane.params.stable_stage, plane.params.canary_stage)}


def version_table(plane: ReleasePlane) -> list[VersionInfo]:
    """Every registered version, oldest first."""
    return plane.registry.versions()


__all__ = [
    "Analysis",
    "Check",
    "Outcome",
    "ReleaseError",
    "ReleaseLock",
    "ReleaseLocked",
    "ReleasePlane",
    "Registered",
    "RegistryError",
    "ServabilityFailed",
    "ServerClient",
    "ServerDown",
    "analyse",
    "check_servable",
    "install_version",
    "open_plane",
    "parse_time",
    "previous_stable",
    "psi",
    "psi_noise",
    "register_package",
    "release_version",
    "retire_version",
    "rollback_release",
    "run_analysis",
    "served_at",
    "update_champion",
]
