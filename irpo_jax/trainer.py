"""Training: AdaIR's supervised stage and IRPO's GRPO post-training, data-parallel over a mesh.

One ``jax.jit`` per step kind over pure pytrees (DESIGN decision 1-2): the model's graph is split
once (``nnx.split``) and the step functions take ``(state, batch, ...)`` with parameters as
plain nested dicts, replicated over a 1-D ``("data",)`` device mesh, and batches sharded along
it. GRPO groups never straddle devices: a group is the G rollouts of one image, and images are
what is sharded.

A GRPO step (``train.stage="grpo"``):

1. ``rollout``: G rollouts per image from the sampled policy (one encoder pass, branched at
   ``fre1``), their log-probs under the current (= old) parameters and the JAX reward
   components (PSNR, SSIM, task-aware);
2. the torch reward components (LPIPS, CLIP, aesthetic, judge) are requested from the reward
   process right after the rollouts and composed with the JAX ones (Eq. 22);
3. ``update`` (``grpo.policy_iters`` times): teacher-forced log-probs of the stored actions
   under the current parameters and under the frozen reference policy, the deterministic
   output ``y_det``; advantages (Eq. 8), L_RL (Eq. 6/10/11), L_sup and L_cons (Eq. 1, 2) with
   their annealed weights (Eq. 7), one optimizer step. On fresh rollouts (one policy iteration,
   not stale) with L_RL confined to the heads, the current log-probs come from the heads applied
   to the pooled features the rollout stored (``grpo.reuse_head_inputs``): the rollout computed
   them with these very parameters, so the G teacher-forced decoder passes are not repeated.

With ``grpo.one_step_stale`` the update of step t consumes the batch and rollouts sampled one
step earlier (by theta_{t-1}) with their remote scores, while the reward process scores the
rollouts just sampled by theta_t in a background thread: the scoring overlaps the update
instead of preceding it. The PPO ratio then uses the log-probs stored at sampling time, so the
clip is active. The first step of a fresh run samples twice (the batch it updates on and the
next one), so a run still ends after ``train.steps`` updates and every update t consumes data
batch t, with its rollout key ``fold_in(rng, t)`` as in the normal mode. The sampled-but-not-yet-
used batch is part of every checkpoint (orbax item ``pending``), so resuming gives the same
parameters as an uninterrupted run.

Which parameters each loss trains: L_RL trains the policy heads (its gradient reaches the
backbone only with ``grpo.rl_updates_backbone``: the log-probs depend on the backbone solely
through the heads' pooled inputs); L_sup and L_cons train the backbone (the rollouts use stored
actions, and ``y_det`` uses detached Beta means), as IRPO's Eq. 7 splits them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from irpo_jax import checkpointing
from irpo_jax.grpo import advantages as adv_lib
from irpo_jax.grpo import losses
from irpo_jax.models import adair, layers

log = logging.getLogger("irpo_jax.train")


class TrainingError(RuntimeError):
    """A run that cannot start or must stop; the message says why and what to do."""


@dataclasses.dataclass
class TrainState:
    """Everything an update changes, as one pytree (checkpointed whole)."""

    step: jax.Array  # () int32: optimizer steps done
    params: dict  # nested dict of the model's nnx.Param values
    opt_state: Any
    rng: jax.Array  # raw key data (uint32), so the state is a plain array pytree
    ref_params: dict | None  # frozen reference policy (GRPO), None for supervised

    @classmethod
    def initial(cls, params: dict, tx, seed: int, *, with_ref: bool) -> "TrainState":
        """Step 0: ``tx``'s fresh state, the key of ``seed`` and, for GRPO, the reference policy
        as a copy of ``params``."""
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(jax.random.key(seed)),
            ref_params=jax.tree.map(jnp.copy, params) if with_ref else None,
        )


jax.tree_util.register_dataclass(
    TrainState, data_fields=["step", "params", "opt_state", "rng", "ref_params"], meta_fields=[]
)


# ----------------------------------------------------------------------------- building blocks


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D ``("data",)`` mesh over all devices (of all processes).

    Auto axes: batch shardings propagate through the model without per-op annotations.
    """
    devices = devices if devices is not None else jax.devices()
    return jax.sharding.Mesh(np.asarray(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def build_model(cfg: ml_collections.ConfigDict) -> nnx.Module:
    """The model a run trains: AdaIR (supervised) or IRPOPolicy (grpo), from ``model.init_from`` if set."""
    from irpo_jax.models.policy import IRPOPolicy, PolicyConfig

    rngs = nnx.Rngs(cfg.seed)
    start = None
    if cfg.model.init_from:
        start, meta = checkpointing.restore_model(cfg.model.init_from)
        log.info("starting from %s (%s, dim=%d)", cfg.model.init_from, meta["model"], start.config.dim)
    if cfg.train.stage == "supervised":
        if start is None:
            return adair.AdaIR(cfg.model.variant, rngs=rngs)
        return getattr(start, "net", start)  # a policy's backbone can be trained further
    if start is None:
        raise TrainingError(
            "GRPO post-training starts from a pretrained AdaIR, but model.init_from is empty. "
            "Convert the official checkpoint (`python -m torch_bridge.convert_adair adair5d.ckpt "
            "checkpoints/adair5d`) and pass --config.model.init_from=checkpoints/adair5d, or train one "
            "with the supervised stage (--config configs/allinone5.py:supervised)."
        )
    if isinstance(start, IRPOPolicy):
        return start
    pcfg = PolicyConfig.from_dict(cfg.model.policy.to_dict())
    policy = IRPOPolicy(start.config, pcfg, rngs=rngs)
    nnx.update(policy.net, nnx.state(start, nnx.Param))
    return policy


def on_mesh(mesh: jax.sharding.Mesh, fn: Callable) -> Callable:
    """``fn`` called (and so traced) under ``jax.set_mesh(mesh)``: the model reads the mesh to
    keep its FFTs on each device's part of the batch (:func:`irpo_jax.models.adair.frequency_split`)."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with jax.set_mesh(mesh):
            return fn(*args, **kwargs)

    return call


def head_count(params: Mapping) -> int:
    """Scalars in the IRPO policy heads (``params["heads"]``); 0 for a plain AdaIR."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params.get("heads", {})))


SCHEDULES = ("constant", "cosine", "adair")


def updates_per_batch(cfg: ml_collections.ConfigDict) -> int:
    """Optimizer steps per training batch: ``grpo.policy_iters`` in the GRPO stage, else 1."""
    return int(cfg.grpo.policy_iters) if cfg.train.stage == "grpo" else 1


def learning_rate(cfg: ml_collections.ConfigDict, total_steps: int, epoch_size: int | None = None) -> optax.Schedule:
    """The learning rate per optimizer step (``optim.schedule``).

    ``"constant"`` (optionally after ``optim.warmup_steps`` of linear warm-up), ``"cosine"``
    (linear warm-up then cosine to 0 at ``total_steps``, per step), or ``"adair"``: AdaIR's
    ``LinearWarmupCosineAnnealingLR(warmup_epochs, max_epochs)`` stepped once per epoch with the
    epoch index (adair-spec section 11): ``lr * e / (warmup_epochs - 1)`` for ``e <
    warmup_epochs``, then ``lr / 2 * (1 + cos(pi * (e - warmup_epochs) / (max_epochs -
    warmup_epochs)))``, where ``e`` is the epoch of the step's batch's first sample, ``floor(batch
    * train.batch_size / epoch_size)`` (``batch = step // updates_per_batch(cfg)``). AdaIR trains 150 of the 180 epochs the cosine spans, so
    it stops near 1.7e-5 rather than 0. ``epoch_size``: samples per epoch (the data mixture's
    length), required by ``"adair"``.
    """
    o = cfg.optim
    if o.schedule == "constant":
        if o.warmup_steps:
            return optax.linear_schedule(0.0, o.lr, o.warmup_steps)
        return optax.constant_schedule(o.lr)
    if o.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, o.lr, max(o.warmup_steps, 0), max(total_steps, o.warmup_steps + 1))
    if o.schedule == "adair":
        warmup, span = int(o.warmup_epochs), int(o.cosine_epochs)
        if not 1 <= warmup < span:
            raise TrainingError(
                f"optim.schedule='adair' needs 1 <= optim.warmup_epochs < optim.cosine_epochs, got "
                f"{warmup} and {span} (AdaIR: 15 and 180)"
            )
        if not epoch_size:
            raise TrainingError("optim.schedule='adair' counts epochs: it needs the data set's epoch size")
        lr, batch_size, per_batch = float(o.lr), int(cfg.train.batch_size), updates_per_batch(cfg)

        def adair(step):
            batch = jnp.asarray(step, jnp.int32) // per_batch
            epoch = jnp.floor(batch.astype(jnp.float32) * batch_size / epoch_size)
            warm = lr * epoch / max(warmup - 1, 1)
            cosine = 0.5 * lr * (1.0 + jnp.cos(jnp.pi * (epoch - warmup) / (span - warmup)))
            return jnp.where(epoch < warmup, warm, cosine)

        return adair
    raise TrainingError(f"optim.schedule must be one of {SCHEDULES}, got {o.schedule!r}")


@dataclasses.dataclass(frozen=True)
class FlatOptimizer:
    """An optax transform applied to all parameters raveled into one vector.

    Why flat: XLA:CPU compile time grows with the op count, and a per-leaf Adam over AdaIR's
    ~600 tensors (plus the non-finite guard) took minutes to compile; on one vector it is a
    handful of ops. The policy heads' learning-rate multiplier is a per-element scale of the
    update (``ravel_pytree`` orders dict keys, so ``heads`` come first), which equals a separate
    optimizer at ``lr * head_lr_mult`` for them (Adam's update is linear in the learning rate,
    decoupled weight decay included).
    """

    tx: optax.GradientTransformation
    n_heads: int
    head_lr_mult: float

    def init(self, params: Mapping) -> Any:
        return self.tx.init(jax.flatten_util.ravel_pytree(params)[0])

    def update(self, flat_grads: jax.Array, opt_state: Any, flat_params: jax.Array) -> tuple[jax.Array, Any]:
        """One step on raveled parameters. Returns ``(new_flat_params, new_opt_state)``."""
        updates, opt_state = self.tx.update(flat_grads, opt_state, flat_params)
        if self.n_heads and self.head_lr_mult != 1.0:
            index = jnp.arange(flat_params.shape[0])
            updates = updates * jnp.where(index < self.n_heads, self.head_lr_mult, 1.0).astype(updates.dtype)
        return flat_params + updates, opt_state


def build_optimizer(
    cfg: ml_collections.ConfigDict, params: Mapping, total_steps: int, epoch_size: int | None = None
) -> FlatOptimizer:
    """Adam/AdamW (+ optional global-norm clipping) with the policy heads at ``head_lr_mult`` x lr.

    ``total_steps`` and ``epoch_size`` (samples per epoch) are what :func:`learning_rate` needs.
    """
    o = cfg.optim
    schedule = learning_rate(cfg, total_steps, epoch_size)
    if o.name == "adam":
        tx = optax.adam(schedule, b1=o.b1, b2=o.b2, eps=o.eps)
    elif o.name == "adamw":
        tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
    else:
        raise TrainingError(f"optim.name must be 'adam' or 'adamw', got {o.name!r}")
    if o.grad_clip and o.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
    return FlatOptimizer(tx, head_count(params), float(o.head_lr_mult))


def _apply(state: TrainState, grads, tx: FlatOptimizer, loss_terms: Mapping[str, jax.Array]):
    """One optimizer step, skipped (state kept) when any loss term or gradient is not finite."""
    flat_params, unravel = jax.flatten_util.ravel_pytree(state.params)
    flat_grads = jax.flatten_util.ravel_pytree(grads)[0]
    new_flat, opt_state = tx.update(flat_grads, state.opt_state, flat_params)
    finite = {k: jnp.isfinite(v) for k, v in loss_terms.items()}
    ok = jnp.all(jnp.isfinite(flat_grads)) & jnp.all(jnp.asarray(list(finite.values())))
    new = dataclasses.replace(
        state,
        step=state.step + ok.astype(jnp.int32),
        params=unravel(jnp.where(ok, new_flat, flat_params)),
        opt_state=jax.tree.map(lambda a, b: jnp.where(ok, a, b), opt_state, state.opt_state),
    )
    metrics = {f"finite/{k}": v.astype(jnp.float32) for k, v in finite.items()}
    return new, {"opt/grad_norm": jnp.linalg.norm(flat_grads), "ok": ok.astype(jnp.float32), **metrics}


# ----------------------------------------------------------------------------- step functions


def _computing_in(dtype: str, fn: Callable) -> Callable:
    """``fn`` traced under ``layers.compute_dtype(dtype)``: the activations' dtype of the model
    calls inside it (``model.compute_dtype``; the parameters and losses stay float32)."""

    @functools.wraps(fn)
    def traced(*args):
        with layers.compute_dtype(dtype):
            return fn(*args)

    return traced


def make_supervised_step(graphdef, tx, compute_dtype: str = "float32") -> Callable:
    """``step(state, batch) -> (state, metrics)``: AdaIR's L1 recipe."""

    def step(state: TrainState, batch: Mapping[str, jax.Array]):
        def loss_fn(params):
            restored = nnx.merge(graphdef, params)(batch["degraded"])
            return losses.l1(restored, batch["clean"])

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        state, metrics = _apply(state, grads, tx, {"l1": loss})
        return state, {"loss/l1": loss, "loss/total": loss, **metrics}

    return _computing_in(compute_dtype, step)


def reuses_head_inputs(g: ml_collections.ConfigDict) -> bool:
    """Whether the update scores the actions from the rollout's stored head inputs.

    Exact when the update's parameters are the rollout's (one policy iteration on fresh rollouts)
    and L_RL's gradient stops at the heads' inputs; the best-only supervision is needed too, as
    the all-rollout form uses the teacher-forced restorations themselves.
    """
    fresh = g.policy_iters == 1 and not g.one_step_stale
    return bool(g.reuse_head_inputs and fresh and not g.rl_updates_backbone and g.supervise_best_only)


def make_rollout_step(graphdef, cfg: ml_collections.ConfigDict, jax_names: tuple[str, ...]) -> Callable:
    """``rollout(params, batch, key) -> dict``: G sampled restorations, their actions and log-probs,
    the raw JAX reward components (B, G) of each and, when the update reuses them
    (:func:`reuses_head_inputs`), the pooled inputs of the policy heads."""
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
        }
        if keep_head_inputs:
            result["head_inputs"] = out.head_inputs
        return result

    return _computing_in(cfg.model.compute_dtype, rollout)


def make_grpo_update(graphdef, tx, cfg: ml_collections.ConfigDict, total_steps: int) -> Callable:
    """``update(state, batch, rollout, remote_scores) -> (state, metrics)``.

    Besides the scalars, ``metrics["rewards"]`` is the (B, G) composite reward of each rollout
    (the image panels caption them; the trainer does not log it as a scalar).
    """
    from irpo_jax.models.policy import kl_divergence
    from irpo_jax.rewards.compose import compose

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
            weights = jnp.asarray([_effective_weight(reward_cfg, k) for k in names])
            advantages = adv_lib.component_advantages(comps, weights, eps=g.adv_eps, scale=g.adv_scale)
        else:
            advantages = adv_lib.group_advantages(rewards, eps=g.adv_eps, scale=g.adv_scale)
        lam_sup = losses.linear_anneal(*g.lambda_sup, state.step, total_steps)
        lam_cons = losses.linear_anneal(*g.lambda_cons, state.step, total_steps)
        ref = None
        if g.kl_coef:
            ref = nnx.merge(graphdef, state.ref_params).given(img, rollout["actions"])
            ref = jax.lax.stop_gradient(ref)

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
            l_sup, l_cons = losses.supervision_losses(
                restored_for_sup, y_det, clean, rewards_for_sup, scored=jnp.any(~jnp.isnan(rewards), axis=1)
            )
            total_loss = l_rl + lam_sup * l_sup + lam_cons * l_cons
            terms = {"rl": l_rl, "sup": l_sup, "cons": l_cons, "total": total_loss}
            return total_loss, (terms, rl_metrics)

        (_, (terms, rl_metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state, opt_metrics = _apply(state, grads, tx, terms)
        metrics = {f"loss/{k}": v for k, v in terms.items()}
        metrics.update(rl_metrics)
        metrics.update(opt_metrics)
        metrics.update({"grpo/lambda_sup": lam_sup, "grpo/lambda_cons": lam_cons})
        metrics["reward/total/mean"] = jnp.nanmean(rewards)
        metrics["reward/total/std"] = jnp.nanstd(rewards)
        metrics["reward/frac_zero_std"] = adv_lib.frac_zero_std(rewards)
        metrics["reward/frac_nan"] = jnp.mean(jnp.isnan(rewards).astype(jnp.float32))
        metrics["rewards"] = rewards
        scored = set(rollout["jax_scores"]) | set(remote_scores)
        for k, v in per.items():
            if not k.startswith("group/") and k not in scored:
                continue  # unavailable this step (NaN by construction): nothing to log
            name = k.replace("group/", "group_")
            metrics[f"reward/{name}/mean"] = jnp.nanmean(v)
            metrics[f"reward/{name}/std"] = jnp.nanstd(v)
        return state, metrics

    return _computing_in(cfg.model.compute_dtype, update)


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


class _RewardProbe:
    """The mean reward of G rollouts on fixed training batches, with fixed sampling keys.

    Why: the per-step ``reward/total/mean`` is dominated by which images the step drew (a hazy
    image scores low whatever the policy does), so it cannot show progress over a short run.
    Scoring the same batches with the same keys at every probe removes that noise; the curve
    moves only because the parameters did. The batches come from their own iterator (seed
    ``seed + 1``), so the training data order is untouched and a resumed run probes the same
    images.
    """

    def __init__(self, cfg, sharded, rollout_fn, score_remotely):
        from irpo_jax.data.pipeline import make_train_iterator

        source = make_train_iterator(cfg.data, batch_size=cfg.train.batch_size, seed=cfg.seed + 1)
        try:
            self.batches = [_to_global(next(source), sharded) for _ in range(int(cfg.train.probe_batches))]
        finally:
            getattr(source, "close", lambda: None)()
        self.keys = [jax.random.fold_in(jax.random.key(cfg.seed + 1), i) for i in range(len(self.batches))]
        self.rollout_fn, self.score_remotely = rollout_fn, score_remotely
        self.reward_fn = jax.jit(make_probe_reward(cfg))

    def __call__(self, params) -> dict[str, float]:
        values: dict[str, list[np.ndarray]] = {}
        for batch, key in zip(self.batches, self.keys):
            rollout = self.rollout_fn(params, batch, key)
            rewards = self.reward_fn(rollout["jax_scores"], self.score_remotely(batch, rollout))
            for k, v in rewards.items():
                values.setdefault(k, []).append(_host(v))
        return {f"probe/reward/{k}/mean": float(np.nanmean(np.concatenate(v))) for k, v in values.items()}


def _effective_weight(reward_cfg, name: str) -> float:
    """A component's weight in the total reward (group weight x weight inside the group)."""
    for group in reward_cfg.groups.values():
        if name in group.components:
            return float(group.weight) * float(group.components[name])
    return 0.0


# ----------------------------------------------------------------------------- checkpoints


class TrainCheckpointer:
    """orbax ``CheckpointManager`` under ``workdir/checkpoints``: state, data iterator, metadata,
    and with ``grpo.one_step_stale`` the pending batch, rollouts and remote scores.

    Each save also refreshes ``workdir/model`` (a model directory :func:`irpo_jax.load_model`,
    evaluation and mining read).
    """

    def __init__(self, workdir: pathlib.Path, keep: int):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.workdir = workdir
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        # Handlers named up front: a fresh manager can then read any item's metadata (``pending``
        # exists only in one-step-stale runs) before restoring it.
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler(), "pending": ocp.StandardCheckpointHandler()}  # fmt: skip
        self.manager = ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(
        self,
        state: TrainState,
        data_state: Mapping,
        meta: Mapping,
        model: nnx.Module | None,
        pending: Mapping | None = None,
    ) -> None:
        """Saves at ``state.step`` (a step already saved is left alone).

        ``pending``: the ``{"batch", "rollout", "remote_scores"}`` tree the next update consumes
        (one-step-stale GRPO), or None.
        """
        ocp = self._ocp
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return
        items = {
            "state": ocp.args.StandardSave(state),
            "data": ocp.args.JsonSave(dict(data_state)),
            "meta": ocp.args.JsonSave(dict(meta)),
        }
        if pending is not None:
            items["pending"] = ocp.args.StandardSave(pending)
        self.manager.save(step, args=ocp.args.Composite(**items))
        self.manager.wait_until_finished()
        if model is not None and jax.process_index() == 0:
            target = self.workdir / "model"
            old = self.workdir / ".model.previous"
            with checkpointing.atomic_directory(self.workdir / ".model.next") as tmp:
                checkpointing.write_model(tmp, model, {"manifest.json": {"trained_steps": step, **meta}})
            if target.exists():
                os.replace(target, old)
            os.replace(self.workdir / ".model.next", target)
            if old.exists():
                import shutil

                shutil.rmtree(old, ignore_errors=True)

    def restore(self, abstract_state: TrainState) -> tuple[TrainState, dict, dict]:
        ocp = self._ocp
        step = self.manager.latest_step()
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["data"], restored["meta"]

    def restore_pending(self, mesh: jax.sharding.Mesh, step: int | None = None) -> dict | None:
        """The ``pending`` tree saved at ``step`` (default: the latest), None if it has none.

        Each array comes back with the partition spec it was saved with, on ``mesh`` (a
        single-device array, e.g. remote scores made on the host, comes back replicated), so the
        update sees the same input shardings as in the run that saved it.
        """
        ocp = self._ocp
        step = self.manager.latest_step() if step is None else step
        metadata = self.manager.item_metadata(step)
        if metadata.get("pending") is None:
            return None
        tree = getattr(metadata["pending"], "tree", metadata["pending"])

        def abstract(m):
            spec = getattr(m.sharding, "partition_spec", None)
            sharding = NamedSharding(mesh, P(*spec) if spec is not None else P())
            return jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding)

        restored = self.manager.restore(
            step, args=ocp.args.Composite(pending=ocp.args.StandardRestore(jax.tree.map(abstract, tree)))
        )
        return restored["pending"]

    def close(self) -> None:
        self.manager.close()


# ----------------------------------------------------------------------------- the run


def init_distributed(cfg: ml_collections.ConfigDict) -> None:
    """``jax.distributed.initialize`` for multi-process runs (flags/config, or JAX's own env detection)."""
    d = cfg.distributed
    if d.num_processes > 1 or d.coordinator:
        # CPU devices need an explicit cross-process collectives library; the option only affects
        # the CPU backend (and querying the backend here would initialise it too early).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=d.coordinator or None, num_processes=d.num_processes, process_id=d.process_id
        )


def _config_json(cfg: ml_collections.ConfigDict) -> dict:
    return json.loads(cfg.to_json_best_effort())


# Fields that may change between a run and its resumption without changing the numbers.
_RESUMABLE_CHANGES = ("train.allow_config_change", "train.log_every", "train.checkpoint_every", "train.panel_every",
                      "train.probe_every", "train.probe_batches",
                      "train.steps", "train.keep_checkpoints", "train.compilation_cache", "train.devices", "reward.bridge",
                      "distributed", "data.worker_count", "data.read_threads", "data.worker_buffer_size")  # fmt: skip


def validate_config(cfg: ml_collections.ConfigDict) -> None:
    """The training settings a run cannot start with, named by their keys (before any work)."""
    t = cfg.train
    problems = []
    if t.stage not in ("supervised", "grpo"):
        problems.append(f"train.stage must be 'supervised' or 'grpo', got {t.stage!r}")
    if cfg.model.compute_dtype not in ("float32", "bfloat16"):
        problems.append(f"model.compute_dtype must be 'float32' or 'bfloat16', got {cfg.model.compute_dtype!r}")
    if t.steps < 0 or (t.steps == 0 and not t.epochs > 0):
        problems.append(f"train.steps={t.steps}, train.epochs={t.epochs}: give steps > 0, or steps=0 and epochs > 0")
    if t.batch_size < 1:
        problems.append(f"train.batch_size must be at least 1, got {t.batch_size}")
    for key in ("log_every", "checkpoint_every", "panel_every", "eval_every", "probe_every"):
        if t[key] < 0:
            problems.append(f"train.{key} must be >= 0 (0 = never, or only at the end), got {t[key]}")
    if cfg.data.patch_size < 8 or cfg.data.patch_size % 8:
        problems.append(f"data.patch_size={cfg.data.patch_size}: AdaIR needs a multiple of 8 (the paper: 128)")
    if t.stage == "grpo" and cfg.grpo.policy_iters < 1:
        problems.append(f"grpo.policy_iters must be at least 1, got {cfg.grpo.policy_iters}")
    if problems:
        raise TrainingError("invalid config: " + "; ".join(problems))


def check_workdir_config(workdir: pathlib.Path, cfg: ml_collections.ConfigDict) -> None:
    """Save the resolved config; refuse a workdir made by a different config unless allowed.

    A workdir is a new or empty directory, or one this trainer wrote (it has ``config.json``):
    anything else is refused, so that nothing a user keeps there is overwritten (the run
    replaces ``model/`` and ``summary.json``). A ``config.json`` without a checkpoint is the
    record of a start that failed before its first save: the new config replaces it.
    """
    path = workdir / "config.json"
    new = _config_json(cfg)
    if workdir.exists() and not workdir.is_dir():
        raise TrainingError(f"--workdir {workdir} is a file, not a directory; choose another --workdir")
    if workdir.is_dir() and not path.exists() and any(workdir.iterdir()):
        found = ", ".join(sorted(p.name for p in workdir.iterdir())[:5])
        raise TrainingError(
            f"--workdir {workdir} is not empty and holds no irpo-jax run (it has {found}); a run writes "
            "model/, summary.json and checkpoints/ there. Choose a new or empty --workdir."
        )
    checkpoints = workdir / "checkpoints"
    saved = checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
    if path.exists() and not saved:
        log.info("%s has no checkpoint yet: its config.json (a start that failed) is replaced", workdir)
    elif path.exists():
        old = json.loads(path.read_text())
        diffs = sorted(k for k in _flat_diff(old, new) if not k.startswith(_RESUMABLE_CHANGES))
        if diffs and not cfg.train.allow_config_change:
            raise TrainingError(
                f"the workdir {workdir} holds a run with a different config (changed: {', '.join(diffs[:10])}"
                f"{' ...' if len(diffs) > 10 else ''}). Use another --workdir, or pass "
                "--config.train.allow_config_change=True to resume it with the new values."
            )
        if diffs:
            log.warning("resuming %s with a changed config: %s", workdir, ", ".join(diffs))
            (workdir / f"config.previous.{int(time.time())}.json").write_text(json.dumps(old, indent=2))
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(new, indent=2, sort_keys=True) + "\n")


def _flat_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _flat_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


class _StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps (preemption-safe)."""

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _to_global(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    keys = ("degraded", "clean", "task_id")
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in keys}


@dataclasses.dataclass
class _Sampled:
    """A batch, its G rollouts per image and the (future) remote scores: what one update consumes."""

    batch: dict[str, jax.Array]
    rollout: dict[str, Any]
    scores: concurrent.futures.Future  # of name -> (B, G) raw remote scores

    def tree(self) -> dict[str, Any]:
        """As a checkpointable pytree (waits for the scores)."""
        return {"batch": self.batch, "rollout": self.rollout, "remote_scores": self.scores.result()}


def _done(value: Any) -> concurrent.futures.Future:
    future = concurrent.futures.Future()
    future.set_result(value)
    return future


def host_device() -> jax.Device | None:
    """This process's CPU device, where models are built before they are placed (an eager NNX
    init runs ~90 small XLA programs, each an XLA:GPU compile on a card); None (the default
    device) when the CPU backend is off (``JAX_PLATFORMS=cuda``)."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return None


def _host(x: jax.Array) -> np.ndarray:
    """The whole (global) array on every process; every process must call it."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _panel(batch, rollout, remote_scores, y_det: np.ndarray | None, rewards) -> np.ndarray:
    """The batch's first image as a captioned panel (:func:`irpo_jax.metrics_log.image_panel`):
    degraded | rollouts (reward and raw components) | deterministic output | clean."""
    from irpo_jax.metrics_log import image_panel

    first = lambda x: _host(x)[0]  # noqa: E731
    kwargs = {}
    if rollout is not None:
        kwargs["rollouts"] = np.clip(first(rollout["restored"]), 0, 1)
        kwargs["scores"] = {k: first(v) for k, v in {**rollout["jax_scores"], **remote_scores}.items()}
        kwargs["rewards"] = first(rewards) if rewards is not None else None
    if y_det is not None:
        kwargs["deterministic"] = np.clip(y_det[0], 0, 1)
        kwargs["deterministic_label"] = "mean" if rollout is not None else "output"
    return image_panel(first(batch["degraded"]), first(batch["clean"]), **kwargs)


def run(
    cfg: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train as configured; resume from ``workdir`` when it holds checkpoints. Returns a summary.

    Args:
      cfg: the resolved config.
      workdir: run directory (created; resumed when it holds checkpoints).
      progress: show a progress bar.
      stop_after: leave after this many steps of *this* invocation, checkpointing as on SIGTERM
        (for time-limited jobs; a later run with the same workdir continues).
    """
    from tqdm import tqdm

    from irpo_jax.data.pipeline import make_train_iterator
    from irpo_jax.metrics_log import MetricWriter
    from irpo_jax.rewards import compose as compose_lib

    workdir = pathlib.Path(workdir)
    stage = cfg.train.stage
    validate_config(cfg)
    init_distributed(cfg)
    if cfg.train.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(cfg.train.compilation_cache))
    check_workdir_config(workdir, cfg)
    mesh = make_mesh(jax.devices()[: cfg.train.devices] if cfg.train.devices else None)
    if cfg.train.batch_size % mesh.size:
        raise TrainingError(
            f"train.batch_size={cfg.train.batch_size} must be a multiple of the {mesh.size} devices "
            "(each device restores whole images and their G rollouts)."
        )
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    data = make_train_iterator(cfg.data, batch_size=cfg.train.batch_size, seed=cfg.seed)
    if stage == "grpo" and not cfg.data.manifest:
        log.warning(
            "GRPO on every training pair (data.manifest is empty); IRPO post-trains on the hardest "
            "30 %: python -m irpo_jax.mine ... --out hard.jsonl, then --config.data.manifest=hard.jsonl"
        )
    # Optimizer steps: one per batch, grpo.policy_iters per GRPO batch (a whole number of batches).
    per_batch = updates_per_batch(cfg)
    batches = max(1, math.ceil(cfg.train.epochs * data.epoch_size / cfg.train.batch_size))
    total_steps = int(cfg.train.steps) or batches * per_batch
    if total_steps % per_batch:
        raise TrainingError(
            f"train.steps={total_steps} counts optimizer steps, and each GRPO batch makes "
            f"grpo.policy_iters={per_batch} of them: use a multiple of {per_batch}"
        )

    # Built on the host, then placed (a checkpoint's weights need not pass through device 0).
    with jax.default_device(host_device()):
        model = build_model(cfg)
        graphdef, params = nnx.split(model, nnx.Param)
        params = nnx.to_pure_dict(params)
        tx = build_optimizer(cfg, params, total_steps, data.epoch_size)
        state = jax.tree.map(np.asarray, TrainState.initial(params, tx, cfg.seed, with_ref=stage == "grpo"))
    state = jax.device_put(state, replicated)
    meta = checkpointing.model_metadata(model) | {"stage": stage, "total_steps": total_steps}

    ckpt = TrainCheckpointer(workdir, cfg.train.keep_checkpoints)
    stale = stage == "grpo" and bool(cfg.grpo.one_step_stale)
    pending: _Sampled | None = None  # one-step-stale: the sample the next update consumes
    if ckpt.latest_step() is not None:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        state, data_state, _ = ckpt.restore(abstract)
        data.set_state(data_state)
        saved = ckpt.restore_pending(mesh) if stale else None
        if saved is not None:  # (a checkpoint of the normal mode has none: the next step samples anew)
            pending = _Sampled(saved["batch"], saved["rollout"], _done(saved["remote_scores"]))
        log.info("resumed %s at step %d", workdir, int(state.step))
        print(f"resuming {workdir} at step {int(state.step)} of {total_steps}")

    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    bridge = None
    jax_names = tuple(n for n in compose_lib.active_components(cfg.reward) if compose_lib.REWARDS[n].backend == "jax")
    live_remote: tuple[str, ...] = ()
    if stage == "grpo":
        from irpo_jax.rewards.remote import open_reward_bridge

        bridge = open_reward_bridge(cfg.reward)
        live_remote = tuple(bridge.live_components) if bridge is not None else ()
        wanted = compose_lib.remote_components(cfg.reward)
        missing = [n for n in wanted if n not in live_remote]
        report = {"jax": list(jax_names), "torch_live": list(live_remote), "torch_unavailable": missing,
                  "bridge_mode": cfg.reward.bridge.mode}  # fmt: skip
        print("reward components: " + json.dumps(report))
        if missing and cfg.reward.missing == "strict":
            raise TrainingError(
                f"reward components {missing} have nonzero weight but are not live (reward.bridge.mode="
                f"{cfg.reward.bridge.mode!r}); with reward.missing='strict' the run cannot start. Start the "
                "reward process (reward.bridge.mode=process, weights under reward.models.<name>) or set "
                "their weights to 0."
            )
        if jax.process_index() == 0:
            (workdir / "reward_components.json").write_text(json.dumps(report, indent=2) + "\n")
    # One worker keeps requests in step order; in the stale mode it scores while the update runs.
    scorer = concurrent.futures.ThreadPoolExecutor(1, "reward-scoring") if bridge is not None else None

    if stage == "supervised":
        supervised_step = make_supervised_step(graphdef, tx, cfg.model.compute_dtype)
        step_fn = on_mesh(mesh, jax.jit(supervised_step, donate_argnums=0))
    else:
        rollout_fn = on_mesh(mesh, jax.jit(make_rollout_step(graphdef, cfg, jax_names)))
        grpo_update = make_grpo_update(graphdef, tx, cfg, total_steps)
        update_fn = on_mesh(mesh, jax.jit(grpo_update, donate_argnums=0))
    # The deterministic restoration for the panels (policy: Beta means; AdaIR: its output).
    mean_fn = on_mesh(mesh, jax.jit(lambda params, img: nnx.merge(graphdef, params)(img)))

    def current_model() -> nnx.Module:
        return nnx.merge(graphdef, jax.device_get(state.params))

    def sample(index: int, batch: dict[str, jax.Array]) -> _Sampled:
        """Rollouts of ``batch`` under the current parameters (key ``fold_in(rng, index)``) and
        the request for their remote scores."""
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), index)
        rollout = jax.block_until_ready(rollout_fn(state.params, batch, key))
        if scorer is None:
            return _Sampled(batch, rollout, _done({}))
        return _Sampled(batch, rollout, scorer.submit(_score_remotely, bridge, cfg, index, batch, rollout, live_remote))

    def save(pending_grace_s: float | None = None) -> None:
        """Checkpoints the state (and, one-step-stale, the pending sample with its scores).

        ``pending_grace_s``: how long to wait for the pending sample's scores (None: as long as
        the request takes). After a failure or a signal the reward process may be hung or gone:
        the state is saved without the pending sample then, and the resumed run samples its
        next update afresh (a one-step-stale run's only inexact resume).
        """
        tree = None
        if pending is not None:
            try:
                pending.scores.result(timeout=pending_grace_s)
                tree = pending.tree()
            except Exception as e:  # noqa: BLE001 - timed out or failed: save without it
                log.warning("checkpoint without the pending rollouts (their reward scores: %s); a resumed "
                            "run samples the next update afresh", type(e).__name__)  # fmt: skip
        ckpt.save(state, data.get_state(), meta, current_model(), tree)

    def scores_of(sampled: _Sampled, stop: _StopSignal) -> dict[str, jax.Array] | None:
        """The sample's remote scores; None if a signal arrives first (a hung reward process
        must not hold a preempted job past its grace period)."""
        while True:
            try:
                return sampled.scores.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                if stop.received:
                    return None

    probe = None
    if stage == "grpo" and cfg.train.probe_every:
        remote = lambda batch, rollout: (  # noqa: E731
            _score_remotely(bridge, cfg, 0, batch, rollout, live_remote) if bridge is not None else {}
        )
        probe = _RewardProbe(cfg, sharded, rollout_fn, remote)
        if int(jax.device_get(state.step)) == 0:
            writer.scalars(0, probe(state.params))

    start_step = int(jax.device_get(state.step))
    bar = tqdm(total=total_steps, initial=start_step, disable=not progress or jax.process_index() != 0,
               desc=f"{cfg.name} {stage}", unit="step", dynamic_ncols=True)  # fmt: skip
    images_seen, t_start, last = 0, time.perf_counter(), {}
    timings = {"rollout": 0.0, "reward_wait": 0.0, "update": 0.0}
    stop_reason = "finished"
    try:
        with _StopSignal() as stop:
            while int(jax.device_get(state.step)) < total_steps:
                step = int(jax.device_get(state.step))
                panel_due = bool(cfg.train.panel_every) and (step + 1) % cfg.train.panel_every == 0
                rollout, remote_scores, y_det = None, {}, None
                if stage == "supervised":
                    batch = _to_global(next(data), sharded)
                    if panel_due:  # before the step donates the parameters
                        y_det = _host(mean_fn(state.params, batch["degraded"]))
                    state, metrics = step_fn(state, batch)
                else:
                    t0 = time.perf_counter()
                    if stale and pending is None:  # a fresh run's first step also samples what it updates on
                        pending = sample(step, _to_global(next(data), sharded))
                    fresh = sample(step + 1 if stale else step, _to_global(next(data), sharded))
                    used = pending if stale else fresh
                    batch, rollout = used.batch, used.rollout
                    if panel_due:
                        y_det = _host(mean_fn(state.params, batch["degraded"]))
                    t1 = time.perf_counter()
                    try:
                        remote_scores = scores_of(used, stop)  # stale: requested one step ago
                    except Exception as e:
                        save(pending_grace_s=0)
                        raise TrainingError(
                            f"the reward scores of step {step} failed: {e}\nThe state before this step was saved "
                            f"in {workdir / 'checkpoints'}; fix the reward process (or set reward.bridge.mode=off) "
                            "and rerun the same command to resume."
                        ) from e
                    if remote_scores is None:
                        stop_reason = f"stopped by {stop.received} while waiting for the reward process"
                        break
                    t2 = time.perf_counter()
                    for _ in range(cfg.grpo.policy_iters):
                        state, metrics = update_fn(state, batch, rollout, remote_scores)
                    # Stale: the next update consumes this step's sample. (After a non-finite
                    # update the saved checkpoint then skips the used batch, as the normal mode does.)
                    pending = fresh if stale else None
                    t3 = time.perf_counter()
                    timings["rollout"] += t1 - t0
                    timings["reward_wait"] += t2 - t1
                    timings["update"] += t3 - t2
                rewards = metrics.pop("rewards", None)  # (B, G), for the panels only
                # One host read per step: the NaN guard (and, on CPU fake devices, it keeps
                # back-to-back collective steps from dead-locking).
                metrics = jax.device_get(metrics)
                if metrics["ok"] < 1:
                    bad = [k.split("/", 1)[1] for k, v in metrics.items() if k.startswith("finite/") and v < 1]
                    what = ", ".join(f"loss/{b}" for b in bad) or "a gradient"
                    save()
                    raise TrainingError(
                        f"non-finite value in {what} at step {step}; the update was not applied and the last "
                        f"good state was saved in {workdir / 'checkpoints'}. Lower optim.lr, enable "
                        "optim.grad_clip, or check the data/rewards of this step."
                    )
                images_seen += cfg.train.batch_size
                bar.update(1)
                new_step = step + 1
                elapsed = time.perf_counter() - t_start
                rate = {"perf/images_per_s": images_seen / elapsed}
                if stage == "grpo":
                    rate["perf/rollouts_per_s"] = images_seen * cfg.grpo.group_size / elapsed
                bar.set_postfix({k.split("/")[-1]: f"{v:.2f}" for k, v in rate.items()})
                last = {k: float(v) for k, v in metrics.items() if not k.startswith("finite/") and k != "ok"}
                if (cfg.train.log_every and new_step % cfg.train.log_every == 0) or new_step == total_steps:
                    extra = {"opt/lr": float(learning_rate(cfg, total_steps, data.epoch_size)(step)), **rate}
                    extra.update({f"perf/{k}_s": v / max(new_step - start_step, 1) for k, v in timings.items()})
                    extra.update(_memory_stats())
                    writer.scalars(new_step, last | extra)
                if panel_due:
                    tag = "degraded_rollouts_mean_clean" if rollout is not None else "degraded_restored_clean"
                    writer.image(new_step, f"panels/{tag}", _panel(batch, rollout, remote_scores, y_det, rewards))
                if probe is not None and (new_step % cfg.train.probe_every == 0 or new_step == total_steps):
                    writer.scalars(new_step, probe(state.params))
                if cfg.train.eval_every and new_step % cfg.train.eval_every == 0 and new_step < total_steps:
                    _evaluate(cfg, workdir, current_model(), new_step, writer)
                if cfg.train.checkpoint_every and new_step % cfg.train.checkpoint_every == 0 and new_step < total_steps:
                    save()
                if stop.received:
                    stop_reason = f"stopped by {stop.received}"
                    break
                if stop_after is not None and new_step - start_step >= stop_after and new_step < total_steps:
                    stop_reason = f"stopped after {stop_after} steps (stop_after)"
                    break
        save(pending_grace_s=30.0 if stop.received else None)
        if cfg.train.eval_at_end and stop_reason == "finished":
            _evaluate(cfg, workdir, current_model(), int(jax.device_get(state.step)), writer)
    finally:
        bar.close()
        writer.close()
        ckpt.close()
        if bridge is not None:  # first: a request in flight then fails instead of being waited for
            bridge.close()
        if scorer is not None:
            scorer.shutdown(wait=True, cancel_futures=True)
    summary = {"stage": stage, "steps": int(jax.device_get(state.step)), "total_steps": total_steps,
               "stop": stop_reason, "workdir": str(workdir), "last_metrics": last}  # fmt: skip
    previous = workdir / "summary.json"
    if start_step >= total_steps and previous.exists():  # nothing ran: keep the finished run's record
        return json.loads(previous.read_text()) | {"stop": "already finished"}
    if jax.process_index() == 0:
        previous.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _evaluate(cfg, workdir: pathlib.Path, model: nnx.Module, step: int, writer) -> None:
    """The published-protocol evaluation on ``data.eval_sets`` (process 0), logged and written to
    ``workdir/eval/<step>[...]``."""
    if jax.process_index() != 0:
        return
    from irpo_jax import evaluate

    n = int(cfg.train.eval_max_images)
    results = evaluate.evaluate(model, cfg.data, max_images=n, name=cfg.name, step=step, progress=False)
    # As the evaluate CLI records them: it then recognises (and may replace) this run's results.
    results["model"]["params_sha256"], results["settings"] = evaluate.result_identity(model, cfg.data, max_images=n)
    evaluate.write_results(results, evaluate.output_dir(workdir, cfg.name, step, max_images=n))
    writer.scalars(step, evaluate.scalars(results))
    table = evaluate.format_table(results)
    writer.text(step, "eval/table", table)
    print(table)


def _process_rows(x: jax.Array) -> tuple[jax.Array, int]:
    """This process's rows of a batch-sharded global array, in order, and the first one's index.

    With several processes each one holds only its devices' rows (the global array cannot be
    fetched whole); its own reward process scores those, as :func:`_to_global` assembles them.
    The rows stay on the accelerator: the in-process bridge takes them through DLPack, the
    reward process's client copies them to its transport.
    """
    if x.is_fully_addressable:
        return x, 0
    shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}  # replicas: once
    first, device = min(shards), jax.local_devices()[0]
    return jnp.concatenate([jax.device_put(shards[k], device) for k in sorted(shards)]), first


def _score_remotely(bridge, cfg, step: int, batch, rollout, live: tuple[str, ...]) -> dict[str, jax.Array]:
    """The torch components' raw scores for the B*G rollouts, as (B, G) arrays sharded like the batch.

    Each process sends its own images' rollouts to its own reward process.
    """
    from irpo_jax.rewards.compose import remote_components_for_step

    names = [n for n in remote_components_for_step(cfg.reward, step) if n in live]
    if not names:
        return {}
    restored, first = _process_rows(rollout["restored"])  # (b, G, H, W, 3), this process's b
    restored = jnp.clip(restored, 0, 1)
    b, g = restored.shape[:2]
    rep = lambda k: jnp.repeat(_process_rows(batch[k])[0], g, axis=0)  # noqa: E731
    b_global = batch["degraded"].shape[0]
    result = bridge.score(
        rep("degraded"), restored.reshape(b * g, *restored.shape[2:]), rep("clean"),
        task_ids=np.asarray(rep("task_id")), components=names,
        sample_ids=np.repeat(np.arange(first, first + b) + step * b_global, g),
    )  # fmt: skip  (no timeout here: the client enforces its own per attempt, with restarts)
    sharding = NamedSharding(batch["degraded"].sharding.mesh, P("data"))
    return {k: jax.make_array_from_process_local_data(sharding, v.reshape(b, g)) for k, v in result.scores.items()}


def _memory_stats() -> dict[str, float]:
    stats = jax.local_devices()[0].memory_stats() or {}
    out = {}
    if "bytes_in_use" in stats:
        out["perf/device_mem_gb"] = stats["bytes_in_use"] / 1e9
    if "peak_bytes_in_use" in stats:
        out["perf/device_peak_mem_gb"] = stats["peak_bytes_in_use"] / 1e9
    return out
