"""Training: AdaIR's supervised stage and IRPO's GRPO post-training, data-parallel over a mesh.

The library behind ``python -m irpo_jax.train``, and its one import: ``from irpo_jax import
training`` gives every public name below (the tests and the benchmarks use them so).
One module per concern:

* :mod:`~irpo_jax.training.errors`: :class:`TrainingError`, what a run that cannot start or must
  stop raises (its message says why and what to do);
* :mod:`~irpo_jax.training.optimizer`: :class:`TrainState`, the learning-rate schedules
  (:data:`SCHEDULES`, :func:`learning_rate`, :func:`updates_per_batch`), the flat Adam with the
  policy heads' learning-rate multiplier (:func:`build_optimizer`, :class:`FlatOptimizer`,
  :func:`head_count`) and the non-finite guard of a step (:func:`apply_update`);
* :mod:`~irpo_jax.training.steps`: the pure step functions, jitted once each by the loop
  (:func:`make_supervised_step`; GRPO: :func:`make_rollout_step`, :func:`make_grpo_update`,
  :func:`make_probe_reward`, with :func:`reference_is_constant` and :func:`reuses_head_inputs`
  deciding their shortcuts; the ``normalize_then_sum`` advantages weigh each reward component by
  :func:`effective_weight`, which :mod:`irpo_jax.rewards.compose` owns and this package re-exports);
* :mod:`~irpo_jax.training.checkpoints`: :class:`TrainCheckpointer`, a run's orbax checkpoints
  and its ``model/`` directory;
* :mod:`~irpo_jax.training.workdir`: the run directory: settings checked before any work
  (:func:`validate_config`), the saved config and what may change on resume
  (:func:`check_workdir_config`); :mod:`~irpo_jax.training.lock`: its lock;
* :mod:`~irpo_jax.training.mesh`: the device mesh and the multi-process helpers
  (:func:`make_mesh`, :func:`on_mesh`, :func:`host_device`, :func:`init_distributed`,
  :func:`to_global`, :func:`to_host`);
* :mod:`~irpo_jax.training.hard_set`: the hard set a GRPO run mines for itself;
  :mod:`~irpo_jax.training.run_length`: the run's plan (steps, epochs, learning rates);
* :mod:`~irpo_jax.training.rollouts`: a GRPO run's sampling side (its rollouts, the reward
  process and the requests for the torch components' scores, the reward probe);
* :mod:`~irpo_jax.training.loop`: :func:`run`, which builds the run (:func:`build_model`,
  :func:`total_steps_of`) and steps it to the end (logging, probes, evaluations, checkpoints).

``irpo_jax.trainer``, the former home of these names, is a deprecated alias of this package.
"""

from irpo_jax.training.errors import TrainingError
from irpo_jax.training.checkpoints import TrainCheckpointer
from irpo_jax.training.loop import build_model, run, total_steps_of
from irpo_jax.training.mesh import host_device, init_distributed, make_mesh, on_mesh, to_global, to_host
from irpo_jax.training.optimizer import (
    SCHEDULES, FlatOptimizer, TrainState, apply_update, build_optimizer, head_count, learning_rate, updates_per_batch,
)  # fmt: skip
from irpo_jax.rewards.compose import effective_weight
from irpo_jax.training.steps import (
    make_grpo_update, make_probe_reward, make_rollout_step, make_supervised_step, reference_is_constant,
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
