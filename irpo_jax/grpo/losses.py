"""The IRPO objective: clipped GRPO surrogate + KL to the reference + entropy bonus (Eq. 6),
the supervised loss on the best rollout (Eq. 1), the consistency loss (Eq. 2) and their
annealed weights (Eq. 7, Appendix C).

All functions are pure and jittable; shapes are (B, G) for per-rollout scalars.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("paper", "analytic")


def rl_loss(
    log_prob: jax.Array,
    log_prob_old: jax.Array,
    log_prob_ref: jax.Array,
    advantages: jax.Array,
    entropy: jax.Array,
    *,
    clip_eps: float,
    kl_coef: float,
    entropy_coef: float,
    kl_estimator: str = "paper",
    kl_analytic: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L_RL of Eq. 6, averaged over the B groups.

    Args:
      log_prob: (B, G) log pi_theta(a_i | x) of the stored actions (teacher-forced).
      log_prob_old: (B, G) log pi_theta_old(a_i | x) recorded when the actions were sampled.
      log_prob_ref: (B, G) log pi_ref(a_i | x) under the frozen reference policy.
      advantages: (B, G) group-normalised advantages (treated as constants).
      entropy: (B, G) policy entropy along each rollout.
      clip_eps: PPO clip range epsilon.
      kl_coef: beta of Eq. 6.
      entropy_coef: tau of Eq. 6 (0.01 in the paper).
      kl_estimator: ``"paper"`` (Eq. 11: ``mean_i rho_i (log pi - log pi_ref)``) or
        ``"analytic"`` (the closed-form Beta KL along each rollout, ``kl_analytic``).
      kl_analytic: (B, G) analytic KL(pi_theta || pi_ref), needed for ``"analytic"``.

    Returns:
      ``(loss, metrics)`` with ``grpo/clipfrac`` (the fraction of the B*G terms whose clip is
      active for their advantage's sign: rho > 1 + eps with A > 0 or rho < 1 - eps with A < 0,
      the terms that pass no gradient; TRL's ``clip_ratio/region_mean``), ``grpo/approx_kl`` (k3
      estimator of KL(old || new)), ``grpo/kl_ref``, ``grpo/entropy``, ``grpo/ratio_mean``,
      ``loss/policy``.
    """
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    advantages = jax.lax.stop_gradient(advantages)
    log_ratio = log_prob - jax.lax.stop_gradient(log_prob_old)
    ratio = jnp.exp(log_ratio)
    surrogate = jnp.minimum(ratio * advantages, jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * advantages)
    policy_loss = -jnp.mean(surrogate)
    if kl_estimator == "paper":
        kl = jnp.mean(ratio * (log_prob - jax.lax.stop_gradient(log_prob_ref)))
    else:
        if kl_analytic is None:
            raise ValueError("kl_estimator='analytic' needs kl_analytic")
        kl = jnp.mean(kl_analytic)
    mean_entropy = jnp.mean(entropy)
    # Clipped = min() takes the clipped side, which passes no gradient: rho above 1 + eps with a
    # positive advantage or below 1 - eps with a negative one (TRL's clip_ratio/region_mean). A
    # ratio outside the range on the other side keeps rho * A and its gradient: not counted.
    clipped = ((ratio > 1 + clip_eps) & (advantages > 0)) | ((ratio < 1 - clip_eps) & (advantages < 0))
    loss = policy_loss + kl_coef * kl - entropy_coef * mean_entropy
    metrics = {
        "loss/policy": policy_loss,
        "grpo/kl_ref": kl,
        "grpo/entropy": mean_entropy,
        "grpo/clipfrac": jnp.mean(clipped.astype(jnp.float32)),
        "grpo/approx_kl": jnp.mean(jax.lax.stop_gradient((ratio - 1) - log_ratio)),
        "grpo/ratio_mean": jnp.mean(jax.lax.stop_gradient(ratio)),
    }
    return loss, metrics


def best_rollout(rewards: jax.Array) -> jax.Array:
    """g* = argmax_i r_i per group, NaN rewards never chosen. (B, G) -> (B,) int32."""
    return jnp.argmax(jnp.where(jnp.isnan(rewards), -jnp.inf, rewards), axis=1).astype(jnp.int32)


def take_rollout(x: jax.Array, index: jax.Array) -> jax.Array:
    """x (B, G, ...) at rollout ``index`` (B,) -> (B, ...)."""
    return jnp.take_along_axis(x, index.reshape((-1, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.mean(jnp.abs(a - b))


def supervision_losses(
    restored: jax.Array,
    y_det: jax.Array,
    clean: jax.Array,
    rewards: jax.Array,
    scored: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """L_sup = l1(y_g*, clean) (Eq. 1) and L_cons = l1(y_g*, y_det) (Eq. 2).

    Args:
      restored: (B, G, H, W, 3) the teacher-forced rollouts (gradients reach the backbone).
      y_det: (B, H, W, 3) the deterministic (Beta-mean) output.
      clean: (B, H, W, 3) ground truth.
      rewards: (B, G) composite rewards choosing g*.
      scored: optional (B,) bool, False for an image none of whose rollouts has a reward (every
        one NaN): it has no g*, so it is left out of both means (0 when no image is scored).

    Returns:
      ``(L_sup, L_cons)``, means over the (scored) images' pixels.
    """
    y_best = take_rollout(restored, best_rollout(rewards))
    if scored is None:
        return l1(y_best, clean), l1(y_best, y_det)
    weight = scored.astype(y_best.dtype)

    def masked_l1(a, b):
        per_image = jnp.mean(jnp.abs(a - b), axis=tuple(range(1, a.ndim)))
        return jnp.sum(per_image * weight) / jnp.maximum(jnp.sum(weight), 1.0)

    return masked_l1(y_best, clean), masked_l1(y_best, y_det)


def linear_anneal(start: float, end: float, step: jax.Array, total_steps: int) -> jax.Array:
    """``start -> end`` linearly over ``total_steps`` (Appendix C: lambda_sup 0.35->0.1, lambda_cons 0.2->0.05)."""
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps - 1, 1), 0.0, 1.0)
    return start + (end - start) * frac
