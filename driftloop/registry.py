"""The model registry behind one small interface: versions, stages and the history of both.

Callers (driftloop/release.py, the CLI, Prefect flows) use `ModelRegistry` only; `GtoRegistry`
implements it with GTO on the project's git repository (versions and stage assignments are git
tags, so `git tag -n` is the audit trail) and DVC (the package's files live in the DVC cache and
remote, addressed by the `dvc.lock` of the tagged commit). Another registry (MLflow, a database)
replaces GTO by implementing the same Protocol; nothing else changes.

Stage semantics (the same for every implementation, computed by `stage_tenures` from events):
one version holds a stage at a time. Assigning stage S to version V starts V's tenure in S and
ends the previous holder's; unassigning S from V, or deprecating V, ends V's tenures.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import yaml

from driftloop.errors import DriftloopError
from driftloop.paths import PACKAGE_DIR

log = logging.getLogger(__name__)

SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")


class RegistryError(DriftloopError):
    """The registry refused an operation or could not be read; nothing was changed."""


class UnknownVersion(RegistryError):
    """No registered version by that name."""


class FilesMissing(RegistryError):
    """A registered version's files are in neither the local DVC cache nor the remote."""


@dataclass(frozen=True)
class VersionInfo:
    """One registered version.

    Attributes:
        version: semver with a leading `v`, e.g. `v1.2.0`.
        commit: hex sha of the commit whose `dvc.lock` produced the package.
        created_at: when it was registered (UTC, 1 s resolution: git tag time).
        message: the registration message (gate verdict and lineage id).
        deprecated: True once deprecated (e.g. rolled back); `deprecation` says why.
    """

    version: str
    commit: str
    created_at: dt.datetime
    message: str
    deprecated: bool = False
    deprecation: str = ""


@dataclass(frozen=True)
class StageEvent:
    """A change of stage: `kind` is `assign`, `unassign` or `deprecate` (stage None: every stage)."""

    time: dt.datetime
    kind: str
    version: str
    stage: str | None
    message: str


@dataclass(frozen=True)
class Tenure:
    """`version` held `stage` from `start` to `end` (None: still holds it).

    Attributes:
        why: message of the event that started the tenure.
        ended_by: message of the event that ended it ("" while open).
    """

    stage: str
    version: str
    start: dt.datetime
    end: dt.datetime | None
    why: str
    ended_by: str = ""

    def covers(self, at: dt.datetime) -> bool:
        """True when `at` falls in [start, end)."""
        return self.start <= at and (self.end is None or at < self.end)


@runtime_checkable
class ModelRegistry(Protocol):
    """What the release plane needs from a registry."""

    def register(
        self, commit: str, message: str, version: str | None = None, bump: str = "patch"
    ) -> VersionInfo:
        """Register the package of `commit`; `version` None bumps the latest by `bump`."""
        ...

    def versions(self) -> list[VersionInfo]:
        """Every registered version, oldest first."""
        ...

    def get(self, version: str) -> VersionInfo:
        """One version; raises `UnknownVersion`."""
        ...

    def assign(self, stage: str, version: str, message: str) -> None:
        """Give `stage` to `version` (the previous holder loses it)."""
        ...

    def unassign(self, stage: str, version: str, message: str) -> None:
        """Take `stage` away from `version`."""
        ...

    def deprecate(self, version: str, message: str) -> None:
        """Mark `version` as not to be served again (every stage ends)."""
        ...

    def events(self) -> list[StageEvent]:
        """Every stage change, oldest first."""
        ...

    def fetch(self, version: str, dest: Path) -> Path:
        """Write the version's package files into `dest` (created); raises `FilesMissing`."""
        ...


def next_version(existing: list[str], bump: str) -> str:
    """The version after the highest of `existing` (semver order), bumped by `bump`; `v0.0.1` first.

    >>> next_version(["v0.0.9", "v0.0.10"], "patch")
    'v0.0.11'
    >>> next_version(["v0.1.3"], "minor")
    'v0.2.0'
    """
    if not existing:
        return "v0.0.1"
    major, minor, patch = max(tuple(int(g) for g in SEMVER.match(v).groups()) for v in existing)
    if bump == "major":
        return f"v{major + 1}.0.0"
    if bump == "minor":
        return f"v{major}.{minor + 1}.0"
    return f"v{major}.{minor}.{patch + 1}"


def normalize_version(version: str) -> str:
    """`1.2.0` or `v1.2.0` -> `v1.2.0`.

    Raises:
        RegistryError: not a semver `MAJOR.MINOR.PATCH`.
    """
    m = SEMVER.match(version.strip())
    if not m:
        raise RegistryError(f"version {version!r}: expected semver MAJOR.MINOR.PATCH, e.g. v1.2.0")
    return "v{}.{}.{}".format(*m.groups())


def stage_tenures(events: Sequence[StageEvent]) -> list[Tenure]:
    """Turn stage events (oldest first) into tenures: who held which stage, from when to when.

    Args:
        events: as returned by `ModelRegistry.events()`.

    Returns:
        Tenures ordered by start time; open ones have `end` None.
    """
    open_: dict[str, Tenure] = {}
    done: list[Tenure] = []

    def close(stage: str, at: dt.datetime, why: str) -> None:
        t = open_.pop(stage, None)
        if t is not None:
            done.append(Tenure(t.stage, t.version, t.start, at, t.why, why))

    for e in events:
        if e.kind == "assign" and e.stage:
            held = open_.get(e.stage)
            if held is not None and held.version == e.version:
                continue  # re-assigning the holder changes nothing
            close(e.stage, e.time, f"{e.version} assigned: {e.message}")
            open_[e.stage] = Tenure(e.stage, e.version, e.time, None, e.message)
        elif e.kind == "unassign" and e.stage:
            if open_.get(e.stage) is not None and open_[e.stage].version == e.version:
                close(e.stage, e.time, e.message)
        elif e.kind == "deprecate":
            for stage, t in list(open_.items()):
                if t.version == e.version:
                    close(stage, e.time, e.message)
    return sorted([*done, *open_.values()], key=lambda t: (t.start, t.stage))


def holder(tenures: Sequence[Tenure], stage: str, at: dt.datetime | None = None) -> str | None:
    """The version that held `stage` at time `at` (None: now), or None."""
    for t in reversed(tenures):
        if t.stage != stage:
            continue
        if (at is None and t.end is None) or (at is not None and t.covers(at)):
            return t.version
    return None


# ---------------------------------------------------------------------------------------------- GTO
def _git(root: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise RegistryError(f"git {' '.join(args)}: {exc.stderr.strip() or exc}") from None
    return out.stdout


def _md5(path: Path) -> str:
    digest = hashlib.md5()  # noqa: S324 - DVC's content address, not a security check
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class GtoRegistry:
    """`ModelRegistry` on GTO (git tags) and DVC (files), in the git repository at `root`.

    Args:
        root: the project's git repository (with `.dvc/` and a default DVC remote).
        artifact: the artifact's name under `artifacts:` in `dvc.yaml`.
        path: the package folder, relative to `root` (a stage's output in `dvc.yaml`).
    """

    def __init__(self, root: str | os.PathLike[str], artifact: str, path: str = PACKAGE_DIR) -> None:
        self.root = Path(root).resolve()
        self.artifact = artifact
        self.path = Path(path).as_posix()
        if not (self.root / ".git").exists():
            raise RegistryError(f"{self.root}: not a git repository; the registry keeps its tags there")

    # ------------------------------------------------------------------ build plane lineage
    def producing_commit(self) -> str:
        """The newest commit whose `dvc.lock` records exactly the files now in the package folder.

        Among commits with that same dvc.lock, the one that introduced it unless its other build
        files (`uncommitted_build_files`) differ from the working tree and a later one's do not.

        Returns:
            The commit's hex sha.

        Raises:
            RegistryError: no committed `dvc.lock` matches (rebuilt but not committed, or edited).
        """
        folder = self.root / self.path
        actual = {p.relative_to(folder).as_posix(): _md5(p) for p in folder.rglob("*") if p.is_file()}
        commits = _git(self.root, "log", "--format=%H", "--", "dvc.lock").split()
        for commit in commits:
            try:
                lock = yaml.safe_load(_git(self.root, "show", f"{commit}:dvc.lock")) or {}
            except (RegistryError, yaml.YAMLError):
                continue
            digest = self._out_md5(lock)
            if digest and self._manifest(digest) == actual:
                return self._committed_descendant(commit)
        raise RegistryError(
            f"{self.path}: no committed dvc.lock produced these files; run `dvc repro` and commit "
            "dvc.lock first (the version tag must point at the commit that built the package)"
        )

    def _committed_descendant(self, commit: str) -> str:
        """`commit`, or when its build files differ from the working tree, the newest later commit in
        HEAD's history with the same dvc.lock whose build files do not (e.g. dvc.lock was committed,
        then the params.yaml it was built with): the commit that really holds the build."""
        if not self.uncommitted_build_files(commit):
            return commit
        lock = _git(self.root, "rev-parse", f"{commit}:dvc.lock").strip()
        for later in _git(self.root, "rev-list", "--ancestry-path", f"{commit}..HEAD").split():
            try:
                same = _git(self.root, "rev-parse", f"{later}:dvc.lock").strip() == lock
            except RegistryError:
                continue
            if same and not self.uncommitted_build_files(later):
                return later
        return commit  # `register_package` refuses it, naming the files

    def uncommitted_build_files(self, commit: str) -> list[str]:
        """The build's git-tracked files whose working-tree bytes differ from `commit`'s, sorted.

        The package was built from the working tree, so the commit a version tags must hold the
        same pipeline inputs and git-kept outputs, or `driftloop rebuild` reruns another build.
        Compared: `dvc.yaml`, `dvc.lock`, and every path the working tree's `dvc.lock` lists as a
        stage's dep, params file (`params.yaml` as soon as a stage reads a key of it) or out,
        limited to files git tracks (in the index or in `commit`): DVC-cached outputs are
        git-ignored, so they never count. A file missing on one side counts as different.

        Raises:
            RegistryError: a git command fails (e.g. `commit` is unknown).
        """
        paths = {"dvc.yaml", "dvc.lock"}
        try:
            lock = yaml.safe_load((self.root / "dvc.lock").read_text()) or {}
        except (OSError, yaml.YAMLError):
            lock = {}
        for stage in (lock.get("stages") or {}).values():
            for entry in [*(stage.get("deps") or []), *(stage.get("outs") or [])]:
                if entry.get("path"):
                    paths.add(Path(entry["path"]).as_posix())
            paths |= {str(name) for name in (stage.get("params") or {})}
        spec = sorted(p for p in paths if not Path(p).is_absolute() and not p.startswith(".."))
        committed = {}
        for line in _git(self.root, "ls-tree", "-r", "-z", commit, "--", *spec).split("\0"):
            if line:
                meta, name = line.split("\t", 1)
                committed[name] = meta.split()[2]
        tracked = set(committed) | {n for n in _git(self.root, "ls-files", "-z", "--", *spec).split("\0") if n}
        present = sorted(n for n in tracked if (self.root / n).is_file())
        hashes = _git(self.root, "hash-object", "--", *present).split() if present else []
        here = dict(zip(present, hashes, strict=True))
        return sorted(n for n in tracked if here.get(n) != committed.get(n))

    def _out_md5(self, lock: dict) -> str | None:
        for stage in (lock.get("stages") or {}).values():
            for out in stage.get("outs") or []:
                if Path(out.get("path", "")).as_posix() == self.path:
                    return out.get("md5")
        return None

    def _manifest(self, digest: str) -> dict[str, str] | None:
        """{relpath: md5} of a `.dir` object from the local cache or the local-folder remote."""
        name = digest.removesuffix(".dir") + ".dir"
        for base in self._object_roots():
            obj = base / "files" / "md5" / name[:2] / name[2:]
            if obj.is_file():
                return {e["relpath"]: e["md5"] for e in json.loads(obj.read_text())}
        return None

    def _object_roots(self) -> list[Path]:
        from dvc.repo import Repo

        roots = []
        with Repo(str(self.root)) as repo:
            roots.append(Path(repo.cache.local.path).parent.parent)
            try:
                remote = repo.cloud.get_remote_odb()
                if remote.fs.protocol in ("local", "file"):
                    roots.append(Path(remote.path).parent.parent)
            except Exception:  # noqa: BLE001 - no default remote: the cache is enough here
                pass
        return roots

    def lock_objects(self, commit: str) -> dict[str, str]:
        """Every DVC-cached output the `dvc.lock` of `commit` references: {path: md5}.

        A folder's md5 ends in `.dir` (its manifest object). Outputs that the commit's `dvc.yaml`
        declares `cache: false` live in git and are left out.

        Raises:
            RegistryError: `commit` has no readable `dvc.lock` or `dvc.yaml`.
        """
        try:
            lock = yaml.safe_load(_git(self.root, "show", f"{commit}:dvc.lock")) or {}
            spec = yaml.safe_load(_git(self.root, "show", f"{commit}:dvc.yaml")) or {}
        except yaml.YAMLError as exc:
            raise RegistryError(f"{commit[:7]}: dvc.lock or dvc.yaml is not YAML: {exc}") from None
        uncached = set()
        for stage in (spec.get("stages") or {}).values():
            for kind in ("outs", "metrics", "plots"):
                for entry in stage.get(kind) or []:
                    if isinstance(entry, dict):
                        uncached |= {Path(p).as_posix() for p, o in entry.items() if (o or {}).get("cache") is False}
        objects: dict[str, str] = {}
        for stage in (lock.get("stages") or {}).values():
            for out in stage.get("outs") or []:
                path = Path(out.get("path", "")).as_posix()
                if out.get("md5") and path not in uncached:
                    objects[path] = out["md5"]
        return objects

    def push(self, commit: str) -> int:
        """Push every output the `dvc.lock` of `commit` references to the default DVC remote.

        That is the snapshot, features, native and ONNX models, candidates and the package: what
        `git checkout <tag> && dvc pull` (and `driftloop rebuild`) need in a clone. The objects are
        named by the commit's dvc.lock, not the workspace, so a run recorded on another branch
        pushes exactly its own files; they are sent from the local cache with DVC's transfer
        (`repo.push(revs=...)` would read the remote's URL from the commit's config and resolve a
        relative URL against `/`). Afterwards each object (a folder's manifest and every file in
        it) is looked up in the remote.

        Returns:
            Files transferred (0 when the remote already had them).

        Raises:
            RegistryError: no default remote, an object is missing from the local cache (the
                commit was built elsewhere), the push failed, or the remote lacks an object after it.
        """
        from dvc.repo import Repo
        from dvc_data.hashfile.hash_info import HashInfo

        wanted = self.lock_objects(commit)
        try:
            with Repo(str(self.root)) as repo:
                oids = self._with_files(repo, wanted)
                absent = [f"{p} ({o})" for p, o in oids if not repo.cache.local.exists(o)]
                if absent:
                    raise RegistryError(
                        f"{commit[:7]}: the local DVC cache lacks {', '.join(absent)}; push from the machine that built it"
                    )
                result = repo.cloud.push([HashInfo("md5", o) for _, o in oids], odb=repo.cloud.get_remote_odb())
                pushed = len(result.transferred)
                missing = [f"{p} ({o})" for p, o in oids if not repo.cloud.get_remote_odb().exists(o)]
        except RegistryError:
            raise
        except Exception as exc:  # noqa: BLE001 - DVC raises many types; the message says enough
            raise RegistryError(
                f"dvc push of {commit[:7]}'s outputs ({', '.join(sorted(wanted)) or 'none'}) failed: {exc}"
            ) from None
        if missing:
            raise RegistryError(
                f"dvc push of {commit[:7]}: the remote still lacks {', '.join(missing)}; "
                f"run `dvc push` at that commit from a machine whose cache has them"
            )
        log.info("pushed %d file(s); the remote holds all %d output(s) of %s", pushed, len(wanted), commit[:7])
        return pushed

    @staticmethod
    def _with_files(repo, wanted: dict[str, str]) -> list[tuple[str, str]]:
        """[(path, oid)]: each output's object and, for a folder, every file its manifest lists."""
        out = []
        for path, md5 in sorted(wanted.items()):
            out.append((path, md5))
            if md5.endswith(".dir"):
                manifest = Path(repo.cache.local.oid_to_path(md5))
                if manifest.is_file():
                    out += [(f"{path}/{e['relpath']}", e["md5"]) for e in json.loads(manifest.read_text())]
        return out

    # ------------------------------------------------------------------ ModelRegistry
    def register(
        self, commit: str, message: str, version: str | None = None, bump: str = "patch"
    ) -> VersionInfo:
        """Tag `commit` as a new version of the artifact (GTO registration, annotated tag).

        Args:
            commit: hex sha (see `producing_commit`).
            message: the tag message (gate verdict, lineage id).
            version: explicit semver; None bumps the latest by `bump`.
            bump: `major`, `minor` or `patch`.

        Raises:
            RegistryError: the version exists or is lower than the latest, or the commit is
                already registered.
        """
        import gto.api

        if bump not in ("major", "minor", "patch"):
            raise RegistryError(f"bump {bump!r}: expected major, minor or patch")
        # The next version is computed here, over every version ever registered: GTO bumps from the
        # latest *active* one, so after a rollback (a deregistration) it would pick a tag that exists.
        known = self.versions()
        same = [v for v in known if v.commit == commit]
        if same:  # the same dvc.lock, so the same package: a second version of it would mean nothing
            v = same[-1]
            state = f"rolled back / deprecated ({v.deprecation})" if v.deprecated else "active"
            raise RegistryError(
                f"commit {commit[:7]} is already registered as {v.version} ({state}); the same build cannot "
                "become a new version: change the data window or params and rebuild"
            )
        version = normalize_version(version) if version else next_version([v.version for v in known], bump)
        try:
            gto.api.register(str(self.root), self.artifact, commit, version=version, message=message)
        except RegistryError:
            raise
        except Exception as exc:  # noqa: BLE001 - GTO's own exceptions carry the reason
            raise RegistryError(f"registering {self.artifact} at {commit[:7]}: {exc}") from None
        mine = [v for v in self.versions() if v.commit == commit]
        if not mine:  # pragma: no cover - GTO said it registered
            raise RegistryError(f"registered {self.artifact} at {commit[:7]} but cannot read it back")
        return mine[-1]

    def _history(self) -> list[dict]:
        import gto.api

        try:
            return list(gto.api.history(str(self.root), self.artifact, ascending=True))
        except Exception as exc:  # noqa: BLE001
            raise RegistryError(f"reading the registry of {self.artifact}: {exc}") from None

    def versions(self) -> list[VersionInfo]:
        """Every registered version, oldest first (deprecated ones included, flagged)."""
        regs: dict[str, VersionInfo] = {}
        deprecated: dict[str, str] = {}
        for e in self._history():
            if e["event"] == "registration":
                regs[e["version"]] = VersionInfo(
                    e["version"], e["commit"], e["timestamp"], e["message"] or ""
                )
            elif e["event"] == "deregistration":
                deprecated[e["version"]] = e["message"] or ""
        return [
            VersionInfo(
                v.version,
                v.commit,
                v.created_at,
                v.message,
                v.version in deprecated,
                deprecated.get(v.version, ""),
            )
            for v in regs.values()
        ]

    def get(self, version: str) -> VersionInfo:
        """One version by name (`v1.2.0` or `1.2.0`).

        Raises:
            UnknownVersion: not registered.
        """
        name = normalize_version(version) if SEMVER.match(version.strip()) else version
        for v in self.versions():
            if v.version == name:
                return v
        known = ", ".join(v.version for v in self.versions()) or "none"
        raise UnknownVersion(f"{self.artifact} {version}: no such version (registered: {known})")

    def assign(self, stage: str, version: str, message: str) -> None:
        """GTO assignment tag `<artifact>#<stage>#<n>` with `message`."""
        import gto.api

        try:
            gto.api.assign(str(self.root), self.artifact, stage, version=version, message=message, force=True)
        except Exception as exc:  # noqa: BLE001
            raise RegistryError(f"assigning {stage} to {self.artifact} {version}: {exc}") from None

    def unassign(self, stage: str, version: str, message: str) -> None:
        """GTO unassignment tag `<artifact>@<version>!#<stage>#<n>` with `message`."""
        import gto.api

        try:
            gto.api.unassign(
                str(self.root), self.artifact, version=version, stage=stage, message=message, force=True
            )
        except Exception as exc:  # noqa: BLE001
            raise RegistryError(f"unassigning {stage} from {self.artifact} {version}: {exc}") from None

    def deprecate(self, version: str, message: str) -> None:
        """GTO deregistration tag `<artifact>@<version>!` with `message`: the version's deprecation."""
        import gto.api

        try:
            gto.api.deregister(str(self.root), self.artifact, version=version, message=message, force=True)
        except Exception as exc:  # noqa: BLE001
            raise RegistryError(f"deprecating {self.artifact} {version}: {exc}") from None

    def events(self) -> list[StageEvent]:
        """Assignments, unassignments and deprecations, oldest first (git tag times, 1 s)."""
        kinds = {"assignment": "assign", "unassignment": "unassign", "deregistration": "deprecate"}
        out = []
        for e in self._history():
            kind = kinds.get(e["event"])
            if kind:
                out.append(
                    StageEvent(
                        e["timestamp"], kind, e["version"], e.get("stage"), (e["message"] or "").strip()
                    )
                )
        return out

    def fetch(self, version: str, dest: Path) -> Path:
        """Copy the package of `version` into `dest`, from the DVC cache or else the remote.

        Uses `dvc.api.DVCFileSystem` at the tagged commit: the workspace is not touched.

        Raises:
            UnknownVersion: not registered.
            FilesMissing: the files are in neither the cache nor the remote.
        """
        from dvc.api import DVCFileSystem

        info = self.get(version)
        dest = Path(dest)
        try:
            fs = DVCFileSystem(str(self.root), rev=info.commit)
            fs.get(self.path, str(dest), recursive=True)
        except Exception as exc:  # noqa: BLE001 - DVC raises several types for a missing object
            shutil.rmtree(dest, ignore_errors=True)
            raise FilesMissing(
                f"{self.artifact} {info.version}: its files ({self.path} at {info.commit[:7]}) are missing "
                f"from the DVC cache and remote ({type(exc).__name__}); push them from a machine that has them"
            ) from None
        if not dest.is_dir() or not any(dest.iterdir()):
            raise FilesMissing(
                f"{self.artifact} {info.version}: no files at {self.path} in {info.commit[:7]}"
            )
        return dest
