"""The step functions of a run: pure ``(state, batch, ...) -> (state, metrics)`` functions over the
model's parameters as plain nested dicts (DESIGN decisions 1-2), jitted once each by the loop.

A GRPO step (``train.stage="grpo"``):

1. :func:`make_rollout_step`: G rollouts per image from the sampled policy (one encoder pass,
   branched at ``fre1``), their log-probs under the current (= old) parameters and the JAX reward
   components (PSNR, SSIM, task-aware);
2. the torch reward components (LPIPS, CLIP, aesthetic, judge) come from the reward process
   (:mod:`irpo_jax.training.rollouts` requests them) and are composed with the JAX ones (Eq. 22);
3. :func:`make_grpo_update` (``grpo.policy_iters`` times): log-probs of the stored actions under
   the current parameters and under the frozen reference policy, the deterministic output
   ``y_det``; advantages (Eq. 8), L_RL (Eq. 6/10/11), L_sup and L_cons (Eq. 1, 2) with their
   annealed weights (Eq. 7), one optimizer step. On fresh rollouts (one policy iteration, not
   stale) with L_RL confined to the heads, the current log-probs come from the heads applied to
   the pooled features the rollout stored (``grpo.reuse_head_inputs``): the rollout computed
   them with these very parameters, so the G teacher-forced decoder passes are not repeated.

Which parameters each loss trains: L_RL trains the policy heads (its gradient reaches the
backbone only with ``grpo.rl_updates_backbone``: the log-probs depend on the backbone solely
through the heads' pooled inputs); L_sup and L_cons train the backbone (the rollouts use stored
actions, and ``y_det`` uses detached Beta means), as IRPO's Eq. 7 splits them. L_cons passes
gradient into both ``y_g*`` and ``y_det`` (Eq. 2 as written; ``grpo.cons_target="both"``) or, with
``"det_anchor"``, into ``y_g*`` only, ``y_det`` being the anchor.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from irpo_jax.grpo import advantages as adv_lib
from irpo_jax.grpo import losses
from irpo_jax.models import layers
from irpo_jax.training.optimizer import TrainState, apply_update


def computing_in(dtype: str, fn: Callable) -> Callable:
    """``fn`` traced under ``layers.compute_dtype(dtype)``: the activations' dtype of the model
    calls inside it (``model.compute_dtype``; the parameters and losses stay float32); and under
    ``layers.rematerialize("auto")``: where the CPU rewrites are on, the TransformerBlocks that
    are differentiated recompute their forward in the backward (a fraction of the memory, no
    slower on XLA:CPU; on a GPU nothing changes)."""

    @functools.wraps(fn)
    def traced(*args):
        with layers.compute_dtype(dtype), layers.rematerialize("auto"):
            return fn(*args)

    return traced


def make_supervised_step(graphdef, tx, compute_dtype: str = "float32") -> Callable:
    """``step(state, batch) -> (state, metrics)``: AdaIR's L1 recipe."""

    def step(state: TrainState, batch: Mapping[str, jax.Array]):
        def loss_fn(params):
            restored = nnx.merge(graphdef, params)(batch["degraded"])
            return losses.l1(restored, batch["clean"])

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        state, metrics = apply_update(state, grads, tx, {"l1": loss})
        return state, {"loss/l1": loss, "loss/total": loss, **metrics}

    return computing_in(compute_dtype, step)


def reuses_head_inputs(g: ml_collections.ConfigDict) -> bool:
    """Whether the update scores the actions from the rollout's stored head inputs.

    Exact when the update's parameters are the rollout's (one policy iteration on fresh rollouts)
    and L_RL's gradient stops at the heads' inputs; the best-only supervision is needed too, as
    the all-rollout form uses the teacher-forced restorations themselves.
    """
    fresh = g.policy_iters == 1 and not g.one_step_stale
    return bool(g.reuse_head_inputs and fresh and not g.rl_updates_backbone and g.supervise_best_only)


def action_statistics(out) -> dict[str, jax.Array]:
    """Where the policy's actions are, from one sampled pass (a :class:`PolicyOutput` of (B, G) rows).

    Per FreModule and action (``r_h, r_l, g_f, g_o``): the mean over the rollouts of the Beta's
    mean ``alpha / (alpha + beta)`` (``actions/fre1/r_h/mean``; 0.5 is AdaIR) and of its
    concentration ``alpha + beta`` (``.../concentration``; the larger, the narrower), and per
    module the fraction of rollouts whose low-pass mask differs from AdaIR's own
    (``actions/fre1/mask_changed``): how often a rate action changed what the module computes.
    """
    from irpo_jax.models.adair import FRE_NAMES
    from irpo_jax.models.policy import ACTION_NAMES, ACTIONS_PER_MODULE

    conc = out.concentrations.reshape(-1, *out.concentrations.shape[-2:])  # (N, 12, 2)
    total = conc[..., 0] + conc[..., 1]
    means, concentrations = jnp.mean(conc[..., 0] / total, axis=0), jnp.mean(total, axis=0)  # (12,)
    # A rectangle with a zero half-size on either axis is empty: compare the masks, not the sizes.
    used, official = out.mask_half_sizes, out.official_half_sizes  # (B, G, 3, 2)
    empty_used, empty_official = jnp.any(used == 0, axis=-1), jnp.any(official == 0, axis=-1)
    changed = jnp.where(empty_used & empty_official, False, jnp.any(used != official, axis=-1))  # (B, G, 3)
    changed = jnp.mean(changed.reshape(-1, len(FRE_NAMES)).astype(jnp.float32), axis=0)
    stats = {}
    for m, name in enumerate(FRE_NAMES):
        for a, action in enumerate(ACTION_NAMES):
            k = m * ACTIONS_PER_MODULE + a
            stats[f"actions/{name}/{action}/mean"] = means[k]
            stats[f"actions/{name}/{action}/concentration"] = concentrations[k]
        stats[f"actions/{name}/mask_changed"] = changed[m]
    return stats


def make_rollout_step(graphdef, cfg: ml_collections.ConfigDict, jax_names: tuple[str, ...]) -> Callable:
    """``rollout(params, batch, key) -> dict``: G sampled restorations, their actions and log-probs,
    the raw JAX reward components (B, G) of each, their :func:`action_statistics` (``"stats"``;
    the loop logs them with the step's metrics and does not keep them with the rollouts) and, when
    the update reuses them (:func:`reuses_head_inputs`), the pooled inputs of the policy heads."""
    from irpo_jax.rewards.compose import jax_reward_scores

    group = cfg.grpo.group_size
    keep_head_inputs = reuses_head_inputs(cfg.grpo)

    def rollout(params, batch, key):
        out = nnx.merge(graphdef, params).sample(batch["degraded"], key, group)
        b = out.restored.shape[0]
        rep = lambda t: jnp.repeat(t, group, axis=0)  # noqa: E731
        restored = jnp.clip(out.restored, 0.0, 1.0).reshape(b * group, *out.restored.shape[2:])
        scores = jax_reward_scores(
            rep(batch["degraded"]), restored, rep(batch["clean"]), rep(batch["task_id"]), names=jax_names
        ) if jax_names else {}  # fmt: skip
        result = {
            "restored": out.restored,
            "actions": out.actions,
            "log_prob": out.log_prob,
            "jax_scores": {k: v.reshape(b, group) for k, v in scores.items()},
            "stats": action_statistics(out),
        }
        if keep_head_inputs:
            result["head_inputs"] = out.head_inputs
        return result

    return computing_in(cfg.model.compute_dtype, rollout)


def reference_is_constant(ref_params: Mapping) -> bool:
    """Whether the reference policy's Beta parameters do not depend on its input: the last layer
    of every head is exactly zero (a policy at step 0: :class:`~irpo_jax.models.policy.BetaHead`
    starts so). Its heads then output their last layer's bias whatever they read, and the
    reference log-probs need no decoder pass (:func:`make_grpo_update`'s ``constant_ref``).

    Reads the host copy of each kernel (a replicated array's local shard, so it also works when
    the state spans several processes).
    """
    heads = ref_params.get("heads") if ref_params is not None else None
    if not heads:
        return False
    last_layers = [head["fc2"]["kernel"] for module in heads.values() for head in module.values()]
    local = lambda x: np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)  # noqa: E731
    return bool(last_layers) and all(not np.any(local(k)) for k in last_layers)


def _reference_scores(ref_model, img: jax.Array, actions: jax.Array, constant: bool):
    """The frozen reference policy's concentrations and log-probs of ``actions`` (B, G, 12).

    ``constant`` (:func:`reference_is_constant`): its heads output the same Beta whatever their
    input, so any input gives them; zeros of the shapes the teacher-forced pass would feed them
    (found by tracing it abstractly, no computation) replace the encoder and G decoder passes up
    to ``fre3`` (about 95 GFLOP of a base-model step at the paper's setting). Equal to the full
    pass, since a zero kernel maps every input to the bias.
    """
    if not constant:
        return ref_model.given(img, actions)
    shapes = jax.eval_shape(lambda: ref_model.given(img, actions).head_inputs)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return ref_model.score_actions(zeros, actions)


def make_grpo_update(
    graphdef, tx, cfg: ml_collections.ConfigDict, total_steps: int, *, constant_ref: bool = False
) -> Callable:
    """``update(state, batch, rollout, remote_scores) -> (state, metrics)``.

    Besides the scalars, ``metrics["rewards"]`` is the (B, G) composite reward of each rollout
    (the image panels caption them; the trainer does not log it as a scalar).

    ``constant_ref``: the reference policy's heads ignore their input
    (:func:`reference_is_constant` of the state's ``ref_params``, decided once on the host: the
    reference is frozen), so its log-probs come without its decoder passes. Same losses and
    gradients.
    """
    from irpo_jax.models.policy import kl_divergence
    from irpo_jax.rewards.compose import compose, effective_weight

    g = cfg.grpo
    reward_cfg = cfg.reward
    heads_only = reuses_head_inputs(g)

    def update(state: TrainState, batch, rollout, remote_scores):
        img, clean = batch["degraded"], batch["clean"]
        b, group = rollout["actions"].shape[:2]
        flat = lambda d: {k: v.reshape(b * group) for k, v in d.items()}  # noqa: E731
        total, per = compose(flat(rollout["jax_scores"]), flat(remote_scores), reward_cfg, group)
        rewards = total.reshape(b, group)
        if g.aggregation == "normalize_then_sum":
            names = sorted(k for k in per if not k.startswith("group/"))
            comps = jnp.stack([per[k].reshape(b, group) for k in names], axis=-1)
            weights = jnp.asarray([effective_weight(reward_cfg, k) for k in names])
            advantages = adv_lib.component_advantages(comps, weights, eps=g.adv_eps, scale=g.adv_scale)
        else:
            advantages = adv_lib.group_advantages(rewards, eps=g.adv_eps, scale=g.adv_scale)
        lam_sup = losses.linear_anneal(*g.lambda_sup, state.step, total_steps)
        lam_cons = losses.linear_anneal(*g.lambda_cons, state.step, total_steps)
        ref = None
        if g.kl_coef:
            ref_model = nnx.merge(graphdef, state.ref_params)
            ref = jax.lax.stop_gradient(_reference_scores(ref_model, img, rollout["actions"], constant_ref))

        def loss_fn(params):
            model = nnx.merge(graphdef, params)
            if heads_only:
                out = model.score_actions(rollout["head_inputs"], rollout["actions"])
            else:
                out = model.given(img, rollout["actions"], detach_head_inputs=not g.rl_updates_backbone)
            if g.supervise_best_only:
                # L_sup/L_cons need the backbone's gradient through y_g* and y_det only: re-decode
                # the best rollout with y_det from one shared encoding (one decoder batch on
                # accelerators), so the backward runs through 2 decoders instead of G + 1 (and
                # one encoder instead of two). Same losses, same gradients. (Without heads_only
                # the G teacher-forced restorations above are unused and XLA drops their decoder
                # tail after the last head.)
                best = losses.best_rollout(rewards)
                best_actions = losses.take_rollout(rollout["actions"], best)[:, None]
                given_best, det = model.given_and_mean(img, best_actions, detach_actions=True)
                restored_for_sup, rewards_for_sup = given_best.restored, jnp.zeros((b, 1))
            else:
                det = model.mean(img, detach_actions=True)
                restored_for_sup, rewards_for_sup = out.restored, rewards
            y_det = det.restored
            # With one policy iteration on fresh rollouts the sampling parameters are the current
            # ones: ratio == 1. Stale rollouts (or later iterations) need the stored log-probs.
            fresh = g.policy_iters == 1 and not g.one_step_stale
            old = jax.lax.stop_gradient(out.log_prob) if fresh else rollout["log_prob"]
            kl_analytic = None
            if ref is not None and g.kl_estimator == "analytic":
                kl_analytic = kl_divergence(out.concentrations, ref.concentrations)
            log_prob_ref = ref.log_prob if ref is not None else out.log_prob
            l_rl, rl_metrics = losses.rl_loss(
                out.log_prob, old, jax.lax.stop_gradient(log_prob_ref), advantages, out.entropy,
                clip_eps=g.clip_eps, kl_coef=g.kl_coef, entropy_coef=g.entropy_coef,
                kl_estimator=g.kl_estimator if ref is not None else "paper", kl_analytic=kl_analytic,
            )  # fmt: skip
            # L_cons's anchor: y_det also learns from it (Eq. 2 as written) or is a constant target.
            anchor = jax.lax.stop_gradient(y_det) if g.cons_target == "det_anchor" else y_det
            l_sup, l_cons = losses.supervision_losses(
                restored_for_sup, anchor, clean, rewards_for_sup, scored=jnp.any(~jnp.isnan(rewards), axis=1)
            )
            total_loss = l_rl + lam_sup * l_sup + lam_cons * l_cons
            terms = {"rl": l_rl, "sup": l_sup, "cons": l_cons, "total": total_loss}
            return total_loss, (terms, rl_metrics)

        (_, (terms, rl_metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state, opt_metrics = apply_update(state, grads, tx, terms)
        metrics = {f"loss/{k}": v for k, v in terms.items()}
        metrics.update(rl_metrics)
        metrics.update(opt_metrics)
        metrics.update({"grpo/lambda_sup": lam_sup, "grpo/lambda_cons": lam_cons})
        metrics.update(_reward_metrics(rewards, per, rollout["jax_scores"], remote_scores))
        metrics["rewards"] = rewards
        return state, metrics

    return computing_in(cfg.model.compute_dtype, update)


def _reward_metrics(
    rewards: jax.Array,
    per: Mapping[str, jax.Array],
    jax_scores: Mapping[str, jax.Array],
    remote_scores: Mapping[str, jax.Array],
) -> dict[str, jax.Array]:
    """The update's reward scalars: the (B, G) composite ``rewards``' mean, spread, groups without
    spread and NaN fraction, their within-group correlation with PSNR, and the mean and spread of
    each component and group of ``per`` (:func:`~irpo_jax.rewards.compose.compose`'s) that was
    scored this step."""
    metrics = {
        "reward/total/mean": jnp.nanmean(rewards),
        "reward/total/std": jnp.nanstd(rewards),
        "reward/frac_zero_std": adv_lib.frac_zero_std(rewards),
        "reward/frac_nan": jnp.mean(jnp.isnan(rewards).astype(jnp.float32)),
    }
    if "psnr" in jax_scores:  # does the reward rank a group's rollouts as PSNR does?
        metrics["reward/corr_psnr"] = adv_lib.within_group_correlation(rewards, jax_scores["psnr"])
    scored = set(jax_scores) | set(remote_scores)
    for k, v in per.items():
        if not k.startswith("group/") and k not in scored:
            continue  # unavailable this step (NaN by construction): nothing to log
        name = k.replace("group/", "group_")
        metrics[f"reward/{name}/mean"] = jnp.nanmean(v)
        metrics[f"reward/{name}/std"] = jnp.nanstd(v)
    return metrics


def make_probe_reward(cfg: ml_collections.ConfigDict) -> Callable:
    """``reward(jax_scores, remote_scores) -> {"total": (N,), component: (N,)}``: the composite
    reward (Eq. 22) and the normalised components of N rollouts, as the update computes them."""
    from irpo_jax.rewards.compose import compose

    def reward(jax_scores, remote_scores):
        flat = lambda d: {k: v.reshape(-1) for k, v in d.items()}  # noqa: E731
        shapes = [v.shape for v in (*jax_scores.values(), *remote_scores.values())]  # (B, G) each
        group = shapes[0][-1] if shapes else None
        total, per = compose(flat(jax_scores), flat(remote_scores), cfg.reward, group)
        scored = set(jax_scores) | set(remote_scores)
        return {"total": total} | {k: v for k, v in per.items() if k in scored}

    return reward
