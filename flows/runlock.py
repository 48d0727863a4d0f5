"""One training run at a time per working copy: a project lock, and a look at DVC's own lock.

Two training runs in one working copy would write each other's window into `params.yaml` and then
collide on DVC's repository lock halfway through the DAG (a `LockError` traceback, a half-built
pipeline). The Prefect deployments refuse a second concurrent run of the same deployment
(`flows.deployments`, a concurrency limit of 1 with CANCEL_NEW); this lock covers everything else:
the retraining and the manual deployment at once, two processes serving the deployments, a
direct `training_flow(...)` call next to a deployment run.

The lock is a kernel lock (`filelock.FileLock`, `fcntl.flock` on POSIX) on
`<root>/.dvc/tmp/driftloop-training.lock`, taken without waiting and released by the OS if its
holder dies. Who holds it (flow run, deployment, pid, start time, window) is written next to it in
`driftloop-training.json` for the refusal message: that file is information only, never the lock.
`.dvc/tmp/` is DVC's own git-ignored scratch folder of this working copy.

While holding it, the run also checks DVC's repository lock (`.dvc/tmp/lock`, zc.lockfile), which
a plain `dvc repro` or any other `dvc` command holds while it works: a run started meanwhile is
refused with that command's pid instead of failing at its first stage.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from driftloop.errors import DriftloopError

LOCK_FILE = ".dvc/tmp/driftloop-training.lock"
"""The project lock, relative to the project root."""
HOLDER_FILE = ".dvc/tmp/driftloop-training.json"
"""Who holds the project lock (written by the holder after it took the lock, removed before release)."""
DVC_REPO_LOCK = ".dvc/tmp/lock"
"""DVC's repository lock (zc.lockfile; its file holds the holder's pid)."""


class TrainingBusy(DriftloopError):
    """Another training run (or a `dvc` command) is working in this working copy; this run made no change."""


def current_holder(window: str) -> dict[str, Any]:
    """A description of this process's training run, for the holder file.

    Args:
        window: the run's window in words, e.g. "3 month(s) to 2013-08-31".

    Returns:
        {"flow_run_id", "flow_run_name", "deployment", "pid", "host", "started", "window"}; the
        Prefect fields are None outside a flow run.
    """
    from prefect.runtime import deployment, flow_run

    run_id = flow_run.get_id()
    return {
        "flow_run_id": str(run_id) if run_id else None,
        "flow_run_name": flow_run.get_name() if run_id else None,
        "deployment": f"{flow_run.get_flow_name()}/{deployment.get_name()}" if run_id and deployment.get_id() else None,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "window": window,
    }


def describe_holder(holder: dict[str, Any] | None) -> str:
    """The holder record as one phrase: "flow run 'crimson-fox' (id ..., deployment ..., pid 42, ...)"."""
    if not holder:
        return "a training run that is just starting (no holder record yet)"
    what = f"flow run {holder['flow_run_name']!r}" if holder.get("flow_run_name") else "a training run"
    details = [
        f"id {holder['flow_run_id']}" if holder.get("flow_run_id") else None,
        f"deployment {holder['deployment']}" if holder.get("deployment") else "not from a deployment",
        f"pid {holder.get('pid')} on {holder.get('host')}",
        f"started {holder.get('started')}",
        f"window {holder['window']}" if holder.get("window") else None,
    ]
    return f"{what} ({', '.join(d for d in details if d)})"


def read_holder(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The holder record of `root`'s project lock, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(root) / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return None


def dvc_lock_pid(root: str | os.PathLike[str]) -> int | None:
    """The pid holding DVC's repository lock of `root`, or None when it is free.

    Probed the way DVC takes it (zc.lockfile, without waiting), under `flows.dag.DVC_LOCK` so
    this process's own DVC calls are not what it finds; the probe releases at once.

    Returns:
        The holder's pid (0 when its lock file names none), None when the lock is free.
    """
    import zc.lockfile

    from flows.dag import DVC_LOCK

    path = Path(root) / DVC_REPO_LOCK
    if not path.parent.is_dir():
        return None
    with DVC_LOCK:
        try:
            zc.lockfile.LockFile(str(path)).close()
        except zc.lockfile.LockError:
            text = path.read_text(errors="replace").split()
            return int(text[0]) if text and text[0].isdigit() else 0
    return None


@contextlib.contextmanager
def training_lock(root: str | os.PathLike[str], holder: dict[str, Any]) -> Iterator[None]:
    """Hold `root`'s project lock for a training run, or refuse at once.

    Args:
        root: the project root (git + DVC working copy).
        holder: this run's description (`current_holder`), written to `HOLDER_FILE`.

    Yields:
        Nothing; the lock is held inside the `with` block.

    Raises:
        DriftloopError: `root` has no `.dvc` folder (the lock is not created outside a DVC project).
        TrainingBusy: another run holds the project lock (the message names it: flow run, id,
            deployment, pid, start, window, and how to cancel it), or a `dvc` command holds DVC's
            repository lock (the message names its pid).
    """
    from filelock import FileLock, Timeout

    from driftloop.io import write_json

    rootp = Path(root)
    if not (rootp / ".dvc").is_dir():
        raise DriftloopError(f"{rootp} is not a DVC project (no .dvc folder): pass the project's root as `root`")
    lock_path = rootp / LOCK_FILE
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        other = read_holder(rootp)
        cancel = f" or cancel it: prefect flow-run cancel {other['flow_run_id']}" if other and other.get("flow_run_id") else ""
        raise TrainingBusy(
            f"training refused: {describe_holder(other)} is already training in {rootp}; this run changed "
            f"nothing. Wait for that run to finish{cancel}."
        ) from None
    try:
        pid = dvc_lock_pid(rootp)
        if pid is not None:
            raise TrainingBusy(
                f"training refused: DVC's lock {rootp / DVC_REPO_LOCK} is held by pid {pid or 'unknown'} "
                f"(a `dvc repro` or another dvc command in {rootp}); this run changed nothing. "
                "Wait for that command to finish, then start the run again."
            )
        write_json(rootp / HOLDER_FILE, holder)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                (rootp / HOLDER_FILE).unlink()
    finally:
        lock.release()
