"""A registry in a folder, for the backtest: the release plane's `PackageRegistry` without git tags.

Why not GTO here: a GTO version is an annotated tag on the commit whose `dvc.lock` produced the
package, so each of a backtest's retrains (39 for weekly over Apr-Dec) would need a commit, a DVC
push and a tag, in a scratch git repository, for nothing the comparison reads. The release plane
reaches the registry only through `driftloop.registry.ModelRegistry`, so this one keeps the same
records in files: each version's package in `<root>/<version>/` (copied once, never changed) and
every registration and stage change in `<root>/events.json` (rewritten atomically). Every other
part of a release (install, servability check, canary, analysis, promotion, rollback, champion)
is the real release plane's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

from driftloop.io import atomic_path, write_text
from driftloop.registry import (
    SEMVER,
    FilesMissing,
    RegistryError,
    StageEvent,
    UnknownVersion,
    VersionInfo,
    next_version,
    normalize_version,
)

EVENTS_FILE = "events.json"


class FolderRegistry:
    """`PackageRegistry` over a folder: `<root>/<version>/` packages plus `<root>/events.json`.

    The "commit" of a version is whatever the caller registers it under (the backtest passes the
    package's lineage id): the folder registry has no git history to search.
    """

    def __init__(self, root: str | os.PathLike[str], package_dir: str | os.PathLike[str]) -> None:
        """Args: root: the registry folder (created); package_dir: the folder `register` copies."""
        self.root = Path(root)
        self.package_dir = Path(package_dir)
        self.root.mkdir(parents=True, exist_ok=True)

    def _read(self) -> list[dict]:
        path = self.root / EVENTS_FILE
        return json.loads(path.read_text()) if path.is_file() else []

    def _append(self, event: dict) -> None:
        events = self._read()
        events.append({**event, "time": dt.datetime.now(dt.UTC).isoformat()})
        write_text(self.root / EVENTS_FILE, json.dumps(events, indent=1) + "\n")

    def producing_commit(self) -> str:
        """The package's lineage id (its `signature.json`), standing in for a commit."""
        try:
            return str(json.loads((self.package_dir / "signature.json").read_text())["lineage_id"])
        except (OSError, ValueError, KeyError) as exc:
            raise RegistryError(f"{self.package_dir}: no lineage id in signature.json ({exc})") from None

    def uncommitted_build_files(self, commit: str) -> list[str]:
        """No git here: the package is copied as it is. Returns []."""
        return []

    def push(self, commit: str) -> int:
        """Nothing to push: `register` copies the files into the registry folder. Returns 0."""
        return 0

    def register(self, commit: str, message: str, version: str | None = None, bump: str = "patch") -> VersionInfo:
        """Copy the package folder to `<root>/<version>/` and record the registration.

        Raises:
            RegistryError: the commit is registered already, or the version exists.
        """
        known = self.versions()
        if any(v.commit == commit for v in known):
            raise RegistryError(f"{commit} is already registered")
        version = normalize_version(version) if version else next_version([v.version for v in known], bump)
        if any(v.version == version for v in known):
            raise RegistryError(f"{version} exists")
        with atomic_path(self.root / version) as tmp:
            shutil.copytree(self.package_dir, tmp)
        self._append({"event": "registration", "version": version, "commit": commit, "message": message})
        return self.get(version)

    def versions(self) -> list[VersionInfo]:
        """Every registered version, oldest first (deprecated ones flagged)."""
        regs: dict[str, dict] = {}
        deprecated: dict[str, str] = {}
        for e in self._read():
            if e["event"] == "registration":
                regs[e["version"]] = e
            elif e["event"] == "deregistration":
                deprecated[e["version"]] = e["message"]
        return [
            VersionInfo(v, e["commit"], dt.datetime.fromisoformat(e["time"]), e["message"], v in deprecated,
                        deprecated.get(v, ""))  # fmt: skip
            for v, e in regs.items()
        ]

    def get(self, version: str) -> VersionInfo:
        """One version (`v1.2.0` or `1.2.0`); raises `UnknownVersion`."""
        name = normalize_version(version) if SEMVER.match(version.strip()) else version
        for v in self.versions():
            if v.version == name:
                return v
        raise UnknownVersion(f"{version}: no such version in {self.root}")

    def assign(self, stage: str, version: str, message: str) -> None:
        """Give `stage` to `version`."""
        self._append({"event": "assign", "version": self.get(version).version, "stage": stage, "message": message})

    def unassign(self, stage: str, version: str, message: str) -> None:
        """Take `stage` away from `version`."""
        self._append({"event": "unassign", "version": self.get(version).version, "stage": stage, "message": message})

    def deprecate(self, version: str, message: str) -> None:
        """Mark `version` as not to be served again."""
        self._append({"event": "deregistration", "version": self.get(version).version, "message": message})

    def events(self) -> list[StageEvent]:
        """Assignments, unassignments and deprecations, oldest first."""
        kinds = {"assign": "assign", "unassign": "unassign", "deregistration": "deprecate"}
        return [
            StageEvent(dt.datetime.fromisoformat(e["time"]), kinds[e["event"]], e["version"], e.get("stage"),
                       e["message"])  # fmt: skip
            for e in self._read()
            if e["event"] in kinds
        ]

    def fetch(self, version: str, dest: Path) -> Path:
        """Copy the version's package into `dest`; raises `FilesMissing` when its folder is gone."""
        info = self.get(version)
        src = self.root / info.version
        if not src.is_dir():
            raise FilesMissing(f"{info.version}: {src} is missing")
        shutil.copytree(src, dest, dirs_exist_ok=True)
        return Path(dest)
