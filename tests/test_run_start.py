"""What a training run checks before its first step: the test sets it will evaluate on at the end
(a missing target found after days of training would fail the run's last step)."""

import shutil

import pytest

from irpo_jax import trainer
from test_train import smoke_config


def test_a_test_set_with_a_missing_target_stops_the_run_before_training(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    target = sorted((root / "test" / "derain" / "Rain100L" / "target").iterdir())[0]
    target.unlink()
    # (train.steps as conftest's supervised_run: its compiled step is reused)
    cfg = smoke_config(root, "supervised", **{"train.steps": 3, "train.eval_at_end": True,
                                              "data.eval_sets": ("rain100l",)})  # fmt: skip
    with pytest.raises(trainer.TrainingError, match=rf"(?s){target.stem}.*train.eval_at_end=False"):
        trainer.run(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
    cfg.train.eval_at_end = False  # the way out the message names
    assert trainer.run(cfg, tmp_path / "run2", progress=False)["stop"] == "finished"
