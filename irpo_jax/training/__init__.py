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
* :mod:`irpo_jax.mesh` (a layer below, shared with evaluation; ``training.mesh`` re-exports it):
  the device mesh and the multi-process helpers (:func:`make_mesh`, :func:`on_mesh`,
  :func:`host_device`, :func:`init_distributed`, :func:`to_global`, :func:`to_host`);
* :mod:`~irpo_jax.training.hard_set`: the hard set a GRPO run mines for itself;
  :mod:`~irpo_jax.training.run_length`: the run's plan (steps, epochs, learning rates);
* :mod:`~irpo_jax.training.rollouts`: a GRPO run's sampling side (its rollouts, the reward
  process and the requests for the torch components' scores, the reward probe);
* :mod:`~irpo_jax.training.loop`: :func:`run`, which builds the run (:func:`build_model`,
  :func:`total_steps_of`) and steps it to the end (logging, probes, evaluations, checkpoints).

The names are loaded on first use (module ``__getattr__``): importing one module of the package
(``training.errors``) does not import the others, so the CLIs may catch :class:`TrainingError`
before jax is loaded.

``irpo_jax.trainer``, the former home of these names, is a deprecated alias of this package.
"""

import importlib

# Public name -> the module that defines it, imported on first access.
_EXPORTS = {
    "TrainingError": "irpo_jax.training.errors",
    "TrainCheckpointer": "irpo_jax.training.checkpoints",
    "build_model": "irpo_jax.training.loop",
    "run": "irpo_jax.training.loop",
    "total_steps_of": "irpo_jax.training.loop",
    "host_device": "irpo_jax.mesh",
    "init_distributed": "irpo_jax.mesh",
    "make_mesh": "irpo_jax.mesh",
    "on_mesh": "irpo_jax.mesh",
    "to_global": "irpo_jax.mesh",
    "to_host": "irpo_jax.mesh",
    "SCHEDULES": "irpo_jax.training.optimizer",
    "FlatOptimizer": "irpo_jax.training.optimizer",
    "TrainState": "irpo_jax.training.optimizer",
    "apply_update": "irpo_jax.training.optimizer",
    "build_optimizer": "irpo_jax.training.optimizer",
    "head_count": "irpo_jax.training.optimizer",
    "learning_rate": "irpo_jax.training.optimizer",
    "updates_per_batch": "irpo_jax.training.optimizer",
    "make_grpo_update": "irpo_jax.training.steps",
    "make_probe_reward": "irpo_jax.training.steps",
    "make_rollout_step": "irpo_jax.training.steps",
    "make_supervised_step": "irpo_jax.training.steps",
    "reference_is_constant": "irpo_jax.training.steps",
    "reuses_head_inputs": "irpo_jax.training.steps",
    "check_workdir_config": "irpo_jax.training.workdir",
    "validate_config": "irpo_jax.training.workdir",
    "effective_weight": "irpo_jax.rewards.compose",  # the rule is the reward composition's
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Imports the module that defines ``name`` on first use (the loop and the steps import jax)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
