"""Rewards for IRPO's GRPO post-training (paper Appendix B).

* ``task.py``: the task-aware rewards of Appendix B.3, pure JAX, usable inside the jitted step
  (PSNR/SSIM live in ``irpo_jax.metrics``);
* ``compose.py``: the component registry, normalisation windows, weights and the composite
  reward of Eq. 22 (``default_reward_config``, ``compose``, re-exported here as
  ``compose_rewards`` so that ``irpo_jax.rewards.compose`` stays the module);
* ``bridge.py``: ``RewardBridge``, the interface (and its contract) of the two ways to reach the
  PyTorch reward models: the reward process and the in-process mode;
* ``remote.py``: the client of the PyTorch reward process (``RewardProcess``,
  ``open_reward_bridge``); ``wire.py``: its framing protocol. None of them imports torch.

The names below are loaded on first use (module ``__getattr__``), so importing this package
imports nothing: ``torch_bridge.reward_server`` runs ``from irpo_jax.rewards import wire``
(numpy and the standard library only) in a process that has no jax.
"""

import importlib

# Public name -> (submodule, name there), imported on first access.
_EXPORTS = {
    "REWARDS": ("compose", "REWARDS"),
    "RewardComponent": ("compose", "RewardComponent"),
    "active_components": ("compose", "active_components"),
    "compose_rewards": ("compose", "compose"),  # the module keeps the name `compose`
    "default_reward_config": ("compose", "default_reward_config"),
    "jax_reward_scores": ("compose", "jax_reward_scores"),
    "normalise": ("compose", "normalise"),
    "remote_components": ("compose", "remote_components"),
    "remote_components_for_step": ("compose", "remote_components_for_step"),
    "validate_reward_config": ("compose", "validate_reward_config"),
    "RewardBridge": ("bridge", "RewardBridge"),
    "RewardProcess": ("remote", "RewardProcess"),
    "RewardProcessError": ("remote", "RewardProcessError"),
    "open_reward_bridge": ("remote", "open_reward_bridge"),
    "EPS": ("task", "EPS"),
    "LUMA_WEIGHTS": ("task", "LUMA_WEIGHTS"),
    "TASK_REWARDS": ("task", "TASK_REWARDS"),
    "grad_magnitude": ("task", "grad_magnitude"),
    "luminance": ("task", "luminance"),
    "r_aniso": ("task", "r_aniso"),
    "r_color": ("task", "r_color"),
    "r_contrast": ("task", "r_contrast"),
    "r_exp": ("task", "r_exp"),
    "r_grad": ("task", "r_grad"),
    "r_lowlight": ("task", "r_lowlight"),
    "r_sharp": ("task", "r_sharp"),
    "sobel": ("task", "sobel"),
    "task_reward": ("task", "task_reward"),
    "task_reward_by_id": ("task", "task_reward_by_id"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """Imports the submodule that defines ``name`` (jax for ``compose``/``task``) on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
