"""A GRPO run's sampling side: G rollouts of a batch under the current parameters and the request
for their torch reward scores, outside jit and beside the loop.

:class:`Rollouts` holds what sampling needs for a whole run: the reward process (or the
in-process bridge) and its report of the live components, the one thread that requests their
scores in step order, and the jitted rollout
(:func:`~irpo_jax.training.steps.make_rollout_step`). The loop (:mod:`irpo_jax.training.loop`)
asks it for a :class:`Sampled` per update (a batch, its rollouts and the future of their remote
scores: :func:`score_remotely`, each process asking its own reward process about its own images)
and waits for the scores when the update needs them, so that in the one-step-stale mode the
scoring overlaps the previous update. :class:`RewardProbe` scores fixed batches with fixed keys,
so that a run's reward curve moves only with its parameters.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from irpo_jax.mesh import on_mesh, process_rows, to_global, to_host
from irpo_jax.safe_files import atomic_write_text
from irpo_jax.training.errors import TrainingError
from irpo_jax.training.optimizer import TrainState
from irpo_jax.training.steps import make_probe_reward, make_rollout_step


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

    @classmethod
    def from_tree(cls, tree: dict[str, Any]) -> Sampled:
        """The sample a checkpoint saved (:meth:`tree`), its scores already there."""
        return cls(tree["batch"], tree["rollout"], _done(tree["remote_scores"]))

    def wait_for_scores(self, stop) -> dict[str, jax.Array] | None:
        """The remote scores; None if a signal arrives first (``stop.received`` set: a hung reward
        process must not hold a preempted job past its grace period)."""
        while True:
            try:
                return self.scores.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                if stop.received:
                    return None


def _done(value: Any) -> concurrent.futures.Future:
    future = concurrent.futures.Future()
    future.set_result(value)
    return future


class Rollouts:
    """The sampling side of a GRPO run, open from its start to its end.

    Opening starts the reward process (``reward.bridge``), prints and saves its report of the
    components (``reward_components.json``) and stops a ``reward.missing="strict"`` run whose
    torch components are not all live. :meth:`close` releases the bridge first, so that a
    request in flight fails instead of being waited for, then the scoring thread.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: pathlib.Path, graphdef, mesh):
        self.cfg = cfg
        self.bridge = self.scorer = None
        try:
            self._open_rewards(workdir)
            # One worker keeps requests in step order; in the stale mode it scores while the update runs.
            if self.bridge is not None:
                self.scorer = concurrent.futures.ThreadPoolExecutor(1, "reward-scoring")
            self.rollout_fn = on_mesh(mesh, jax.jit(make_rollout_step(graphdef, cfg, self.jax_names)))
        except BaseException:
            self.close()
            raise

    def _open_rewards(self, workdir: pathlib.Path) -> None:
        """The reward process (or in-process bridge) and the report of the live components."""
        from irpo_jax.rewards import compose as compose_lib
        from irpo_jax.rewards.remote import open_reward_bridge

        cfg = self.cfg
        self.jax_names = tuple(
            n for n in compose_lib.active_components(cfg.reward) if compose_lib.REWARDS[n].backend == "jax"
        )
        self.bridge = open_reward_bridge(cfg.reward)
        self.live_remote = tuple(self.bridge.live_components) if self.bridge is not None else ()
        missing = [n for n in compose_lib.remote_components(cfg.reward) if n not in self.live_remote]
        report = {"jax": list(self.jax_names), "torch_live": list(self.live_remote), "torch_unavailable": missing,
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
            atomic_write_text(workdir / "reward_components.json", json.dumps(report, indent=2) + "\n")

    def sample(self, state: TrainState, index: int, batch: dict[str, jax.Array]) -> Sampled:
        """Rollouts of ``batch`` under ``state``'s parameters (key ``fold_in(rng, index)``) and
        the request for their remote scores."""
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), index)
        rollout = jax.block_until_ready(self.rollout_fn(state.params, batch, key))
        stats = rollout.pop("stats")  # the actions' statistics: logged with the update's metrics
        if self.scorer is None:
            return Sampled(batch, rollout, _done({}), stats)
        future = self.scorer.submit(score_remotely, self.bridge, self.cfg, index, batch, rollout, self.live_remote)
        return Sampled(batch, rollout, future, stats)

    def probe_scores(self, batch, rollout) -> dict[str, jax.Array]:
        """The remote scores of a probe's rollouts, requested now (as those of step 0)."""
        if self.bridge is None:
            return {}
        return score_remotely(self.bridge, self.cfg, 0, batch, rollout, self.live_remote)

    def close(self) -> None:
        if self.bridge is not None:
            self.bridge.close()
        if self.scorer is not None:
            self.scorer.shutdown(wait=True, cancel_futures=True)


class RewardProbe:
    """The mean reward of G rollouts on fixed training batches, with fixed sampling keys.

    Why: the per-step ``reward/total/mean`` is dominated by which images the step drew (a hazy
    image scores low whatever the policy does), so it cannot show progress over a short run.
    Scoring the same batches with the same keys at every probe removes that noise; the curve
    moves only because the parameters did. The batches come from their own iterator (seed
    ``seed + 1``), so the training data order is untouched and a resumed run probes the same
    images.
    """

    def __init__(self, cfg, data_cfg, sharded, rollouts: Rollouts):
        from irpo_jax.data.pipeline import make_train_iterator

        source = make_train_iterator(data_cfg, batch_size=cfg.train.batch_size, seed=cfg.seed + 1)
        try:
            self.batches = [to_global(next(source), sharded) for _ in range(int(cfg.train.probe_batches))]
        finally:
            getattr(source, "close", lambda: None)()
        self.keys = [jax.random.fold_in(jax.random.key(cfg.seed + 1), i) for i in range(len(self.batches))]
        self.rollout_fn, self.remote_scores = rollouts.rollout_fn, rollouts.probe_scores
        self.reward_fn = jax.jit(make_probe_reward(cfg))

    def __call__(self, params) -> dict[str, float]:
        values: dict[str, list[np.ndarray]] = {}
        for batch, key in zip(self.batches, self.keys):
            rollout = self.rollout_fn(params, batch, key)
            rewards = self.reward_fn(rollout["jax_scores"], self.remote_scores(batch, rollout))
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
        rep("degraded"),
        restored.reshape(b * g, *restored.shape[2:]),
        rep("clean"),
        task_ids=np.asarray(rep("task_id")),
        components=names,
        sample_ids=np.repeat(np.arange(first, first + b) + step * b_global, g),
    )  # fmt: skip  (no timeout here: the client enforces its own per attempt, with restarts)
    sharding = NamedSharding(batch["degraded"].sharding.mesh, P("data"))
    return {k: jax.make_array_from_process_local_data(sharding, v.reshape(b, g)) for k, v in result.scores.items()}
