"""Record a training run's `params.yaml`, `dvc.lock` and git-tracked reports as a commit on a branch.

The commit is made with git plumbing on a temporary index: the working tree, the real index and
HEAD are not touched, so a retraining run on a machine where someone works on `main` records
itself without switching branches or staging anything of theirs. The commit's tree is HEAD's tree
with the run's versions of the given paths; its parent is the branch's tip when the branch exists,
else HEAD. `git checkout <branch> && dvc pull` (or `dvc repro`) then reproduces that run.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def _git(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        ["git", *args], cwd=root, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def commit_to_branch(
    root: str | os.PathLike[str],
    branch: str,
    paths: list[str],
    message: str,
    *,
    author: tuple[str, str] = ("driftloop", "driftloop@localhost"),
) -> str:
    """Commit the working-tree versions of `paths` onto `branch`, leaving HEAD and the index alone.

    Files are recorded as they are; in a folder only the files git already tracks (so untracked
    outputs such as reports/drift/ never slip into the record).

    Args:
        root: the git repository's root.
        branch: branch name, e.g. "driftloop/retrain"; created when missing.
        paths: repository-relative paths to record (e.g. ["params.yaml", "dvc.lock", "reports"]).
        message: the commit message.
        author: (name, email) of the commit.

    Returns:
        The new commit's sha; when nothing differs from the branch's tip (or from HEAD, for a
        new branch), that commit's sha: it already records this run.

    Raises:
        RuntimeError: `root` is not a git repository with a commit, or a git command fails.
    """
    root = Path(root)
    head = _git(root, "rev-parse", "HEAD")
    try:
        tip = _git(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}")
    except RuntimeError:
        tip = ""
    parent = tip or head
    name, email = author
    env_id = {
        "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index"), **env_id}
        _git(root, "read-tree", head, env=env)
        files = [p for p in paths if (root / p).is_file()]
        folders = [p for p in paths if (root / p).is_dir()]
        if files:
            _git(root, "add", "--", *files, env=env)
        if folders:  # tracked files only: a folder may hold untracked drift reports or state
            _git(root, "add", "-u", "--", *folders, env=env)
        tree = _git(root, "write-tree", env=env)
        if tree == _git(root, "rev-parse", f"{parent}^{{tree}}"):
            log.info("git record: nothing changed against %s; %s records this run", branch, parent[:12])
            return parent
        sha = _git(root, "commit-tree", tree, "-p", parent, "-m", message, env=env)
    _git(root, "update-ref", f"refs/heads/{branch}", sha, *([tip] if tip else []))
    log.info("git record: %s -> %s", branch, sha[:12])
    return sha
