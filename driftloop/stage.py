"""The thin shell every `python -m tasks.<stage>` entry shares: logging set-up and one-line errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from driftloop.errors import DriftloopError

log = logging.getLogger("driftloop")


def configure_logging(level: str | None = None) -> None:
    """Configure the root logger once, at an entry point (never at import time)."""
    logging.basicConfig(
        level=(level or os.environ.get("DRIFTLOOP_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("great_expectations", "onnxscript", "torch.onnx", "onnx_ir", "prefect", "httpx", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def run_stage(name: str, body: Callable[[], None]) -> None:
    """Run a stage's I/O shell; a `DriftloopError` becomes one line on stderr and exit code 2.

    Any other exception is a bug and keeps its traceback.
    """
    configure_logging()
    try:
        body()
    except DriftloopError as exc:
        sys.stderr.write(f"error: {name}: {exc}\n")
        raise SystemExit(2) from None
