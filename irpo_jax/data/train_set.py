"""The training set: the AdaIR layout's pairs and extra paired folders, scanned; the mixture.

:func:`train_records` turns a data config into the unique training pairs (:class:`Record`, by
path, no pixels); :func:`mixture_indices` is one epoch of the official all-in-one mixture over
them. The layout is the official one (adair-spec.md section 10), so the demo set
(``python -m irpo_jax.data.demo --out DIR``) and the real data are read by the same code::

    ROOT/Train/Denoise/                  clean images; names listed in LISTS/noisy/denoise.txt;
                                         noise synthesised on the fly at sigma 15/25/50
    ROOT/Train/Derain/{rainy,gt}/        LISTS/rainy/rainTrain.txt: rainy/rain-N.png
                                         -> gt/norain-N.png
    ROOT/Train/Dehaze/{synthetic,original}/  LISTS/hazy/hazy_outside.txt:
                                         synthetic/partK/IIII_A_B.ext -> original/IIII.ext
                                         (the hazy file's extension)
    ROOT/Train/Deblur/{blur,sharp}/      GoPro, same names
    ROOT/Train/Enhance/{low,gt}/         LOL, same names

``LISTS`` is ``data.list_dir`` (:mod:`irpo_jax.data.config`). Task names are those of
:data:`irpo_jax.tasks.TASKS`; a denoise record's noise level is ``Record.sigma``.

**Bad input** is handled before training where possible (:func:`train_records` scans headers):
missing or unreadable files, degraded/clean size mismatches and images smaller than the
training crop are skipped, counted in a :class:`ScanReport` and logged with the file name;
missing folders and empty folders raise :class:`DataError` naming the path and what to do.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from irpo_jax.data.config import DataConfig, data_root, list_dir, resolve_data_config, under
from irpo_jax.data.images import cropped_size, image_size
from irpo_jax.data.records import (
    DataError,
    Record,
    ScanReport,
    find_by_stem,
    images_in,
    is_image,
    paired_folder_records,
    relative_to_root,
)
from irpo_jax.tasks import TASK_IDS

__all__ = ["mixture_indices", "train_records"]

log = logging.getLogger("irpo_jax.data.readers")  # the name these logs have always carried


def _require_dir(folder: Path, what: str, key: str) -> None:
    if not folder.is_dir():
        raise DataError(
            f"{what}: folder {folder} does not exist. Set {key} to the right place (paths are "
            "relative to data.root), or drop the task from data.tasks."
        )


def _read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _task_pairs(task: str, cfg: DataConfig, root: Path) -> list[tuple[str | None, str, str]]:
    """``[(degraded path or None, clean path, id base)]`` of one task's official training set."""
    folder = under(root, cfg.train_dirs[task])
    _require_dir(folder, f"{task} training set", f"data.train_dirs.{task}")
    list_rel = cfg.list_files.get(task)
    listed: list[str] | None = None
    if list_rel:
        list_path = list_dir(cfg, root) / list_rel
        if list_path.is_file():
            listed = _read_list(list_path)
        else:
            log.warning(
                "%s: list file %s not found; using every image in %s instead (set "
                "data.list_dir / data.list_files.%s to use the official list)",
                task,
                list_path,
                folder,
                task,
            )
    pairs: list[tuple[str | None, str, str]] = []
    if task == "denoise":
        names = listed if listed is not None else [p.name for p in images_in(folder)]
        for name in names:
            p = folder / name
            pairs.append((None, str(p), relative_to_root(root, p)))
    elif task == "derain":
        if listed is None:
            _require_dir(folder / "rainy", "derain training set", "data.train_dirs.derain")
            listed = [f"rainy/{p.name}" for p in images_in(folder / "rainy")]
        for line in listed:
            # dataset_utils._get_gt_name: rainy/rain-N.png -> gt/norain-N.png
            gt = line.split("rainy")[0] + "gt/norain-" + line.split("rain-")[-1]
            rainy = folder / line
            pairs.append((str(rainy), str(folder / gt), relative_to_root(root, rainy)))
    elif task == "dehaze":
        if listed is None:
            _require_dir(folder / "synthetic", "dehaze training set", "data.train_dirs.dehaze")
            listed = sorted(p.relative_to(folder).as_posix() for p in (folder / "synthetic").rglob("*") if is_image(p))
        for line in listed:
            hazy = folder / line
            # dataset_utils._get_nonhazy_name: original/IIII.<extension of the hazy file>; other
            # extensions are accepted too, since INSTALL.md draws .png GTs next to .jpg hazy files.
            gt_dir = folder / (line.split("synthetic")[0] + "original")
            gt = find_by_stem(gt_dir, hazy.name.split("_")[0], hazy.suffix)
            pairs.append((str(hazy), str(gt), relative_to_root(root, hazy)))
    else:  # deblur (GoPro blur/sharp), lowlight (LOL low/gt): same names in both folders
        deg_sub, gt_sub = ("blur", "sharp") if task == "deblur" else ("low", "gt")
        _require_dir(folder / deg_sub, f"{task} training set", f"data.train_dirs.{task}")
        _require_dir(folder / gt_sub, f"{task} training set", f"data.train_dirs.{task}")
        for p in images_in(folder / deg_sub):
            pairs.append((str(p), str(folder / gt_sub / p.name), relative_to_root(root, p)))
    if not pairs:
        raise DataError(
            f"{task} training set: no images found in {folder}"
            + (f" (list file {list_rel} is empty)" if listed is not None else "")
            + f". Put the data there, fix data.train_dirs.{task}, or drop {task!r} from data.tasks."
        )
    return pairs


def _scan(
    pairs: Sequence[tuple[str | None, str]], validate: str, min_side: int, base: int, report: ScanReport
) -> list[tuple[int, int] | None]:
    """Checks every pair; returns the clean size per pair, or None for a skipped pair."""
    paths = sorted({p for pair in pairs for p in pair if p is not None})
    sizes: dict[str, tuple[int, int] | str] = {}

    def probe(p: str) -> tuple[str, tuple[int, int] | str]:
        if not os.path.isfile(p):
            return p, "file not found"
        if validate == "none":
            return p, (0, 0)
        try:
            return p, image_size(p, decode=validate == "decode")
        except DataError as err:
            return p, str(err)

    # Headers are I/O bound (network file systems): a thread pool hides the latency. RESIDE
    # alone is ~80k files, hence the progress bar for large sets.
    from tqdm import tqdm

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        for p, s in tqdm(
            pool.map(probe, paths),
            total=len(paths),
            unit="file",
            desc=f"checking images ({validate})",
            disable=len(paths) < 5000,
            leave=False,
        ):
            sizes[p] = s
    out: list[tuple[int, int] | None] = []
    for degraded, clean in pairs:
        s_clean = sizes[clean]
        s_deg = sizes[degraded] if degraded is not None else s_clean
        bad = next(
            ((p, s) for p, s in ((clean, s_clean), (degraded, s_deg)) if p is not None and isinstance(s, str)), None
        )
        if bad is not None:
            report.skip(bad[0], bad[1])
            out.append(None)
            continue
        if validate == "none":  # sizes unknown: checked when a sample is decoded
            out.append((0, 0))
            continue
        if s_deg != s_clean:
            report.skip(
                degraded,
                f"size {s_deg[1]}x{s_deg[0]} differs from its ground truth "
                f"{clean} ({s_clean[1]}x{s_clean[0]}); pairs must be aligned",
            )
            out.append(None)
            continue
        ch, cw = cropped_size(s_clean, base)
        if min(ch, cw) < max(min_side, 1):
            report.skip(
                degraded or clean,
                f"{s_clean[1]}x{s_clean[0]} ({cw}x{ch} after crop_img(base={base})) is "
                f"smaller than the {min_side}x{min_side} training crop",
            )
            out.append(None)
            continue
        out.append(s_clean)
    return out


def train_records(
    cfg: Any, *, validate: str | None = None, min_side: int | None = None
) -> tuple[list[Record], ScanReport]:
    """The unique training pairs of the configured mixture (no repetition), scanned.

    Args:
      cfg: the data config (a :class:`~irpo_jax.data.config.DataConfig`, or a dict or ConfigDict
        that :func:`~irpo_jax.data.config.resolve_data_config` resolves).
      validate: override ``data.validate`` ("header", "decode" or "none").
      min_side: smallest acceptable side after ``crop_img``; default ``data.patch_size``.

    Returns:
      ``(records, report)``: records in a fixed order (tasks in ``data.tasks`` order, then
      ``data.paired_train``; denoise images x sigmas), and what was skipped and why (already
      logged as warnings, one per file).

    Raises:
      DataError: a missing or empty folder, or every record of a task unusable.
    """
    cfg = resolve_data_config(cfg)
    root = data_root(cfg)
    validate = validate or cfg.validate
    min_side = cfg.patch_size if min_side is None else min_side
    report = ScanReport()
    # (group name, task, [(degraded or None, clean, id)])
    groups: list[tuple[str, str, list[tuple[str | None, str, str]]]] = []
    for task in cfg.tasks:
        pairs = _task_pairs(task, cfg, root)
        groups.append((task, task, [(d, c, f"{task}:{key}") for d, c, key in pairs]))
    for spec in cfg.paired_train:
        spec = dict(spec)
        name = spec.get("name") or Path(spec["path"]).name
        if name in TASK_IDS:
            raise DataError(
                f"data.paired_train: the set name {name!r} is a task name; give the "
                'entry another "name" (ids and repeat factors are keyed by it)'
            )
        recs = paired_folder_records(under(root, spec["path"]), spec["task"], name)
        groups.append((name, spec["task"], [(r.degraded, r.clean, r.id) for r in recs]))

    records: list[Record] = []
    for group, task, pairs in groups:
        sizes = _scan([(d, c) for d, c, _ in pairs], validate, min_side, cfg.crop_base, report)
        kept = 0
        for (degraded, clean, key), size in zip(pairs, sizes):
            if size is None:
                continue
            size = None if size == (0, 0) else size
            if degraded is None:  # denoise: one record per noise level
                for s in cfg.sigmas:
                    records.append(Record(f"{key}@s{int(s)}", task, int(s), clean, None, size))
            else:
                records.append(Record(key, task, 0, clean, degraded, size))
            kept += 1
        report.kept[group] = kept
        if kept == 0:
            report.log()
            raise DataError(
                f"{group}: none of its {len(pairs)} pair(s) is usable (see the warnings above, "
                f"e.g. {report.skipped[-1][0]}: {report.skipped[-1][1]})."
            )
    report.log()
    return records, report


def mixture_indices(records: Sequence[Record], cfg: Any) -> list[int]:
    """Record indices of one epoch of the mixture: each record repeated ``data.repeats[task]``
    times (paired_train records: their own ``repeat``, default 1). ``cfg``: as for
    :func:`train_records`."""
    cfg = resolve_data_config(cfg)
    paired = {
        (dict(s).get("name") or Path(dict(s)["path"]).name): int(dict(s).get("repeat", 1)) for s in cfg.paired_train
    }
    out: list[int] = []
    for i, r in enumerate(records):
        set_name = r.id.split(":", 1)[0]
        n = paired[set_name] if set_name in paired else int(cfg.repeats.get(r.task, 1))
        out.extend([i] * n)
    return out
