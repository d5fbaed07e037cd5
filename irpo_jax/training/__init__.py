"""Training: AdaIR's supervised stage and IRPO's GRPO post-training, data-parallel over a mesh.

The library behind ``python -m irpo_jax.train``; :mod:`irpo_jax.trainer` gathers its public
names. One module per concern:

* :mod:`~irpo_jax.training.optimizer`: the train state, the learning-rate schedules, the flat
  Adam with the policy heads' learning-rate multiplier, and the non-finite guard of a step;
* :mod:`~irpo_jax.training.steps`: the pure step functions (supervised; GRPO rollout and
  update), jitted once each by the loop;
* :mod:`~irpo_jax.training.checkpoints`: a run's orbax checkpoints and its ``model/`` directory;
* :mod:`~irpo_jax.training.workdir`: the run directory: settings checked before any work, the
  saved config and what may change on resume;
* :mod:`~irpo_jax.training.mesh`: the device mesh and the multi-process helpers;
* :mod:`~irpo_jax.training.loop`: :func:`~irpo_jax.training.loop.run`, which builds the run
  and steps it to the end (rollouts, reward requests, logging, probes, evaluations, checkpoints).
"""


class TrainingError(RuntimeError):
    """A run that cannot start or must stop; the message says why and what to do."""
