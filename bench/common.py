"""Shared by every benchmark: a figure (value, unit, baseline, ratio, target, met), the results file, a table.

Each `bench/<name>.py` prints a small table and writes `bench/results/<name>.json` (git-ignored).
Ratios are measured in one run, side by side, because these machines are noisy.
"""

import json
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def figure(name, value, unit, baseline_name=None, baseline_value=None, target=None, higher_is_better=True):
    """One figure of a results file: value, unit, baseline, ratio, target (a minimum ratio), met."""
    ratio = None if baseline_value in (None, 0) else value / baseline_value
    met = None
    if target is not None and ratio is not None:
        met = bool(ratio >= target) if higher_is_better else bool(ratio <= target)
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "baseline": baseline_name,
        "baseline_value": baseline_value,
        "ratio": ratio,
        "target": None if target is None else (f">= {target}x" if higher_is_better else f"<= {target}x"),
        "met": met,
    }


def write_results(name: str, figures: list[dict], points: list[dict], notes: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {
        "benchmark": name,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "figures": figures,
        "points": points,
        "notes": notes,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n{title}")
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return "" if v is None else str(v)




def copy_repo(dest: Path, params: dict | None = None) -> Path:
    """Copy the project's files (as git sees them, uncommitted edits included; no tests/, bench/,
    reports/ or dvc.lock) into `dest` and make it a git repo with one commit.

    Args:
        dest: an empty or missing folder.
        params: written as the copy's params.yaml when given (else the repo's).

    Returns:
        `dest`.
    """
    import os
    import shutil
    import subprocess

    import yaml

    dest.mkdir(parents=True, exist_ok=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()  # fmt: skip
    for rel in files:
        if rel.startswith(("tests/", "bench/", "reports/")) or rel == "dvc.lock" or not (ROOT / rel).is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    if params is not None:
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env)
    return dest
