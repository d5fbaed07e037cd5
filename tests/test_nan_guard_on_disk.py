"""The NaN guard, checked on disk: after a non-finite step the run stops, and what it saved (the
``model/`` directory and the latest orbax checkpoint) loads, is finite everywhere and equals the
state before the bad step, i.e. what an uninterrupted run holds after the same good steps.

The bad step is provoked precisely: the third training batch (step index 2) has a NaN pixel in
its degraded images, so L1 and every gradient are non-finite at that step only.
"""

import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from irpo_jax import checkpointing, trainer
from irpo_jax.data import pipeline
from test_train import smoke_config

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


def _saved(workdir: pathlib.Path, like: trainer.TrainState) -> tuple[dict, trainer.TrainState, int]:
    """The ``model/`` parameters and the latest checkpoint (step, state) of a run directory;
    ``like``: a train state of the run's structure."""
    module, _ = checkpointing.restore_model(workdir / "model")
    model_params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    ckpt = trainer.TrainCheckpointer(workdir, 3)
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
    with pytest.raises(trainer.TrainingError, match=rf"non-finite value in .* at step {BAD_STEP}") as err:
        trainer.run(cfg, bad_dir, progress=False)
    assert "the update was not applied and the last good state was saved" in str(err.value)
    monkeypatch.setattr(pipeline, "make_train_iterator", real)
    summary = trainer.run(cfg, good_dir, progress=False, stop_after=BAD_STEP)  # the same two good steps
    assert summary["steps"] == BAD_STEP

    # The abstract train state to restore into: the structure of the run's own initial state.
    model = trainer.build_model(cfg)
    _, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    tx = trainer.build_optimizer(cfg, params, 4, epoch_size=1)
    initial = trainer.TrainState.initial(params, tx, cfg.seed, with_ref=False)

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
