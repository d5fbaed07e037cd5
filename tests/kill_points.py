"""Test-only fault injection: run a module as ``__main__`` and SIGKILL the process at the N-th
filesystem operation it makes under one directory.

  KILL_DIR=runs/x KILL_AT=17 KILL_LOG=ops.log python -m tests.kill_points irpo_jax.train --workdir runs/x ...
  KILL_DIR=runs/x KILL_FROM="os.rename checkpoints/2.orbax-checkpoint-tmp$" KILL_AT=1 ...

Counted operations (each before it happens): opening a file for writing (``open``, ``io.open``
and so ``pathlib`` writes, ``os.open`` with a write flag, ``tempfile.mkstemp``), ``os.rename``,
``os.replace``, ``os.mkdir``, ``os.rmdir``, ``os.unlink``/``os.remove`` (also those
``shutil.rmtree`` makes file by file, relative to a directory descriptor) and ``shutil.rmtree``
itself, from any thread (orbax commits from its own). Writes inside a file already open, and
what tensorstore writes from C++ (orbax's array data), are not counted: a kill lands before or
after them. ``KILL_AT`` unset or 0 kills nothing (the log then lists every operation, for
planning). With ``KILL_FROM`` the count starts at the first operation that matches it, so a kill
can be aimed at a phase of the run whatever the start-up before it did: ``"[OP ]PATH"``, OP an
operation's name as logged (``os.rename``, ``open-a``, ...), PATH a prefix of the path relative
to ``KILL_DIR``, or the whole path when it ends with ``$`` (the example: orbax's commit of
checkpoint 2, killed just before it). Each counted operation is appended to ``KILL_LOG`` as
``index<TAB>op<TAB>path``, the one killed at as ``KILL<TAB>index<TAB>op<TAB>path``.

The kill is exact under any load: the KILL line is the log's last, and no counted operation
after it is done, also one that another thread reaches while the signal is being delivered
(:func:`_point` counts, logs and kills under one lock that the killing thread keeps).

torch is made unimportable (tests/block_torch.py): tensorboardX imports it when present, three
seconds per process, and the trainer's supervised stage needs none of it.
"""

import builtins
import io
import os
import runpy
import shutil
import signal
import sys
import threading
import time

import tests.block_torch  # noqa: F401  (see the module docstring)

_DIR = os.path.realpath(os.environ["KILL_DIR"])
_AT = int(os.environ.get("KILL_AT") or 0)
_FROM_OP, _, _FROM = (os.environ.get("KILL_FROM") or "").rpartition(" ")
_LOG = os.environ.get("KILL_LOG")
_lock = threading.RLock()  # reentrant: a signal handler's write inside _point must not deadlock
_count = 0  # operations so far
_start = 0 if not _FROM else None  # the count at which KILL_FROM first matched
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _under(path, dir_fd=None) -> str | None:
    """``path`` as an absolute path if it lies in the watched directory, else None."""
    if isinstance(path, int):
        return None
    try:
        path = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        full = os.path.abspath(path)
        # realpath of the parent: the watched directory may be reached through a symlink (/tmp)
        full = os.path.join(os.path.realpath(os.path.dirname(full)), os.path.basename(full))
    except (TypeError, ValueError, OSError):
        return None
    return full if full == _DIR or full.startswith(_DIR + os.sep) else None


def _point(op: str, *paths, dir_fd=None) -> None:
    """Counts one operation on ``paths`` (the first of them in the watched directory names it).

    Counting, logging and killing happen under one lock, which the killing thread never
    releases: an operation another thread (orbax's commit thread) reaches meanwhile waits for
    the lock and dies with the process, before it is logged or done. So the KILL line is the
    log's last, and nothing after the operation killed at happened, under any load.
    """
    global _count, _start
    full = next((p for p in (_under(path, dir_fd) for path in paths) if p is not None), None)
    if full is None:
        return
    relative = os.path.relpath(full, _DIR)
    with _lock:
        _count += 1
        index = _count
        if _start is None and _matches(op, relative):
            _start = index - 1
        kill = _AT > 0 and _start is not None and index - _start == _AT
        if _LOG:
            line = f"{'KILL' + chr(9) if kill else ''}{index}\t{op}\t{relative}\n"
            fd = _real_os_open(_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.write(fd, line.encode())
            os.close(fd)
        if kill:
            os.kill(os.getpid(), signal.SIGKILL)  # delivered before the call returns to this thread
            while True:  # (and should it not be, the lock stays held)
                time.sleep(60)


def _matches(op: str, relative: str) -> bool:
    if _FROM_OP and op != _FROM_OP:
        return False
    return relative == _FROM[:-1] if _FROM.endswith("$") else relative.startswith(_FROM)


def _writing(mode) -> bool:
    return isinstance(mode, str) and any(c in mode for c in "wax+")


_real_open, _real_os_open = io.open, os.open


def _open(file, mode="r", *args, **kwargs):
    if _writing(mode):
        _point(f"open-{mode}", file)
    return _real_open(file, mode, *args, **kwargs)


def _os_open(path, flags, mode=0o777, *, dir_fd=None):
    if flags & _WRITE_FLAGS:
        _point("os.open", path, dir_fd=dir_fd)
    return _real_os_open(path, flags, mode, dir_fd=dir_fd)


def _wrap(module, name: str, paths: int = 1):
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        _point(f"os.{name}", *args[:paths], dir_fd=kwargs.get("dir_fd", kwargs.get("src_dir_fd")))
        return real(*args, **kwargs)

    wrapped.__wrapped__ = real
    setattr(module, name, wrapped)


builtins.open = io.open = _open
os.open = _os_open
for _name, _paths in (("rename", 2), ("replace", 2), ("mkdir", 1), ("rmdir", 1), ("unlink", 1), ("remove", 1)):
    _wrap(os, _name, _paths)
_real_rmtree = shutil.rmtree


def _rmtree(path, *args, **kwargs):
    _point("shutil.rmtree", path)
    return _real_rmtree(path, *args, **kwargs)


_rmtree.avoids_symlink_attacks = _real_rmtree.avoids_symlink_attacks
shutil.rmtree = _rmtree


if __name__ == "__main__":
    target, *argv = sys.argv[1:]
    sys.argv = [target, *argv]
    runpy.run_module(target, run_name="__main__", alter_sys=True)
