"""Output directories of long-running commands: one writer at a time, clean leftovers, clear write errors.

``meteor train --out run/`` (and every other command that fills a directory for a long time)
takes a lock on it first, so that a second run into the same directory fails at once instead of
both "succeeding" while overwriting each other's checkpoints::

    with DirectoryLock(out, command="meteor train"):
        ...                       # run/.meteor.lock holds {"pid": 4242, "host": "node17", ...}

A lock left by a process that no longer exists on this host (``kill -9``, a node crash) is
taken over with a warning; a lock held by a live process, or by another host (whose processes
this one cannot see), is an error naming the holder's PID and host. Under ``torchrun`` only
rank 0 takes the lock (the ranks of one job write the directory together). The lock is
re-entrant within one process: an inner ``DirectoryLock`` on a directory this process already
holds is a no-op.

:func:`write_error` turns an ``OSError`` raised while writing (disk full, read-only file
system, permission) into an error that says which device and which file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from meteor_cli.errors import MeteorError, OutputNotWritableError, UsageError

LOCK_NAME = ".meteor.lock"


class DirectoryBusyError(UsageError):
    """Another live process holds the directory's lock."""


#: An output could not be written (disk full, read-only file system, no permission): exit 3.
OutputError = OutputNotWritableError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _hostname() -> str:
    return socket.gethostname()


def read_lock(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The holder recorded in ``directory``'s lock file, or None when unlocked (or unreadable)."""
    try:
        info = json.loads((Path(directory) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


class DirectoryLock:
    """An exclusive, advisory lock on an output directory (a ``.meteor.lock`` file in it).

    Args:
        directory: the directory (created if missing).
        command: what holds it, for the message a second writer sees.
        enabled: False on the non-zero ranks of a distributed job: a no-op.
        warn: where takeover warnings go (default: :func:`warnings.warn`).
    """

    def __init__(self, directory: str | os.PathLike[str], *, command: str = "meteor", enabled: bool = True,
                 warn: Callable[[str], None] | None = None) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.command = command
        self.enabled = enabled
        self._warn = warn
        self._held = False
        self._created: list[Path] = []

    def _warning(self, message: str) -> None:
        if self._warn is not None:
            self._warn(message)
        else:
            import warnings

            warnings.warn(message, stacklevel=3)

    def acquire(self) -> None:
        if not self.enabled or self._held:
            return
        if self.directory.exists() and not self.directory.is_dir():
            raise UsageError(f"{self.directory} is a file, not a directory", "choose a directory for --out")
        missing = [d for d in (self.directory, *self.directory.parents) if not d.exists()]
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, self.directory) from None
        self._created = missing  # removed again on release if still empty (a run that failed early)
        me = {"pid": os.getpid(), "host": _hostname(), "command": self.command,
              "since": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = read_lock(self.directory)
                if holder is None:  # being written this instant, or garbage: look again once
                    holder = {}
                pid, host = holder.get("pid"), holder.get("host")
                if pid == os.getpid() and host == _hostname():
                    return  # this process holds it already (an outer lock): re-entrant, released by the outer one
                if isinstance(pid, int) and host == _hostname() and not _pid_alive(pid):
                    self._warning(f"{self.directory} was locked by PID {pid} on {host} ({holder.get('command', '?')}), "
                                  f"which no longer runs; taking the lock over")
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                if not holder:
                    continue
                raise DirectoryBusyError(
                    f"{self.directory} is in use by PID {pid} on host {host} ({holder.get('command', '?')}, "
                    f"since {holder.get('since', '?')})",
                    f"wait for it to finish or choose another --out; if that process is gone, delete {self.path}")
            except OSError as exc:
                raise write_error(exc, self.path) from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
            self._held = True
            return
        raise DirectoryBusyError(f"could not take the lock {self.path}: it keeps changing",
                                 "another meteor process is starting in this directory; choose another --out")

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        holder = read_lock(self.directory)
        if holder is None or holder.get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        for d in self._created:  # innermost first; stops at the first that holds anything
            try:
                d.rmdir()
            except OSError:
                break

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def device_of(path: str | os.PathLike[str]) -> str:
    """The file system ``path`` lives on: ``"/dev/sda1 (mounted on /work)"`` or the mount point."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    mount = p
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[1] == str(mount):
                return f"{fields[0]} (mounted on {mount})"
    return str(mount)


def write_error(exc: OSError, path: str | os.PathLike[str]) -> MeteorError:
    """The error to raise for ``exc`` raised while writing ``path`` (the exception's own file if it names one)."""
    file = exc.filename if exc.filename else path
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = ""
        with contextlib.suppress(OSError):
            free = f" ({shutil.disk_usage(device_path(file)).free / 2**20:.0f} MiB free now)"
        what = "no space left" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        return OutputError(f"{what} on {device_of(file)} while writing {file}{free}",
                           "free some space (old checkpoints, caches) or write to another disk, then rerun"
                           " (training: add --resume)")
    if exc.errno == errno.EROFS:
        return OutputError(f"{device_of(file)} is a read-only file system; cannot write {file}",
                           "choose an --out on a writable disk")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return OutputError(f"permission denied writing {file}", "choose an --out you can write to")
    return OutputError(f"cannot write {file}: {exc.strerror or exc}", "check the output path and the disk")


def device_path(path: str | os.PathLike[str]) -> str:
    """The nearest existing ancestor of ``path`` (for ``disk_usage``)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return str(p)


@contextlib.contextmanager
def translating_write_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an ``OSError`` raised inside into :func:`write_error` about ``path``."""
    try:
        yield
    except OSError as exc:
        raise write_error(exc, path) from exc


def remove_orphans(directory: Path, patterns: tuple[str, ...]) -> list[Path]:
    """Delete leftover temporary entries (``.step-*.xyz`` dirs of a killed run) matching ``patterns``."""
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for pattern in patterns:
        for p in directory.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed
