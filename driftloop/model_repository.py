"""The serving state on disk: what a (re)started server must serve, in the form Triton reads.

Layout of the model repository (Triton's `model_repository.md`, also what KServe reads):

    <repository>/.release.lock                 the release plane's kernel lock (see `release_in_progress`)
    <repository>/<model>/config.pbtxt          version policy: the versions to serve, and their roles
    <repository>/<model>/traffic.json          traffic weights per version, percent
    <repository>/<model>/<number>/             one package per integer version folder (model.onnx, ...)

`config.pbtxt` (protobuf text format, Triton's `ModelConfig`), written by the release plane:

    name: "flight_delay"
    backend: "onnxruntime"
    version_policy: { specific: { versions: [7, 8] } }
    parameters: { key: "driftloop.stable" value: { string_value: "v0.0.7" } }
    parameters: { key: "driftloop.canary" value: { string_value: "v0.0.8" } }
    parameters: { key: "driftloop.versions" value: { string_value: "7=v0.0.7 8=v0.0.8" } }

Triton loads exactly `versions`; the `parameters` (free-form in Triton) carry the registry's names.
`traffic.json` is `{"weights": {"7": 95.0, "8": 5.0}}`; Triton has no traffic split, KServe keeps
it in the InferenceService's `canaryTrafficPercent`.

Version numbers: the registry names versions by semver (`v1.2.3`), Triton and KServe by positive
integers (folder names). `version_number` / `version_name` are the one mapping, both ways:
number = major * 1,000,000 + minor * 1,000 + patch, so numbers sort as the versions do.

A restarted server serves exactly the state: the stable version at 100%, or stable and canary at
their recorded weights while the canary's release still holds the release lock (a release process
that died holds no kernel lock, so its canary takes no traffic after a restart). Never "the newest
folder on disk".

Every file is written atomically (temp file in the same folder, fsync, rename).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from driftloop.errors import DriftloopError

CONFIG_FILE = "config.pbtxt"
TRAFFIC_FILE = "traffic.json"
LOCK_FILE = ".release.lock"
_BASE = 1000
_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")


class StateError(DriftloopError):
    """The serving state on disk is unreadable, or a version cannot be mapped to a number."""


def version_number(version: str) -> int:
    """The integer version folder of a registry semver: `v1.2.3` -> 1002003, `v0.0.7` -> 7.

    Raises:
        StateError: not `[v]MAJOR.MINOR.PATCH`, or a component >= 1000, or v0.0.0.
    """
    match = _SEMVER.match(version.strip())
    if not match:
        raise StateError(f"version {version!r}: expected semver like v1.2.3 to map to a version folder")
    major, minor, patch = (int(g) for g in match.groups())
    if max(major, minor, patch) >= _BASE:
        raise StateError(f"version {version!r}: each component must be < {_BASE} to map to a version folder")
    number = (major * _BASE + minor) * _BASE + patch
    if number == 0:
        raise StateError("version v0.0.0: Triton version folders start at 1")
    return number


def version_name(number: int | str) -> str:
    """The registry semver of an integer version folder: 1002003 -> `v1.2.3` (inverse of `version_number`).

    Raises:
        StateError: not a positive integer.
    """
    text = str(number).strip()
    if not text.isdigit() or int(text) <= 0:
        raise StateError(f"version folder {number!r}: expected a positive integer")
    n = int(text)
    return f"v{n // _BASE**2}.{n // _BASE % _BASE}.{n % _BASE}"


def registry_name(server_version: str) -> str:
    """A server's version name in registry terms: integer folders become semver, other names stay."""
    return version_name(server_version) if str(server_version).isdigit() else str(server_version)


class ServingState(BaseModel):
    """What one model's server must serve: its stable version, an optional canary, and the weights.

    Attributes:
        model: the model's folder name.
        stable: registry semver of the version that serves (None: nothing released yet).
        canary: registry semver of a version under analysis, or None.
        weights: {registry semver: percent >= 0}; versions left out get 0.
    """

    model_config = ConfigDict(frozen=True)

    model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    stable: str | None = None
    canary: str | None = None
    weights: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ServingState:
        named = {v for v in (self.stable, self.canary) if v}
        for v in named:
            version_number(v)
        extra = sorted(set(self.weights) - named)
        if extra:
            raise ValueError(f"weights name version(s) {extra} that are neither stable nor canary")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("weights must be >= 0")
        if self.canary is not None and self.stable is None:
            raise ValueError("a canary needs a stable version beside it")
        return self

    @property
    def versions(self) -> list[str]:
        """The versions to load (stable first), registry semver."""
        return [v for v in (self.stable, self.canary) if v]

    def served(self, release_running: bool) -> dict[str, float]:
        """{version folder name: percent} a server starting now must serve.

        Args:
            release_running: whether the canary's release still runs (holds the release lock).

        Returns:
            Stable at 100 when no release runs (or the weights are empty); else the recorded
            weights, stable and canary. Empty when nothing is stable.
        """
        if self.stable is None:
            return {}
        if not release_running or self.canary is None:
            return {str(version_number(self.stable)): 100.0}
        w = {str(version_number(v)): float(self.weights.get(v, 0.0)) for v in self.versions}
        return w if sum(w.values()) > 0 else {str(version_number(self.stable)): 100.0}

    def to_pbtxt(self) -> str:
        """Triton's `config.pbtxt` text for this state (see the module docstring)."""
        numbers = [version_number(v) for v in self.versions]
        lines = [
            "# Written by the driftloop release plane (driftloop/model_repository.py); Triton reads it as is.",
            f'name: "{self.model}"',
            'backend: "onnxruntime"',
            f"version_policy: {{ specific: {{ versions: [{', '.join(str(n) for n in numbers)}] }} }}",
        ]
        params = {"driftloop.stable": self.stable, "driftloop.canary": self.canary}
        params["driftloop.versions"] = " ".join(
            f"{n}={v}" for n, v in zip(numbers, self.versions, strict=True)
        )
        for key, value in params.items():
            if value:
                lines.append(f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
        return "\n".join(lines) + "\n"

    @classmethod
    def from_pbtxt(cls, text: str, weights: dict[str, float] | None = None) -> ServingState:
        """Parse what `to_pbtxt` writes (the subset of Triton's format this project uses).

        Args:
            text: config.pbtxt content.
            weights: {version folder name or semver: percent} from traffic.json.

        Raises:
            StateError: no `name`, no specific version policy, or roles that contradict it.
        """
        name = re.search(r'^\s*name:\s*"([^"]+)"', text, re.M)
        policy = re.search(r"version_policy:\s*\{\s*specific:\s*\{\s*versions:\s*\[([\d,\s]*)\]", text)
        if not name or not policy:
            raise StateError(
                "config.pbtxt: expected `name` and `version_policy { specific { versions: [...] } }`"
            )
        numbers = [int(n) for n in re.findall(r"\d+", policy.group(1))]
        params = dict(re.findall(r'key:\s*"([^"]+)"\s*value:\s*\{\s*string_value:\s*"([^"]*)"', text))
        stable, canary = params.get("driftloop.stable") or None, params.get("driftloop.canary") or None
        if stable is None and numbers:  # written by hand: the first listed version serves
            stable = version_name(numbers[0])
        roles = [version_number(v) for v in (stable, canary) if v]
        if sorted(roles) != sorted(numbers):
            raise StateError(
                f"config.pbtxt: versions {numbers} differ from driftloop.stable/canary {stable}/{canary}"
            )
        clean = {registry_name(k): float(v) for k, v in (weights or {}).items()}
        try:
            return cls(
                model=name.group(1),
                stable=stable,
                canary=canary,
                weights={k: v for k, v in clean.items() if k in (stable, canary)},
            )
        except ValueError as exc:
            raise StateError(f"config.pbtxt: {exc}") from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: a temp file in the same folder, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_state(repository: str | os.PathLike[str], state: ServingState) -> None:
    """Persist `state` under `<repository>/<model>/`: traffic.json, then config.pbtxt (each atomic).

    Weights first: a crash between the two leaves the old config.pbtxt, whose versions filter the
    new weights, and `served` falls back to stable at 100% when nothing is left.
    """
    folder = Path(repository) / state.model
    weights = {str(version_number(v)): w for v, w in state.weights.items()}
    atomic_write_text(
        folder / TRAFFIC_FILE, json.dumps({"weights": weights}, indent=2, sort_keys=True) + "\n"
    )
    atomic_write_text(folder / CONFIG_FILE, state.to_pbtxt())


def read_state(repository: str | os.PathLike[str], model: str) -> ServingState | None:
    """The persisted state of `model`; None when it has no config.pbtxt (never released).

    Raises:
        StateError: config.pbtxt or traffic.json cannot be read.
    """
    folder = Path(repository) / model
    config = folder / CONFIG_FILE
    if not config.is_file():
        return None
    weights: dict[str, float] = {}
    traffic = folder / TRAFFIC_FILE
    if traffic.is_file():
        try:
            weights = {str(k): float(v) for k, v in json.loads(traffic.read_text())["weights"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(
                f'{traffic}: not a traffic file ({exc}); expected {{"weights": {{...}}}}'
            ) from None
    try:
        return ServingState.from_pbtxt(config.read_text(), weights)
    except StateError as exc:
        raise StateError(f"{config}: {exc}") from None


def release_in_progress(repository: str | os.PathLike[str]) -> bool:
    """True while a release or rollback holds `<repository>/.release.lock` (a kernel flock).

    Probes with a shared, non-blocking flock that is dropped at once; a dead release holds nothing.
    """
    path = Path(repository) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's shared lock
    return False
