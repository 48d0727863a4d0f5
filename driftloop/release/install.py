"""Installation into the model repository and the servability check.

The server's model repository holds `<repository>/<model>/<number>/` package folders (integer
version folders, `driftloop.model_repository.version_number`); a folder is written atomically (a
hidden temp folder next to it, then a rename) and verified by SHA256SUMS.
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
from driftloop.model_repository import version_number
from driftloop.package import SUMS, verify_package
from driftloop.payloads import v2_body
from driftloop.registry import ModelRegistry
from driftloop.release.client import ServerClient
from driftloop.release.errors import ServabilityFailed

log = logging.getLogger(__name__)


def version_folder(repository: Path, model: str, version: str) -> Path:
    """`<repository>/<model>/<number>/`: the integer folder of a registry version (`v0.0.7` -> `7`)."""
    return Path(repository) / model / str(version_number(version))


def install_version(registry: ModelRegistry, version: str, repository: Path, model: str) -> tuple[Path, bool]:
    """Put the registry's package of `version` at `<repository>/<model>/<number>/`, atomically and verified.

    The package is always fetched from the registry into a hidden temp folder next to the target
    (the server ignores dot-folders) and verified. A folder already at the target is kept only
    when its SHA256SUMS is byte-identical to the registry's (same files, same lineage); anything
    else there (another artifact's build of the same version, a hand-edited folder) is replaced,
    with a warning naming both lineage ids.

    Returns:
        (the folder, True when this call wrote it).

    Raises:
        UnknownVersion / FilesMissing: from the registry.
        PackageError: the fetched files do not verify.
        StateError: the version does not map to an integer folder.
    """
    target = version_folder(repository, model, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        staged = registry.fetch(version, tmp / "pkg")
        verify_package(staged)
        if target.is_dir():
            if _sums(target) == _sums(staged):
                return target, False
            log.warning(
                "%s holds lineage %s, not the registry's %s %s (lineage %s); replacing it",
                target, _lineage(target), version, model, _lineage(staged),
            )  # fmt: skip
            shutil.rmtree(target)
        os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, True


def _sums(folder: Path) -> bytes | None:
    try:
        return (folder / SUMS).read_bytes()
    except OSError:
        return None


def _lineage(folder: Path) -> str:
    try:
        return str(read_json(folder / "model_card.json").get("lineage_id", "?"))
    except (OSError, ValueError, PackageError):
        return "?"


def uninstall_version(repository: Path, model: str, version: str) -> None:
    """Remove a version's folder from the model repository (the registry can fetch it back)."""
    target = version_folder(repository, model, version)
    try:
        if target.is_dir():
            shutil.rmtree(target)
            log.info("removed %s (%s) from the model repository", target, version)
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
    if not ok or resp.headers.get("x-model-version") != str(version_number(version)):
        raise ServabilityFailed(
            f"{model} {version}: sample answer is not one probability from this version: {resp.text[:200]}"
        )
