"""The model package: the immutable unit that the build plane produces and the server loads.

Layout of a package folder (the `artifacts/model/` contract, also one `<repo>/<model>/<version>/`):
    model.onnx         one ONNX graph, raw columns in, `probability` FP32 [n, 1] out
    signature.json     `driftloop.schema.Signature`: inputs (name, datatype, shape, nullable), outputs
    model_card.json    lineage: git commit, data hash, params, library versions, metrics, gate verdict
    model_card.md      the same for people
    reference.parquet  a time-uniform sample of the window (`split` train/valid/test) with `score`, for drift checks
    SHA256SUMS         `sha256sum` format ("<hex>  <name>") over every other file
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from driftloop.errors import PackageError
from driftloop.io import sha256_file
from driftloop.schema import Signature

PACKAGE_FILES: tuple[str, ...] = (
    "model.onnx",
    "signature.json",
    "model_card.json",
    "model_card.md",
    "reference.parquet",
)
SUMS = "SHA256SUMS"
REJECTED = "REJECTED"  # marker the package stage leaves, with the gate's card, when the gate rejects


def write_sha256sums(folder: str | os.PathLike[str]) -> str:
    """Write `SHA256SUMS` over every regular file in `folder` (sorted, `sha256sum -c` compatible).

    Returns:
        The file's text.
    """
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != SUMS)
    text = "".join(f"{sha256_file(folder / n)}  {n}\n" for n in names)
    (folder / SUMS).write_text(text)
    return text


def read_sha256sums(folder: Path) -> dict[str, str]:
    """Parse `SHA256SUMS` into {file name: hex digest}.

    Raises:
        PackageError: the file is missing or a line is malformed or names a path outside the folder.
    """
    sums = folder / SUMS
    if not sums.is_file():
        raise PackageError(f"{folder}: {SUMS} is missing; rebuild the package with `dvc repro`")
    out: dict[str, str] = {}
    for i, line in enumerate(sums.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or "/" in name or name in ("", ".", ".."):
            raise PackageError(f"{sums}:{i}: malformed line {line!r}; expected '<sha256>  <file name>'")
        out[name] = digest
    return out


def verify_package(folder: str | os.PathLike[str]) -> Signature:
    """Check a package before anything loads it, and return its signature.

    Checks: every file of `PACKAGE_FILES` exists and is listed; every listed file matches its
    sha256; no unlisted file sits beside them; the ONNX graph's external-data locations (if any)
    stay inside the folder.

    Raises:
        PackageError: naming the first file that fails and why.
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise PackageError(f"{folder}: not a package folder")
    if (folder / REJECTED).exists():
        raise PackageError(f"{folder}: the gate rejected this build (see its model_card.md); nothing to load or register")
    sums = read_sha256sums(folder)
    for name in PACKAGE_FILES:
        if name not in sums:
            raise PackageError(f"{folder}: {name} is not listed in {SUMS}; the package is incomplete")
    present = {p.name for p in folder.iterdir() if p.is_file() and p.name != SUMS}
    extra = sorted(present - set(sums))
    if extra:
        raise PackageError(f"{folder}: file(s) {', '.join(extra)} are not in {SUMS}; remove them or rebuild")
    for name, digest in sums.items():
        path = folder / name
        if not path.is_file():
            raise PackageError(f"{folder}: {name} is listed in {SUMS} but missing")
        if sha256_file(path) != digest:
            raise PackageError(f"{folder}: {name} does not match its sha256 in {SUMS}; the file was altered")
    check_external_data(folder / "model.onnx")
    try:
        return Signature.model_validate_json((folder / "signature.json").read_text())
    except ValueError as exc:
        raise PackageError(f"{folder}: signature.json is invalid: {exc}") from None


def check_external_data(model_path: Path) -> None:
    """Refuse an ONNX file whose external-data tensors point outside its own folder.

    Raises:
        PackageError: the graph cannot be parsed, or a `location` escapes the folder.
    """
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for a corrupt file
        raise PackageError(f"{model_path}: not a readable ONNX model ({exc})") from None
    root = model_path.parent.resolve()
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise PackageError(
                f"{model_path}: tensor {tensor.name!r} points to external data {location!r} outside the "
                "package folder; refusing to load"
            )


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.t is not None and attr.HasField("t"):
                yield attr.t
            for sub in attr.graphs:
                yield from _all_tensors(sub)
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
