"""Files written so that a crash never leaves half of one: atomic writes, the project lock.

Every write of state goes through `atomic_save` (a temporary file in the same directory,
fsync, rename over the target, fsync the directory): a reader sees the old file or the new
one, never a part. `ProjectLock` keeps a second search off a project while one runs.

This module imports neither Keras nor KerasTuner.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner_app.errors import DiskFull, UsageError, rerun

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old or the new file, never a part."""

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    atomic_save(path, write)


def atomic_save(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Have `write(tmp)` write a file, then make it `path` atomically and durably.

    Temp file in the same directory (same suffix, for writers that go by it, like
    `keras.Model.save`), fsync it, rename it over the target, fsync the directory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make state unreadable to others
        fd = os.open(tmp, os.O_RDWR)  # (Windows flushes a handle open for writing only)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in _NO_ROOM:
            raise DiskFull(f"no room to write {path} ({os.strerror(e.errno)}); nothing was half-written and what was "
                           f"written before is kept: free space on {path.parent} and {rerun('resume')}") from None
        raise
    _fsync_dir(path.parent)


_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # a full disk, a quota, a file size limit


STALE_TEMPORARY_S = 60  # a temporary file of `atomic_save` older than this was left by a killed process


def is_temporary(path: Path) -> bool:
    """Whether `path` is a temporary file of `atomic_save` (`.<name>.<random>.tmp<suffix>`)."""
    return path.name.startswith(".") and ".tmp" in path.name


def remove_stale_temporaries(pdir: Path) -> list[Path]:
    """Delete the temporary files that processes killed in the middle of an atomic write left in the
    project (older than `STALE_TEMPORARY_S`: a live writer's exists for milliseconds); the removed."""
    removed = []
    for path in pdir.rglob(".*.tmp*"):  # (what `is_temporary` says)
        try:
            if path.is_file() and time.time() - path.stat().st_mtime > STALE_TEMPORARY_S:
                path.unlink()
                removed.append(path)
        except OSError:  # (gone meanwhile)
            continue
    return removed


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """`atomic_write_bytes` of `obj` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def _fsync_dir(directory: Path) -> None:
    if os.name == "nt":  # a directory cannot be opened as a file there; NTFS journals the rename itself
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ProjectLock:
    """An exclusive lock on `<directory>/.<project>.lock` for the lifetime of a search (`filelock`).

    The operating system drops the lock when its process dies, so a stale lock file left by a
    killed search never blocks the next run; on a filesystem without native locks (some FUSE
    and network mounts) `filelock` falls back to its own lock file. Only the process that owns the oracle
    (a lone search, or the chief in distributed mode) takes it. Taking it changes no
    byte of an existing lock file; `claim` writes this process's pid once the search
    is sure to run, so that a refused run leaves the directory as it was.
    """

    def __init__(self, directory: str | os.PathLike, project: str):
        self.path = Path(directory) / f".{project}.lock"
        self.project = Path(directory) / project
        self._lock = None

    def acquire(self) -> ProjectLock:
        import filelock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(self.path, timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise UsageError(
                f"project {self.project} is being searched by another process (pid {self._holder()}); "
                "wait for it to finish, or use another --project"
            ) from None
        self._lock = lock
        return self

    def _holder(self) -> str:
        try:
            return self.path.read_text(errors="replace").strip()[:64] or "unknown"
        except OSError:  # (Windows: the holder's locked byte cannot be read)
            return "unknown"

    def claim(self) -> None:
        """Write this process's pid into the lock file (named by a second search that is refused)."""
        pid = str(os.getpid())
        with contextlib.suppress(OSError):  # (Windows: the locked byte cannot be written; the pid stays unknown)
            if self.path.read_text(errors="replace") != pid:
                with open(self.path, "r+") as f:  # (another descriptor: the lock stays with this process)
                    f.truncate(0)
                    f.write(pid)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_writable(directory: Path) -> None:
    """Raise UsageError unless `directory` exists (or can be created) and files can be written there."""
    probe = Path(directory).absolute()
    while not probe.exists():
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(str(probe))
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise UsageError(
            f"--directory {directory}: cannot write in {probe} ({e.strerror or e}); choose a writable --directory"
        ) from None
