"""`make fuzz`: the OpenAPI contract run, long: schemathesis against a live server on a real package.

The same contract as `tests/serving/test_openapi_contract.py` (same `schemathesis.toml`, every
check, all four phases: examples, coverage, fuzzing, stateful), with hundreds of examples per
operation instead of a handful. The package is `artifacts/model` when it has been built
(`make repro`), else a test package built by `serving.testing` (a real ONNX graph over the real
columns). The server runs in this process on 127.0.0.1 at a free port; schemathesis runs as its
CLI in a subprocess, and its exit code is this script's.

Example:
    python tests/serving/fuzz_contract.py --max-examples 300 --seed 7
    python tests/serving/fuzz_contract.py --package artifacts/model --max-time 600
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from serving.app import create_app
from serving.config import ServeSettings
from serving.testing import build_test_package, running_server

CONFIG_FILE = Path(__file__).with_name("schemathesis.toml")
HOOKS_FILE = Path(__file__).with_name("contract_hooks.py")
PHASES = "examples,coverage,fuzzing,stateful"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=Path("artifacts/model"), help="model package folder")
    parser.add_argument("--max-examples", type=int, default=300, help="examples per operation and phase")
    parser.add_argument("--seed", type=int, default=0, help="schemathesis seed (the run is reproducible)")
    parser.add_argument("--max-time", type=int, default=None, help="optional time budget, seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="driftloop-fuzz-") as tmp:
        repository = Path(tmp) / "repository"
        if (args.package / "model.onnx").is_file():
            model = json.loads((args.package / "signature.json").read_text())["model_name"]
            shutil.copytree(args.package, repository / model / "1")
            source = str(args.package)
        else:
            model = "flight_delay"
            build_test_package(repository / model / "1", model_name=model)
            source = "a test package (serving.testing; run `make repro` for artifacts/model)"
        print(f"fuzz: serving {model} version 1 from {source}", flush=True)  # noqa: T201 - a CLI
        app = create_app(ServeSettings(repository=repository))
        with running_server(app) as base:
            command = [
                sys.executable, "-m", "schemathesis.cli",
                "--config-file", str(CONFIG_FILE),
                "run", f"{base}/openapi.json",
                "--checks", "all",
                "--phases", PHASES,
                "--max-examples", str(args.max_examples),
                "--seed", str(args.seed),
                "--generation-database", "none",
                "--workers", "1",
            ]  # fmt: skip
            if args.max_time:
                command += ["--max-time", str(args.max_time)]
            env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS_FILE)}
            return subprocess.run(command, check=False, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
