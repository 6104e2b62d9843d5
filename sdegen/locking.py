"""Exclusive locks on run folders and output files, held for the life of a process.

``with hold_lock(path, what="run folder"):`` takes an exclusive ``fcntl.flock`` on a lock file
(``<folder>/.lock`` for a folder, ``<file>.lock`` beside a file) and writes this process's PID in it.
A second process asking for the same lock gets :class:`LockedError` at once, whose one-line message
names the path and the holder's PID. The kernel releases a flock when its holder dies (even by
``kill -9``), so a lock left by a dead process never blocks and needs no cleaning; a lock file left
behind is harmless. The lock file is removed on release.

Where ``fcntl`` is missing (Windows), :func:`hold_lock` warns and runs without a lock.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path
from typing import Iterator, Optional

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks
    fcntl = None

LOCK_NAME = ".lock"   # the lock file inside a locked folder


class LockedError(ValueError):
    """Another live process holds the lock; the message names the path and its PID."""


def lock_path(path: str | os.PathLike, folder: bool) -> Path:
    """The lock file of ``path``: ``<path>/.lock`` for a folder, ``<path>.lock`` for a file."""
    path = Path(path)
    return path / LOCK_NAME if folder else path.with_name(path.name + ".lock")


def holder(path: str | os.PathLike, folder: bool) -> Optional[int]:
    """PID written in the lock file of ``path`` (None if there is none); says nothing of whether it is live."""
    try:
        text = lock_path(path, folder).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _acquire(lock: Path) -> Optional[int]:
    """Open and flock ``lock``; return its descriptor, or None if another process holds it."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:  # the file we locked must still be the one at ``lock`` (a releasing holder unlinks it)
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _read_pid(lock: Path) -> str:
    for _ in range(20):  # the holder writes its PID just after taking the lock
        try:
            text = lock.read_text().strip()
        except OSError:
            text = ""
        if text:
            return text
        time.sleep(0.01)
    return "unknown"


@contextlib.contextmanager
def hold_lock(path: str | os.PathLike, what: str = "folder", *, folder: Optional[bool] = None) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (a folder or an output file) while the ``with`` block runs.

    ``folder``: whether ``path`` is a folder (created if missing); by default a folder if it is an existing
    one, else a file (that need not exist yet; its parent folder is created). ``what`` names ``path`` in
    messages; a folder created here and left empty is removed on release. Yields the lock file's path.
    Raises :class:`LockedError` if another live process holds the lock, ValueError if a folder is asked
    for and ``path`` is a file (or the reverse)."""
    path = Path(path)
    if folder is None:
        folder = path.is_dir()
    created = folder and not path.exists()
    if folder:
        if path.exists() and not path.is_dir():
            raise ValueError(f"the {what} {path} is a file, not a folder; give a folder")
        path.mkdir(parents=True, exist_ok=True)
    else:
        if path.is_dir():
            raise ValueError(f"the {what} {path} is a folder; give a file name")
        path.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_path(path, folder)
    if fcntl is None:
        warnings.warn(f"no file locks on this system: the {what} {path} is not protected against a second "
                      "process", RuntimeWarning)
        yield lock
        return
    fd = _acquire(lock)
    if fd is None:
        raise LockedError(f"the {what} {path} is in use by another process (PID {_read_pid(lock)}); wait for "
                          "it to finish or stop it")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)   # while still locked: a waiting process then retries on a fresh file
        os.close(fd)
        if created:   # a folder made only for the lock and left empty is removed again
            with contextlib.suppress(OSError):
                path.rmdir()
