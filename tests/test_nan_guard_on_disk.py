"""The NaN guard, checked on disk: after a non-finite step the run stops, and what it saved (the
``model/`` directory and the latest orbax checkpoint) loads, is finite everywhere and equals the
state before the bad step, i.e. what an uninterrupted run holds after the same good steps.

The bad step is provoked precisely: the third training batch (step index 2) has a NaN pixel in
its degraded images, so L1 and every gradient are non-finite at that step only. A gradient that
is not finite while every loss is (an overflow in a backward pass) is caught as well: the guard
itself (``apply_update``) and the loop's verdict are checked with one directly.
"""

import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_train import smoke_config

from irpo_jax import checkpointing, training
from irpo_jax.data import pipeline

BAD_STEP = 2  # 0-based: steps 0 and 1 are good


class _Poisoned:
    """The run's training iterator with a NaN pixel in the ``bad``-th batch (0-based); the rest of
    its interface (state, epoch size) is the wrapped iterator's."""

    def __init__(self, inner, bad: int):
        self._inner, self._bad, self._served = inner, bad, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._inner)
        if self._served == self._bad:
            batch = dict(batch)
            batch["degraded"] = np.array(batch["degraded"], copy=True)
            batch["degraded"][0, 5, 7, 1] = np.nan
        self._served += 1
        return batch

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _saved(workdir: pathlib.Path, like: training.TrainState) -> tuple[dict, training.TrainState, int]:
    """The ``model/`` parameters and the latest checkpoint (step, state) of a run directory;
    ``like``: a train state of the run's structure."""
    module, _ = checkpointing.restore_model(workdir / "model")
    model_params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    ckpt = training.TrainCheckpointer(workdir, 3)
    try:
        step = ckpt.latest_step()
        state, _, _ = ckpt.restore(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like))
    finally:
        ckpt.close()
    return model_params, state, step


def test_a_non_finite_step_saves_the_state_before_it(demo_root, tmp_path, monkeypatch):
    cfg = smoke_config(demo_root, "supervised", **{"train.steps": 4, "train.checkpoint_every": 0,
                                                   "train.log_every": 0})  # fmt: skip
    real = pipeline.make_train_iterator
    monkeypatch.setattr(pipeline, "make_train_iterator", lambda *a, **k: _Poisoned(real(*a, **k), BAD_STEP))
    bad_dir, good_dir = tmp_path / "bad", tmp_path / "good"
    with pytest.raises(training.TrainingError, match=rf"non-finite value in .* at step {BAD_STEP}") as err:
        training.run(cfg, bad_dir, progress=False)
    assert "the update was not applied and the last good state was saved" in str(err.value)
    monkeypatch.setattr(pipeline, "make_train_iterator", real)
    summary = training.run(cfg, good_dir, progress=False, stop_after=BAD_STEP)  # the same two good steps
    assert summary["steps"] == BAD_STEP

    # The abstract train state to restore into: the structure of the run's own initial state.
    model = training.build_model(cfg)
    _, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    tx = training.build_optimizer(cfg, params, 4, epoch_size=1)
    initial = training.TrainState.initial(params, tx, cfg.seed, with_ref=False)

    bad_model, bad_state, bad_step = _saved(bad_dir, initial)
    good_model, good_state, good_step = _saved(good_dir, initial)
    assert bad_step == good_step == BAD_STEP and int(bad_state.step) == BAD_STEP
    for leaf in jax.tree.leaves((bad_model, bad_state)):
        assert np.all(np.isfinite(np.asarray(leaf, np.float64))), "a saved leaf is not finite"
    # Bit for bit the state after the good steps: parameters, Adam's moments and count, key.
    for a, b in zip(jax.tree.leaves(bad_state), jax.tree.leaves(good_state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(bad_model), jax.tree.leaves(good_model), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # And model/ is that checkpoint's parameters.
    for a, b in zip(jax.tree.leaves(bad_model), jax.tree.leaves(bad_state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The state did move from step 0 (the comparison is not between two untouched states).
    moved = [np.any(np.asarray(a) != np.asarray(b)) for a, b in
             zip(jax.tree.leaves(bad_state.params), jax.tree.leaves(initial.params))]  # fmt: skip
    assert any(moved)


def test_a_non_finite_gradient_with_finite_losses_is_not_applied(tmp_path):
    """Every loss term finite, one gradient entry inf (or NaN): the step is skipped (parameters,
    Adam's moments and count, step unchanged), ``ok`` is 0, every ``finite/<term>`` is 1, and the
    loop stops with a checkpoint, saying that a gradient (not a loss) went bad."""
    from irpo_jax import config_lib
    from irpo_jax.training import loop

    cfg = config_lib.base_config("supervised")
    cfg.optim.update(name="adam", lr=0.1, schedule="constant", warmup_steps=0, grad_clip=1.0)
    params = {"net": {"w": jnp.asarray([1.0, -2.0, 0.5], jnp.float32)}}
    tx = training.build_optimizer(cfg, params, 10)
    state = training.TrainState.initial(params, tx, 0, with_ref=False)
    terms = {"l1": jnp.float32(0.25), "total": jnp.float32(0.25)}
    good, metrics = training.apply_update(state, {"net": {"w": jnp.asarray([0.1, 0.2, 0.3])}}, tx, terms)
    assert float(metrics["ok"]) == 1.0 and int(good.step) == 1  # the same step with a finite gradient is applied
    for bad in (np.inf, np.nan):
        grads = {"net": {"w": jnp.asarray([0.1, bad, 0.3], jnp.float32)}}
        new, metrics = training.apply_update(state, grads, tx, terms)
        assert float(metrics["ok"]) == 0.0
        assert float(metrics["finite/l1"]) == float(metrics["finite/total"]) == 1.0
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        # The loop's verdict on such a step: save the last good state, stop, name the gradient.
        saved = []
        run = types.SimpleNamespace(save=lambda: saved.append(True), workdir=tmp_path)  # noqa: B023 - called in this iteration
        result = types.SimpleNamespace(step=7, metrics=jax.device_get(metrics))
        with pytest.raises(training.TrainingError, match=r"non-finite value in a gradient at step 7") as err:
            loop._Run._check_finite(run, result)
        assert saved == [True] and "loss/" not in str(err.value)
