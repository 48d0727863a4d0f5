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
from driftloop.registry import Tenure, VersionInfo, holder, stage_tenures
from driftloop.release.analysis import Analysis, run_analysis
from driftloop.release.client import ServerClient
from driftloop.release.errors import ReleaseError, ServabilityFailed
from driftloop.release.install import check_servable, install_version, uninstall_version
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
