"""One writer per workdir: a live run holds an exclusive lock on ``<workdir>/.lock``.

Two runs writing one workdir (a scheduler's retry while the first attempt still runs, a second
terminal) would interleave their checkpoints and logs, and both would report finished. The lock
is ``fcntl.flock`` on the lock file, which the kernel releases when the holder dies however it
dies (SIGKILL, OOM, power loss of the process), so a stale lock cannot block a rerun. The file
also records who holds it (process id, host, start time, command) for the refusal message; a
record left by a process that died is reported when the next run takes the lock over.

On a network filesystem ``flock`` is only as good as the filesystem's lock support (NFS
emulates it with byte-range locks through its lock manager; some cluster filesystems keep
such locks local to one client): the README says so.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
import socket
import sys
import time
from typing import Any, Self

from irpo_jax.training.errors import TrainingError

log = logging.getLogger("irpo_jax.train")

LOCK_NAME = ".lock"


class WorkdirLock:
    """The exclusive lock of one run on its workdir; :meth:`release` (or the process's death) frees it.

    Use :func:`acquire` to take one.
    """

    def __init__(self, path: pathlib.Path, fd: int, record: dict[str, Any]):
        self.path, self._fd, self.record = path, fd, record

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Empties the record (a clean release leaves no holder to report) and unlocks."""
        import fcntl

        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:  # a read-only remount at the end of a run: the unlock still matters
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(workdir: pathlib.Path) -> WorkdirLock:
    """Takes the workdir's lock, or refuses with the holder's process id, host and start time.

    The workdir must exist. The lock file descriptor is not inherited by subprocesses
    (``O_CLOEXEC``), so a reward server started by the run does not keep the workdir locked
    after the run dies.

    Raises:
      TrainingError: another live process holds the lock (the message names it), or the lock
        file cannot be created.
    """
    import fcntl

    path = workdir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise TrainingError(f"--workdir {workdir}: cannot create its lock file {path} ({e.strerror or e})") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_record(fd)
        os.close(fd)
        raise TrainingError(
            f"--workdir {workdir} is in use by {describe(holder)} (lock file {path}); two runs would write "
            "the same checkpoints and logs. Wait for that run to end (or stop it: SIGTERM saves a "
            "checkpoint), then rerun this command to resume, or choose another --workdir."
        ) from None
    except OSError as e:  # ENOLCK: a filesystem without lock support
        os.close(fd)
        raise TrainingError(
            f"--workdir {workdir}: cannot lock {path} ({e.strerror or e}); the filesystem may not "
            "support locks. Use a workdir on a local filesystem."
        ) from e
    previous = _read_record(fd)
    if previous:
        log.warning("took over the lock of %s: that process is gone (it did not end cleanly)", describe(previous))
        print(f"note: {workdir} was last locked by {describe(previous)}, which is gone; taking it over")
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "since_unix": time.time(),
        "command": " ".join(sys.argv),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    except OSError as e:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise TrainingError(f"--workdir {workdir}: cannot write its lock file {path} ({e.strerror or e})") from e
    return WorkdirLock(path, fd, record)


def describe(record: dict[str, Any] | None) -> str:
    """``process 1234 on host gpu7 since 2026-01-02T03:04:05+00:00 (python -m irpo_jax.train ...)``."""
    if not record:
        return "another process (it has not written its record yet)"
    text = f"process {record.get('pid', '?')} on host {record.get('host', '?')} since {record.get('since', '?')}"
    command = record.get("command")
    return f"{text} ({command})" if command else text


def _read_record(fd: int) -> dict[str, Any] | None:
    try:
        raw = os.pread(fd, 1 << 16, 0).decode(errors="replace").strip()
        record = json.loads(raw) if raw else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
