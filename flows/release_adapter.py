"""The one place the flows call the release plane: register a gated package, release it.

The release plane (driftloop/registry.py, the `driftloop.release` package) owns GTO and the
server; this module only builds its `ReleasePlane` from params.yaml's `release` section (as
`driftloop.release.cli` does, through `open_plane`) and calls `register_package` and
`release_version`.

Why the commit is pinned: `register_package` tags the commit whose `dvc.lock` produced the
package. A flow run records its `params.yaml` + `dvc.lock` as a commit on a branch (see
`flows.gitrecord`) without moving HEAD, so HEAD's history cannot find it; the flow passes that
commit to `register_package(..., commit=...)`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel

from driftloop.errors import DriftloopError

log = logging.getLogger(__name__)


class ReleaseOutcome(BaseModel):
    """What happened to a gated package.

    Attributes:
        status: "released" (promoted), "rolled back" (the canary lost), "registered" (not
            released), "skipped" or "failed" (registration or release raised; the build stays good).
        version: the registry version, when one was registered.
        commit: the commit the version tags.
        reason: one line for people.
    """

    status: Literal["released", "rolled back", "registered", "skipped", "failed"]
    version: str | None = None
    commit: str | None = None
    reason: str = ""


def register_and_release(
    root: str | os.PathLike[str],
    package_dir: str | os.PathLike[str],
    *,
    commit: str | None = None,
    release: bool = True,
    server_url: str | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> ReleaseOutcome:
    """Register a gated package with the registry (GTO) and release it to the running server.

    Args:
        root: the project root (git + DVC repository).
        package_dir: the package folder (`artifacts/model`), gated.
        commit: the commit whose dvc.lock produced the package; None lets the registry find it
            in HEAD's history.
        release: False registers only.
        server_url: the model server; default params `release.server_url`.
        on_progress: called with each progress line of the release (install, canary, checks).

    Returns:
        The outcome. A `DriftloopError` of the release plane (server down, canary rolled back
        before traffic moved, version taken...) becomes "failed" with its message: the package is
        built and cached, and `driftloop register` / `driftloop release` can finish by hand.
    """
    try:
        from driftloop.release import open_plane, register_package, release_version
    except ImportError as exc:
        return ReleaseOutcome(status="skipped", reason=f"release plane not installed ({exc})")
    try:
        plane = open_plane(root, server_url=server_url)
        registered = register_package(plane.registry, package_dir, commit=commit)
        if on_progress is not None:  # the flow run's log says what the registry now holds
            on_progress(f"registered {registered.version} at {registered.commit[:7]} (gate {registered.verdict}, "
                        f"{registered.pushed} files pushed to the DVC remote)")  # fmt: skip
    except DriftloopError as exc:
        log.warning("register failed: %s", exc)
        return ReleaseOutcome(status="failed", commit=commit, reason=f"register failed: {exc}")
    if not release:
        return ReleaseOutcome(
            status="registered", version=registered.version, commit=registered.commit, reason="release disabled"
        )
    try:
        outcome = release_version(plane, registered.version, on_progress=on_progress)
    except DriftloopError as exc:
        log.warning("release of %s failed: %s", registered.version, exc)
        return ReleaseOutcome(
            status="failed", version=registered.version, commit=registered.commit, reason=f"release failed: {exc}"
        )
    status = "released" if outcome.decision == "promoted" else "rolled back"
    return ReleaseOutcome(
        status=status, version=registered.version, commit=registered.commit, reason=f"{outcome.decision}: {outcome.reasons}"
    )
