"""The run directory: the settings a run cannot start with (checked before any work), the resolved
config it saves, which changes a resumed run accepts, the lock that keeps it to one live run, and
the cleanup of the temporary files a killed run's whole-or-nothing writes (:mod:`irpo_jax.safe_files`) left.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from irpo_jax import safe_files
from irpo_jax.safe_files import atomic_write_text
from irpo_jax.training.errors import TrainingError
from irpo_jax.training.lock import LOCK_NAME, WorkdirLock, acquire

log = logging.getLogger("irpo_jax.train")


def config_json(cfg: ml_collections.ConfigDict) -> dict:
    return json.loads(cfg.to_json_best_effort())


# Fields that may change between a run and its resumption without changing the numbers.
RESUMABLE_CHANGES = ("train.allow_config_change", "train.log_every", "train.checkpoint_every", "train.panel_every",
                      "train.probe_every", "train.probe_batches",
                      "train.steps", "train.keep_checkpoints", "train.compilation_cache", "train.devices",
                      "reward.bridge", "distributed",
                      "data.worker_count", "data.read_threads", "data.worker_buffer_size")  # fmt: skip


# What a saved config.json means by a key it lacks: the setting the run had before the key existed.
# Filled in before the comparison, so an old workdir resumes without a spurious change when the new
# config is given those values (the refusal's message lists them).
LEGACY_VALUES = {
    "model.policy.mask_rule": "fraction",  # before the "anchored" rule (issue 16)
    "model.policy.rate_input": "pooled",  # before the rate heads read the spectrum (issue 16)
    "model.policy.spectrum_tile": 0,  # before the spectrum features were averaged over tiles (issue 23)
}


def with_legacy_values(saved: dict) -> dict:
    """``saved`` (a config.json) with :data:`LEGACY_VALUES` filled in where their section exists
    and the key is missing."""
    out = json.loads(json.dumps(saved))
    for dotted, value in LEGACY_VALUES.items():
        *parents, key = dotted.split(".")
        section = out
        for name in parents:
            section = section.get(name) if isinstance(section, dict) else None
        if isinstance(section, dict) and key not in section:
            section[key] = value
    return out


def describe_changes(old: dict, new: dict, keys: list[str]) -> tuple[str, str]:
    """``("k (old -> new), ...", "--config.k=old ...")``: the changed keys with both values, and
    the overrides that give a resumed run the values it was started with (scalars only)."""
    parts, overrides = [], []
    for key in keys:
        before, after = _lookup(old, key), _lookup(new, key)
        parts.append(f"{key} ({before!r} -> {after!r})")
        if isinstance(before, (str, int, float, bool)):
            overrides.append(f"--config.{key}={before}")
    return ", ".join(parts), " ".join(overrides)


def _lookup(tree: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        tree = tree.get(name) if isinstance(tree, dict) else None
    return tree


def validate_config(cfg: ml_collections.ConfigDict) -> None:
    """The training settings a run cannot start with, named by their keys (before any work)."""
    t = cfg.train
    problems = []
    if t.stage not in ("supervised", "grpo"):
        problems.append(f"train.stage must be 'supervised' or 'grpo', got {t.stage!r}")
    if cfg.model.compute_dtype not in ("float32", "bfloat16"):
        problems.append(f"model.compute_dtype must be 'float32' or 'bfloat16', got {cfg.model.compute_dtype!r}")
    if t.steps < 0 or (t.steps == 0 and not t.epochs > 0):
        problems.append(f"train.steps={t.steps}, train.epochs={t.epochs}: give steps > 0, or steps=0 and epochs > 0")
    if t.batch_size < 1:
        problems.append(f"train.batch_size must be at least 1, got {t.batch_size}")
    for key in ("log_every", "checkpoint_every", "panel_every", "eval_every", "probe_every"):
        if t[key] < 0:
            problems.append(f"train.{key} must be >= 0 (0 = never, or only at the end), got {t[key]}")
    if cfg.data.patch_size < 8 or cfg.data.patch_size % 8:
        problems.append(f"data.patch_size={cfg.data.patch_size}: AdaIR needs a multiple of 8 (the paper: 128)")
    if t.stage == "grpo" and cfg.grpo.policy_iters < 1:
        problems.append(f"grpo.policy_iters must be at least 1, got {cfg.grpo.policy_iters}")
    if cfg.grpo.cons_target not in ("both", "det_anchor"):
        problems.append(f"grpo.cons_target must be 'both' or 'det_anchor', got {cfg.grpo.cons_target!r}")
    if problems:
        raise TrainingError("invalid config: " + "; ".join(problems))


def check_workdir_config(workdir: pathlib.Path, cfg: ml_collections.ConfigDict) -> WorkdirLock | None:
    """Lock the workdir, save the resolved config; refuse a workdir made by a different config unless allowed.

    A workdir is a new or empty directory, or one this trainer wrote (it has ``config.json``):
    anything else is refused, so that nothing a user keeps there is overwritten (the run
    replaces ``model/`` and ``summary.json``). A ``config.json`` without a checkpoint is the
    record of a start that failed before its first save: the new config replaces it.

    Returns:
      Process 0's lock on the workdir (:mod:`irpo_jax.training.lock`), held until released; the
      other processes of a multi-process run take none (process 0 alone writes there) and get
      None.

    Raises:
      TrainingError: the workdir is a file, someone else's folder, in use by a live run, made by
        a different config, or cannot be written (the message names it).
    """
    path = workdir / "config.json"
    new = config_json(cfg)
    if workdir.exists() and not workdir.is_dir():
        raise TrainingError(f"--workdir {workdir} is a file, not a directory; choose another --workdir")
    if workdir.is_dir() and not path.exists() and _entries(workdir):
        found = ", ".join(sorted(_entries(workdir))[:5])
        raise TrainingError(
            f"--workdir {workdir} is not empty and holds no irpo-jax run (it has {found}); a run writes "
            "model/, summary.json and checkpoints/ there. Choose a new or empty --workdir."
        )
    lock = None
    if jax.process_index() == 0:
        _writable(workdir, lambda: workdir.mkdir(parents=True, exist_ok=True))
        lock = acquire(workdir)  # before anything is written: a live run's files are not touched
        remove_partial_files(workdir)
    try:
        _check_and_save(workdir, cfg, path, new)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def _entries(workdir: pathlib.Path) -> list[str]:
    """What the directory holds, besides the lock file and the partial write a start killed
    before its config.json was written may leave."""
    return [p.name for p in workdir.iterdir() if p.name != LOCK_NAME and not _is_partial(p)]


def _is_partial(path: pathlib.Path) -> bool:
    return safe_files.is_partial(path) and path.is_file()


def _writable(workdir: pathlib.Path, write: Callable[[], Any]) -> Any:
    """``write()``, with an OSError turned into a one-line TrainingError naming the workdir."""
    try:
        return write()
    except OSError as e:
        blocker = next((p for p in workdir.absolute().parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:  # mkdir's own words would be "[Errno 20] Not a directory"
            reason = f"{blocker} is a file, not a folder"
        elif not workdir.exists():  # e.g. under /proc, whose ENOENT would read as a missing parent
            parent = next(p for p in workdir.absolute().parents if p.exists())
            reason = f"{parent} refuses to create it ({e.strerror or e})"
        else:
            where = f" ({e.filename})" if e.filename and str(e.filename) != str(workdir) else ""
            reason = f"{e.strerror or e}{where}"
        raise TrainingError(f"--workdir {workdir} cannot be written: {reason}. Choose another --workdir.") from e


def _check_and_save(workdir: pathlib.Path, cfg: ml_collections.ConfigDict, path: pathlib.Path, new: dict) -> None:
    checkpoints = workdir / "checkpoints"
    saved = checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
    if path.exists() and not saved:
        log.info("%s has no checkpoint yet: its config.json (a start that failed) is replaced", workdir)
    elif path.exists():
        old = json.loads(path.read_text())
        diffs = sorted(k for k in flat_diff(with_legacy_values(old), new) if not k.startswith(RESUMABLE_CHANGES))
        if diffs and not cfg.train.allow_config_change:
            changed, overrides = describe_changes(with_legacy_values(old), new, diffs[:10])
            as_trained = f" To resume it as it was started, pass {overrides}." if overrides else ""
            raise TrainingError(
                f"the workdir {workdir} holds a run with a different config (changed: {changed}"
                f"{' ...' if len(diffs) > 10 else ''}). Use another --workdir, or pass "
                f"--config.train.allow_config_change=True to resume it with the new values.{as_trained}"
            )
        if diffs and jax.process_index() == 0:
            log.warning("resuming %s with a changed config: %s", workdir, ", ".join(diffs))
            previous = workdir / f"config.previous.{int(time.time())}.json"
            _writable(workdir, lambda: atomic_write_text(previous, json.dumps(old, indent=2)))
    if jax.process_index() == 0:
        _writable(workdir, lambda: atomic_write_text(path, json.dumps(new, indent=2, sort_keys=True) + "\n"))


def remove_partial_files(workdir: pathlib.Path) -> None:
    """Deletes the temporary files a killed run's writes left (under the workdir's lock: all of them)."""
    safe_files.remove_partial_files(workdir, max_age_s=0)


def flat_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += flat_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
