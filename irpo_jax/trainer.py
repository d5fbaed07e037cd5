"""Training: AdaIR's supervised stage and IRPO's GRPO post-training, data-parallel over a mesh.

The public names of :mod:`irpo_jax.training` in one place (what ``python -m irpo_jax.train``,
the tests and the benchmarks use). Where each part lives:

* :mod:`irpo_jax.training.optimizer`: :class:`TrainState`, the schedules (:func:`learning_rate`),
  the flat Adam (:func:`build_optimizer`) and the non-finite guard (:func:`apply_update`);
* :mod:`irpo_jax.training.steps`: the step functions (:func:`make_supervised_step`,
  :func:`make_rollout_step`, :func:`make_grpo_update`);
* :mod:`irpo_jax.training.checkpoints`: :class:`TrainCheckpointer`;
* :mod:`irpo_jax.training.workdir`: :func:`validate_config`, :func:`check_workdir_config`;
* :mod:`irpo_jax.training.mesh`: :func:`make_mesh`, :func:`on_mesh`, :func:`host_device`, ...;
* :mod:`irpo_jax.training.loop`: :func:`run` and :func:`build_model`.
"""

from irpo_jax.training import TrainingError
from irpo_jax.training.checkpoints import TrainCheckpointer
from irpo_jax.training.loop import build_model, run, total_steps_of
from irpo_jax.training.mesh import host_device, init_distributed, make_mesh, on_mesh, to_global, to_host
from irpo_jax.training.optimizer import (
    SCHEDULES, FlatOptimizer, TrainState, apply_update, build_optimizer, head_count, learning_rate, updates_per_batch,
)  # fmt: skip
from irpo_jax.training.steps import (
    effective_weight, make_grpo_update, make_probe_reward, make_rollout_step, make_supervised_step, reference_is_constant,
    reuses_head_inputs,
)  # fmt: skip
from irpo_jax.training.workdir import check_workdir_config, validate_config

__all__ = [
    "SCHEDULES", "FlatOptimizer", "TrainCheckpointer", "TrainState", "TrainingError", "apply_update",
    "build_model", "build_optimizer", "check_workdir_config", "effective_weight", "head_count", "host_device",
    "init_distributed", "learning_rate", "make_grpo_update", "make_mesh", "make_probe_reward", "make_rollout_step",
    "make_supervised_step", "on_mesh", "reference_is_constant", "reuses_head_inputs", "run", "to_global", "to_host", "total_steps_of",
    "updates_per_batch", "validate_config",
]  # fmt: skip
