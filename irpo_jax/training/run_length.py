"""What a run will do, stated at its start: optimizer steps, what one epoch is, the schedules' ends.

The paper gives its post-training length in epochs ("30 epochs" over the hard set, Appendix C);
how many optimizer steps that is follows from the mined set, AdaIR's per-task repeats
(``grpo.task_repeats``) and the batch size, and the learning-rate and lambda schedules follow
from that number. :func:`describe` spells it out so that nobody has to derive it.
"""

from __future__ import annotations

import collections
from typing import Any

import ml_collections

from irpo_jax.data.config import resolve_data_config
from irpo_jax.data.records import Record
from irpo_jax.data.train_set import mixture_indices
from irpo_jax.grpo.losses import linear_anneal
from irpo_jax.training.optimizer import learning_rate, updates_per_batch


def describe(
    cfg: ml_collections.ConfigDict, data_cfg: Any, records: list[Record], total_steps: int, epoch_size: int
) -> tuple[str, dict[str, Any]]:
    """The run's length and schedules as printable lines and as a record (``summary.json``'s ``plan``).

    Args:
      cfg: the run's config.
      data_cfg: the data config the training iterator reads (manifest resolved; a ``DataConfig``
        as ``hard_set.training_data`` returns it, or a dict).
      records: the training records (the hard set in GRPO), as the iterator holds them.
      total_steps: the run's optimizer steps.
      epoch_size: samples per epoch (the mixture's length).
    """
    t = cfg.train
    data_cfg = resolve_data_config(data_cfg)
    pairs = collections.Counter(r.task for r in records)
    samples = collections.Counter(records[i].task for i in mixture_indices(records, data_cfg))
    per_task = {task: {"pairs": pairs[task], "samples": samples[task],
                       "repeats": round(samples[task] / pairs[task], 3) if pairs[task] else 0}
                for task in pairs}  # fmt: skip
    per_batch = updates_per_batch(cfg)
    epochs = total_steps / per_batch * t.batch_size / epoch_size
    schedule = learning_rate(cfg, total_steps, epoch_size)
    lr = (float(schedule(0)), float(schedule(max(total_steps - 1, 0))))
    plan: dict[str, Any] = {
        "optimizer_steps": total_steps, "epochs": epochs, "epoch_size": epoch_size, "batch_size": int(t.batch_size),
        "updates_per_batch": per_batch, "per_task": per_task, "lr": {"schedule": cfg.optim.schedule, "first": lr[0],
        "last": lr[1], "head_lr_mult": float(cfg.optim.head_lr_mult)},
    }  # fmt: skip
    what = "the hard set" if cfg.train.stage == "grpo" and data_cfg.manifest else "every pair"
    how = f"train.steps={t.steps}" if t.steps else f"train.epochs={t.epochs:g}"
    lines = [
        f"run length: {total_steps:,} optimizer steps = {epochs:.4g} epochs of {epoch_size:,} samples at batch "
        f"{t.batch_size}" + (f", {per_batch} updates per batch" if per_batch > 1 else "") + f" ({how})",
        f"  one epoch ({what}, {len(records):,} pairs): " + ", ".join(
            f"{task} {v['pairs']:,} x {v['repeats']:g}" for task, v in per_task.items()),
        f"  learning rate ({cfg.optim.schedule}): {lr[0]:.3g} at the first step -> {lr[1]:.3g} at the last"
        + (f"; policy heads x {cfg.optim.head_lr_mult:g}" if cfg.train.stage == "grpo" else ""),
    ]  # fmt: skip
    if cfg.train.stage == "grpo":
        ends = {name: (float(linear_anneal(*cfg.grpo[name], 0, total_steps)),
                       float(linear_anneal(*cfg.grpo[name], max(total_steps - 1, 0), total_steps)))
                for name in ("lambda_sup", "lambda_cons")}  # fmt: skip
        plan.update(ends)
        lines.append(f"  lambda_sup {ends['lambda_sup'][0]:g} -> {ends['lambda_sup'][1]:g}, lambda_cons "
                     f"{ends['lambda_cons'][0]:g} -> {ends['lambda_cons'][1]:g}, linear over the run")  # fmt: skip
    return "\n".join(lines), plan
