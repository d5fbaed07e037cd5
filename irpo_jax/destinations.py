"""Where the command-line tools write: checked before any work, reported in one line.

A conversion, a mining run or a training start can take minutes before its first write; a
destination that cannot be written must fail before that, and with a message that names the
path and what is wrong with it (not ``[Errno 17] File exists`` from deep inside ``mkdir``).

The checks create nothing: they find the nearest part of the path that exists and, where the
destination would be created, make and remove a probe folder there. A permission check by mode
bits would not do: the tools often run as root, whom mode bits do not stop, while ``/proc``, a
read-only mount or a full disk still do. :func:`os_error_line` words an :class:`OSError` that
happens anyway (the disk fills up during the run) for the same one-line reports.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

__all__ = ["DestinationError", "check_directory", "check_file", "os_error_line"]


class DestinationError(ValueError):
    """An output path that cannot be written; the message names it and what to do."""


def _nearest_existing(path: pathlib.Path) -> pathlib.Path:
    """``path`` itself or its closest ancestor that exists (following symlinks)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe(folder: pathlib.Path, what: str) -> None:
    """Makes and removes a probe folder in ``folder``; raises DestinationError if it cannot."""
    try:
        pathlib.Path(tempfile.mkdtemp(prefix=".irpo-write-probe-", dir=folder)).rmdir()
    except OSError as err:
        raise DestinationError(
            f"{what}: cannot write in {folder} ({err.strerror or err}); choose a writable location"
        ) from err


def _label(path: pathlib.Path, flag: str | None) -> str:
    return f"{flag} {path}" if flag else str(path)


def _check_parents(path: pathlib.Path, what: str) -> pathlib.Path:
    """The existing folder ``path`` would be created in; raises if an ancestor is a file."""
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise DestinationError(
            f"{what}: cannot create it because {existing} is a file, not a folder; choose another location"
        )
    return existing


def check_directory(path: str | os.PathLike, flag: str | None = None) -> None:
    """Checks that the folder ``path`` exists and can be written in, or can be created.

    Args:
      path: the output folder.
      flag: the command-line flag it came from (``--out``), named in the message.

    Raises:
      DestinationError: ``path`` is a file, an ancestor is a file, or the place where it
        would be written refuses writes (the message says which).
    """
    path = pathlib.Path(path).absolute()
    what = _label(path, flag)
    if path.exists() and not path.is_dir():
        raise DestinationError(f"{what} is an existing file, not a folder; choose a folder")
    if path.is_dir():
        _probe(path, what)
        return
    _probe(_check_parents(path, what), what)


def check_file(path: str | os.PathLike, flag: str | None = None) -> None:
    """Checks that the file ``path`` can be written (its folder exists or can be created).

    An existing file is not refused here (the caller decides about replacing it).

    Raises:
      DestinationError: ``path`` is a folder, an ancestor is a file, or its folder refuses
        writes.
    """
    path = pathlib.Path(path).absolute()
    what = _label(path, flag)
    if path.is_dir():
        raise DestinationError(f"{what} is an existing folder; give a file path, e.g. {path / 'out'}")
    _probe(_check_parents(path, what), what)


def os_error_line(err: OSError, doing: str = "cannot write") -> str:
    """One line for an OSError: what was being done, to which path, and the system's reason."""
    where = err.filename if err.filename is not None else "?"
    other = f" -> {err.filename2}" if err.filename2 is not None else ""
    return f"{doing} {where}{other}: {err.strerror or err}"
