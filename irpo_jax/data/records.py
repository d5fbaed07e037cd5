"""What the data readers hand around: pairs by path (:class:`Record`), scan reports, errors.

A :class:`Record` is one (degraded, clean) pair by path, with its task and (for synthesised
noise) its noise level; no pixels. The readers of the training set
(:mod:`irpo_jax.data.train_set`), the test sets (:mod:`irpo_jax.data.eval_sets`,
:mod:`irpo_jax.data.ood_sets`) and the mining manifest (:mod:`irpo_jax.data.manifest`) all return
records, and every data problem they find is a :class:`DataError` naming the path and what to do.
Also here: the file-listing rules they share (which files are images, matching by stem) and the
generic paired folder (``input/`` + ``target/``, same names) that training, evaluation and the
mini benchmark read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from irpo_jax.tasks import TASK_IDS, TASKS

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataError",
    "Record",
    "ScanReport",
    "find_by_stem",
    "fingerprint",
    "images_in",
    "is_image",
    "paired_folder",
    "paired_folder_records",
    "relative_to_root",
]

log = logging.getLogger("irpo_jax.data.readers")  # the name these logs have always carried

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A data problem found before (or instead of) training; the message names the file or folder
    and says what to do. ``path`` is the one file to blame, when there is one."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


@dataclasses.dataclass(frozen=True)
class Record:
    """One training or test pair, by path; no pixels.

    Attributes:
      id: stable key, independent of where the data root lives: ``"<task>:<path>"`` with the
        degraded (or, for denoise, clean) path relative to the data root, plus ``"@s<sigma>"``
        for denoise records; ``"<set>:<name>"`` for paired folders.
      task: a name in :data:`TASKS`.
      sigma: noise level in 0..255 units for synthesised noise (denoise), else 0.
      clean: path of the ground truth.
      degraded: path of the degraded image; None when noise is synthesised from ``clean``.
      size: ``(H, W)`` of the stored clean image (before ``crop_img``), when scanned.
    """

    id: str
    task: str
    sigma: int
    clean: str
    degraded: str | None
    size: tuple[int, int] | None = None

    @property
    def task_id(self) -> int:
        return TASK_IDS[self.task]


@dataclasses.dataclass
class ScanReport:
    """What a scan kept and skipped. ``skipped`` is ``[(path, reason)]``."""

    kept: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def skip(self, path: str | os.PathLike, reason: str) -> None:
        self.skipped.append((str(path), reason))

    def log(self, what: str = "training data", limit: int = 20) -> None:
        """Logs one warning per skipped file (the first ``limit``) and a summary."""
        for path, reason in self.skipped[:limit]:
            log.warning("skipped %s: %s", path, reason)
        if len(self.skipped) > limit:
            log.warning("... and %d more skipped files", len(self.skipped) - limit)
        if self.skipped:
            log.warning(
                "%s: skipped %d record(s), kept %s",
                what,
                len(self.skipped),
                ", ".join(f"{t} {n}" for t, n in self.kept.items()),
            )


def is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image(p))


def relative_to_root(root: Path, p: Path) -> str:
    """``p`` relative to ``root`` in POSIX form; ``p`` itself when it lies outside ``root``."""
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def find_by_stem(folder: Path, stem: str, prefer_ext: str) -> Path:
    """``folder/stem.prefer_ext`` if it exists, else the first ``folder/stem.<image ext>`` found,
    else the preferred path (which then fails the scan as missing)."""
    preferred = folder / f"{stem}{prefer_ext}"
    if preferred.exists():
        return preferred
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        cand = folder / f"{stem}{ext}"
        if cand.exists():
            return cand
    return preferred


def paired_folder_records(path: str | os.PathLike, task: str, name: str) -> list[Record]:
    """Records of a generic paired folder: ``path/input/X`` with ``path/target/X``.

    Names match exactly, or by stem when only the extension differs (``input/a.jpg`` ->
    ``target/a.png``). Unmatched inputs are logged and left out.

    Raises:
      DataError: a missing folder, no images, or no input with a matching target.
    """
    folder = Path(os.path.expanduser(str(path))).absolute()
    records, unmatched = paired_folder(folder, task, name)
    if unmatched:
        log.warning(
            "paired folder %s: %d input(s) without a target in %s, left out: %s",
            name,
            len(unmatched),
            folder / "target",
            ", ".join(unmatched[:5]),
        )
    return records


def paired_folder(folder: Path, task: str, name: str) -> tuple[list[Record], list[str]]:
    """``(records, names of the inputs without a target)`` of ``folder/{input,target}``."""
    if task not in TASK_IDS:
        raise DataError(f"paired folder {name!r}: unknown task {task!r}; valid: {', '.join(TASKS)}")
    for sub in ("input", "target"):
        if not (folder / sub).is_dir():
            raise DataError(
                f"paired folder {name!r}: {folder / sub} does not exist. A paired folder needs "
                "input/ (degraded) and target/ (clean) sub-folders with matching file names."
            )
    inputs = images_in(folder / "input")
    if not inputs:
        raise DataError(f"paired folder {name!r}: no images in {folder / 'input'}")
    targets = {p.name: p for p in images_in(folder / "target")}
    by_stem = {p.stem: p for p in targets.values()}
    records, unmatched = [], []
    for p in inputs:
        t = targets.get(p.name) or by_stem.get(p.stem)
        if t is None:
            unmatched.append(p.name)
            continue
        records.append(Record(f"{name}:{p.name}", task, 0, str(t), str(p)))
    if not records:
        raise DataError(
            f"paired folder {name!r}: no file in {folder / 'input'} has a target of the same name "
            f"in {folder / 'target'}."
        )
    return records, unmatched


def fingerprint(records: Iterable[Record]) -> str:
    """sha256 (16 hex) of the record ids, in order: identifies a dataset independent of its root."""
    h = hashlib.sha256()
    for r in records:
        h.update(r.id.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
