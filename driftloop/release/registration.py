"""Register a gated package: verify it, push its files, tag the commit that produced it."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from driftloop.io import read_json
from driftloop.package import verify_package
from driftloop.registry import ModelRegistry, RegistryError, normalize_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registered:
    """The outcome of `register_package`: the version, its commit, lineage id and files pushed."""

    version: str
    commit: str
    lineage_id: str
    verdict: str
    pushed: int


class PackageRegistry(ModelRegistry, Protocol):
    """A registry that can also find the commit that built a package and push its files (GTO + DVC)."""

    def producing_commit(self) -> str:
        """The newest commit in HEAD's history whose dvc.lock produced the package folder."""
        ...

    def push(self, commit: str) -> int:
        """Push the package files that `commit`'s dvc.lock names to the remote; returns files pushed."""
        ...

    def uncommitted_build_files(self, commit: str) -> list[str]:
        """The build's git-tracked inputs and outputs whose working-tree bytes differ from `commit`'s."""
        ...


def require_committed(registry: PackageRegistry, commit: str, shown: int = 8) -> None:
    """Refuse to tag `commit` when the working tree that built the package differs from it.

    Raises:
        RegistryError: one line naming the differing files and the `git add ... && git commit` that fixes it.
    """
    files = registry.uncommitted_build_files(commit)
    if files:
        more = f" (+{len(files) - shown} more)" if len(files) > shown else ""
        raise RegistryError(
            f"the package was built from files that differ from commit {commit[:7]}, the one it would tag: "
            f"{', '.join(files[:shown])}{more}; commit them (`git add {' '.join(files)} && git commit`), "
            "then register again"
        )


def register_package(
    registry: PackageRegistry,
    package: str | os.PathLike[str],
    *,
    commit: str | None = None,
    version: str | None = None,
    bump: str = "patch",
) -> Registered:
    """Register the package in `package` as a new version, after checking it and pushing its files.

    Order: verify SHA256SUMS, read the gate verdict, find the commit whose `dvc.lock` produced the
    files, check that the build's git-tracked inputs and outputs (params.yaml, dvc.yaml, dvc.lock,
    the stages' deps, git-kept reports) in the working tree equal that commit's, push them to the DVC remote, then tag. A failure before the tag leaves the registry as
    it was.

    Args:
        registry: a `GtoRegistry`, or any registry that can find the producing commit and push.
        package: the package folder (`artifacts/model`).
        commit: the commit whose dvc.lock produced the package. None asks the registry for the
            newest such commit in HEAD's history; a Prefect flow that recorded its dvc.lock on a
            side branch (see `flows.gitrecord`) passes that commit.
        version: explicit semver (`v1.2.0`); None bumps the latest by `bump`.
        bump: `major`, `minor` or `patch`.

    Returns:
        What was registered.

    Raises:
        PackageError: files do not match SHA256SUMS, or model_card.json lacks the verdict.
        RegistryError: the gate verdict is not `pass`, no committed dvc.lock produced the
            package, the working tree's build files differ from the commit (`require_committed`),
            the push failed, or the version is taken.
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
    commit = commit if commit is not None else registry.producing_commit()
    require_committed(registry, commit)
    pushed = registry.push(commit)
    info = registry.register(
        commit, f"gate verdict: {verdict}; lineage: {lineage}", version=version, bump=bump
    )
    log.info("registered %s at %s (lineage %s, %d files pushed)", info.version, commit[:7], lineage, pushed)
    return Registered(info.version, commit, lineage, verdict, pushed)
