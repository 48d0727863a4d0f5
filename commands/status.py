"""`driftloop status`: the loop on one screen.

What serves now (version, since when, the server's traffic split), an open canary's progress
(requests and labelled rows against `release.min_requests` / `min_labelled_rows`), the last drift
check (verdict, decision, report), the last retrain (when the policy asked for it, the newest
training record on `driftloop/runs`) and the working tree's gate verdict. Every part reads files
and the server's public API only; a part that cannot be read says why, the rest still shows.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from driftloop.errors import DriftloopError

RUNS_BRANCH = "driftloop/runs"


@dataclass
class Status:
    """What `driftloop status` shows; each `*_note` says why a part is missing."""

    model: str
    server_url: str
    prod: str | None = None
    prod_since: dt.datetime | None = None
    prod_why: str = ""
    traffic: dict[str, float] = field(default_factory=dict)
    server_note: str = ""
    canary: str | None = None
    canary_since: dt.datetime | None = None
    canary_requests: int = 0
    canary_labelled: int = 0
    min_requests: int = 0
    min_labelled_rows: int = 0
    drift: dict[str, Any] | None = None
    drift_note: str = ""
    retrains: list[str] = field(default_factory=list)
    last_run: str = ""
    gate: str = ""


def collect(root: Path, params_path: Path | None = None, url: str | None = None) -> Status:
    """Read the registry, the server, the prediction log and the reports of the project at `root`.

    Raises:
        DriftloopError: params.yaml is invalid, or `root` is not the project (no registry).
    """
    import pandas as pd

    from driftloop.config import MonitorParams, load_section
    from driftloop.release import open_plane
    from driftloop.release.analysis import log_window_reader

    plane = open_plane(root, params_path=params_path, server_url=url)
    rel = plane.params
    monitor = load_section(params_path or plane.root / "params.yaml", "monitor", MonitorParams)
    st = Status(model=rel.model, server_url=plane.server_url, min_requests=rel.min_requests,
                min_labelled_rows=rel.min_labelled_rows)  # fmt: skip
    open_ = {t.stage: t for t in plane.tenures() if t.end is None}
    if (t := open_.get(rel.stable_stage)) is not None:
        st.prod, st.prod_since, st.prod_why = t.version, t.start, t.why
    if (t := open_.get(rel.canary_stage)) is not None:
        st.canary, st.canary_since = t.version, t.start
    client = plane.client()
    try:
        st.traffic = client.traffic(rel.model)
        if not st.traffic:
            st.server_note = f"the server at {plane.server_url} has no version of {rel.model} loaded"
    except DriftloopError as exc:
        st.server_note = str(exc)
    finally:
        client.close()
    if st.canary is not None and st.canary_since is not None:
        rows = log_window_reader(plane.root / rel.log_dir, rel.model)(
            pd.Timestamp(st.canary_since), pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=1)
        )
        mine = rows[rows["model_version"] == st.canary]
        st.canary_requests = int(mine["request_id"].nunique())
        st.canary_labelled = int(mine["label"].notna().sum()) if "label" in mine else 0
    reports = plane.root / monitor.reports_dir
    try:
        latest = json.loads((reports / "latest.json").read_text())
        summary = Path(latest["run_dir"]) / "drift_summary.json"
        st.drift = {**latest, "summary": json.loads(summary.read_text()) if summary.is_file() else {}}
        st.drift["report"] = _rel(st.drift["summary"].get("report_html") or Path(latest["run_dir"]) / "drift_report.html",
                                  plane.root)  # fmt: skip
    except FileNotFoundError:
        st.drift_note = f"no drift check yet ({reports / 'latest.json'} is absent)"
    except (ValueError, KeyError) as exc:
        st.drift_note = f"{reports / 'latest.json'}: unreadable ({exc})"
    try:
        state = json.loads((plane.root / monitor.state_file).read_text())
        st.retrains = sorted(str(t) for t in state.get("retrains", []))
    except (FileNotFoundError, ValueError):
        pass
    log = subprocess.run(["git", "log", "-1", "--format=%cI  %s", RUNS_BRANCH, "--"], cwd=plane.root,
                         capture_output=True, text=True)  # fmt: skip
    st.last_run = log.stdout.strip() if log.returncode == 0 else ""
    st.gate = gate_line(plane.root / "reports" / "gate.json", plane.root)
    return st


def _rel(path: Path | str, root: Path) -> str:
    """`path` relative to `root` when it is inside it (shorter on screen), else as given."""
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def gate_line(path: Path, root: Path) -> str:
    """The working tree's gate verdict in one line ('' when there is no report)."""
    from driftloop.gate_report import GateReport

    if not path.is_file():
        return ""
    try:
        report = GateReport.read(path)
    except DriftloopError as exc:
        return str(exc)
    when = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if report.passed:
        return f"pass: {report.chosen} ({len(report.rules)} rules passed; {_rel(path, root)}, {when})"
    failed = report.failed_lines()
    return f"reject: {len(failed)} rule(s) failed, first: {failed[0] if failed else '?'} ({_rel(path, root)}, {when})"


def _when(t: dt.datetime | None) -> str:
    if t is None:
        return "-"
    age = dt.datetime.now(dt.UTC) - t
    mins = int(age.total_seconds() // 60)
    ago = f"{mins} min ago" if mins < 120 else f"{mins // 60} h ago" if mins < 48 * 60 else f"{mins // 1440} d ago"
    return f"{t.strftime('%Y-%m-%d %H:%M')} UTC ({ago})"


def render(st: Status, console: Console) -> None:
    """Print the status as four titled panels."""
    serving = Table.grid(padding=(0, 2))
    serving.add_column(style="bold")
    serving.add_column()
    serving.add_row("prod", escape(f"{st.prod or 'nothing in prod'}" + (f", since {_when(st.prod_since)}" if st.prod else "")))
    if st.prod_why:  # two lines of it; `driftloop history --wide` has all of it
        serving.add_row("why", escape(textwrap.shorten(st.prod_why, 170, placeholder=" ... (history --wide)")))
    split = ", ".join(f"{v} {p:g}%" for v, p in sorted(st.traffic.items())) or "-"
    serving.add_row("traffic", escape(split) + (f"  [yellow]{escape(st.server_note)}[/]" if st.server_note else ""))
    serving.add_row("server", escape(st.server_url))
    console.print(Panel(serving, title=f"serving {escape(st.model)}", title_align="left"))

    if st.canary is not None:
        canary = (f"{st.canary} since {_when(st.canary_since)}: {st.canary_requests}/{st.min_requests} requests, "
                  f"{st.canary_labelled}/{st.min_labelled_rows} labelled rows")  # fmt: skip
        if st.canary_requests == 0:
            canary += "; no traffic yet: `python -m flows.replay --months 9 10 --batch 10 --loop`"
        console.print(Panel(escape(canary), title="canary", title_align="left"))
    else:
        console.print(Panel("no canary open", title="canary", title_align="left", style="dim"))

    if st.drift is not None:
        s = st.drift.get("summary") or {}
        decision = s.get("decision") or {}
        reasons = "; ".join(decision.get("reasons", [])[:2])
        lines = [f"{st.drift.get('verdict')} (retrain: {'yes' if st.drift.get('retrain') else 'no'}), "
                 f"checked {st.drift.get('at', '?')[:16].replace('T', ' ')} UTC"]  # fmt: skip
        if reasons:
            lines.append(reasons)
        lines.append(f"report: {st.drift['report']}")
        console.print(Panel(escape("\n".join(lines)), title="last drift check", title_align="left"))
    else:
        console.print(Panel(escape(st.drift_note), title="last drift check", title_align="left", style="dim"))

    retrain = [f"asked for: {st.retrains[-1][:16].replace('T', ' ')} UTC ({len(st.retrains)} in the policy's record)"
               if st.retrains else "no retrain asked for yet"]  # fmt: skip
    retrain.append(f"last training record ({RUNS_BRANCH}): {st.last_run or 'none'}")
    retrain.append(f"gate: {st.gate or 'no reports/gate.json (run `dvc repro`)'}")
    console.print(Panel(escape("\n".join(retrain)), title="last retrain", title_align="left"))


def status(
    root: Annotated[Path, typer.Option(help="project root: the git repo with dvc.yaml")] = Path("."),
    params: Annotated[Path | None, typer.Option(help="params file; default <root>/params.yaml")] = None,
    url: Annotated[str | None, typer.Option(help="model server URL; default $DRIFTLOOP_SERVER_URL, else release.server_url")] = None,
) -> None:
    """What serves now, an open canary's progress, the last drift check and the last retrain, on one screen.

    Example:

        driftloop status
        DRIFTLOOP_SERVER_URL=http://127.0.0.1:9090 driftloop status
    """
    try:
        st = collect(root, params, url)
    except DriftloopError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    render(st, Console(width=min(Console().width, 100)))
