"""Record a training run's `params.yaml`, `dvc.lock` and every output DVC leaves to git as a commit on a branch.

The commit is made with git plumbing on a temporary index: the working tree, the real index and
HEAD are not touched, so a retraining run on a machine where someone works on `main` records
itself without switching branches or staging anything of theirs. The commit's tree is HEAD's tree
with the run's versions of the given paths (files added, changed and removed, as in the working
tree); its parent is the branch's tip when the branch exists, else HEAD. The outputs DVC caches
are in `dvc.lock` and pushed by the registry, the others (`cache: false` reports, plots, curves)
are recorded here by `git_outputs`, so `git checkout <branch> && dvc pull` gives a workspace that
`dvc status` finds up to date.
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


def git_outputs(root: str | os.PathLike[str]) -> list[str]:
    """The outputs `dvc.yaml` leaves to git (`cache: false` outs, metrics and plots), sorted.

    Args:
        root: the DVC project root.

    Returns:
        Repository-relative paths (files or folders) as declared in `dvc.yaml`.
    """
    from dvc.repo import Repo

    from flows.dag import _in_root

    with _in_root(root), Repo(os.fspath(root)) as repo:
        return sorted({str(o.def_path) for s in repo.index.stages for o in s.outs if not o.use_cache})


def commit_to_branch(
    root: str | os.PathLike[str],
    branch: str,
    paths: list[str],
    message: str,
    *,
    author: tuple[str, str] = ("driftloop", "driftloop@localhost"),
) -> str:
    """Commit the working-tree versions of `paths` onto `branch`, leaving HEAD and the index alone.

    Each path is recorded as it is in the working tree: a folder with every file in it, new
    ones included, and files gone from it removed (`git add -A -- PATH` on the temporary index);
    `.gitignore` still applies, so pass only paths that are wholly the run's outputs (see
    `git_outputs`), never a folder that also holds other state. A path that exists neither in
    the working tree nor in HEAD is skipped.

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
        known = set(_git(root, "ls-tree", "-r", "--name-only", head).splitlines())
        present = [
            p for p in paths
            if (root / p).exists() or p in known or any(k.startswith(p.rstrip("/") + "/") for k in known)
        ]  # fmt: skip
        if present:
            _git(root, "add", "-A", "--", *present, env=env)
        tree = _git(root, "write-tree", env=env)
        if tree == _git(root, "rev-parse", f"{parent}^{{tree}}"):
            log.info("git record: nothing changed against %s; %s records this run", branch, parent[:12])
            return parent
        sha = _git(root, "commit-tree", tree, "-p", parent, "-m", message, env=env)
    _git(root, "update-ref", f"refs/heads/{branch}", sha, *([tip] if tip else []))
    log.info("git record: %s -> %s", branch, sha[:12])
    return sha
