"""One release at a time: a kernel lock (`fcntl.flock`) on `<repository>/.release.lock`.

The kernel holds the lock for the open file description, so it dies with its holder (a
`kill -9`ed release frees it at once) and two processes can never both hold it: no stale file to
take over, no pid to trust. The holder writes its pid into the file after taking the lock, for
the "held by pid N" message only; the file is never deleted (deleting a flock'ed file lets a
newcomer lock a fresh inode while the old holder still runs).

The server probes the same lock at start (`driftloop.model_repository.release_in_progress`): a
canary recorded in the serving state keeps its weight only while its release holds the lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from driftloop.release.errors import ReleaseLocked

log = logging.getLogger(__name__)


class ReleaseLock:
    """An exclusive, non-blocking, non-reentrant kernel lock on `path`.

    Args:
        path: the lock file, e.g. `<repository>/.release.lock` (the server ignores dot-files).

    Raises (on enter):
        ReleaseLocked: another process (or another `ReleaseLock` in this one) holds it; the
            message names the holder's pid when it has written it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> ReleaseLock:
        if self._fd is not None:
            raise ReleaseLocked(f"release lock {self.path} is already held by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._owner(fd)
            os.close(fd)
            who = f"held by pid {holder}" if holder is not None else "held by another process"
            raise ReleaseLocked(
                f"another release or rollback is running ({who}, lock {self.path}); wait for it"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _owner(fd: int) -> int | None:
        try:
            return int(os.pread(fd, 32, 0).split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def owner(self) -> int | None:
        """The pid written by the current (or last) holder, or None."""
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def __exit__(self, *exc: object) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock
