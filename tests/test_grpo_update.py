"""The GRPO update's backbone losses through the best rollout alone (``grpo.supervise_best_only``)
give the same losses and gradients as backpropagating through all G teacher-forced rollouts."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from irpo_jax import config_lib, trainer
from irpo_jax.models.policy import IRPOPolicy, PolicyConfig
from irpo_jax.rewards import compose


def test_best_only_backward_equals_backward_through_all_rollouts():
    cfg = config_lib.load_config("configs/allinone5.py:smoke")
    # Adam's first step is -lr * g / (|g| + eps): with lr = eps = 1e8 the update is -g (to 1e-8
    # relative), so the parameter changes compare the gradients themselves, not their signs.
    cfg.optim.update(name="adam", lr=1e8, eps=1e8, schedule="constant", warmup_steps=0, head_lr_mult=1.0)
    cfg.grpo.group_size = 3
    model = IRPOPolicy(cfg.model.variant, PolicyConfig.from_dict(cfg.model.policy.to_dict()), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    tx = trainer.build_optimizer(cfg, params, 10)
    state = trainer.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                               rng=jax.random.key_data(jax.random.key(0)), ref_params=jax.tree.map(jnp.copy, params))  # fmt: skip
    rng = np.random.default_rng(0)
    clean = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
    batch = {"clean": jnp.asarray(clean), "task_id": jnp.asarray([0, 1], jnp.int32),
             "degraded": jnp.asarray(np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32))}  # fmt: skip
    names = tuple(n for n in compose.active_components(cfg.reward) if compose.REWARDS[n].backend == "jax")
    rollout = jax.jit(trainer.make_rollout_step(graphdef, cfg, names))(params, batch, jax.random.key(1))
    assert len(set(np.asarray(rollout["jax_scores"]["psnr"]).ravel().tolist())) == 6  # a real choice of g*

    new = {}
    for best_only in (True, False):
        cfg.grpo.supervise_best_only = best_only
        update = jax.jit(trainer.make_grpo_update(graphdef, tx, cfg, 10))
        s, m = jax.block_until_ready(update(state, batch, rollout, {}))
        new[best_only] = (jax.flatten_util.ravel_pytree(s.params)[0], m)
    old = jax.flatten_util.ravel_pytree(params)[0]
    step_best, step_all = new[True][0] - old, new[False][0] - old
    assert float(jnp.max(jnp.abs(step_all))) > 1e-3  # the backbone and the heads did move
    np.testing.assert_allclose(np.asarray(step_best), np.asarray(step_all), rtol=1e-4, atol=1e-6)
    for term in ("loss/rl", "loss/sup", "loss/cons", "loss/total"):
        np.testing.assert_allclose(float(new[True][1][term]), float(new[False][1][term]), rtol=1e-5, err_msg=term)
