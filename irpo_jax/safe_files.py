"""Writing files whole or not at all: the one way the package replaces a file.

Every write goes to a temporary sibling, is flushed to disk, then renamed over the target, so a
reader (or a run resumed after a kill) sees the old content or the new, never half of it. The
house rules, written once here:

* **One temporary name**: ``.<name>.partial-<pid>-<thread>-<random>`` in the target's folder
  (same file system: the rename is atomic), hidden, unique per process and thread, and naming
  the writer's process so that :func:`remove_partial_files` can tell a killed writer's leftover
  from a live one's. TensorBoard reads every file with ``tfevents`` in its name, so that word is
  written ``tf-events`` in the temporary name of an event file.
* **One permission rule**: the result gets the mode a plain ``open()`` gives a new file, 0666
  less the umask (``tempfile.mkstemp`` would make it 0600, private). The temporary file is
  created with that mode by the kernel, so the umask is never changed (``os.umask`` is
  process-wide: reading it by setting it races with other threads).
* **fsync of the file** before the rename (a power cut after the rename cannot leave an empty
  file). The folder is not fsynced: nothing here needs the rename itself to survive a power cut.
* **Nothing left behind by an exception**: the temporary file is deleted and the error raised.
  A killed writer leaves its temporary file; :func:`remove_partial_files` deletes those whose
  process is gone (or, for a caller that holds the folder's lock, all of them).

A folder written whole (a model directory, a page) is built in a temporary sibling of the same
name pattern and renamed into place: :func:`atomic_directory`.

This module imports nothing from the package (it is the ground floor every layer may use).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

PARTIAL = ".partial-"  # in every temporary name; also in the older names (.<name>.partial-<random>)
_PATTERN = re.compile(r"^\..*\.partial-(?P<pid>\d+)-(?P<thread>\d+)-[0-9a-f]+$")
DAY = 24 * 3600.0  # the age after which a leftover is removed even if its process number is in use
# A dead writer's leftover is removed once this old: its process number is this machine's, and a
# writer on another machine sharing the folder touches its file at least this often while alive.
_GRACE_S = 60.0


def partial_name(path: os.PathLike | str) -> pathlib.Path:
    """A fresh temporary name beside ``path`` (not created): ``.<name>.partial-<pid>-<thread>-<random>``."""
    path = pathlib.Path(path)
    name = path.name.replace("tfevents", "tf-events")  # TensorBoard would read the half-written copy
    return path.with_name(f".{name}{PARTIAL}{os.getpid()}-{threading.get_native_id()}-{secrets.token_hex(4)}")


def is_partial(path: os.PathLike | str) -> bool:
    """Whether ``path``'s name is a temporary name of this module (or of the writers before it)."""
    name = pathlib.Path(path).name
    return name.startswith(".") and PARTIAL in name


def _create(path: pathlib.Path) -> pathlib.Path:
    """Creates an empty temporary file beside ``path`` with the mode ``open()`` would give."""
    for _ in range(100):
        tmp = partial_name(path)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # only a random suffix colliding (same process and thread)
            continue
        except OSError as e:  # name the file the caller asked for, not the temporary one
            raise _naming(e, path) from e
        return tmp
    raise FileExistsError(17, "no free temporary name", str(path))


def _naming(err: OSError, path: pathlib.Path) -> OSError:
    """``err`` (same type, errno and reason) naming ``path``."""
    return type(err)(err.errno, err.strerror, str(path))


def _fsync(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str) -> Iterator[pathlib.Path]:
    """Yields a temporary path to write ``path``'s new content to (by name: ``torch.save``, an
    image writer); when the block ends without an exception the file is fsynced and renamed over
    ``path``; otherwise it is deleted.

    The temporary file exists, empty, when the block starts (created with the ``open()`` mode).
    """
    path = pathlib.Path(path)
    tmp = _create(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if e.filename not in (str(tmp), tmp) or e.errno is None:
            raise
        raise _naming(e, path) from e  # the file the caller asked for, not the temporary one
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_open(path: os.PathLike | str, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` for writing, whole or not at all (see :func:`atomic_path`).

    Args:
      path: the file to write.
      mode: ``"w"`` or ``"wb"``.
      **kwargs: passed to ``open`` (``encoding``, ``newline``).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> None:
    """Writes ``data`` to ``path`` whole or not at all."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: os.PathLike | str, text: str) -> None:
    """Writes ``text`` to ``path`` whole or not at all (the platform's default encoding, as
    ``Path.write_text``)."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: os.PathLike | str, value: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """Writes ``json.dumps(value, indent=indent, sort_keys=sort_keys)`` and a newline, whole or not at all."""
    atomic_write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys) + "\n")


@contextlib.contextmanager
def atomic_directory(dst: pathlib.Path) -> Iterator[pathlib.Path]:
    """Yield a fresh temporary directory beside ``dst``; move it to ``dst`` only on success.

    ``dst`` must not exist when the block ends (callers decide about overwriting first).
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(dst)
    tmp.mkdir(0o777)  # the mode mkdir gives an ordinary directory under the umask (mkdtemp's is private)
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_partial_files(directory: os.PathLike | str, *, max_age_s: float = DAY) -> list[pathlib.Path]:
    """Deletes the temporary files killed writers left in ``directory`` (not in its subfolders).

    A temporary file is removed when its writer's process is gone (the process number in its
    name is not running on this machine) and it has not changed for a minute, or when it is
    older than ``max_age_s`` (its process number may have been reused; a temporary name
    without one is from the writers before this module). A caller that holds the folder's
    lock (so that no other writer can be at work) passes ``max_age_s=0`` to remove every one.
    Other files, and folders, are never touched.

    Returns:
      The paths removed.
    """
    removed = []
    now = time.time()
    for entry in pathlib.Path(directory).iterdir():
        if not is_partial(entry) or not entry.is_file() or entry.is_symlink():
            continue
        match = _PATTERN.match(entry.name)
        try:
            age = now - entry.stat().st_mtime
            if age >= max_age_s or (age >= _GRACE_S and match is not None and not _alive(int(match["pid"]))):
                entry.unlink()
                removed.append(entry)
        except FileNotFoundError:  # its writer finished (renamed it) or cleaned it meanwhile
            continue
    return removed
