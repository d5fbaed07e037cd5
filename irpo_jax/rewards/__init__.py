"""Rewards for IRPO's GRPO post-training (paper Appendix B).

For now this package exposes the task-aware rewards of Appendix B.3 (``task.py``), pure JAX and
usable inside the jitted step. PSNR/SSIM live in ``irpo_jax.metrics``.
"""

from irpo_jax.rewards.task import (
    EPS,
    LUMA_WEIGHTS,
    TASK_REWARDS,
    TASKS,
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
    "EPS",
    "LUMA_WEIGHTS",
    "TASKS",
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
