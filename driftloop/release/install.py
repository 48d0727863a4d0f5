"""Installation into the model repository and the servability check.

The server's model repository holds `<repository>/<model>/<version>/` package folders; a folder is
written atomically (a hidden temp folder next to it, then a rename) and verified by SHA256SUMS.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from driftloop.errors import PackageError
from driftloop.io import read_json
from driftloop.package import verify_package
from driftloop.payloads import v2_body
from driftloop.registry import ModelRegistry
from driftloop.release.client import ServerClient
from driftloop.release.errors import ServabilityFailed

log = logging.getLogger(__name__)


def install_version(registry: ModelRegistry, version: str, repository: Path, model: str) -> tuple[Path, bool]:
    """Put a version's package at `<repository>/<model>/<version>/`, atomically and verified.

    Fetch into a hidden temp folder next to the target (the server ignores dot-folders), verify
    its SHA256SUMS, then rename it into place. A folder already there that verifies is kept.

    Returns:
        (the folder, True when this call created it).

    Raises:
        UnknownVersion / FilesMissing: from the registry.
        PackageError: the fetched files do not verify.
    """
    target = Path(repository) / model / version
    if target.is_dir():
        try:
            verify_package(target)
            return target, False
        except PackageError:
            log.warning("%s does not verify; fetching it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=target.parent))
    try:
        staged = registry.fetch(version, tmp / "pkg")
        verify_package(staged)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, True


def uninstall_version(repository: Path, model: str, version: str) -> None:
    """Remove a rolled-back version's folder from the model repository.

    A deprecated version left on disk would be the newest folder there, and a server restarted
    without the release plane loads the newest: it would serve again. The registry can fetch it
    back by version at any time.
    """
    target = Path(repository) / model / version
    try:
        if target.is_dir():
            shutil.rmtree(target)
            log.info("removed %s from the model repository", target)
    except OSError as exc:
        log.warning("could not remove %s (%s); remove it by hand", target, exc)


def sample_body(folder: Path, rows: int = 1) -> dict:
    """A v2 infer body of the first `rows` reference rows, typed by `signature.json`."""

    sig = read_json(folder / "signature.json")
    frame = pd.read_parquet(folder / "reference.parquet").head(rows)
    datatypes = {spec["name"]: spec["datatype"] for spec in sig["inputs"]}
    return v2_body(frame, list(datatypes), datatypes=datatypes, request_id="driftloop-servability-check")


def check_servable(client: ServerClient, model: str, version: str, folder: Path) -> None:
    """Load `version` (the server verifies and warms it up) and send one pinned sample request.

    Expected answer: 200, header `x-model-version` = version, one output of shape [1, 1] with a
    finite probability in [0, 1].

    Raises:
        ServabilityFailed: the load was refused or the answer had another shape.
    """
    client.load(model, version)
    resp = client.infer(model, version, sample_body(folder))
    if resp.status_code != 200:
        raise ServabilityFailed(
            f"{model} {version}: sample request answered {resp.status_code}: {client._error(resp)}"
        )
    try:
        out = resp.json()["outputs"][0]
        value = float(out["data"][0])
        ok = out["shape"] == [1, 1] and math.isfinite(value) and 0.0 <= value <= 1.0
    except (KeyError, IndexError, TypeError, ValueError):
        ok = False
    if not ok or resp.headers.get("x-model-version") != version:
        raise ServabilityFailed(
            f"{model} {version}: sample answer is not one probability from this version: {resp.text[:200]}"
        )
