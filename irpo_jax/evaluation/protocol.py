"""The published evaluation protocol: every test row restored and scored, as one results dict.

The library entry point, which ``python -m irpo_jax.evaluate`` and the trainer (every
``train.eval_every`` steps) call::

    results = evaluate(model, data_cfg, sets=None, max_images=0)
    print(format_table(results)); write_results(results, out_dir); scalars(results)

**Protocol** (DESIGN.md "Metrics protocol", adair-spec.md 10.4-10.5): both images
``crop_img(base=16)``-ed and the degraded one run *whole* (no padding, no tiling) at batch size 1
semantics (every image is restored on its own; batching only groups images of one shape),
RGB float in [0, 1], output clipped to [0, 1], PSNR/SSIM with data range 1, no border shave,
skimage's SSIM (7x7 uniform window, sample covariance, channel mean) computed by
:mod:`irpo_jax.metrics`; a set's score is the mean of its per-image scores. Noisy sets (BSD68,
Urban100) are synthesised by the official seeded stream (``np.random.seed(0)``, sigma 15 -> 25
-> 50, files in sorted order; :mod:`irpo_jax.data.readers`) and reported as one *row* per sigma
(``bsd68_s25``). Matrix products run at full float32 precision (``precision="highest"``; no
TF32), so the numbers do not depend on the GPU generation.

**Out-of-domain sets** (IRPO Table 3): ``rrshid``, ``gtrain``, ``sidd``, ``reloblur``,
``lolistreet`` (group ``ood5``), read in their releases' own layouts under
``<data root>/test/ood/<set>/`` by :mod:`irpo_jax.data.ood_sets`, which says where each comes from,
how it pairs and what it averages (GT-Rain: per scene, then over scenes, as its test code).

**Whole sets or a marked partial row.** A set some of whose inputs have no matching target, or
cannot be read, is refused with the files named (a mean over fewer images is another number);
``--allow_partial`` scores the rest and marks the row partial in the tables and in results.json
(``partial``, ``left_out``).

**Options.** ``self_ensemble``: the x8 geometric self-ensemble (mean of the outputs for the 8
flips/rotations, each transformed back), labelled in every output. ``oracle_k``: for IRPO policy
checkpoints, ``K`` restorations sampled from the policy per image and the one with the best PSNR
*against the ground truth* scored -- an oracle upper bound that uses the answer, never a
result; reported separately and labelled "oracle" everywhere (keys, CSV columns, table titles).
Per-image sampling keys are ``fold_in(PRNGKey(seed), crc32("<row>/<file name>"))``, so they do
not depend on batching or device count; the samples are never self-ensembled. ``tile``: images with
a side above ``tile`` are restored window by window (:mod:`irpo_jax.evaluation.tiling`); AdaIR has
global operations, so this deviates from the protocol: the CLI warns in one line, and the number of
tiled images is recorded per row.

Images are loaded by a thread pool in set order and restored by the one inference engine,
:mod:`irpo_jax.evaluation.runner`.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os
import pathlib
import re
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from irpo_jax.data import readers
from irpo_jax.data.readers import DataError
from irpo_jax.evaluation import tables
from irpo_jax.evaluation.runner import (
    EvalError,
    Runner,
    ShapeBuckets,
    make_runner,
    out_of_memory,
    prefetch,
)

log = logging.getLogger("irpo_jax.evaluate")

__all__ = ["EVAL_FORMAT", "available_rows", "evaluate", "image_path", "resolve_rows"]

EVAL_FORMAT = "irpo-jax-eval"
EVAL_VERSION = 1
TASK_TITLES = {"dehaze": "Dehazing", "derain": "Deraining", "denoise": "Denoising",
               "deblur": "Deblurring", "lowlight": "Low-Light"}  # fmt: skip
SET_TITLES = {"sots": "SOTS", "rain100l": "Rain100L", "bsd68": "BSD68", "urban100": "Urban100",
              "gopro": "GoPro", "lol": "LOL", "rrshid": "RRSHID", "gtrain": "GT-Rain", "sidd": "SIDD",
              "reloblur": "ReLoBlur", "lolistreet": "LoLI-Street"}  # fmt: skip
ORACLE_LABEL = "oracle: best of K sampled restorations, chosen by PSNR against the ground truth"
SSIM_DEFINITION = (
    "skimage structural_similarity: 7x7 uniform window, K1=0.01, K2=0.03, sample "
    "covariance, 3-pixel border of the SSIM map excluded, mean over channels"
)


# ----------------------------------------------------------------------------- set names


def available_rows(data_cfg: Any) -> list[str]:
    """Every name ``evaluate(sets=...)`` accepts: set names, ``<noisy set>_s<sigma>`` rows and
    the keys of ``data.eval_paired``."""
    cfg = readers.resolve_data_config(data_cfg)
    names = []
    for name, (_, _, layout) in readers.TEST_SETS.items():
        names.append(name)
        if layout == "noisy":
            names += [f"{name}_s{int(s)}" for s in cfg.sigmas]
    return names + list(readers.SET_GROUPS) + [n for n in cfg.eval_paired if n not in names]


def resolve_rows(data_cfg: Any, sets: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(set names to load, rows to report in order)``; a noisy set expands to one row per sigma.

    Raises:
      EvalError: an unknown name, listing the valid ones.
    """
    cfg = readers.resolve_data_config(data_cfg)
    valid = available_rows(cfg)
    bases: list[str] = []
    rows: list[str] = []
    names = []
    for raw in sets:
        name = raw.strip()
        name = name.lower() if name.lower() in valid else name  # "SOTS" works too
        if name not in valid:
            raise EvalError(
                f"unknown test set {raw!r}; valid names: {', '.join(valid)} "
                "(add your own paired folders under data.eval_paired)"
            )
        names.append(name)
    for name in readers.expand_set_names(names):  # a group (ood5) stands for its sets
        m = re.fullmatch(r"(.+)_s(\d+)", name)
        base = m.group(1) if m and m.group(1) in readers.TEST_SETS else name
        if base not in bases:
            bases.append(base)
        noisy = base in readers.TEST_SETS and readers.TEST_SETS[base][2] == "noisy"
        expanded = [f"{base}_s{int(s)}" for s in cfg.sigmas] if noisy and base == name else [name]
        rows += [r for r in expanded if r not in rows]
    return bases, rows


def _row_title(row: str, task: str) -> str:
    m = re.fullmatch(r"(.+)_s(\d+)", row)
    base, sigma = (m.group(1), m.group(2)) if m and m.group(1) in SET_TITLES else (row, None)
    title = f"{TASK_TITLES.get(task, task)} on {SET_TITLES.get(base, base)}"
    return f"{title} σ={sigma}" if sigma else title


# ----------------------------------------------------------------------------- the evaluation loop


def _image_id(row: str, name: str) -> int:
    return zlib.crc32(f"{row}/{name}".encode()) & 0x7FFFFFFF


def image_path(image_dir: str | os.PathLike, row: str, name: str) -> pathlib.Path:
    """Where ``--save_images`` puts the restoration of image ``name`` of ``row``:
    ``image_dir/<row>/<name with the extension .png>`` (names may hold sub-folders, e.g. GT-Rain's
    ``scene/frame.png``). :mod:`irpo_jax.compare` finds the images here."""
    return pathlib.Path(image_dir) / row / pathlib.PurePosixPath(name).with_suffix(".png")


def _save_png(path: pathlib.Path, img: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    # Rounded (the official test.py truncates; saved images are never used for the metrics).
    Image.fromarray(np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)).save(path)


def _evaluate_row(
    runner: Runner,
    row: str,
    es: readers.EvalSet,
    *,
    max_images: int,
    tile: int,
    tile_overlap: int,
    seed: int,
    oracle: bool,
    image_dir: pathlib.Path | None,
    progress: bool,
    allow_partial: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """``(per-image records in set order, unreadable images left out)``; without
    ``allow_partial`` an unreadable image raises instead."""
    from tqdm import tqdm

    n = len(es) if max_images <= 0 else min(max_images, len(es))
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    bar = tqdm(total=n, desc=row, unit="img", disable=not progress, leave=False, dynamic_ncols=True)

    def record(i: int, item: dict, out: Mapping[str, Any], j: int, tiled: bool) -> None:
        h, w = item["clean"].shape[:2]
        r = {
            "set": row,
            "task": es.task,
            "sigma": int(es.sigma),
            "name": item["name"],
            "height": h,
            "width": w,
            "tiled": tiled,
            "psnr": float(out["psnr"][j]),
            "ssim": float(out["ssim"][j]),
        }
        if "group" in item:
            r["group"] = item["group"]
        if oracle:
            r.update(
                oracle_psnr=float(out["oracle_psnr"][j]),
                oracle_ssim=float(out["oracle_ssim"][j]),
                oracle_index=int(out["oracle_index"][j]),
                oracle_mean_psnr=float(out["oracle_mean_psnr"][j]),
            )
        records.append((i, r))
        if image_dir is not None:
            _save_png(image_path(image_dir, row, item["name"]), np.asarray(out["restored"][j]))
        bar.update(1)

    def too_big(item: dict, per_step: int, err: Exception) -> EvalError:
        h, w = item["degraded"].shape[:2]
        return EvalError(
            f"test set {row}: out of device memory restoring {item['name']} ({w}x{h}, "
            f"{per_step} image(s) per step) whole: {str(err).splitlines()[0][:200]}. Use a device "
            "with more memory (README 'Out-of-domain evaluation' lists what each set needs), or "
            "--tile SIZE, which restores in windows and is not the published protocol."
        )

    def fetch(out: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
        # Restored images stay on the device unless they are saved.
        return jax.device_get({k: v for k, v in out.items() if k != "restored" or image_dir is not None})

    def run(group: list[tuple[int, dict]]) -> None:
        items = [it for _, it in group]
        degraded = [readers.to_float01(it["degraded"]) for it in items]
        clean = [readers.to_float01(it["clean"]) for it in items]
        ids = np.array([_image_id(row, it["name"]) for it in items], np.uint32)
        try:
            out = fetch(runner.score_images(degraded, clean, ids=ids, seed=seed))
        except Exception as err:  # XLA reports exhausted memory as a runtime error
            if out_of_memory(err):
                raise too_big(items[0], runner.batch_size(len(items)), err) from err
            raise
        for j, (i, item) in enumerate(group):
            record(i, item, out, j, False)

    buckets = ShapeBuckets(run, size=runner.n, max_waiting=8 * runner.n)  # bound host memory
    try:
        # An image that cannot be read comes as its DataError.
        for i, item in prefetch(lambda i: es[i], range(n), workers=min(8, os.cpu_count() or 1), errors=(DataError,)):
            if isinstance(item, DataError):
                if not allow_partial:
                    raise item
                skipped.append({"name": es.item_name(i), "reason": str(item)})
                bar.update(1)
                continue
            h, w = item["degraded"].shape[:2]
            if tile > 0 and max(h, w) > tile:
                try:
                    restored = runner.restore_tiled(
                        readers.to_float01(item["degraded"]), tile=tile, overlap=tile_overlap
                    )
                except Exception as err:
                    if out_of_memory(err):
                        raise too_big(item, 1, err) from err
                    raise
                record(i, item, fetch(runner.score(restored, readers.to_float01(item["clean"]))), 0, True)
                continue
            buckets.add((h, w), (i, item))
        buckets.flush()
    except DataError as err:
        raise EvalError(
            f"test set {row}: {err}. Every image of a set is needed for a comparable "
            "average: fix or replace that file (or pass --allow_partial to score the "
            "rest, marked partial)."
        ) from err
    finally:
        bar.close()
    return [r for _, r in sorted(records, key=lambda t: t[0])], skipped


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _set_mean(recs: Sequence[Mapping[str, Any]], key: str, *, grouped: bool) -> float:
    """A set's score: the mean of ``key`` over its images, or (``grouped``) over the groups of
    each group's mean (GT-Rain's test code averages per scene, then over scenes)."""
    if not grouped:
        return _mean([r[key] for r in recs])
    by_group: dict[str, list[float]] = collections.defaultdict(list)
    for r in recs:
        by_group[r["group"]].append(r[key])
    return _mean([_mean(v) for v in by_group.values()])


def evaluate(
    model: Any,
    data_cfg: Any,
    sets: Sequence[str] | None = None,
    *,
    max_images: int = 0,
    self_ensemble: bool = False,
    oracle_k: int = 0,
    seed: int = 0,
    tile: int = 0,
    tile_overlap: int = 32,
    image_dir: str | os.PathLike | None = None,
    name: str = "model",
    step: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    precision: str = "highest",
    progress: bool = True,
    allow_partial: bool = False,
) -> dict[str, Any]:
    """Evaluates a restorer on the configured test sets under the published protocol.

    Args:
      model: a :class:`irpo_jax.checkpointing.Restorer` (``load_model(dir)``), an NNX module
        (``AdaIR``; an ``IRPOPolicy`` is run as its deterministic policy) or any jittable
        ``(B, H, W, 3) -> (B, H, W, 3)`` function of float32 images in [0, 1].
      data_cfg: the data config (``config.data``; :func:`readers.default_data_config`).
      sets: names from :func:`available_rows` (``"bsd68"`` = every sigma, ``"bsd68_s25"`` one);
        default ``data.eval_sets``.
      max_images: evaluate only the first N images of every row (0 = all; for quick checks
        during training -- such numbers are not comparable with the papers).
      self_ensemble: x8 geometric self-ensemble.
      oracle_k: K > 0 adds the best-of-K sampled oracle (policy models only).
      seed: seed of the oracle's sampling.
      tile: restore images with a side above ``tile`` in overlapping windows (0 = never).
      tile_overlap: window overlap in pixels (multiple of 8).
      image_dir: save restored images (PNG, rounded to 8 bits) under ``image_dir/<row>/``.
      name: the method name printed in the tables.
      step: training step, recorded in the results.
      devices: devices to shard batches over; default all local devices.
      precision: ``jax.default_matmul_precision`` of the forward ("highest": exact float32).
      progress: show a tqdm bar per row.
      allow_partial: score a set some of whose inputs have no target or cannot be read, leaving
        them out; the row is marked partial and lists them (default: refuse the set).

    Returns:
      A JSON-able dict (format ``"irpo-jax-eval"`` version 1)::

        {"format", "version", "model": {"name", "step", "kind"},
         "protocol": {...how the numbers were computed...},
         "rows": {row: {"task", "sigma", "title", "images", "psnr", "ssim", "tiled", "average",
                        "partial": bool, ["left_out": [{"name", "reason"}]], ["protocol"],
                        ["oracle": {"psnr", "ssim", "mean_sample_psnr"}]}},   # in set order
         "table": {"layout": "five_task" | "ood_five" | "three_task" | "all_rows",
                   "columns": [row, ...]},
         "average": {"psnr", "ssim"},            # mean over table.columns (the paper's Average)
         "oracle": None | {"label", "k", "seed", "average": {"psnr", "ssim"}},
         "per_image": [{"set", "task", "sigma", "name", "height", "width", "tiled", "psnr",
                        "ssim", ["group"], ["oracle_psnr", "oracle_ssim", "oracle_index",
                        "oracle_mean_psnr"]}, ...],
         "seconds": float}

      A row's score is the mean over its images, or, for sets scored per group (GT-Rain's
      scenes; ``average`` says which), the mean over groups of each group's mean.

    Raises:
      EvalError: an unknown set name, an unreadable test image (naming the file), an oracle on a
        non-policy model, a device out of memory (naming the image).
      DataError: a missing data folder, or inputs without a target (naming the files).

    Over 100 lines with this docstring; the body (77 lines) is one pass, set by set: read, restore
    through the runner, score, average. Its pieces (the runner, the tables, the results) live in
    their own modules; what remains shares a dozen locals that a split would pass around.
    """
    t0 = time.time()
    cfg = readers.resolve_data_config(data_cfg)
    if oracle_k < 0 or (oracle_k and tile):
        raise EvalError(
            "oracle_k must be >= 0 and cannot be combined with tiling (each window would draw its own actions)"
        )
    if tile and (tile % 8 or tile_overlap % 8 or not 0 <= tile_overlap < tile):
        raise EvalError(
            f"tile={tile} and tile_overlap={tile_overlap} must be multiples of 8 with 0 <= tile_overlap < tile"
        )
    bases, wanted = resolve_rows(cfg, list(cfg.eval_sets if sets is None else sets))
    all_rows = readers.eval_sets(cfg, bases, allow_partial=allow_partial)  # DataError names the files
    rows = {r: all_rows[r] for r in wanted}  # the order asked for
    runner = make_runner(model, ensemble=self_ensemble, oracle_k=oracle_k, devices=devices, precision=precision)
    image_root = pathlib.Path(image_dir) if image_dir is not None else None

    per_image: list[dict[str, Any]] = []
    out_rows: dict[str, dict[str, Any]] = {}
    for row, es in rows.items():
        t_row = time.time()
        recs, unreadable = _evaluate_row(
            runner,
            row,
            es,
            max_images=max_images,
            tile=tile,
            tile_overlap=tile_overlap,
            seed=seed,
            oracle=bool(oracle_k),
            image_dir=image_root,
            progress=progress,
            allow_partial=allow_partial,
        )
        if not recs:
            raise EvalError(f"test set {row}: none of its images could be read (e.g. {unreadable[0]['reason']})")
        per_image += recs
        mean = functools.partial(_set_mean, recs, grouped=es.groups is not None)
        left_out = [{"name": m, "reason": "no matching target"} for m in es.missing] + unreadable
        entry = {
            "task": es.task,
            "sigma": int(es.sigma),
            "title": _row_title(row, es.task),
            "images": len(recs),
            "psnr": mean("psnr"),
            "ssim": mean("ssim"),
            "tiled": sum(r["tiled"] for r in recs),
            "average": ("mean over groups of each group's mean" if es.groups is not None else "mean over images"),
            "partial": bool(left_out),
            "seconds": round(time.time() - t_row, 3),
        }
        if left_out:
            entry["left_out"] = left_out
        if es.protocol:
            entry["protocol"] = es.protocol
        if oracle_k:
            entry["oracle"] = {
                "psnr": mean("oracle_psnr"),
                "ssim": mean("oracle_ssim"),
                "mean_sample_psnr": mean("oracle_mean_psnr"),
            }
        out_rows[row] = entry
        log.info("%s: %d images, PSNR %.2f dB, SSIM %.4f", row, entry["images"], entry["psnr"], entry["ssim"])

    layout, columns = tables.layout(list(out_rows), {r: e["task"] for r, e in out_rows.items()})
    average = {
        "psnr": _mean([out_rows[c]["psnr"] for c in columns]),
        "ssim": _mean([out_rows[c]["ssim"] for c in columns]),
    }
    oracle = None
    if oracle_k:
        oracle = {
            "label": ORACLE_LABEL,
            "k": int(oracle_k),
            "seed": int(seed),
            "average": {
                "psnr": _mean([out_rows[c]["oracle"]["psnr"] for c in columns]),
                "ssim": _mean([out_rows[c]["oracle"]["ssim"] for c in columns]),
            },
        }
    return {
        "format": EVAL_FORMAT,
        "version": EVAL_VERSION,
        "model": {"name": name + (" (x8 self-ensemble)" if self_ensemble else ""), "step": step, "kind": runner.kind},
        "protocol": {
            "crop_base": int(cfg.crop_base),
            "color": "RGB",
            "data_range": 1.0,
            "clip": [0.0, 1.0],
            "border_shave": 0,
            "ssim": SSIM_DEFINITION,
            "set_average": "mean of per-image scores",
            "noise": {
                "seed": int(cfg.test_noise_seed),
                "sigmas": [int(s) for s in cfg.sigmas],
                "file_order": "sorted by name (the official os.listdir order is filesystem-dependent)",
            },
            "whole_images": not any(r["tiled"] for r in per_image),
            "self_ensemble": bool(self_ensemble),
            "tile": int(tile),
            "tile_overlap": int(tile_overlap) if tile else 0,
            "max_images": int(max_images),
            "precision": precision,
            "devices": runner.n,
            "data_root": str(cfg.root),
            "allow_partial": bool(allow_partial),
        },
        "rows": out_rows,
        "table": {"layout": layout, "columns": columns},
        "average": average,
        "oracle": oracle,
        "per_image": per_image,
        "seconds": round(time.time() - t0, 3),
    }
