"""Hard-sample mining, the library: score every training pair with a model, keep the worst fraction.

The command line is :mod:`irpo_jax.mine`; :mod:`irpo_jax.training.hard_set` mines inside a GRPO run.

IRPO post-trains only on the 30 % of training pairs the pre-trained model restores worst
(DESIGN.md decision 5: ranked by PSNR **per task** by default, since a global ranking would drop
whole tasks, and each denoising sigma ranked on its own for the same reason (:func:`select`);
``--selection global`` ranks all pairs together, ``--selection random`` draws the same number
per task and sigma at random -- the paper's control). Train on the result with
``data.manifest = "hard.jsonl"`` (:func:`irpo_jax.data.pipeline.make_train_iterator`).

What is measured: every unique training pair of the configured mixture (no repetition; one
record per denoise image and sigma), ``crop_img(base=16)``-ed and run whole (``--crop N``: the
centre N x N instead, sides rounded down to multiples of 16), restored by
``irpo_jax.load_model(CHECKPOINT)`` (for a policy model, its deterministic policy), clipped to
[0, 1], and scored with :mod:`irpo_jax.metrics` PSNR/SSIM (RGB, data range 1, the published
protocol). Denoise inputs get the official uint8-truncated Gaussian noise with a generator
seeded by ``[--seed, hash(record id)]``, so every run sees the same noisy image.

How: records are grouped by input shape; each bucket is cut into batches (the last one padded),
sharded over the local devices and jitted once per shape, by the one inference engine
(:func:`irpo_jax.evaluation.runner.plan_batches`,
:meth:`~irpo_jax.evaluation.runner.Runner.score_images`). Results are appended to
``OUT.partial.jsonl`` after every batch, keyed by record id; an interrupted run continues where
it stopped (the partial file's header must match the model, data and settings). At the end the
manifest ``OUT`` (JSON lines) and a per-task table ``OUT`` with suffix ``.summary.md`` are written
atomically and the partial file is removed. With several JAX processes each mines every n-th
batch into its own partial file and process 0 merges them.

Nothing a user wrote is replaced (:func:`check_arguments`, before any data is read or the model
loaded): an existing ``OUT`` (or summary) that mining did not write is refused, and so is an
existing mining manifest -- another run's result -- unless ``--overwrite`` is given or the run
resumes its partial file (whose run already passed this check).

Manifest format (JSON lines, a header then one line per record): :mod:`irpo_jax.data.manifest`,
which writes and reads it. The model ``id`` is the sha256 of ``model.json`` and every file under
``params/`` (:func:`checkpoint_id`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from irpo_jax import safe_files
from irpo_jax.data import manifest, readers
from irpo_jax.data.readers import DataError, Record
from irpo_jax.evaluation import runner as runner_lib

log = logging.getLogger("irpo_jax.mine")

__all__ = [
    "MiningInterrupted",
    "check_arguments",
    "checkpoint_id",
    "mine",
    "mining_input",
    "select",
    "summary_rows",
    "summary_table",
]

PARTIAL_KIND = "irpo-jax-mining-partial"
SELECTIONS = ("per_task", "global", "random")
RANK_BY = ("psnr", "ssim")
SUMMARY_TITLE = "# Mining summary:"  # the first line of every summary mining writes


class MiningInterrupted(RuntimeError):
    """Raised by the ``stop_after`` test hook (and never otherwise)."""


# --------------------------------------------------------------------------- inputs


def checkpoint_id(path: str | os.PathLike) -> str:
    """sha256 (16 hex) of a model directory's ``model.json`` and every file under ``params/``."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path / "model.json"] + sorted(p for p in (path / "params").rglob("*") if p.is_file())
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _source_sha(checkpoint: Path) -> str | None:
    """The sha256 of the PyTorch file a converted model came from (its manifest.json), if any."""
    try:
        m = json.loads((checkpoint / "manifest.json").read_text())
        return m["source"]["sha256"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None


def _id_seed(record_id: str) -> int:
    return int.from_bytes(hashlib.sha256(record_id.encode()).digest()[:8], "little")


def _centre(img: np.ndarray, crop: int, base: int) -> np.ndarray:
    if crop <= 0:
        return img
    h, w = img.shape[:2]
    ch, cw = min(crop, h), min(crop, w)
    ch, cw = ch - ch % base, cw - cw % base
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[top : top + ch, left : left + cw]


def _mined_shape(record: Record, crop: int, base: int) -> tuple[int, int]:
    h, w = readers.cropped_size(record.size, base)
    if crop > 0:
        h, w = min(crop, h), min(crop, w)
        h, w = h - h % base, w - w % base
    return h, w


def mining_input(record: Record, *, crop: int = 0, base: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The degraded and clean images a record is scored on: ``(H, W, 3)`` float32 in [0, 1].

    Raises:
      DataError: an undecodable file or a size mismatch.
    """
    clean = _centre(readers.crop_img(readers.load_image(record.clean), base), crop, base)
    if record.degraded is None:
        clean = readers.to_uint8_domain(clean)
        rng = np.random.default_rng([int(seed), _id_seed(record.id)])
        degraded = readers.add_official_noise(
            np.ascontiguousarray(clean), record.sigma, rng.standard_normal(clean.shape)
        )
    else:
        degraded = _centre(readers.crop_img(readers.load_image(record.degraded), base), crop, base)
        if degraded.shape != clean.shape:
            raise DataError(f"{record.degraded} and {record.clean} differ in size after crop_img")
    return (readers.to_float01(np.ascontiguousarray(degraded)), readers.to_float01(np.ascontiguousarray(clean)))


# --------------------------------------------------------------------------- selection


def select(
    entries: Sequence[dict[str, Any]],
    *,
    mode: str = "per_task",
    fraction: float = 0.3,
    rank_by: str = "psnr",
    seed: int = 0,
) -> dict[str, tuple[bool, int]]:
    """Chooses the hard set. Returns ``{id: (selected, rank)}`` for every scored entry.

    ``rank`` orders each ranking group (a degradation for ``per_task`` and ``random``; everything
    for ``global``) from worst (0) to best by ``rank_by`` (lower PSNR/SSIM = harder), ties by id.
    A degradation is a task, with each denoising sigma on its own (AdaIR's degradation ids
    ``denoise_15/25/50``): ranked together, the sigma-50 pairs are the worst denoising PSNRs and
    would fill the whole denoising share, and post-training would never see sigma 15 or 25 (the
    same reason a global ranking is not the default: it drops whole tasks).
    ``k = ceil(fraction * n)`` of a group's ``n`` pairs are selected: the ``k`` worst, or for
    ``random`` ``k`` drawn uniformly (numpy ``default_rng(seed)``, over ids sorted by name).
    Entries without a score (decode errors) are left out.
    """
    if mode not in SELECTIONS:
        raise ValueError(f"unknown selection {mode!r}; valid: {', '.join(SELECTIONS)}")
    if rank_by not in RANK_BY:
        raise ValueError(f"unknown rank_by {rank_by!r}; valid: {', '.join(RANK_BY)}")
    _check_fraction(fraction)
    groups: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        if e.get(rank_by) is None:
            continue
        degradation = f"{e['task']} s{e['sigma']}" if e.get("sigma") else e["task"]
        groups.setdefault("all" if mode == "global" else degradation, []).append(e)
    out: dict[str, tuple[bool, int]] = {}
    rng = np.random.default_rng(int(seed))
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda e: (e[rank_by], e["id"]))
        k = math.ceil(fraction * len(group) - 1e-9)
        if mode == "random":
            ids = sorted(e["id"] for e in group)
            chosen = {ids[i] for i in rng.permutation(len(ids))[:k]}
        else:
            chosen = {e["id"] for e in group[:k]}
        for rank, e in enumerate(group):
            out[e["id"]] = (e["id"] in chosen, rank)
    return out


def summary_rows(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task (and per denoise sigma) statistics of all and of the selected pairs."""
    keys = []
    for e in entries:
        for key in (e["task"], f"{e['task']} s{e['sigma']}" if e["sigma"] else None):
            if key and key not in keys:
                keys.append(key)
    rows = []
    for key in keys + ["all"]:
        es = [e for e in entries if key in ("all", e["task"], f"{e['task']} s{e['sigma']}")]
        ok = [e for e in es if e.get("psnr") is not None]
        sel = [e for e in ok if e.get("selected")]
        mean = lambda xs, m: float(np.mean([x[m] for x in xs])) if xs else None  # noqa: E731
        unsel = [e["psnr"] for e in ok if not e.get("selected")]
        rows.append(
            {
                "group": key,
                "pairs": len(es),
                "errors": len(es) - len(ok),
                "psnr": mean(ok, "psnr"),
                "ssim": mean(ok, "ssim"),
                "selected": len(sel),
                "selected_psnr": mean(sel, "psnr"),
                "selected_ssim": mean(sel, "ssim"),
                "max_selected_psnr": max((e["psnr"] for e in sel), default=None),
                "min_unselected_psnr": min(unsel, default=None),
            }
        )
    return rows


def summary_table(rows: Sequence[dict[str, Any]], title: str = "") -> str:
    """The per-task summary as a markdown table."""
    f = lambda v, d: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [title, ""] if title else []
    lines += [
        "| group | pairs | errors | PSNR | SSIM | selected | sel. PSNR | sel. SSIM | max sel. PSNR |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['group']} | {r['pairs']} | {r['errors']} | {f(r['psnr'], 2)} | "
            f"{f(r['ssim'], 4)} | {r['selected']} | {f(r['selected_psnr'], 2)} | "
            f"{f(r['selected_ssim'], 4)} | {f(r['max_selected_psnr'], 2)} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- arguments


def _check_fraction(fraction: float) -> None:
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(
            f"--fraction must be a number in [0, 1] (the share of pairs selected, e.g. 0.3), got {fraction!r}"
        )


def _first_line(path: Path) -> bytes:
    """The first line of a file (at most 16 MiB of it), or b"" if it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return fh.readline(1 << 24)
    except OSError:
        return b""


def _first_json_kind(path: Path) -> Any:
    """The ``kind`` of a file's first line when that line is a JSON object, else None."""
    try:
        head = json.loads(_first_line(path))
    except (ValueError, RecursionError):  # not UTF-8 / not JSON / absurdly nested
        return None
    return head.get("kind") if isinstance(head, dict) else None


def _partial_files(out: Path) -> list[Path]:
    """Every partial file of ``out`` on disk: single-process and per-process ones."""
    if not out.parent.is_dir():
        return []
    names = {out.name + ".partial.jsonl"}
    return sorted(
        p
        for p in out.parent.iterdir()
        if p.name in names
        or (
            p.name.startswith(out.name + ".partial.")
            and p.name.endswith(".jsonl")
            and p.name[len(out.name) + 9 : -6].isdigit()
        )
    )


def check_arguments(
    out: str | os.PathLike,
    *,
    fraction: float = 0.3,
    selection: str = "per_task",
    rank_by: str = "psnr",
    crop: int = 0,
    base: int = 16,
    resume: bool = True,
    overwrite: bool = False,
    batch_size: int | None = None,
    seed: int | None = None,
) -> Path:
    """Checks mining's arguments before any data is read or the model loaded.

    Mining takes minutes to hours; an argument it only uses at the end (the fraction, the output
    path) must not fail after the run. ``out`` may not replace anything a user wrote:

    * an existing ``out`` (or its ``.summary.md``) that mining did not write: refused unless
      ``overwrite``;
    * an existing mining manifest: another run's result; replaced only with ``overwrite``, or when
      this run resumes a partial file (``resume`` and ``out.partial.jsonl`` exists: the run that
      wrote it passed this check, and the partial's own header check keeps other settings out);
    * a partial file that mining did not write: refused unless ``overwrite`` (mining would
      append to it, or delete it with ``resume=False``).

    Args:
      out: the manifest path; the other arguments as in :func:`mine`.
      base: the data config's ``crop_base``.
      batch_size: checked to be a positive integer when given (``--batch_size``).
      seed: checked to be a non-negative integer when given (``--seed``; numpy seeds are).

    Returns:
      ``out`` as an absolute path.

    Raises:
      ValueError: a bad fraction, selection, rank_by, crop, batch size or seed.
      DataError: an unusable or protected output path (the message names it and the fix).
    """
    _check_fraction(fraction)
    if selection not in SELECTIONS:
        raise ValueError(f"unknown --selection {selection!r}; valid: {', '.join(SELECTIONS)}")
    if rank_by not in RANK_BY:
        raise ValueError(f"unknown --rank_by {rank_by!r}; valid: {', '.join(RANK_BY)}")
    crop = int(crop)
    if crop and (crop < base or crop % 8):
        raise ValueError(f"--crop must be 0 (whole images) or a multiple of 8 >= {base}, got {crop}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"--batch_size must be a positive number of images per forward pass, got {batch_size!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"--seed must be a non-negative integer (numpy seeds are), got {seed!r}")

    out = Path(out).expanduser().absolute()
    if out.is_dir():
        raise DataError(
            f"--out {out} is a directory; give a file path for the manifest, e.g. --out {out / 'hard.jsonl'}", out
        )
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DataError(
            f"--out {out}: its folder {out.parent} cannot be created because {folder} is a file; choose another --out",
            folder,
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"--out {out}: {folder} is not writable; choose another --out", folder)
    try:  # mode bits do not stop root; /proc, a read-only mount or a full disk still do
        Path(tempfile.mkdtemp(prefix=".irpo-write-probe-", dir=folder)).rmdir()
    except OSError as err:
        raise DataError(
            f"--out {out}: cannot write in {folder} ({err.strerror or err}); choose another --out", folder
        ) from err

    summary = out.with_suffix(".summary.md")
    if summary.is_dir():
        raise DataError(
            f"{summary} (where mining writes the summary of --out {out}) is a directory; choose another --out", summary
        )
    if overwrite:
        return out

    # An empty partial file holds nothing (mining writes its header first), and resumes nothing.
    partials = [p for p in _partial_files(out) if p.is_file() and p.stat().st_size > 0]
    for p in partials:
        if _first_json_kind(p) != PARTIAL_KIND:
            raise DataError(
                f"{p} exists and was not written by mining (its first line is not a "
                f"{PARTIAL_KIND!r} header), and mining keeps its partial results there. Move it "
                "away, choose another --out, or pass --overwrite to replace it.",
                p,
            )
    if out.exists():
        if _first_json_kind(out) != manifest.MANIFEST_KIND:
            raise DataError(
                f"--out {out} exists and is not a mining manifest (its first line is not a "
                f"{manifest.MANIFEST_KIND!r} header); mining does not replace a file it did not "
                "write. Choose another --out, or pass --overwrite to replace it.",
                out,
            )
        if not (resume and partials):
            raise DataError(
                f"--out {out} already holds a mining manifest (an earlier run's result). Pass "
                "--overwrite to replace it with this run's, or choose another --out.",
                out,
            )
    if summary.exists() and not _first_line(summary).startswith(SUMMARY_TITLE.encode()):
        raise DataError(
            f"{summary} exists and is not a mining summary (mining writes the per-task table "
            f"of --out {out} there). Move it away, choose another --out, or pass --overwrite to "
            "replace it.",
            summary,
        )
    return out


# --------------------------------------------------------------------------- partial results


def _partial_path(out: Path, process: int, processes: int) -> Path:
    suffix = ".partial.jsonl" if processes == 1 else f".partial.{process}.jsonl"
    return out.with_name(out.name + suffix)


def _read_partial(path: Path, header: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Results already in ``path`` (keyed by id); raises if it was written for other settings."""
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    if not lines:
        return {}
    try:
        old = json.loads(lines[0])
    except json.JSONDecodeError:
        old = {}
    if old != header:
        diff = sorted(k for k in set(old) | set(header) if old.get(k) != header.get(k))
        raise DataError(
            f"{path} holds partial mining results for different settings ({', '.join(diff)} "
            "differ). Delete it (or pass --no_resume) to start over, or rerun with the same "
            "model, data and options to continue it."
        )
    done = {}
    for n, line in enumerate(lines[1:], start=2):
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # the last line of an interrupted write
                break
            raise DataError(f"{path}, line {n}: not JSON; delete the file to start over") from None
        done[e["id"]] = e
    return done


# --------------------------------------------------------------------------- mining


def _score_batches(
    runner: runner_lib.Runner,
    records: Sequence[Record],
    todo: Sequence[tuple[list[int], int]],
    partial: Path,
    done: dict[str, dict[str, Any]],
    *,
    crop: int,
    base: int,
    seed: int,
    progress: bool,
    stop_after: int | None,
) -> None:
    """Scores the batches ``todo`` (``(record indices, padded batch size)``), appending every
    record's line to ``partial`` (and to ``done``) after each batch; a pair that fails to decode
    gets a line with its ``error``. ``stop_after``: see :func:`mine`."""
    from tqdm import tqdm

    def load(batch: tuple[list[int], int]) -> list[tuple[int, Any]]:
        loaded = []
        for i in batch[0]:
            try:
                loaded.append((i, mining_input(records[i], crop=crop, base=base, seed=seed)))
            except DataError as err:
                loaded.append((i, err))
        return loaded

    written = 0
    bar = tqdm(total=sum(len(c) for c, _ in todo), unit="img", desc="mining", disable=not progress, dynamic_ncols=True)
    # A decoding thread loads the next batch while the model runs on the current one.
    with open(partial, "a") as fh:
        for (chunk, bsz), loaded in runner_lib.prefetch(load, todo, workers=1, ahead=1):
            good = [(i, x) for i, x in loaded if not isinstance(x, DataError)]
            lines = []
            for i, err in ((i, x) for i, x in loaded if isinstance(x, DataError)):
                log.warning("mining: skipped %s: %s", records[i].id, err)
                lines.append({"id": records[i].id, "psnr": None, "ssim": None, "error": str(err)})
            if good:
                # Padded to the planned size by repeating the last image: one compiled shape per bucket.
                out = runner.score_images([x[0] for _, x in good], [x[1] for _, x in good], size=bsz)
                p, s = np.asarray(out["psnr"]), np.asarray(out["ssim"])
                for k, (i, _) in enumerate(good):
                    lines.append({"id": records[i].id, "psnr": float(p[k]), "ssim": float(s[k])})
            for e in lines:
                if e["id"] not in done:
                    fh.write(json.dumps(e, sort_keys=True) + "\n")
                    done[e["id"]] = e
                    written += 1
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(len(chunk))
            if stop_after is not None and written >= stop_after:
                bar.close()
                raise MiningInterrupted(f"stopped after {written} records (test hook)")
    bar.close()


def mine(
    data_cfg: Any,
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fraction: float = 0.3,
    selection: str = "per_task",
    rank_by: str = "psnr",
    crop: int = 0,
    batch_size: int = 8,
    seed: int = 0,
    resume: bool = True,
    overwrite: bool = False,
    restorer: Callable[[Any], Any] | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Mines the training set of ``data_cfg`` with the model at ``checkpoint``; writes ``out``.

    Args:
      data_cfg: data config (dict or ConfigDict; see ``readers.default_data_config``).
      checkpoint: model directory (``irpo_jax.load_model``); its hash identifies the model.
      out: manifest path (JSON lines); ``.summary.md`` beside it.
      fraction: share of pairs to select (per ranking group).
      selection: "per_task" (default), "global" or "random".
      rank_by: "psnr" (default) or "ssim".
      crop: 0 = whole ``crop_img``-ed images; N > 0 = centre N x N crops.
      batch_size: images per forward (rounded up to a multiple of the local device count).
      seed: seed of the denoise noise and of random selection.
      resume: continue from ``OUT.partial.jsonl`` if present (else start over).
      overwrite: replace an existing ``out`` (and summary) even if mining did not write it, or
        an earlier run did (see :func:`check_arguments`).
      restorer: a ready model callable (tests); default ``irpo_jax.load_model(checkpoint)``.
      progress: show a tqdm progress bar.
      stop_after: test hook: raise :class:`MiningInterrupted` once at least this many records
        have been written to the partial file.

    Returns:
      The manifest header (with ``summary``), plus ``"table"``: the markdown summary.

    Raises:
      ValueError, DataError: bad arguments (before anything is read, see
        :func:`check_arguments`), or data problems.

    Over 100 lines with this docstring; the body (86 lines) is the run's order, each step a call:
    the resumable partial file, the runner's batches, the multi-process merge, the selection and
    the manifest (:mod:`irpo_jax.data.manifest`).
    """
    cfg = readers.resolve_data_config(data_cfg)
    base = int(cfg.crop_base)
    crop = int(crop)
    out = check_arguments(
        out,
        fraction=fraction,
        selection=selection,
        rank_by=rank_by,
        crop=crop,
        base=base,
        resume=resume,
        overwrite=overwrite,
    )

    import jax

    if cfg.validate == "none":
        cfg = dataclasses.replace(cfg, validate="header")  # shapes are needed for the buckets
    checkpoint = Path(checkpoint).absolute()
    records, _ = readers.train_records(cfg)
    root = str(Path(cfg.root).expanduser().absolute())
    if restorer is None:
        from irpo_jax import load_model

        restorer = load_model(checkpoint)
    model_id = checkpoint_id(checkpoint)
    source = _source_sha(checkpoint)

    measure = {
        "crop": crop,
        "crop_base": base,
        "noise_seed": int(seed),
        "metric": "PSNR/SSIM on RGB in [0,1], data_range 1 (irpo_jax.metrics)",
    }
    partial_header = {
        "kind": PARTIAL_KIND,
        "model_id": model_id,
        "data_fingerprint": readers.fingerprint(records),
        "measure": measure,
    }

    # The one inference engine, at full float32 as in evaluate (a GPU's default TF32 moves the
    # output by ~3e-4). The batches are planned up front (same input shape -> one compiled
    # forward each), so that a resumed run and every process see the same ones.
    runner = runner_lib.make_runner(restorer, precision="highest")
    chunks = runner_lib.plan_batches(
        [_mined_shape(r, crop, base) for r in records], batch_size=batch_size, devices=runner.n
    )
    pid, nproc = jax.process_index(), jax.process_count()
    mine_chunks = chunks[pid::nproc]

    partial = _partial_path(out, pid, nproc)
    if not resume and partial.exists():
        partial.unlink()
    done = _read_partial(partial, partial_header) if resume else {}
    todo = [(c, b) for c, b in mine_chunks if any(records[i].id not in done for i in c)]
    if done:
        log.info("resuming: %d of %d records already in %s", len(done), len(records), partial)

    out.parent.mkdir(parents=True, exist_ok=True)
    if not partial.exists() or partial.stat().st_size == 0:
        partial.write_text(json.dumps(partial_header, sort_keys=True) + "\n")
    _score_batches(
        runner, records, todo, partial, done, crop=crop, base=base, seed=seed, progress=progress, stop_after=stop_after
    )

    if nproc > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("irpo_jax.mine: partial results written")
        if pid != 0:
            return {"process": pid, "partial": str(partial)}
        done = {}
        for q in range(nproc):
            done.update(_read_partial(_partial_path(out, q, nproc), partial_header))

    # ---- the manifest, in record order.
    entries = []
    for r in records:
        e = done.get(r.id)
        if e is None:
            raise RuntimeError(f"no mining result for {r.id}; rerun to complete {partial}")
        entries.append(manifest.manifest_entry(r, root, psnr=e["psnr"], ssim=e["ssim"], error=e.get("error")))
    chosen = select(entries, mode=selection, fraction=fraction, rank_by=rank_by, seed=seed)
    for e in entries:
        e["selected"], e["rank"] = chosen.get(e["id"], (False, None))
    rows = summary_rows(entries)
    header = manifest.manifest_header(
        data_root=root,
        data_fingerprint=partial_header["data_fingerprint"],
        records=len(entries),
        model={"checkpoint": str(checkpoint), "id": model_id, "source": source},
        measure=measure,
        selection={
            "mode": selection,
            "fraction": fraction,
            "rank_by": rank_by,
            "seed": int(seed),
            "selected": sum(e["selected"] for e in entries),
        },
        summary=rows,
    )
    title = (
        f"{SUMMARY_TITLE} {len(entries)} pairs under {root}, model {model_id}, {selection} {fraction:g} by {rank_by}"
    )
    table = summary_table(rows, title)
    manifest.write_manifest(out, header, entries)
    safe_files.atomic_write_text(out.with_suffix(".summary.md"), table)
    for q in range(nproc):
        _partial_path(out, q, nproc).unlink(missing_ok=True)
    return {**header, "table": table}
