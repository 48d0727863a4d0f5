"""Benchmark: full `dvc repro` on the default params, and a no-op `dvc repro`, in a temp copy of the repo.

Targets (issue 2): full repro <= 180 s on 2 cores; no-op repro <= 2 s.
Usage: python bench/build_pipeline.py
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import copy_repo, figure, print_table, write_results  # noqa: E402


def timed_repro(repo: Path) -> float:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=repo, env=env, check=True)
    return time.perf_counter() - t0


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-") as tmp:
        repo = Path(tmp)
        copy_repo(repo)
        full = timed_repro(repo)
        noop = min(timed_repro(repo) for _ in range(3))
    figures = [
        figure("full dvc repro (defaults)", full, "s", "budget 180 s", 180.0, target=1.0, higher_is_better=False),
        figure("no-op dvc repro (best of 3)", noop, "s", "budget 2 s", 2.0, target=1.0, higher_is_better=False),
    ]
    print_table("build plane: dvc repro wall time", figures, ["name", "value", "unit", "baseline", "ratio", "target", "met"])
    write_results("build_pipeline", figures, [], "temp copy of the repo, default params.yaml, fresh DVC cache")


if __name__ == "__main__":
    main()
