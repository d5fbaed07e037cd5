"""The optimizer side of a run: the train state, the learning-rate schedules, a flat Adam with the
policy heads' learning-rate multiplier, and the step that applies an update only when it is finite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from irpo_jax.training.errors import TrainingError


@dataclasses.dataclass
class TrainState:
    """Everything an update changes, as one pytree (checkpointed whole)."""

    step: jax.Array  # () int32: optimizer steps done
    params: dict  # nested dict of the model's nnx.Param values
    opt_state: Any
    rng: jax.Array  # raw key data (uint32), so the state is a plain array pytree
    ref_params: dict | None  # frozen reference policy (GRPO), None for supervised

    @classmethod
    def initial(cls, params: dict, tx, seed: int, *, with_ref: bool) -> TrainState:
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
    * train.batch_size / epoch_size)`` (``batch = step // updates_per_batch(cfg)``). AdaIR trains
    150 of the 180 epochs the cosine spans, so it stops near 1.7e-5 rather than 0. ``epoch_size``:
    samples per epoch (the data mixture's length), required by ``"adair"``.
    """
    o = cfg.optim
    if o.schedule == "constant":
        if o.warmup_steps:
            return optax.linear_schedule(0.0, o.lr, o.warmup_steps)
        return optax.constant_schedule(o.lr)
    if o.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, o.lr, max(o.warmup_steps, 0), max(total_steps, o.warmup_steps + 1)
        )
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


def apply_update(state: TrainState, grads, tx: FlatOptimizer, loss_terms: Mapping[str, jax.Array]):
    """One optimizer step, skipped (state kept) when any loss term or gradient is not finite.

    Returns ``(state, metrics)``: ``opt/grad_norm``, ``ok`` (1.0 when applied) and ``finite/<term>``
    per loss term, so the loop can say which term went bad.
    """
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
