"""One release at a time: the release lock."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from driftloop.release.errors import ReleaseLocked

log = logging.getLogger(__name__)


class ReleaseLock:
    """One release at a time: a lock file created with O_EXCL that holds the owner's pid.

    A lock whose pid is no longer alive (a killed release) is taken over, with a warning.

    Args:
        path: the lock file, e.g. `<repository>/.release.lock` (the server ignores dot-files).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __enter__(self) -> ReleaseLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = self._owner()
                if pid is not None and _alive(pid):
                    raise ReleaseLocked(
                        f"another release or rollback is running (pid {pid}, lock {self.path}); wait for it"
                    ) from None
                log.warning("taking over stale release lock %s (pid %s is gone)", self.path, pid)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{os.getpid()}\n")
            return self
        raise ReleaseLocked(f"could not take the release lock {self.path}")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def __exit__(self, *exc: object) -> None:
        if self._owner() == os.getpid():
            self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
