"""The build-plane DAG as DVC sees it, and one serialized way to reproduce a stage of it.

The training flow never keeps its own list of stages: `stage_order` reads `dvc.yaml` through
DVC's index (the same graph `dvc repro` walks) and sorts it topologically. `reproduce_stage` runs
one stage through DVC's Python API (`Repo.reproduce(targets=[stage], single_item=True)`), so a
flow run and a `dvc repro` leave the same `dvc.lock`, cache and outputs.

DVC's lock is per process ID, so two `reproduce` calls inside one process race on `dvc.lock`
and the cache; `DVC_LOCK` serializes every DVC call made by this package.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DVC_LOCK = threading.RLock()
"""Serializes every in-process DVC call (DVC does not lock against itself within one PID)."""

USER_ERROR_EXIT = 2
"""Exit code of a stage's `python -m tasks.<stage>` on a `DriftloopError` (see driftloop/stage.py)."""

_EXIT_RE = re.compile(r"exited with (-?\d+)")


class StageFailed(Exception):
    """A DVC stage failed.

    Attributes:
        stage: the stage's name in dvc.yaml.
        exit_code: the stage command's exit status, or None when DVC failed before/around it.
        transient: whether a retry can help (see `is_transient`).
    """

    def __init__(self, stage: str, message: str, exit_code: int | None, transient: bool) -> None:
        super().__init__(message)
        self.stage = stage
        self.exit_code = exit_code
        self.transient = transient


@dataclass(frozen=True)
class StageResult:
    """What one reproduce call did.

    Attributes:
        stage: the stage's name.
        ran: True when DVC ran the command; False when the stage was up to date (cached).
        seconds: wall time of the DVC call, s.
        rejected: the stage exited with a gate rejection, a normal outcome (see
            `flows.training.run_dvc_stage`): not a failure.
    """

    stage: str
    ran: bool
    seconds: float
    rejected: bool = False


@contextlib.contextmanager
def _in_root(root: str | os.PathLike[str]):
    """Hold `DVC_LOCK` and work in `root`: DVC resolves stage addresses and its stage cache
    against the current directory (run from elsewhere, it fails with "outside of DVC repo")."""
    with DVC_LOCK:
        before = os.getcwd()
        os.chdir(root)
        try:
            yield
        finally:
            os.chdir(before)


def stage_order(root: str | os.PathLike[str]) -> list[str]:
    """Stages of `root/dvc.yaml` in an order that respects every dependency.

    Ties are broken by the stages' order in dvc.yaml, so the order is deterministic.

    Args:
        root: the DVC project root (holds dvc.yaml).

    Returns:
        Stage names, upstream first (e.g. ["snapshot", "validate", ..., "package"]).

    Raises:
        StageFailed: dvc.yaml is missing or DVC cannot build its graph (not transient).
    """
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with _in_root(root):
        try:
            with Repo(os.fspath(root)) as repo:
                stages = list(repo.index.stages)
                graph = repo.index.graph
                position = {s.addressing: i for i, s in enumerate(stages)}
                # DVC's edges point from a stage to what it depends on: reverse them.
                order = nx.lexicographical_topological_sort(
                    graph.reverse(copy=True), key=lambda s: position.get(s.addressing, 0)
                )
                return [s.addressing for s in order if s.addressing in position]
        except DvcException as exc:
            raise StageFailed("dvc.yaml", f"{root}: cannot read the DVC pipeline: {exc}", None, False) from exc


def stage_outs(root: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Each stage's declared outputs (outs, metrics, plots), as paths relative to `root`.

    Args:
        root: the DVC project root.

    Returns:
        {stage name: [path, ...]}.
    """
    from dvc.repo import Repo

    with _in_root(root), Repo(os.fspath(root)) as repo:
        return {s.addressing: [str(o.def_path) for o in s.outs] for s in repo.index.stages}


def exit_code_of(exc: BaseException) -> int | None:
    """The stage command's exit status carried by a DVC exception chain, if any.

    DVC raises `ReproductionError` from a `StageCmdFailedError("failed to run: <cmd>, exited with N")`.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if type(cur).__name__ == "StageCmdFailedError":
            match = _EXIT_RE.search(str(cur))
            return int(match.group(1)) if match else None
        cur = cur.__cause__ or cur.__context__
    return None


def is_transient(exc: BaseException, exit_code: int | None) -> bool:
    """Whether retrying a failed stage can help.

    Not transient: exit code 2 (a `DriftloopError`: gate rejection, failed validation, bad
    params or data: the same inputs fail the same way) and DVC errors about the pipeline itself.
    Transient: a command killed by a signal or crashing with another code (out of memory, a
    flaky file system), an `OSError`, DVC's lock being held by another process.

    Args:
        exc: the exception raised by DVC.
        exit_code: the stage command's exit status, when one is known.

    Returns:
        True when a retry may succeed.
    """
    if exit_code is not None:
        return exit_code != USER_ERROR_EXIT
    names = {type(e).__name__ for e in _chain(exc)}
    if names & {"LockError", "OSError", "TimeoutError", "ConnectionError"}:
        return True
    return any(isinstance(e, OSError) for e in _chain(exc))


def _chain(exc: BaseException) -> list[BaseException]:
    out, cur = [], exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def ensure_python_on_path() -> None:
    """Put this interpreter's folder first on PATH, so stage `cmd`s (`python -m tasks.<stage>`)
    run with the project's environment even when the flow was started by a worker whose PATH
    does not hold the virtualenv (DVC runs stage commands with the first `python` on PATH)."""
    bindir = str(Path(sys.executable).parent)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if not parts or parts[0] != bindir:
        os.environ["PATH"] = os.pathsep.join([bindir, *[p for p in parts if p != bindir]])


def reproduce_stage(root: str | os.PathLike[str], stage: str, *, force: bool = False) -> StageResult:
    """Reproduce one stage of `root/dvc.yaml` (only that stage; upstream must be up to date).

    Args:
        root: the DVC project root.
        stage: the stage's name.
        force: run the command even when DVC finds the stage up to date.

    Returns:
        Whether the command ran, and the call's wall time (s).

    Raises:
        StageFailed: with the stage's exit code and whether a retry can help.
    """
    import time

    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    ensure_python_on_path()
    start = time.perf_counter()
    with _in_root(root):
        try:
            with Repo(os.fspath(root)) as repo:
                repo.scm_context.quiet = True  # no "git add dvc.lock" hint per stage: the flow records the run
                ran = repo.reproduce(targets=[stage], single_item=True, force=force)
        except (DvcException, OSError) as exc:
            code = exit_code_of(exc)
            transient = is_transient(exc, code)
            what = f"exit code {code}" if code is not None else type(exc).__name__
            raise StageFailed(stage, f"stage {stage!r} failed ({what}): {exc}", code, transient) from exc
    return StageResult(stage=stage, ran=bool(ran), seconds=time.perf_counter() - start)
