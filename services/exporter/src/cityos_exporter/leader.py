"""One active exporter: an exclusive, non-blocking `flock` on `<var_dir>/exporter/leader.lock`.

The process that holds the lock is the exporter; any other exporter process on the same var dir is a
standby that tries again every `lock_retry_s` and takes over when the holder exits (the kernel drops a
`flock` with its process, however it ended — `kill -9` included). The lock file records the holder's
pid for people; the lock itself is the kernel's.

This elects among processes that share a filesystem: the embedded mode (`cityos dev`, `cityos serve`
on one machine). In a Kubernetes cluster the chart runs a single replica until the exporter elects
through a Kubernetes Lease (the `kubernetes` client), which comes with the Helm work.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class LeaderLock:
    """`try_acquire()` -> whether this process now holds the lock; `release()` gives it up."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        """The pid the lock file names (the holder, or the last one), for log lines."""
        with contextlib.suppress(OSError):
            return self.path.read_text().strip()
        return ""

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
