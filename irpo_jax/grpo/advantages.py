"""Group-relative advantages (IRPO Eq. 8) and their variants.

``A_i = (r_i - mean_g r) / sqrt(mean_g (r - mean_g r)^2 + eps)``: the population std (the mean
over the group's scored rollouts, not divided by G - 1) with eps *inside* the square root, as the
paper writes it. TRL's GRPO divides by the sample std (Bessel-corrected) plus 1e-4 outside the
root: with G = 4 its advantages are sqrt(3/4) = 0.87 times these. NaN rewards (a failed reward
component for that rollout, DESIGN decision 4) are excluded from their group's statistics and get
advantage 0, so they neither push nor pull the policy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SCALES = ("group", "batch", "none")
AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")


def group_advantages(rewards: jax.Array, *, eps: float = 1e-8, scale: str = "group") -> jax.Array:
    """Advantages for rewards of shape (B, G) (B groups of G rollouts of one image each).

    Args:
      rewards: (B, G); NaN marks a rollout whose reward failed.
      eps: added to the (population) variance inside the square root (paper: epsilon in Eq. 8).
      scale: ``"group"`` (paper: divide by the group's std), ``"batch"`` (divide by one std
        pooled over all centred rewards in the batch, so groups with a small spread are not
        inflated; flow_grpo's ``global_std``) or ``"none"`` (centre only, as Dr. GRPO).

    Returns:
      (B, G) advantages, 0 where the reward is NaN.
    """
    if scale not in SCALES:
        raise ValueError(f"advantage scale must be one of {SCALES}, got {scale!r}")
    valid = ~jnp.isnan(rewards)
    r = jnp.where(valid, rewards, 0.0)
    n = jnp.maximum(jnp.sum(valid, axis=1, keepdims=True), 1)
    centred = jnp.where(valid, r - jnp.sum(r, axis=1, keepdims=True) / n, 0.0)
    if scale == "group":
        var = jnp.sum(centred**2, axis=1, keepdims=True) / n
    elif scale == "batch":
        var = jnp.sum(centred**2) / jnp.maximum(jnp.sum(valid), 1)
    else:
        return centred
    return centred / jnp.sqrt(var + eps)


def component_advantages(
    components: jax.Array, weights: jax.Array, *, eps: float = 1e-8, scale: str = "group"
) -> jax.Array:
    """``normalize_then_sum``: normalise each reward component within its group, then weight and sum.

    IRPO mixes rewards of very different spreads (PSNR window vs. judge scores); normalising first
    stops the widest one from deciding every ranking. A component that is NaN for a rollout
    contributes 0 there.

    Args:
      components: (B, G, K) raw per-component rewards.
      weights: (K,) component weights.

    Returns:
      (B, G) advantages.
    """
    per = jax.vmap(lambda c: group_advantages(c, eps=eps, scale=scale), in_axes=2, out_axes=2)(components)
    return jnp.sum(per * weights, axis=-1)


def frac_zero_std(rewards: jax.Array, tol: float = 1e-12) -> jax.Array:
    """Fraction of groups whose (non-NaN) rewards are all equal: they carry no GRPO signal."""
    valid = ~jnp.isnan(rewards)
    r = jnp.where(valid, rewards, 0.0)
    n = jnp.maximum(jnp.sum(valid, axis=1), 1)
    mean = jnp.sum(r, axis=1) / n
    var = jnp.sum(jnp.where(valid, (r - mean[:, None]) ** 2, 0.0), axis=1) / n
    return jnp.mean(var <= tol)


def within_group_correlation(a: jax.Array, b: jax.Array, tol: float = 1e-12) -> jax.Array:
    """Mean over groups of the Pearson correlation of ``a`` and ``b`` (B, G) within each group.

    A diagnostic of what GRPO learns from: with ``a`` the composite reward and ``b`` the rollouts'
    PSNR it says whether ranking the G rollouts by the reward ranks them by PSNR too. Groups where
    either has (near) zero spread, or that hold a NaN, carry no ranking and are left out; NaN when
    no group is left.
    """
    valid = ~(jnp.isnan(a) | jnp.isnan(b))
    ok = jnp.all(valid, axis=1)
    a, b = jnp.where(valid, a, 0.0), jnp.where(valid, b, 0.0)
    ca = a - jnp.mean(a, axis=1, keepdims=True)
    cb = b - jnp.mean(b, axis=1, keepdims=True)
    var_a, var_b = jnp.mean(ca**2, axis=1), jnp.mean(cb**2, axis=1)
    ok = ok & (var_a > tol) & (var_b > tol)
    corr = jnp.mean(ca * cb, axis=1) * jax.lax.rsqrt(jnp.where(ok, var_a * var_b, 1.0))
    return jnp.sum(jnp.where(ok, corr, 0.0)) / jnp.where(jnp.any(ok), jnp.sum(ok), jnp.nan)
