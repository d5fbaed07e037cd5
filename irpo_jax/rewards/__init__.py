"""Rewards for IRPO's GRPO post-training (paper Appendix B).

* ``task.py``: the task-aware rewards of Appendix B.3, pure JAX, usable inside the jitted step
  (PSNR/SSIM live in ``irpo_jax.metrics``);
* ``compose.py``: the component registry, normalisation windows, weights and the composite
  reward of Eq. 22 (``default_reward_config``, ``compose``, re-exported here as
  ``compose_rewards`` so that ``irpo_jax.rewards.compose`` stays the module);
* ``remote.py``: the client of the PyTorch reward process (``RewardProcess``,
  ``open_reward_bridge``); ``wire.py``: its framing protocol. Neither imports torch.
"""

from irpo_jax.rewards.compose import (
    REWARDS,
    RewardComponent,
    active_components,
    default_reward_config,
    jax_reward_scores,
    normalise,
    remote_components,
    remote_components_for_step,
    validate_reward_config,
)
from irpo_jax.rewards.compose import compose as compose_rewards  # the module keeps the name
from irpo_jax.rewards.remote import RewardProcess, RewardProcessError, open_reward_bridge
from irpo_jax.rewards.task import (
    EPS,
    LUMA_WEIGHTS,
    TASK_REWARDS,
    grad_magnitude,
    luminance,
    r_aniso,
    r_color,
    r_contrast,
    r_exp,
    r_grad,
    r_lowlight,
    r_sharp,
    sobel,
    task_reward,
    task_reward_by_id,
)

__all__ = [
    "REWARDS",
    "RewardComponent",
    "RewardProcess",
    "RewardProcessError",
    "active_components",
    "compose_rewards",
    "default_reward_config",
    "jax_reward_scores",
    "normalise",
    "open_reward_bridge",
    "remote_components",
    "remote_components_for_step",
    "validate_reward_config",
    "EPS",
    "LUMA_WEIGHTS",
    "TASK_REWARDS",
    "grad_magnitude",
    "luminance",
    "r_aniso",
    "r_color",
    "r_contrast",
    "r_exp",
    "r_grad",
    "r_lowlight",
    "r_sharp",
    "sobel",
    "task_reward",
    "task_reward_by_id",
]
