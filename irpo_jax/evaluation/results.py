"""The results files of an evaluation: where they go, what identifies them, writing them whole.

``<out>/eval/<step or name>[options]/{results.json, per_image.csv, table.md}`` (:func:`output_dir`),
written by :func:`write_results`; ``results.json`` records the checkpoint (``model.params_sha256``:
the parameter values and model config) and the settings that decide the numbers
(:func:`result_identity`), so that :func:`check_existing_results` replaces a folder's results only
with the same numbers. Results files are written whole (temporary file + rename) with the user's
umask (0644 by default). :func:`scalars` flattens results for TensorBoard/JSONL.
:func:`evaluate_and_write` is the trainer's evaluation: all of that in one call.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from irpo_jax.data import readers
from irpo_jax.evaluation.protocol import evaluate, resolve_rows
from irpo_jax.evaluation.runner import EvalError
from irpo_jax.evaluation.tables import format_table

log = logging.getLogger("irpo_jax.evaluate")

__all__ = [
    "CSV_COLUMNS",
    "Written",
    "check_existing_results",
    "check_writable",
    "describe_checkpoint",
    "evaluate_and_write",
    "output_dir",
    "result_identity",
    "scalars",
    "write_results",
]


CSV_COLUMNS = ("set", "task", "sigma", "name", "height", "width", "tiled", "psnr", "ssim")
ORACLE_CSV_COLUMNS = ("oracle_best_of_k_psnr", "oracle_best_of_k_ssim", "oracle_best_index", "oracle_mean_sample_psnr")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_atomic(path: pathlib.Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp creates 0600 files; results are ordinary files, so follow the user's umask
        # (0644 under the usual 022), as open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_results(results: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
    """Writes ``results.json``, ``per_image.csv`` and ``table.md`` into ``out_dir`` (created).

    Each file is written to a temporary name and renamed, so a reader never sees half a file.

    Returns:
      ``{"json", "csv", "table"}`` paths.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "per_image.csv", "table": out / "table.md"}
    _write_atomic(paths["json"], json.dumps(results, indent=1) + "\n")
    oracle = bool(results.get("oracle"))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS + (ORACLE_CSV_COLUMNS if oracle else ()))
    for r in results["per_image"]:
        row = [r[c] for c in CSV_COLUMNS[:7]] + [f"{r['psnr']:.6f}", f"{r['ssim']:.6f}"]
        if oracle:
            row += [
                f"{r['oracle_psnr']:.6f}",
                f"{r['oracle_ssim']:.6f}",
                r["oracle_index"],
                f"{r['oracle_mean_psnr']:.6f}",
            ]
        writer.writerow(row)
    _write_atomic(paths["csv"], buf.getvalue())
    _write_atomic(paths["table"], format_table(results))
    return paths


def scalars(results: Mapping[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Flat ``{name: value}`` for TensorBoard/JSONL: ``eval/<row>/psnr``, ``eval/average/ssim``,
    ``eval/oracle/<row>/psnr``, ..."""
    out = {}
    for r, e in results["rows"].items():
        out[f"{prefix}/{r}/psnr"] = e["psnr"]
        out[f"{prefix}/{r}/ssim"] = e["ssim"]
        if "oracle" in e:
            out[f"{prefix}/oracle/{r}/psnr"] = e["oracle"]["psnr"]
            out[f"{prefix}/oracle/{r}/ssim"] = e["oracle"]["ssim"]
    out[f"{prefix}/average/psnr"] = results["average"]["psnr"]
    out[f"{prefix}/average/ssim"] = results["average"]["ssim"]
    if results.get("oracle"):
        out[f"{prefix}/oracle/average/psnr"] = results["oracle"]["average"]["psnr"]
        out[f"{prefix}/oracle/average/ssim"] = results["oracle"]["average"]["ssim"]
    return out


def describe_checkpoint(path: pathlib.Path) -> tuple[str, int | None]:
    """``(name, trained step or None)`` of a model directory: a trainer's ``<workdir>/model``
    is named after its workdir and carries ``trained_steps`` in ``manifest.json``."""
    step = None
    manifest = path / "manifest.json"
    if manifest.is_file():
        try:
            step = json.loads(manifest.read_text()).get("trained_steps")
        except (json.JSONDecodeError, AttributeError):
            step = None
    name = path.parent.name if path.name == "model" and path.parent.name else path.name
    return name, (int(step) if step is not None else None)


def check_writable(directory: pathlib.Path, flag: str = "--out") -> None:
    """Creates ``directory`` and writes a probe file, so a bad ``--out`` fails before any work."""
    blocker = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise EvalError(
            f"cannot write to {flag} {directory}: {blocker} is a file, not a folder. Choose "
            f"another directory for {flag}."
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise EvalError(
            f"cannot write to {flag} {directory}: {err.strerror or err}. Choose a writable directory for {flag}."
        ) from err


def output_dir(
    out: pathlib.Path,
    name: str,
    step: int | None,
    *,
    self_ensemble: bool = False,
    oracle_k: int = 0,
    max_images: int = 0,
    tile: int = 0,
) -> pathlib.Path:
    """``<out>/eval/<step or name>[_x8][_oracle<K>][_first<N>][_tile<T>]``: options that change
    the numbers get their own folder, so they never overwrite the plain protocol's results."""
    leaf = str(step) if step is not None else name
    leaf += "_x8" if self_ensemble else ""
    leaf += f"_oracle{oracle_k}" if oracle_k else ""
    leaf += f"_first{max_images}" if max_images else ""
    leaf += f"_tile{tile}" if tile else ""
    return out / "eval" / leaf


RESULT_FILES = ("results.json", "per_image.csv", "table.md", "images")


def check_existing_results(
    directory: pathlib.Path, params_sha256: str, settings: Mapping[str, Any], *, overwrite: bool = False
) -> bool:
    """Refuses to replace results in ``directory`` that another checkpoint or other settings made.

    Results of the same checkpoint (``model.params_sha256`` in ``results.json``) under the same
    ``settings`` are the same numbers and may be replaced. The CLI checks this; the trainer
    writes its own run's folders directly (a resumed run re-evaluates a step it evaluated before).

    Args:
      directory: the folder :func:`output_dir` chose.
      params_sha256: :func:`irpo_jax.checkpointing.params_sha256` of the model about to be evaluated.
      settings: what, besides the parameters, decides the numbers (recorded as ``settings``).
      overwrite: replace whatever is there (``--overwrite``).

    Returns:
      True when ``directory`` holds other results that ``overwrite`` allows replacing.

    Raises:
      EvalError: ``directory`` holds other results and ``overwrite`` is False; it names the
        folder, what differs, and the two ways on (``--out``, ``--overwrite``).
    """
    present = [n for n in RESULT_FILES if (directory / n).exists()]
    if not present:
        return False
    try:
        old = json.loads((directory / "results.json").read_text())
        old_model = old.get("model") or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        old, old_model = {}, {}
    settings = json.loads(json.dumps(settings, default=str))  # as read back (tuples -> lists)
    old_settings = old.get("settings")
    if not old_model.get("params_sha256") or not isinstance(old_settings, dict):
        why = (
            "that do not record which checkpoint and settings made them (written by training, an "
            "earlier version or an interrupted run)"
        )
    else:
        differs = ["checkpoint"] if old_model["params_sha256"] != params_sha256 else []
        differs += [k for k in settings if old_settings.get(k) != settings[k]]
        if not differs:
            return False
        why = f"made with a different {', '.join(differs)}"
    if overwrite:
        log.warning("--overwrite: replacing the results in %s (%s)", directory, why)
        return True
    origin = f" from {old_model['checkpoint']}" if old_model.get("checkpoint") else ""
    raise EvalError(
        f"{directory} already holds evaluation results{origin} ({', '.join(present)}) {why}. Nothing "
        "was evaluated or written. Write elsewhere with --out DIR, or pass --overwrite to replace them."
    )


def result_identity(
    module: Any,
    data_cfg: Any,
    sets: Sequence[str] | None = None,
    *,
    max_images: int = 0,
    self_ensemble: bool = False,
    oracle_k: int = 0,
    seed: int = 0,
    tile: int = 0,
    tile_overlap: int = 32,
    precision: str = "highest",
    allow_partial: bool = False,
) -> tuple[str, dict[str, Any]]:
    """``(params_sha256, settings)``: what decides an evaluation's numbers, as results.json records
    it and :func:`check_existing_results` compares it: the model (parameters and config) and the
    data, rows and options of :func:`evaluate` (not the folder's name or step)."""
    from irpo_jax import checkpointing

    cfg = readers.resolve_data_config(data_cfg)
    bases, rows = resolve_rows(cfg, list(cfg.eval_sets if sets is None else sets))
    resolved = cfg.as_dict()  # a copy, recorded in results.json
    root = str(cfg.root)
    data = {
        "root": str(pathlib.Path(os.path.expanduser(root)).absolute()) if root else "",
        **{k: resolved[k] for k in ("eval_paired", "sigmas", "test_noise_seed", "crop_base")},
        # only the evaluated sets' folders: moving another set does not change these numbers
        "test_dirs": {b: resolved["test_dirs"][b] for b in bases if b in resolved["test_dirs"]},
    }
    settings = {
        "data": data,
        "rows": list(rows),
        "max_images": max_images,
        "self_ensemble": self_ensemble,
        "oracle_k": oracle_k,
        "seed": seed if oracle_k else None,
        "tile": tile,
        "tile_overlap": tile_overlap if tile else None,
        "precision": precision,
        "allow_partial": allow_partial,
    }
    return checkpointing.params_sha256(module), settings


@dataclasses.dataclass(frozen=True)
class Written:
    """An evaluation written to its folder, with what a training log records of it."""

    results: dict[str, Any]  # as results.json holds them
    directory: pathlib.Path  # where they were written (:func:`output_dir`)
    scalars: dict[str, float]  # :func:`scalars`
    table: str  # :func:`irpo_jax.evaluation.tables.format_table`


def evaluate_and_write(
    model: Any,
    data_cfg: Any,
    out: pathlib.Path,
    *,
    name: str,
    step: int | None,
    max_images: int = 0,
    progress: bool = False,
) -> Written:
    """Evaluates ``model`` on ``data.eval_sets`` under the published protocol and writes the results
    to ``<out>/eval/<step>[_first<N>]`` (the trainer's evaluation, every ``train.eval_every`` steps).

    The results record the checkpoint and settings as the evaluate CLI records them, so that the CLI
    recognises (and may replace) them. The folder is written directly: a resumed run re-evaluates a
    step it evaluated before.

    Args:
      model: the model (see :func:`irpo_jax.evaluation.protocol.evaluate`).
      data_cfg: the data config.
      out: the run's workdir.
      name: the method name printed in the tables (the run's name).
      step: the training step.
      max_images: only the first N images of every row (0 = all).
      progress: show a progress bar per row.
    """
    results = evaluate(model, data_cfg, max_images=max_images, name=name, step=step, progress=progress)
    results["model"]["params_sha256"], results["settings"] = result_identity(model, data_cfg, max_images=max_images)
    directory = output_dir(out, name, step, max_images=max_images)
    write_results(results, directory)
    return Written(results, directory, scalars(results), format_table(results))
