"""A downloads folder as one tree of files, whatever is packed how: the reading side of ``prepare``.

``prepare`` recognises the data sets by where their files lie (``GOPRO_Large/train/<seq>/blur``,
``our485/low``, ``part1/0025_0.8_0.1.jpg``), not by how the user happened to download them: a
release may sit in its archive as published (zip, tar[.gz|.bz2|.xz], 7z, rar), already extracted
into a folder, or both. :func:`scan` lists every file of a downloads folder and of every archive
in it under one *virtual path* -- the file's path below the downloads folder, with an archive
standing for a folder of its own name (``OTS_BETA/haze/part1.zip/part1/0025_0.8_0.04.jpg``) --
and :func:`place` puts a chosen file at a destination: a hard link (or a symbolic link, or a
copy) for a plain file, an extraction for an archive member. Images are never decoded or
re-encoded; nothing below the downloads folder is ever written, moved or deleted.

zip and tar are read with the standard library. 7z and rar (the Waterloo Exploration Database
ships as ``exploration_database_and_code.rar``) are read with ``bsdtar`` (libarchive; Debian:
``apt-get install libarchive-tools``), which lists and extracts both; without it such an archive
is reported with that hint, and its extracted folder is read instead. An archive inside an
archive is reported (extract the outer one: ``prepare`` then finds the inner one as a file).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["ARCHIVE_SUFFIXES", "ArchiveError", "Member", "Scan", "bsdtar", "place", "scan"]

# Longest first, so that ``x.tar.gz`` is a tar and not a gz.
ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip", ".7z", ".rar")


class ArchiveError(OSError):
    """An archive that cannot be read (truncated, corrupt, or a format without a reader here)."""


def archive_kind(path: Path) -> str | None:
    """``"zip"``, ``"tar"``, ``"7z"``, ``"rar"`` for an archive's file name, else None."""
    name = path.name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return {".zip": "zip", ".7z": "7z", ".rar": "rar"}.get(suffix, "tar")
    return None


def bsdtar() -> str | None:
    """The ``bsdtar`` executable (reads 7z and rar), or None."""
    return shutil.which("bsdtar")


@dataclasses.dataclass(frozen=True)
class Member:
    """One file of the downloads, plain or inside an archive.

    Attributes:
      vpath: its virtual path below the downloads folder (POSIX), an archive standing for a folder
        of its own file name.
      source: the plain file, or the archive holding it.
      inner: its name inside ``source`` when that is an archive; None for a plain file.
      size: bytes (uncompressed), as listed.
    """

    vpath: str
    source: Path
    inner: str | None
    size: int

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.vpath.split("/"))

    @property
    def name(self) -> str:
        return self.vpath.rsplit("/", 1)[-1]

    @property
    def parent(self) -> str:
        return self.vpath.rsplit("/", 1)[0] if "/" in self.vpath else ""

    @property
    def where(self) -> str:
        """How a person finds it: the file, or ``archive:inner``."""
        return str(self.source) if self.inner is None else f"{self.source}:{self.inner}"


@dataclasses.dataclass
class Scan:
    """What :func:`scan` found: every file, the archives read, and what could not be read."""

    root: Path
    members: list[Member]
    archives: list[Path]
    problems: list[tuple[Path, str]]  # (archive, one line saying what is wrong and what to do)
    unused: list[str] = dataclasses.field(default_factory=list)  # top-level entries no set used


def _hidden(parts: Iterable[str]) -> bool:
    # macOS zips carry __MACOSX/._name resource forks; editors leave dot files.
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _zip_members(path: Path) -> list[tuple[str, int]]:
    try:
        with zipfile.ZipFile(path) as zf:
            return [(i.filename, i.file_size) for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
        raise ArchiveError(f"not a readable zip ({err}); it may be truncated: download it again") from err


def _tar_members(path: Path) -> list[tuple[str, int]]:
    try:
        with tarfile.open(path) as tf:
            return [(m.name, m.size) for m in tf.getmembers() if m.isfile()]
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        raise ArchiveError(f"not a readable tar ({err}); it may be truncated: download it again") from err


def _bsdtar_members(path: Path, kind: str) -> list[tuple[str, int]]:
    exe = bsdtar()
    if exe is None:
        raise ArchiveError(
            f"a {kind} archive needs bsdtar to be read (Debian/Ubuntu: apt-get install "
            "libarchive-tools); or extract it yourself into the downloads folder"
        )
    # -tv prints sizes, but its columns vary; names only, sizes are not needed to plan.
    proc = subprocess.run([exe, "-tf", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise ArchiveError(f"bsdtar cannot read it ({msg}); it may be truncated: download it again")
    return [(n, -1) for n in proc.stdout.splitlines() if n and not n.endswith("/")]


def _list_archive(path: Path) -> list[tuple[str, int]]:
    kind = archive_kind(path)
    if kind == "zip":
        return _zip_members(path)
    if kind == "tar":
        return _tar_members(path)
    return _bsdtar_members(path, kind or "?")


def scan(root: str | os.PathLike) -> Scan:
    """Every file below ``root`` and inside every archive there, by virtual path.

    Hidden files and folders (``.name``, ``__MACOSX``) are skipped; symbolic links to folders are
    not followed (a loop would never end), links to files are read as files. An archive that
    cannot be read is reported in :attr:`Scan.problems` and contributes nothing.

    Raises:
      ArchiveError: ``root`` is not a folder.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise ArchiveError(
            f"--downloads {root} is not a folder: point it at the folder holding the "
            "downloaded archives (or their extracted folders)"
        )
    members: list[Member] = []
    archives: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for d, subs, files in os.walk(root):
        subs[:] = sorted(s for s in subs if not _hidden([s]))
        for f in sorted(files):
            p = Path(d) / f
            rel = p.relative_to(root).as_posix()
            if _hidden([f]) or not p.is_file():
                continue
            if archive_kind(p) is None:
                members.append(Member(rel, p, None, p.stat().st_size))
                continue
            archives.append(p)
            try:
                listing = _list_archive(p)
            except ArchiveError as err:
                problems.append((p, str(err)))
                continue
            nested = [n for n, _ in listing if archive_kind(Path(n)) and not _hidden(n.split("/"))]
            if nested:
                problems.append(
                    (
                        p,
                        f"holds archive(s) {', '.join(nested[:3])}"
                        + (f" and {len(nested) - 3} more" if len(nested) > 3 else "")
                        + ": extract it into the downloads folder, prepare then reads the "
                        "inner archives as files",
                    )
                )
            for name, size in listing:
                parts = [q for q in name.split("/") if q not in ("", ".")]
                if not parts or _hidden(parts) or ".." in parts:
                    continue
                members.append(Member(rel + "/" + "/".join(parts), p, name, size))
    return Scan(root, members, archives, problems)


# --------------------------------------------------------------------------- placing files


def _link_or_copy(src: Path, dest: Path, link: str) -> str:
    """Puts the plain file ``src`` at ``dest``; returns how ("hardlink", "symlink", "copy")."""
    if link == "symlink":
        os.symlink(src.resolve(), dest)
        return "symlink"
    if link == "hardlink":
        try:
            os.link(src, dest)
            return "hardlink"
        except OSError:  # another filesystem, or one without hard links: copy
            pass
    shutil.copyfile(src, dest)
    return "copy"


def place(jobs: Sequence[tuple[Member, Path]], link: str = "hardlink") -> dict[str, int]:
    """Puts each member at its destination path (which must not exist; parents are created).

    Plain files are linked (``link``: "hardlink", falling back to a copy across filesystems;
    "symlink"; "copy"); archive members are extracted (a copy by nature), byte for byte.

    Returns:
      How many files were placed each way.

    Raises:
      ArchiveError: an archive member that cannot be extracted (a truncated or corrupt archive,
        a failed CRC), naming the archive and the member.
    """
    counts: dict[str, int] = {}
    by_archive: dict[Path, list[tuple[Member, Path]]] = {}
    for m, dest in jobs:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if m.inner is None:
            how = _link_or_copy(m.source, dest, link)
            counts[how] = counts.get(how, 0) + 1
        else:
            by_archive.setdefault(m.source, []).append((m, dest))
    for archive, items in by_archive.items():
        kind = archive_kind(archive)
        try:
            if kind == "zip":
                with zipfile.ZipFile(archive) as zf:
                    for m, dest in items:
                        with zf.open(m.inner) as src, open(dest, "wb") as out:
                            shutil.copyfileobj(src, out, 1 << 20)
            elif kind == "tar":
                with tarfile.open(archive) as tf:
                    for m, dest in items:
                        src = tf.extractfile(m.inner)
                        if src is None:
                            raise ArchiveError(f"{archive}: {m.inner} is not a regular file")
                        with src, open(dest, "wb") as out:
                            shutil.copyfileobj(src, out, 1 << 20)
            else:
                _bsdtar_extract(archive, items)
        except ArchiveError:
            raise
        except (zipfile.BadZipFile, tarfile.TarError, zlib.error, OSError, EOFError, ValueError) as err:
            raise ArchiveError(
                f"cannot extract from {archive}: {err}; it may be truncated or corrupt: download it again"
            ) from err
        counts["extracted"] = counts.get("extracted", 0) + len(items)
    return counts


def _bsdtar_extract(archive: Path, items: Sequence[tuple[Member, Path]]) -> None:
    exe = bsdtar()
    if exe is None:
        raise ArchiveError(f"{archive}: bsdtar is needed to extract it (apt-get install libarchive-tools)")
    # Into a scratch folder beside the first destination (same filesystem: the moves are renames).
    with tempfile.TemporaryDirectory(dir=items[0][1].parent, prefix=".extract-") as tmp:
        names = Path(tmp) / ".names"
        names.write_text("".join(m.inner + "\n" for m, _ in items))
        out = Path(tmp) / "x"
        out.mkdir()
        proc = subprocess.run(
            [exe, "-xf", str(archive), "-C", str(out), "-T", str(names)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            msg = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise ArchiveError(
                f"cannot extract from {archive}: {msg}; it may be truncated or corrupt: download it again"
            )
        for m, dest in items:
            got = out / m.inner
            if not got.is_file():
                raise ArchiveError(f"cannot extract {m.inner} from {archive}: bsdtar wrote no such file")
            os.replace(got, dest)
