"""The exact environment a build ran in: the lockfile's hash, for the model card and `driftloop rebuild`.

`requirements.lock` (written by `make lock`, installed by `make setup`) pins every package of
`driftloop[train,dev]` with its sha256 hashes. Its own sha256 names that environment in one
string: two builds whose cards carry the same `environment.lockfile_sha256` ran on the same pins.
"""

from __future__ import annotations

import os
from pathlib import Path

from driftloop.io import sha256_file

LOCKFILE = "requirements.lock"


def lockfile_sha256(root: str | os.PathLike[str], name: str = LOCKFILE) -> dict[str, str | None]:
    """The lockfile's path and sha256, for the model card's `environment` field.

    Args:
        root: the project root (the folder holding the lockfile).
        name: the lockfile's name relative to `root`.

    Returns:
        `{"lockfile": name, "lockfile_sha256": <64 hex> or None when the file is missing}`
        (None: built from a checkout without a lockfile, so the environment is not pinned).
    """
    path = Path(root) / name
    return {"lockfile": name, "lockfile_sha256": sha256_file(path) if path.is_file() else None}
