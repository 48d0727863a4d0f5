"""Rebuild a registered version from its commit and its data snapshot, and say whether it reproduces.

The design promise: any model in the registry can be rebuilt from a commit hash and a dataset
snapshot. `rebuild_version` checks it the way an auditor would, in a scratch folder and with an
empty DVC cache:

1. `git clone` the project and check out the commit the version's tag points at;
2. point the clone at the project's DVC remote and `dvc pull` only the *inputs*: the outputs of
   the source stages (stages that read no other stage's output: the data snapshot). When the
   build scored a champion, its registered package is fetched into the clone's champion folder;
3. `dvc repro --force --single-item --no-run-cache` every other stage, in dependency order (no
   stage is skipped because its git-tracked report is already there, none is restored from DVC's
   run cache);
4. compare with the registered package.

Verdict (every comparison is a `driftloop.checks.Check`):
- lineage inputs must be equal: the params the package was built with (its model card's
  `params`) against the commit's params.yaml that the rebuild runs; and every stage's params and
  every dependency no stage produces (code, the snapshot, `requirements.lock`, the champion
  folder) as recorded in the rebuilt `dvc.lock` against the registered commit's, for stages the
  rebuild really reran (one it did not rerun still has the commit's entry: it fails);
- then either every file of the package has the registered sha256 (`bit-identical`), or the
  registered candidate's rebuilt graph scores the package's reference sample within 1e-6 of the
  registered graph (`within tolerance`); every file that differs says why (a wall-clock or
  measured field of the model card, a training stage that is not bit-reproducible, a library
  version that differs from the card's).
`reproduced` is True only then; `driftloop rebuild VERSION` exits 0 only then.
"""

from __future__ import annotations

import graphlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from driftloop.checks import Check
from driftloop.errors import DriftloopError
from driftloop.io import _jsonable, read_json, sha256_file, write_json
from driftloop.paths import SNAPSHOT_DIR
from driftloop.registry import GtoRegistry

log = logging.getLogger(__name__)

SCORE_TOLERANCE = 1e-6  # max |p_registered - p_rebuilt| over the reference sample (probabilities)
CHAMPION_DIR = "champion/package"
# Model-card fields that no rebuild can reproduce byte for byte, and why.
VOLATILE_CARD_FIELDS = {
    "built_at": "the wall-clock time of the build",
    "speed": "latency and throughput measured on the building machine at build time",
    "gate": "the latency rule's value is measured on the building machine at build time",
    "libraries": "library versions of the environment that ran the build",
    "environment": "the lockfile of the environment that ran the build",
}


class RebuildError(DriftloopError):
    """The rebuild could not be attempted: unknown version, no remote, git or DVC failed to start."""


@dataclass
class RebuildReport:
    """What `rebuild_version` found.

    Attributes:
        version: the registered version, e.g. `v0.0.3`.
        commit: the commit its tag points at (hex).
        workdir: the scratch folder (the clone is `workdir/repo`).
        reproduced: lineage inputs equal and (every file bit-identical or scores within tolerance).
        how: `bit-identical`, `within tolerance` or `not reproduced`.
        checks: every comparison, in order: lineage inputs, stage outputs, files, scores.
        candidate: the registered package's candidate (e.g. `mlp_int8`).
        rebuilt_candidate: the rebuilt gate's choice (None: it rejected or did not run).
        max_score_diff: max |p_registered - p_rebuilt| on the reference sample (None: not scored).
        pulled: the source stages whose outputs came from the remote.
        ran: the stages `dvc repro` ran, in order.
        repro_log: the tail of `dvc repro`'s output.
    """

    version: str
    commit: str
    workdir: str
    reproduced: bool = False
    how: str = "not reproduced"
    checks: list[Check] = field(default_factory=list)
    candidate: str | None = None
    rebuilt_candidate: str | None = None
    max_score_diff: float | None = None
    pulled: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    repro_log: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (checks as dicts)."""
        out = {k: v for k, v in self.__dict__.items() if k != "checks"}
        out["checks"] = [c.model_dump() for c in self.checks]
        return out


# ------------------------------------------------------------------------------------ lock reading
def lock_stages(lock: dict) -> dict[str, dict]:
    """`{stage: {"deps": {path: md5}, "outs": {path: md5}, "params": {file: {key: value}}}}` of a dvc.lock."""
    out = {}
    for name, st in (lock.get("stages") or {}).items():
        out[name] = {
            "deps": {Path(d["path"]).as_posix(): d.get("md5") for d in st.get("deps") or []},
            "outs": {Path(o["path"]).as_posix(): o.get("md5") for o in st.get("outs") or []},
            "params": st.get("params") or {},
        }
    return out


def _under(path: str, roots: set[str]) -> str | None:
    for r in roots:
        if path == r or path.startswith(r.rstrip("/") + "/"):
            return r
    return None


def stage_order(stages: dict[str, dict]) -> tuple[list[str], list[str]]:
    """(every stage in dependency order, the stages whose outputs a rebuild pulls instead of rerunning).

    Pulled: the stage that writes the dataset snapshot (`SNAPSHOT_DIR`) and every stage upstream of
    it (e.g. the params check), so the rebuild trains on the registered snapshot, not on a new read of
    the source. Without a snapshot stage: the source stages, which read no other stage's output.
    """
    producer = {o: name for name, st in stages.items() for o in st["outs"]}
    graph: dict[str, set[str]] = {}
    for name, st in stages.items():
        graph[name] = {producer[r] for d in st["deps"] if (r := _under(d, set(producer))) and producer[r] != name}
    order = list(graphlib.TopologicalSorter(graph).static_order())
    snapshot = producer.get(SNAPSHOT_DIR)
    if snapshot is None:
        return order, [n for n in order if not graph[n]]
    upstream, todo = {snapshot}, [snapshot]
    while todo:
        for parent in graph[todo.pop()] - upstream:
            upstream.add(parent)
            todo.append(parent)
    return order, [n for n in order if n in upstream]


# ------------------------------------------------------------------------------------ comparisons
def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def compare_built_params(built: dict | None, commit: dict | None, shown: int = 6) -> Check:
    """The params the package was built with (its model card's `params`: the whole params.yaml the
    `package` stage read) against the registered commit's params.yaml, key by key (dotted paths).

    Why not dvc.lock alone: the commit's dvc.lock records the build's params, but a rebuild runs the
    commit's params.yaml; when that file was not committed with the build, both locks of a rebuild
    that stopped early still agree, while the package came from other params.
    """
    if not built:
        return Check(name="lineage", subject="params.yaml", value=None, threshold=None, passed=True,
                     reason="the model card records no params (a package from before cards did): not compared")  # fmt: skip
    # the card went through JSON (driftloop.io.write_json): the commit's YAML goes the same way
    a, b = _flatten(built), _flatten(json.loads(json.dumps(_jsonable(commit or {}), default=str)))
    diffs = [f"{k}: built with {a.get(k)!r}, commit has {b.get(k, 'nothing')!r}" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k)]  # fmt: skip
    more = f" (+{len(diffs) - shown} more)" if len(diffs) > shown else ""
    return Check(
        name="lineage", subject="params.yaml", value=None, threshold=None, passed=not diffs,
        reason=("the commit's params.yaml is not the one the package was built with: " + "; ".join(diffs[:shown]) + more)
        if diffs else f"the commit's params.yaml equals the model card's ({len(a)} keys)",
    )  # fmt: skip


def compare_lineage(
    registered: dict[str, dict], rebuilt: dict[str, dict], not_rerun: set[str] | frozenset[str] = frozenset()
) -> list[Check]:
    """One check per stage: its params and every dependency no stage produces are unchanged.

    `not_rerun`: stages the rebuild had to run but did not (dvc repro stopped before them). Their
    entry in the rebuilt dvc.lock is still the registered commit's, so comparing it would prove
    nothing: they fail.
    """
    produced = {o for st in registered.values() for o in st["outs"]}
    checks = []
    for name, reg in registered.items():
        new = rebuilt.get(name)
        if name in not_rerun:
            checks.append(Check(name="lineage", subject=name, value=None, threshold=None, passed=False,
                                reason="not rebuilt (dvc repro stopped before it): its dvc.lock entry is the "
                                "registered commit's, nothing was compared"))  # fmt: skip
            continue
        if new is None:
            checks.append(Check(name="lineage", subject=name, value=None, threshold=None, passed=False,
                                reason="the rebuilt dvc.lock has no such stage (the rebuild stopped before it)"))  # fmt: skip
            continue
        diffs = [
            f"{d} md5 {md5} -> {new['deps'].get(d)}"
            for d, md5 in reg["deps"].items()
            if not _under(d, produced) and new["deps"].get(d) != md5
        ]
        diffs += [f"params {f}: {k}" for f, kv in reg["params"].items() for k, v in kv.items()
                  if (new["params"].get(f) or {}).get(k) != v]  # fmt: skip
        inputs = [d for d in reg["deps"] if not _under(d, produced)]
        checks.append(Check(
            name="lineage", subject=name, value=None, threshold=None, passed=not diffs,
            reason="; ".join(diffs) if diffs else f"params and {len(inputs)} input(s) equal ({', '.join(inputs)})",
        ))  # fmt: skip
    return checks


def compare_outputs(registered: dict[str, dict], rebuilt: dict[str, dict], order: list[str]) -> list[Check]:
    """One check per stage output (dvc.lock md5): informational, to say where a rebuild first diverged."""
    checks = []
    for name in order:
        for path, md5 in registered[name]["outs"].items():
            new = (rebuilt.get(name) or {}).get("outs", {}).get(path)
            same = new == md5
            checks.append(Check(
                name="output", subject=path, value=None, threshold=None, passed=same,
                reason="md5 equal" if same else f"md5 {md5} -> {new or 'missing'} (stage {name})",
            ))  # fmt: skip
    return checks


def _json_diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _json_diff(a.get(k), b.get(k), f"{path}.{k}" if path else k)]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _json_diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def library_differences(card: dict) -> list[str]:
    """`lib card-version -> installed-version` for every library of the card that differs here."""
    out = []
    for lib, version in (card.get("libraries") or {}).items():
        try:
            here = metadata.version(lib)
        except metadata.PackageNotFoundError:
            here = None
        if here != version:
            out.append(f"{lib} {version} -> {here}")
    return out


def score_reference(model: bytes, reference: pd.DataFrame) -> np.ndarray:
    """Scores of a package's graph on its reference sample, shape `[n]`, float64 probabilities.

    One ONNX Runtime session, one thread (thread counts change float reduction order).
    """
    import onnxruntime as ort

    from driftloop.onnx_graph import graph_feeds

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    out = session.run(None, graph_feeds(model, reference))[0]
    return np.asarray(out, dtype=np.float64).reshape(len(reference), -1)[:, -1]


def compare_package(
    registered: Path, rebuilt: Path | None, rebuilt_graph: Path | None, outputs: list[Check], card: dict,
    tolerance: float = SCORE_TOLERANCE,
) -> tuple[list[Check], float | None]:
    """Per file sha256 (with the reason for each that differs), then the scores on the reference sample.

    Args:
        registered: the registered package folder.
        rebuilt: the rebuilt package folder (None: the rebuild packaged nothing or another candidate).
        rebuilt_graph: the registered candidate's rebuilt ONNX graph.
        outputs: `compare_outputs`' checks (to name the first stage output that diverged).
        card: the registered model card.
        tolerance: max |p| difference allowed on the reference sample.

    Returns:
        (checks, max score difference or None when no graph could be scored).
    """
    diverged = [c.subject for c in outputs if not c.passed]
    libs = library_differences(card)
    why_model = (
        (f"the first rebuilt output that differs is {diverged[0]}" if diverged else "every stage output is equal")
        + (f"; libraries differ from the card's: {', '.join(libs)}" if libs else "; same library versions as the card")
    )
    def rebuilt_sha(f: str) -> str | None:
        if rebuilt is not None and (rebuilt / f).is_file():
            return sha256_file(rebuilt / f)
        if f == "model.onnx" and rebuilt_graph is not None and rebuilt_graph.is_file():
            return sha256_file(rebuilt_graph)  # the package's model.onnx is a byte copy of its candidate
        return None

    checks = []
    model_equal = rebuilt_sha("model.onnx") == sha256_file(registered / "model.onnx")
    for f in sorted(p.name for p in registered.iterdir() if p.is_file()):
        want = sha256_file(registered / f)
        got = rebuilt_sha(f)
        equal = got == want
        if equal:
            reason = f"sha256 {want[:12]} equal"
        elif got is None:
            reason = "not rebuilt (the rebuilt gate packaged another candidate or none)"
        elif f == "model.onnx":
            reason = f"not bit-identical: {why_model}"
        elif f == "model_card.json":
            new = read_json(rebuilt / f)
            fields = sorted({p.split(".")[0].split("[")[0] for p in _json_diff(card, new)})
            known = [f"{k} ({VOLATILE_CARD_FIELDS[k]})" for k in fields if k in VOLATILE_CARD_FIELDS]
            other = [k for k in fields if k not in VOLATILE_CARD_FIELDS]
            reason = "differs in " + "; ".join(known + [f"{k} (follows model.onnx)" if not model_equal else k for k in other])
        elif f in ("model_card.md", "SHA256SUMS"):
            reason = "rendered from model_card.json and the other files"
        elif f == "signature.json":
            reason = "carries the lineage id, a hash of model.onnx's bytes" if not model_equal else "differs"
        elif f == "reference.parquet":
            reason = "its score column comes from model.onnx" if not model_equal else "differs"
        else:
            reason = "differs"
        checks.append(Check(name="file_sha256", subject=f, value=None, threshold=None, passed=equal, reason=reason))
    graph = rebuilt_graph if rebuilt_graph is not None and rebuilt_graph.is_file() else None
    if graph is None:
        checks.append(Check(name="scores", value=None, threshold=tolerance, passed=False,
                            reason="the registered candidate's graph was not rebuilt: nothing to score"))  # fmt: skip
        return checks, None
    reference = pd.read_parquet(registered / "reference.parquet")
    diff = float(np.max(np.abs(
        score_reference((registered / "model.onnx").read_bytes(), reference) - score_reference(graph.read_bytes(), reference)
    )))  # fmt: skip
    ok = diff <= tolerance
    checks.append(Check(
        name="scores", value=diff, threshold=tolerance, passed=ok,
        reason=f"max |p registered - p rebuilt| over {len(reference)} reference rows {diff:.3g} "
        f"{'<=' if ok else '>'} {tolerance:g}" + ("" if model_equal else f" ({why_model})"),
    ))  # fmt: skip
    return checks, diff


# ------------------------------------------------------------------------------------ the rebuild
def _env(clone: Path) -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GX_ANALYTICS_ENABLED="false", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # stage cmds: this venv's python
    env["PYTHONPATH"] = str(clone)  # the checked-out code, never an installed or other checkout's copy
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], what: str, timeout: float) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RebuildError(f"{what}: no result within {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
        raise RebuildError(f"{what} failed ({proc.returncode}): {' | '.join(tail)}")
    return proc


def _dvc(clone: Path, env: dict[str, str], *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "dvc", *args], clone, env, f"dvc {args[0]}", timeout)


def _default_remote(root: Path) -> tuple[str, str]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        name = repo.config["core"].get("remote")
        if not name:
            raise RebuildError(f"{root}: no default DVC remote; a rebuild pulls its snapshot from it (dvc remote add -d)")
        return name, str(repo.config["remote"][name]["url"])


def _restore_champion(registry: GtoRegistry, card: dict, clone: Path) -> str | None:
    """Fetch the champion the build scored (by its lineage id) into the clone; returns its version."""
    lineage = (card.get("champion") or {}).get("lineage_id")
    if not lineage:
        return None
    for v in registry.versions():
        if f"lineage: {lineage}" in v.message:
            registry.fetch(v.version, clone / CHAMPION_DIR)
            return v.version
    raise RebuildError(f"the build scored champion {lineage}, which no registered version carries; cannot rebuild its evaluation")


def rebuild_version(
    root: str | os.PathLike[str],
    version: str,
    *,
    artifact: str = "flight-delay",
    package_dir: str = "artifacts/model",
    workdir: str | os.PathLike[str] | None = None,
    tolerance: float = SCORE_TOLERANCE,
    timeout_s: float = 3600,
) -> RebuildReport:
    """Rebuild `version` from its commit and snapshot in a scratch clone and compare (module docstring).

    Args:
        root: the project's git + DVC repository (holds the registry's tags and the DVC remote).
        version: the registered version (`v1.2.0` or `1.2.0`).
        artifact: the artifact's name in `dvc.yaml` `artifacts:`.
        package_dir: the package folder, relative to the root.
        workdir: scratch folder (created; must be empty); None: a new temp folder.
        tolerance: max |p| difference on the reference sample when the graph is not bit-identical.
        timeout_s: bound on `dvc repro` (s).

    Returns:
        The report; `reproduced` says whether it reproduces. The report is also written to
        `workdir/rebuild.json`.

    Raises:
        RebuildError: the rebuild could not be attempted (no default remote, git or dvc pull failed).
        UnknownVersion / FilesMissing: from the registry.
    """
    root = Path(root).resolve()
    registry = GtoRegistry(root, artifact, package_dir)
    info = registry.get(version)
    work = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="driftloop-rebuild-"))
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        raise RebuildError(f"{work}: not empty; pass an empty or new --workdir")
    report = RebuildReport(version=info.version, commit=info.commit, workdir=str(work))
    registered = registry.fetch(info.version, work / "registered")
    card = read_json(registered / "model_card.json")
    report.candidate = card.get("candidate")

    clone = work / "repo"
    env = _env(clone)
    _run(["git", "clone", "--quiet", "--no-checkout", str(root), str(clone)], work, env, "git clone", 600)
    _run(["git", "checkout", "--quiet", "--detach", info.commit], clone, env, f"git checkout {info.commit[:7]}", 600)
    name, url = _default_remote(root)
    _dvc(clone, env, "remote", "modify", "--local", name, "url", url)
    reg_lock = lock_stages(yaml.safe_load((clone / "dvc.lock").read_text()) or {})
    order, sources = stage_order(reg_lock)
    champion = _restore_champion(registry, card, clone)
    log.info("rebuild %s at %s: pull %s, champion %s, repro %s", info.version, info.commit[:7], sources, champion,
             [s for s in order if s not in sources])  # fmt: skip
    try:
        _dvc(clone, env, "pull", "--quiet", *sources)
    except RebuildError as exc:
        raise RebuildError(
            f"{exc}; the remote lacks the inputs of {info.commit[:7]} (a version registered before registration "
            f"pushed every output): on a machine whose DVC cache has them, `git checkout {info.commit[:7]} && dvc push`"
        ) from None
    todo = [s for s in order if s not in sources]
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "--force", "--single-item", "--no-run-cache", *todo],
        cwd=clone, env=env, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    report.pulled = sources
    report.ran = [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage '")]
    report.repro_log = (proc.stdout + proc.stderr)[-4000:]
    new_lock = lock_stages(yaml.safe_load((clone / "dvc.lock").read_text()) or {})
    built_with = card.get("params") if isinstance(card.get("params"), dict) else None
    report.checks.append(compare_built_params(built_with, yaml.safe_load((clone / "params.yaml").read_text())
                                              if (clone / "params.yaml").is_file() else None))  # fmt: skip
    report.checks += compare_lineage(reg_lock, new_lock, not_rerun=set(todo) - set(report.ran))
    outputs = compare_outputs(reg_lock, new_lock, order)
    report.checks += outputs
    if proc.returncode != 0:
        report.checks.append(Check(name="repro", value=float(proc.returncode), threshold=0.0, passed=False,
                                   reason=f"dvc repro exited {proc.returncode}: "
                                   + " | ".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:])))  # fmt: skip
    gate_path = clone / "reports" / "gate.json"
    gate = read_json(gate_path) if gate_path.is_file() else {}
    report.rebuilt_candidate = gate.get("chosen") if gate.get("verdict") == "pass" else None
    rebuilt_pkg = clone / package_dir if report.rebuilt_candidate == report.candidate else None
    graph = None
    cands = clone / "models" / "candidates" / "candidates.json"
    if cands.is_file() and report.candidate in (read_json(cands).get("candidates") or {}):
        graph = cands.parent / read_json(cands)["candidates"][report.candidate]["file"]
    if report.rebuilt_candidate != report.candidate:
        report.checks.append(Check(
            name="candidate", value=None, threshold=None, passed=True,
            reason=f"the rebuilt gate chose {report.rebuilt_candidate or 'nothing'}, the registered package is "
            f"{report.candidate}: the gate ranks candidates by throughput measured on this machine; "
            f"the registered candidate's rebuilt graph is compared",
        ))  # fmt: skip
    files, report.max_score_diff = compare_package(registered, rebuilt_pkg, graph, outputs, card, tolerance)
    report.checks += files
    lineage_ok = all(c.passed for c in report.checks if c.name in ("lineage", "repro"))
    bit = all(c.passed for c in files if c.name == "file_sha256")
    scores_ok = any(c.name == "scores" and c.passed for c in files)
    report.reproduced = lineage_ok and (bit or scores_ok)
    report.how = "not reproduced" if not report.reproduced else ("bit-identical" if bit else "within tolerance")
    write_json(work / "rebuild.json", report.to_json())
    return report


def remove_workdir(report: RebuildReport) -> None:
    """Delete the scratch folder of a rebuild (the clone, its DVC cache, the fetched package)."""
    shutil.rmtree(report.workdir, ignore_errors=True)
