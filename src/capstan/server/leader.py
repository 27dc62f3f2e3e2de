"""Which server process resumes pipeline runs and runs schedules.

With ``--workers N`` uvicorn starts N processes over one CAPSTAN_HOME. Each orchestrates the runs submitted to it,
but only one may resume unfinished runs after a restart and drive the schedule loop, or runs would be adopted
twice. The first process to take an exclusive lock on a file in CAPSTAN_HOME is that one; the operating system
drops the lock when the process exits.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class LeaderLock:
    """A non-blocking, process-wide exclusive lock on ``path``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; True when this process is now the leader."""
        if self._fd is not None:
            return True
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Give the lock up (a no-op when not held)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
