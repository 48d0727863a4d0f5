"""The release plane's orchestration: release (canary or blue-green), promote or roll back, history.

Plain functions, free of Prefect, that the CLI (`driftloop.release.cli`) and the Prefect flows
call. The registry is reached through `driftloop.registry.ModelRegistry` only; the server through
its public HTTP API (`driftloop.release.client.ServerClient`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftloop.config import ReleaseParams
from driftloop.errors import DriftloopError
from driftloop.io import atomic_path
from driftloop.model_repository import (
    LOCK_FILE,
    ServingState,
    StateError,
    read_state,
    version_number,
    write_state,
)
from driftloop.registry import Tenure, VersionInfo, holder, stage_tenures
from driftloop.release.analysis import Analysis, run_analysis, stable_scorer
from driftloop.release.client import ServerClient, server_version
from driftloop.release.errors import ReleaseError, ServabilityFailed, ServerDown
from driftloop.release.install import check_servable, install_version, uninstall_version, version_folder
from driftloop.release.lock import ReleaseLock
from driftloop.release.registration import PackageRegistry

log = logging.getLogger(__name__)


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
    registry: PackageRegistry
    server_url: str
    server_setting: str = "release.server_url"

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
        return ReleaseLock(self.repository / LOCK_FILE)

    def client(self) -> ServerClient:
        """A client of the server."""
        return ServerClient(self.server_url, timeout_s=self.params.http_timeout_s, setting=self.server_setting)

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
        server_url: overrides `DRIFTLOOP_SERVER_URL`, which overrides `release.server_url`
            (`driftloop.address.server_address`).

    Raises:
        ParamsError: `release:` is missing or invalid.
        RegistryError: `root` is not a git repository.
    """
    from driftloop.config import load_section
    from driftloop.registry import GtoRegistry

    root = Path(root).resolve()
    section = load_section(params_path or root / "params.yaml", "release", ReleaseParams)
    declared = _declared_artifacts(root)
    if section.artifact not in declared:
        raise ReleaseError(
            f"release.artifact: {section.artifact!r} is not declared under `artifacts:` in {root / 'dvc.yaml'} "
            f"(declared: {', '.join(sorted(declared)) or 'none'}); set release.artifact to one of them"
        )
    from driftloop.address import server_address

    registry = GtoRegistry(root, section.artifact, section.package_dir)
    address = server_address(params_path or root / "params.yaml", url=server_url, configured=section.server_url)
    return ReleasePlane(
        root=root, params=section, registry=registry, server_url=address.url, server_setting=address.setting
    )


def _declared_artifacts(root: Path) -> set[str]:
    """Names under `artifacts:` in `<root>/dvc.yaml` (empty when there is no dvc.yaml)."""
    import yaml

    path = root / "dvc.yaml"
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return set()
    except yaml.YAMLError as exc:
        raise ReleaseError(f"{path}: not valid YAML ({exc})") from None
    return set((raw.get("artifacts") or {}) if isinstance(raw, dict) else {})


def _abs(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def update_champion(plane: ReleasePlane, version: str) -> Path:
    """Copy the version's folder in the model repository to `release.champion_dir`, atomically.

    The evaluate stage (`--champion champion/package`) scores it on the test split.
    """
    src = version_folder(plane.repository, plane.params.model, version)
    target = _abs(plane.root, plane.params.champion_dir)
    with atomic_path(target) as tmp:
        shutil.copytree(src, tmp)
    log.info("champion is now %s (%s)", version, target)
    return target


def _pin_traffic(client: ServerClient, model: str) -> dict[str, float]:
    """Make the current split explicit, so a version loaded next gets weight 0, not 100%.

    In the server's own version names: a repository from before integer folders (`v0.0.1/`) is
    pinned as it is, then replaced by the integer folder of the same version.
    """
    current = client.traffic(model, raw=True)
    if current:
        client.set_traffic(model, current, raw=True)
    return current


def record_serving(
    plane: ReleasePlane,
    stable: str | None,
    canary: str | None = None,
    weights: dict[str, float] | None = None,
) -> ServingState:
    """Persist what a (re)started server must serve (`<repository>/<model>/config.pbtxt` + traffic.json).

    Args:
        plane: the release plane.
        stable: the version that serves (None: nothing).
        canary: a version under analysis, served at its weight only while its release holds the lock.
        weights: {version: percent}; default stable at 100.

    Returns:
        The state written.
    """
    if weights is None:
        weights = {stable: 100.0} if stable else {}
    state = ServingState(model=plane.params.model, stable=stable, canary=canary, weights=weights)
    write_state(plane.repository, state)
    return state


def end_interrupted(
    plane: ReleasePlane, client: ServerClient | None, version: str, stable: str | None, why: str
) -> None:
    """End a canary whose release did not reach a verdict: prod unchanged, the canary deprecated.

    Order: the serving state first (a server restarted from here on serves stable only), then the
    server (best effort: it may be down), then the registry, then the canary's folder.
    """
    p = plane.params
    record_serving(plane, stable)
    if client is not None:
        if stable is not None:
            _safe(lambda: client.set_traffic(p.model, {stable: 100}))
        _safe(lambda: client.unload(p.model, version))
    reason = f"rolled back: the release was interrupted ({why})"
    if holder(plane.tenures(), p.canary_stage) == version:
        plane.registry.unassign(p.canary_stage, version, reason)
    if not plane.registry.get(version).deprecated:
        plane.registry.deprecate(version, reason)
    uninstall_version(plane.repository, p.model, version)
    log.warning("%s %s", version, reason)


def recover_interrupted(plane: ReleasePlane, on_progress: Callable[[str], None] | None = None) -> str | None:
    """Finish what a release that died (kill -9, power cut) left: call with the release lock held.

    With the lock held no release runs, so a version still in the canary stage has no release
    behind it: it is rolled back (`end_interrupted`), or, when it already holds the stable stage
    (the process died just after recording the promotion), its canary stage is closed. Then the
    serving state is made to match the registry.

    Returns:
        The canary version that was rolled back, or None.
    """
    p = plane.params
    say = on_progress or (lambda line: log.info("%s", line))
    tenures = plane.tenures()
    stable, canary = holder(tenures, p.stable_stage), holder(tenures, p.canary_stage)
    if canary is not None and canary != stable:
        client = plane.client()
        try:
            try:
                client.check_live()
            except ServerDown:
                client.close()
                client = None
            end_interrupted(plane, client, canary, stable, "its release process ended before a verdict")
        finally:
            if client is not None:
                client.close()
        say(f"rolled back {canary}: its release was interrupted before a verdict; {stable} serves")
        return canary
    if canary is not None:
        plane.registry.unassign(p.canary_stage, canary, f"promoted to {p.stable_stage}")
    try:
        state = read_state(plane.repository, p.model)
    except StateError:
        state = None
    if stable is not None and (state is None or state.stable != stable or state.canary is not None):
        record_serving(plane, stable)
    return None


def release_version(
    plane: ReleasePlane,
    version: str,
    *,
    strategy: str | None = None,
    weight: float | None = None,
    keep_previous_s: float | None = None,
    on_progress: Callable[[str], None] | None = None,
    analysis_hooks: dict[str, Any] | None = None,
) -> Outcome:
    """Release a registered version: install, load, canary (or blue-green), analyse, promote or roll back.

    With nothing in `stable_stage`, the version is promoted once it is servable (load, warm-up,
    one sample request). Otherwise it takes `weight` percent of traffic (100 for blue-green),
    sticky per request id, until the analysis decides; stable keeps answering throughout.

    Every change of what serves is recorded in the serving state (`record_serving`) before the
    server is told, so a restarted server serves what the registry says. A release interrupted
    after the canary took traffic (server down, an exception) ends with the canary rolled back
    and deprecated with the reason; one whose process died is finished by the next release or
    rollback (`recover_interrupted`).

    Args:
        plane: root, params, registry, server.
        version: a registered version (`v1.2.0` or `1.2.0`).
        strategy: `canary` or `blue-green` (default `release.strategy`).
        weight: canary percent (default `release.canary_weight`).
        keep_previous_s: after a promotion, the old stable stays loaded this many seconds
            (weight 0) for a fast rollback, then unloads (default `release.keep_previous_s`).
        on_progress: called with one line per step (the CLI prints them).
        analysis_hooks: keyword arguments passed on to `run_analysis` (`clock`, `sleep`, `now`,
            `read_window`, `read_errors`): a replay of history (flows/backtest.py) drives the
            canary's waiting loop in simulated time. None: wall clock and the prediction log.

    Returns:
        The outcome (`promoted` or `rolled back`) with the analysis.

    Raises:
        ReleaseLocked: another release is running.
        UnknownVersion / FilesMissing / ServerDown / ServabilityFailed / ReleaseError: before any
            traffic moved, nothing changed; after (the canary took traffic), it was rolled back.
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
        version_number(version)  # a version without an integer folder is refused before anything moves
        client = plane.client()
        try:
            client.check_live()
            recover_interrupted(plane, say)
            stable = holder(plane.tenures(), p.stable_stage)
            if stable == version:
                raise ReleaseError(f"{version} already holds {p.stable_stage}; nothing to release")
            folder, created = install_version(plane.registry, version, plane.repository, model)
            say(f"installed {version} at {folder} (version folder {folder.name})")
            if stable is not None and server_version(stable) not in client.loaded_versions(model, raw=True):
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
                reason = "first release: servability check passed (load, warm-up, sample request)"
                plane.registry.assign(p.stable_stage, version, f"promoted: {reason}")
                record_serving(plane, version)
                client.set_traffic(model, {version: 100})
                update_champion(plane, version)
                say(f"promoted {version}: {reason}")
                return Outcome(version, "promoted", reason, None, None, client.traffic(model))
            outcome = _canary(plane, client, version, stable, strategy, weight, keep, say, analysis_hooks or {})
        finally:
            client.close()
    if outcome.decision == "promoted" and outcome.previous is not None:
        retire_version(plane, outcome.previous, after_s=keep, on_progress=say)  # outside the lock
    return outcome


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
    hooks: dict[str, Any],
) -> Outcome:
    p = plane.params
    model = p.model
    reg = plane.registry
    weights = {version: 100.0} if weight >= 100 else {stable: 100.0 - weight, version: weight}
    reg.assign(p.canary_stage, version, f"{strategy} at {weight:g}% vs {stable}")
    try:
        record_serving(plane, stable, version, weights)
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
            score_stable=stable_scorer(version_folder(plane.repository, model, stable)),
            on_progress=say,
            **hooks,
        )
    except BaseException as exc:  # no verdict: stable takes everything back, the canary is deprecated
        end_interrupted(plane, client, version, stable, f"{type(exc).__name__}: {exc}")
        raise
    for c in analysis.checks:
        say(f"  [{'ok' if c.passed else 'FAIL'}] {c.reason}")
    if analysis.passed:
        reasons = analysis.summary()
        reg.assign(p.stable_stage, version, f"promoted from {strategy} over {stable}: {reasons}")
        reg.unassign(p.canary_stage, version, f"promoted to {p.stable_stage}")
        record_serving(plane, version)
        _safe(lambda: client.set_traffic(model, {version: 100}))
        update_champion(plane, version)
        say(f"promoted {version}; {stable} stays loaded at weight 0 for {keep:g} s")
        return Outcome(version, "promoted", reasons, stable, analysis, client.traffic(model))
    failed = "; ".join(c.reason for c in analysis.checks if not c.passed)
    record_serving(plane, stable)
    _safe(lambda: client.set_traffic(model, {stable: 100}))
    _safe(lambda: client.unload(model, version))
    reg.unassign(p.canary_stage, version, f"rolled back: {failed}")
    reg.deprecate(version, f"rolled back from {strategy}: {failed}")
    uninstall_version(plane.repository, model, version)
    say(f"rolled back {version}: {failed}")
    return Outcome(version, "rolled back", failed, stable, analysis, client.traffic(model))


def retire_version(
    plane: ReleasePlane,
    version: str,
    *,
    after_s: float = 0.0,
    on_progress: Callable[[str], None] | None = None,
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
    A canary left by a release that died is rolled back first, and that is all this call does
    (prod unchanged); call it again to roll prod back.

    Raises:
        ReleaseLocked: a release is running.
        ReleaseError: nothing to roll back to.
        ServerDown / FilesMissing / ServabilityFailed: before any traffic moved.
    """
    p = plane.params
    say = on_progress or (lambda line: log.info("%s", line))
    with plane.lock:
        ended = recover_interrupted(plane, say)
        if ended is not None:
            stable = holder(plane.tenures(), p.stable_stage)
            return Outcome(stable or "-", "restored", f"ended the interrupted release of {ended}", ended, None,
                           {stable: 100.0} if stable else {})  # fmt: skip
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
            if server_version(previous) not in client.loaded_versions(p.model, raw=True):
                _pin_traffic(client, p.model)
            check_servable(client, p.model, previous, folder)
            plane.registry.assign(p.stable_stage, previous, f"rollback from {current}: {reason}")
            plane.registry.deprecate(current, f"rolled back: {reason}")
            record_serving(plane, previous)
            client.set_traffic(p.model, {previous: 100})
            _safe(lambda: client.unload(p.model, current))
            uninstall_version(plane.repository, p.model, current)
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
