"""The in-memory model registry: verify, load, warm up and swap versions; split traffic between them.

Disk layout (what Triton and KServe read): `<root>/<model>/<version>/` holds one package (see
`driftloop.package`); `<root>/<model>/config.pbtxt` + `traffic.json`, when present, are the serving
state the release plane wrote, and `load_all` serves exactly that at start
(`driftloop.model_repository`). Versions are folder names; the "latest" is the highest: integers (Triton's
convention) numerically, then semantic versions (`v1.2.10` after `v1.2.9`, the registry's tags),
then any other name lexicographically.

Concurrency: loading (verify, create the session, warm it up) happens outside any lock; only the
swap takes the lock, and it replaces the whole routing table (`_table`, an immutable mapping) in one
attribute assignment. A request reads the table once, so it sees either the old or the new state,
never half of one, and a request that already holds a `ModelVersion` finishes on it even if that
version is unloaded meanwhile.

Traffic: each model has a weight per loaded version. In "latest" mode (the default) the most
recently loaded version takes 100%. `set_traffic(model, {version: weight})` switches to explicit
weights, which stay as set when another version is loaded (a canary loads at weight 0 until the
release plane gives it some); `set_traffic(model, None)` returns to "latest" mode. The version for a
request is picked by hashing its request id into the cumulative weights, so the same request id
goes to the same version while the weights do not change (sticky).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd

from driftloop.errors import DriftloopError, PackageError
from driftloop.model_repository import ServingState, StateError, read_state, release_in_progress
from driftloop.package import verify_package
from driftloop.schema import OUTPUT, Signature, feeds_for

log = logging.getLogger(__name__)


class ModelNotFound(DriftloopError):
    """No loaded model (or version) answers to that name."""


class LoadRefused(DriftloopError):
    """A version was not loaded: its package failed verification, ONNX Runtime or the warm-up."""


class PackageMissing(LoadRefused, ModelNotFound):
    """A load refused because no package folder exists for that name (and version): a 404, not a 400."""


@dataclass(frozen=True, eq=False)
class ModelVersion:
    """One loaded, warmed-up version: its session and its signature. Immutable once built."""

    name: str
    version: str
    folder: Path
    signature: Signature
    session: ort.InferenceSession
    input_names: tuple[str, ...]
    loaded_at: dt.datetime
    load_seq: int

    @property
    def lineage_id(self) -> str:
        """The package's lineage id (from `signature.json`)."""
        return self.signature.lineage_id

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Score a batch.

        Args:
            feeds: one `[n, 1]` array per input name, dtypes per the signature.

        Returns:
            float32 `[n, 1]` probabilities.
        """
        return self.session.run([OUTPUT], dict(feeds))[0]


@dataclass(frozen=True)
class ModelEntry:
    """The routing state of one model: its loaded versions and their traffic weights."""

    versions: Mapping[str, ModelVersion]
    weights: Mapping[str, float] = field(default_factory=dict)  # empty = "latest" mode
    explicit: bool = False

    def effective_weights(self) -> dict[str, float]:
        """{version: weight > 0} actually used for routing (latest mode: the newest load takes all)."""
        if self.explicit:
            active = {v: w for v, w in self.weights.items() if v in self.versions and w > 0}
            if active:
                return active
        if not self.versions:
            return {}
        latest = max(self.versions.values(), key=lambda mv: mv.load_seq)
        return {latest.version: 100.0}


_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")


def version_sort_key(version: str) -> tuple[int, tuple[int, ...], str]:
    """Integers first, numerically; then semver (`v0.0.10` after `v0.0.9`); other names after, as text."""
    if version.isdigit():
        return (0, (int(version),), "")
    match = _SEMVER.match(version)
    if match:
        return (1, tuple(int(g) for g in match.groups()), "")
    return (2, (), version)


_ORT_TYPE = {"BYTES": "tensor(string)", "INT64": "tensor(int64)", "FP32": "tensor(float)", "FP64": "tensor(double)"}


def _bucket(request_id: str) -> float:
    """A stable number in [0, 1) from a request id (blake2b, not Python's salted `hash`)."""
    digest = hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class ModelRepository:
    """Loaded models and versions, with atomic swaps and weighted, sticky routing.

    Args:
        root: the model repository folder.
        intra_op_threads: ONNX Runtime intra-op threads per session (0 = ORT's default).
        warmup_rows: reference rows scored before a version takes traffic (0 = still one row).
        on_change: called (no arguments) after every successful load, unload or traffic change.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        intra_op_threads: int = 1,
        warmup_rows: int = 64,
        on_change: Any = None,
    ) -> None:
        self.root = Path(root)
        self.intra_op_threads = intra_op_threads
        self.warmup_rows = warmup_rows
        self._on_change = on_change
        self._lock = threading.Lock()
        self._seq = 0
        self._table: Mapping[str, ModelEntry] = MappingProxyType({})
        self._failures: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------ disk
    def available(self) -> dict[str, list[str]]:
        """Models and versions present on disk: {model: [versions, oldest first]}."""
        out: dict[str, list[str]] = {}
        if not self.root.is_dir():
            return out
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            versions = [p.name for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
            if versions:
                out[model_dir.name] = sorted(versions, key=version_sort_key)
        return out

    def _folder(self, name: str, version: str) -> Path:
        if not name or "/" in name or name.startswith(".") or "/" in version or version.startswith("."):
            raise LoadRefused(f"model {name!r} version {version!r}: not a valid name")
        return self.root / name / version

    # ------------------------------------------------------------------ load / unload
    def load(self, name: str, version: str | None = None) -> ModelVersion:
        """Verify, load and warm up `<root>/<name>/<version>`, then swap it in.

        Reloading a version already loaded replaces it atomically (hot swap). On any failure the
        routing table is untouched: whatever was serving keeps serving.

        Args:
            name: model folder name.
            version: version folder name; None = the latest on disk.

        Returns:
            The loaded version.

        Raises:
            LoadRefused: the package is missing, fails `verify_package`, does not load in ONNX
                Runtime, does not match its signature, or fails the warm-up.
        """
        if version is None:
            versions = self.available().get(name)
            if not versions:
                raise PackageMissing(f"model {name!r}: no version under {self.root / name}")
            version = versions[-1]
        version = str(version)
        try:
            mv = self._build(name, version)
        except LoadRefused as exc:
            self._failures[(name, version)] = str(exc)
            log.error("refused to load %s/%s: %s", name, version, exc)
            raise
        with self._lock:
            table = dict(self._table)
            entry = table.get(name) or ModelEntry(versions={})
            versions = dict(entry.versions)
            versions[version] = mv
            table[name] = ModelEntry(
                versions=MappingProxyType(versions), weights=entry.weights, explicit=entry.explicit
            )
            self._table = MappingProxyType(table)
            self._failures.pop((name, version), None)
        log.info("loaded %s/%s (lineage %s) from %s", name, version, mv.lineage_id, mv.folder)
        self._changed()
        return mv

    def _build(self, name: str, version: str) -> ModelVersion:
        folder = self._folder(name, version)
        try:
            present = folder.is_dir()
        except OSError:  # e.g. a name longer than the file system allows
            present = False
        if not present:
            raise PackageMissing(f"{folder}: no such package folder")
        try:
            signature = verify_package(folder)
        except PackageError as exc:
            raise LoadRefused(str(exc)) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning worker threads would steal the core the event loop needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(
                str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises several types for a bad graph
            raise LoadRefused(f"{folder / 'model.onnx'}: ONNX Runtime cannot load it ({exc})") from None
        graph_inputs = {i.name: i.type for i in session.get_inputs()}
        wanted = {s.name for s in signature.inputs}
        if set(graph_inputs) != wanted:
            raise LoadRefused(
                f"{folder}: graph inputs {sorted(graph_inputs)} differ from signature.json {sorted(wanted)}"
            )
        for spec in signature.inputs:  # a wrong datatype would pass validation, then fail every request
            if graph_inputs[spec.name] != _ORT_TYPE.get(spec.datatype):
                raise LoadRefused(
                    f"{folder}: signature.json says {spec.name} is {spec.datatype}, "
                    f"the graph takes {graph_inputs[spec.name]}"
                )
        if OUTPUT not in {o.name for o in session.get_outputs()}:
            raise LoadRefused(f"{folder}: the graph has no output {OUTPUT!r}")
        with self._lock:
            self._seq += 1
            seq = self._seq
        mv = ModelVersion(
            name=name,
            version=version,
            folder=folder,
            signature=signature,
            session=session,
            input_names=tuple(s.name for s in signature.inputs),
            loaded_at=dt.datetime.now(dt.UTC),
            load_seq=seq,
        )
        self._warm_up(mv)
        return mv

    def _warm_up(self, mv: ModelVersion) -> None:
        """Score reference rows (at least one) and check the output's shape and range."""
        try:
            reference = pd.read_parquet(mv.folder / "reference.parquet")
            rows = reference.head(max(1, self.warmup_rows))
            if rows.empty:
                raise ValueError("reference.parquet has no rows")
            feeds = feeds_for(rows, list(mv.signature.inputs))  # the package's own contract
            scores = mv.run({k: feeds[k] for k in mv.input_names})
        except Exception as exc:  # noqa: BLE001 - anything here means the version must not serve
            raise LoadRefused(f"{mv.folder}: warm-up failed ({type(exc).__name__}: {exc})") from None
        if (
            scores.shape != (len(rows), 1)
            or not np.all(np.isfinite(scores))
            or scores.min() < 0
            or scores.max() > 1
        ):
            raise LoadRefused(f"{mv.folder}: warm-up output is not finite probabilities of shape [n, 1]")
        if "score" in rows:
            diff = float(np.nanmax(np.abs(rows["score"].to_numpy(np.float64) - scores[:, 0])))
            if not math.isnan(diff) and diff > 1e-3:
                log.warning(
                    "%s/%s: warm-up scores differ from reference.parquet's score by up to %.4g",
                    mv.name,
                    mv.version,
                    diff,
                )

    def load_all(self, names: list[str] | None = None) -> list[ModelVersion]:
        """Load what each model in `names` (None or empty = every model on disk) must serve at start.

        A model with a serving state (`<root>/<model>/config.pbtxt`, written by the release plane;
        see `driftloop.model_repository`) gets exactly that: its stable version at 100%, or stable
        and canary at their recorded weights while the canary's release still runs. A version of
        the state that does not load is logged and left out; nothing else is tried in its place.

        A model without a state gets Triton's default policy (`latest { num_versions: 1 }`): the
        newest version that loads; a refused version is logged and the next newest is tried.
        """
        loaded = []
        available = self.available()
        for name in names or list(available):
            try:
                state = read_state(self.root, name)
            except StateError as exc:
                log.error("%s; %s serves nothing until its state is fixed", exc, name)
                continue
            if state is not None:
                loaded.extend(self._load_state(name, state))
                continue
            for version in reversed(available.get(name) or [None]):
                try:
                    loaded.append(self.load(name, version))
                    break
                except LoadRefused:
                    continue  # fall back to the next newest version that loads
        return loaded

    def _load_state(self, name: str, state: ServingState) -> list[ModelVersion]:
        served = state.served(release_in_progress(self.root))
        loaded = []
        for version in served:
            try:
                loaded.append(self.load(name, version))
            except LoadRefused:
                log.error("%s: version %s of the serving state does not load; not serving it", name, version)
        weights = {mv.version: served[mv.version] for mv in loaded}
        if weights and sum(weights.values()) > 0:
            self.set_traffic(name, weights)
        elif loaded:
            log.error("%s: only versions at weight 0 loaded; %s takes no traffic", name, name)
            for mv in loaded:
                self.unload(name, mv.version)
            loaded = []
        log.info("%s: serving state %s -> %s", name, state.versions, self.traffic(name) if loaded else {})
        return loaded

    def unload(self, name: str, version: str | None = None) -> list[str]:
        """Stop routing to `name` (one version, or every version when `version` is None).

        In-flight requests on an unloaded version still finish on it.

        Returns:
            The versions unloaded.

        Raises:
            ModelNotFound: nothing by that name (and version) is loaded.
        """
        with self._lock:
            table = dict(self._table)
            entry = table.get(name)
            if entry is None or (version is not None and version not in entry.versions):
                raise ModelNotFound(
                    f"model {name!r}" + (f" version {version!r}" if version else "") + " is not loaded"
                )
            gone = list(entry.versions) if version is None else [version]
            versions = {v: mv for v, mv in entry.versions.items() if v not in gone}
            if versions:
                weights = {v: w for v, w in entry.weights.items() if v in versions}
                table[name] = ModelEntry(
                    versions=MappingProxyType(versions),
                    weights=MappingProxyType(weights),
                    explicit=entry.explicit and bool(weights),
                )
            else:
                del table[name]
            self._table = MappingProxyType(table)
        log.info("unloaded %s version(s) %s", name, ", ".join(gone))
        self._changed()
        return gone

    # ------------------------------------------------------------------ traffic
    def set_traffic(self, name: str, weights: Mapping[str, float] | None) -> dict[str, float]:
        """Split `name`'s traffic between loaded versions by weight (any non-negative scale).

        Args:
            name: a loaded model.
            weights: {version: weight}, e.g. {"1": 90, "2": 10}; versions left out get 0.
                None returns to "latest" mode (the newest loaded version takes 100%).

        Returns:
            The effective weights, as percentages.

        Raises:
            ModelNotFound: the model, or a version named in `weights`, is not loaded.
            ValueError: a weight is negative or not finite, or all weights are 0.
        """
        with self._lock:
            table = dict(self._table)
            entry = table.get(name)
            if entry is None:
                raise ModelNotFound(f"model {name!r} is not loaded")
            if weights is None:
                new = ModelEntry(versions=entry.versions)
            else:
                clean = {str(v): float(w) for v, w in weights.items()}
                missing = sorted(set(clean) - set(entry.versions))
                if missing:
                    raise ModelNotFound(f"model {name!r}: version(s) {', '.join(missing)} are not loaded")
                bad = [v for v, w in clean.items() if not math.isfinite(w) or w < 0]
                if bad:
                    raise ValueError(
                        f"weights: version(s) {', '.join(bad)} have a negative or non-finite weight"
                    )
                if sum(clean.values()) <= 0:
                    raise ValueError("weights: at least one version needs a weight > 0")
                new = ModelEntry(versions=entry.versions, weights=MappingProxyType(clean), explicit=True)
            table[name] = new
            self._table = MappingProxyType(table)
        result = self.traffic(name)
        log.info("traffic of %s set to %s", name, result)
        self._changed()
        return result

    def traffic(self, name: str) -> dict[str, float]:
        """Effective traffic split of `name` in percent, {version: pct} (versions at 0 omitted).

        Raises:
            ModelNotFound: the model is not loaded.
        """
        entry = self._table.get(name)
        if entry is None:
            raise ModelNotFound(f"model {name!r} is not loaded")
        weights = entry.effective_weights()
        total = sum(weights.values())
        return {
            v: 100.0 * w / total for v, w in sorted(weights.items(), key=lambda kv: version_sort_key(kv[0]))
        }

    def route(self, name: str, request_id: str, version: str | None = None) -> ModelVersion:
        """The version that answers this request.

        Args:
            name: model name.
            request_id: the request's id; the same id picks the same version while weights hold.
            version: an explicit version (bypasses the traffic split).

        Raises:
            ModelNotFound: model or version not loaded.
        """
        entry = self._table.get(name)
        if entry is None:
            raise ModelNotFound(f"model {name!r} is not loaded")
        if version is not None:
            mv = entry.versions.get(version)
            if mv is None:
                raise ModelNotFound(f"model {name!r} version {version!r} is not loaded")
            return mv
        weights = entry.effective_weights()
        if len(weights) == 1:
            return entry.versions[next(iter(weights))]
        items = sorted(weights.items(), key=lambda kv: version_sort_key(kv[0]))
        point = _bucket(request_id) * sum(w for _, w in items)
        acc = 0.0
        for v, w in items:
            acc += w
            if point < acc:
                return entry.versions[v]
        return entry.versions[items[-1][0]]

    # ------------------------------------------------------------------ queries
    def peek(self, name: str, version: str | None = None) -> ModelVersion | None:
        """A loaded version of `name` (`version` when given), without routing; None when there is none.

        For work that must start before the request is routed (typed decoding of its body, which
        depends on the inputs the versions share); the routed version is checked against it after.
        """
        entry = self._table.get(name)
        if entry is None:
            return None
        if version is not None:
            return entry.versions.get(version)
        return next(iter(entry.versions.values()), None)

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """A loaded version (None = the one with the largest traffic share, ties to the newest).

        Raises:
            ModelNotFound: not loaded.
        """
        entry = self._table.get(name)
        if entry is None:
            raise ModelNotFound(f"model {name!r} is not loaded")
        if version is None:
            weights = entry.effective_weights()
            version = max(weights, key=lambda v: (weights[v], entry.versions[v].load_seq))
        mv = entry.versions.get(version)
        if mv is None:
            raise ModelNotFound(f"model {name!r} version {version!r} is not loaded")
        return mv

    def loaded(self) -> dict[str, list[ModelVersion]]:
        """{model: [loaded versions, in version order]}."""
        return {
            name: sorted(entry.versions.values(), key=lambda mv: version_sort_key(mv.version))
            for name, entry in self._table.items()
        }

    def ready(self) -> bool:
        """True when at least one version is loaded."""
        return any(entry.versions for entry in self._table.values())

    def index(self) -> list[dict[str, Any]]:
        """The v2 repository index: every version on disk or loaded, with state and reason.

        Returns:
            [{"name", "version", "state": "READY" | "UNAVAILABLE", "reason", "traffic_pct"}].
        """
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for name, versions in self.available().items():
            for v in versions:
                reason = self._failures.get((name, v), "")
                rows[(name, v)] = {"name": name, "version": v, "state": "UNAVAILABLE", "reason": reason}
        for name, entry in self._table.items():
            pct = self.traffic(name)
            for v in entry.versions:
                rows[(name, v)] = {
                    "name": name,
                    "version": v,
                    "state": "READY",
                    "reason": "",
                    "traffic_pct": pct.get(v, 0.0),
                }
        return [rows[k] for k in sorted(rows, key=lambda k: (k[0], version_sort_key(k[1])))]

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()
