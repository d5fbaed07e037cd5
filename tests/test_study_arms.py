"""What the mini-IRPO study's control arms need from the trainer, which it already has (issue 24):

* the policy-gradient-off ablation (arm g: only L_sup and L_cons train) is ``optim.head_lr_mult=0``:
  L_RL's gradient reaches the policy heads only (``grpo.rl_updates_backbone=False``), so with the
  heads' learning rate at 0 the heads stay exactly where they started and the backbone takes the
  very step the full update takes, i.e. the step of L_sup and L_cons alone;
* the supervised control (arm b) is the supervised stage started from ``model.init_from`` on a
  mined manifest: it fine-tunes that model (not a fresh one) on the selected pairs only.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from test_train import params_of, smoke_config

from irpo_jax import config_lib, training
from irpo_jax.data import readers
from irpo_jax.evaluation import mining
from irpo_jax.models.policy import IRPOPolicy, PolicyConfig
from irpo_jax.rewards import compose


def test_head_lr_mult_zero_is_the_update_without_the_policy_gradient():
    cfg = config_lib.load_config("configs/allinone5.py:smoke")
    cfg.grpo.group_size = 3
    cfg.optim.update(lr=1e-3, schedule="constant", warmup_steps=0)
    assert not cfg.grpo.rl_updates_backbone and not cfg.optim.grad_clip  # what the equivalence rests on
    model = IRPOPolicy(cfg.model.variant, PolicyConfig.from_dict(cfg.model.policy.to_dict()), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    rng = np.random.default_rng(0)
    clean = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
    degraded = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    batch = {"clean": jnp.asarray(clean), "degraded": jnp.asarray(degraded), "task_id": jnp.asarray([0, 3], jnp.int32)}
    names = tuple(n for n in compose.active_components(cfg.reward) if compose.REWARDS[n].backend == "jax")
    rollout = jax.jit(training.make_rollout_step(graphdef, cfg, names))(params, batch, jax.random.key(1))

    new = {}
    for mult in (6.0, 0.0):
        cfg.optim.head_lr_mult = mult
        tx = training.build_optimizer(cfg, params, 10)
        state = training.TrainState.initial(params, tx, 0, with_ref=True)
        s, metrics = jax.jit(training.make_grpo_update(graphdef, tx, cfg, 10))(state, batch, rollout, {})
        assert float(metrics["ok"]) == 1.0 and abs(float(metrics["loss/rl"])) > 0  # L_RL is there, with a gradient
        new[mult] = jax.device_get(s.params)
    moved = lambda a, b: max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))  # noqa: E731
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )
    assert moved(new[6.0]["heads"], params["heads"]) > 1e-4  # the full update moves the heads ...
    assert moved(new[0.0]["heads"], params["heads"]) == 0.0  # ... the ablation leaves them as they were
    backbone = lambda p: {k: v for k, v in p.items() if k != "heads"}  # noqa: E731
    assert moved(backbone(new[0.0]), backbone(params)) > 1e-4  # L_sup and L_cons train the backbone
    for x, y in zip(jax.tree.leaves(backbone(new[0.0])), jax.tree.leaves(backbone(new[6.0])), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-7)


def test_supervised_stage_fine_tunes_init_from_on_a_mined_manifest(demo_root, supervised_run, tmp_path):
    start = supervised_run[0] / "model"
    data = readers.resolve_config(smoke_config(demo_root).data) | {"manifest": ""}
    manifest = tmp_path / "hard.jsonl"
    mining.mine(data, start, manifest, crop=32, progress=False)
    selected = sorted(e["id"] for e in readers.read_manifest(manifest)[1] if e["selected"])
    everything = readers.read_manifest(manifest)[1]
    assert 0 < len(selected) < len(everything)
    # lr 0: the run's parameters are its starting point, so they show which model it started from.
    cfg = smoke_config(demo_root, "supervised", **{"model.init_from": str(start), "data.manifest": str(manifest),
                                                   "train.steps": 1, "optim.lr": 0.0})  # fmt: skip
    summary = training.run(cfg, tmp_path / "run", progress=False)
    assert summary["steps"] == 1
    assert sum(v["pairs"] for v in summary["plan"]["per_task"].values()) == len(selected)
    for x, y in zip(jax.tree.leaves(params_of(tmp_path / "run")), jax.tree.leaves(params_of(supervised_run[0])),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
