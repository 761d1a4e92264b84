"""One driver per sweep: ``driver.lock`` in the sweep's folder, held with ``flock`` for as
long as the driver runs and holding its pid. The kernel drops the lock when the process
ends, however it ends, so a lock left by a killed driver never blocks ``--resume``.
"""
from __future__ import annotations

import fcntl
import os

__all__ = ["LOCK_FILE", "SweepLock", "AlreadyRunning"]

LOCK_FILE = "driver.lock"


class AlreadyRunning(Exception):
    def __init__(self, path: str, pid: int | None):
        super().__init__(path, pid)
        self.path, self.pid = path, pid


class SweepLock:
    """``with SweepLock(folder): ...``; raises ``AlreadyRunning`` when another live driver
    holds the folder."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> "SweepLock":
        os.makedirs(self.folder, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise AlreadyRunning(self.path, pid) from None
            try:            # the file we locked may have been removed by its last holder
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)          # closing drops the flock
            self._fd = None

    def __enter__(self) -> "SweepLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
