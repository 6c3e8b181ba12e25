"""One writer per run directory: an exclusive lock held while a run trains.

The lock is an ``flock`` on RUN/.lock, which the operating system drops when
the process ends, however it ends: a lock left by a dead process never
blocks. The file holds the owner's process id, so a refused second writer is
told which process to wait for.

>>> with RunLock("runs/demo"):
...     ...   # train; another `vaelab train --out runs/demo` is refused meanwhile
"""

import fcntl
import os
from pathlib import Path

from vaelab.errors import CheckpointError

LOCK_NAME = ".lock"


class RunLock:
    """Holds RUN/.lock exclusively inside the ``with`` block; refuses if another process holds it."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd = None

    def __enter__(self):
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"{self.run_dir}: cannot write the run directory ({e.strerror})") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise CheckpointError(
                    f"{self.run_dir}: cannot write the run directory ({e.strerror})"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise CheckpointError(
                    f"{self.run_dir} is being trained by process {owner}; wait for it to end or stop it first"
                ) from None
            # The owner before us may have removed the file between our open and our lock:
            # then we hold a lock on a file nobody else will find, and try again.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            try:
                os.unlink(self.path)  # while still held, so no one else holds this file
            except FileNotFoundError:
                pass
            os.close(self._fd)  # closing releases the lock
            self._fd = None


def training_now(run_dir) -> bool:
    """Whether some process holds RUN/.lock now, that is, is training the run."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock this probe took
    return False
