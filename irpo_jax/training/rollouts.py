"""A GRPO run's sampling side: G rollouts of a batch under the current parameters and the request
for their torch reward scores, outside jit and beside the loop.

The loop (:mod:`irpo_jax.training.loop`) consumes a :class:`Sampled` per update: its batch, its
rollouts (from the jitted :func:`~irpo_jax.training.steps.make_rollout_step`) and a future of
their remote scores (:func:`score_remotely`: each process asks its own reward process for its own
images' rollouts). :class:`RewardProbe` scores fixed batches with fixed keys, so that a run's
reward curve moves only with its parameters.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from irpo_jax.training.mesh import process_rows, to_global, to_host
from irpo_jax.training.steps import make_probe_reward


@dataclasses.dataclass
class Sampled:
    """A batch, its G rollouts per image and the (future) remote scores: what one update consumes."""

    batch: dict[str, jax.Array]
    rollout: dict[str, Any]
    scores: concurrent.futures.Future  # of name -> (B, G) raw remote scores
    stats: dict[str, jax.Array] = dataclasses.field(default_factory=dict)  # logged, not checkpointed

    def tree(self) -> dict[str, Any]:
        """As a checkpointable pytree (waits for the scores)."""
        return {"batch": self.batch, "rollout": self.rollout, "remote_scores": self.scores.result()}


def done(value: Any) -> concurrent.futures.Future:
    future = concurrent.futures.Future()
    future.set_result(value)
    return future


class RewardProbe:
    """The mean reward of G rollouts on fixed training batches, with fixed sampling keys.

    Why: the per-step ``reward/total/mean`` is dominated by which images the step drew (a hazy
    image scores low whatever the policy does), so it cannot show progress over a short run.
    Scoring the same batches with the same keys at every probe removes that noise; the curve
    moves only because the parameters did. The batches come from their own iterator (seed
    ``seed + 1``), so the training data order is untouched and a resumed run probes the same
    images.
    """

    def __init__(self, cfg, data_cfg, sharded, rollout_fn, score_remotely):
        from irpo_jax.data.pipeline import make_train_iterator

        source = make_train_iterator(data_cfg, batch_size=cfg.train.batch_size, seed=cfg.seed + 1)
        try:
            self.batches = [to_global(next(source), sharded) for _ in range(int(cfg.train.probe_batches))]
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
                values.setdefault(k, []).append(to_host(v))
        return {f"probe/reward/{k}/mean": float(np.nanmean(np.concatenate(v))) for k, v in values.items()}


def score_remotely(bridge, cfg, step: int, batch, rollout, live: tuple[str, ...]) -> dict[str, jax.Array]:
    """The torch components' raw scores for the B*G rollouts, as (B, G) arrays sharded like the batch.

    Each process sends its own images' rollouts to its own reward process.
    """
    from irpo_jax.rewards.compose import remote_components_for_step

    names = [n for n in remote_components_for_step(cfg.reward, step) if n in live]
    if not names:
        return {}
    restored, first = process_rows(rollout["restored"])  # (b, G, H, W, 3), this process's b
    restored = jnp.clip(restored, 0, 1)
    b, g = restored.shape[:2]
    rep = lambda k: jnp.repeat(process_rows(batch[k])[0], g, axis=0)  # noqa: E731
    b_global = batch["degraded"].shape[0]
    result = bridge.score(
        rep("degraded"), restored.reshape(b * g, *restored.shape[2:]), rep("clean"),
        task_ids=np.asarray(rep("task_id")), components=names,
        sample_ids=np.repeat(np.arange(first, first + b) + step * b_global, g),
    )  # fmt: skip  (no timeout here: the client enforces its own per attempt, with restarts)
    sharding = NamedSharding(batch["degraded"].sharding.mesh, P("data"))
    return {k: jax.make_array_from_process_local_data(sharding, v.reshape(b, g)) for k, v in result.scores.items()}
