"""What a training run checks and sets before its first step: the test sets it will evaluate on at
the end (a missing target found after days of training would fail the run's last step), the
devices of its mesh (``train.devices``) and the compilation cache (``train.compilation_cache``)."""

import os
import shutil

import jax
import pytest
from test_train import smoke_config

from irpo_jax import training


def test_a_test_set_with_a_missing_target_stops_the_run_before_training(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    target = sorted((root / "test" / "derain" / "Rain100L" / "target").iterdir())[0]
    target.unlink()
    # (train.steps as conftest's supervised_run: its compiled step is reused)
    cfg = smoke_config(root, "supervised", **{"train.steps": 3, "train.eval_at_end": True,
                                              "data.eval_sets": ("rain100l",)})  # fmt: skip
    with pytest.raises(training.TrainingError, match=rf"(?s){target.stem}.*train.eval_at_end=False"):
        training.run(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
    cfg.train.eval_at_end = False  # the way out the message names
    assert training.run(cfg, tmp_path / "run2", progress=False)["stop"] == "finished"


def test_train_devices_chooses_the_mesh(demo_root, tmp_path):
    """One image per step: refused on the mesh of all (2) devices, accepted on ``train.devices=1``
    (the start then goes on, here to the data root left empty on purpose, before any compile)."""
    assert jax.device_count() == 2
    cfg = smoke_config(demo_root, "supervised", **{"train.batch_size": 1, "train.devices": 0})
    with pytest.raises(training.TrainingError, match=r"train.batch_size=1 must be a multiple of the 2 devices"):
        training.run(cfg, tmp_path / "all", progress=False)
    cfg = smoke_config(demo_root, "supervised", **{"train.batch_size": 1, "train.devices": 1, "data.root": ""})
    with pytest.raises(ValueError, match="data.root"):
        training.run(cfg, tmp_path / "one", progress=False)


def test_train_compilation_cache_is_the_runs_cache(demo_root, tmp_path, monkeypatch):
    """The run points JAX's persistent cache at ``train.compilation_cache`` (made absolute), and
    leaves it alone when it is "". (Recorded, not applied: the suite's own cache stays.)"""
    updates = []
    real = jax.config.update
    monkeypatch.setattr(jax.config, "update", lambda name, value: updates.append((name, value)) if
                        name == "jax_compilation_cache_dir" else real(name, value))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")  # --workdir under a file: the start stops right after the cache is set
    for cache, want in (("my/cache", [("jax_compilation_cache_dir", os.path.join(str(tmp_path), "my", "cache"))]),
                        ("", [])):  # fmt: skip
        updates.clear()
        cfg = smoke_config(demo_root, "supervised", **{"train.compilation_cache": cache})
        with pytest.raises(training.TrainingError, match="cannot be written|is a file"):
            training.run(cfg, tmp_path / "a_file" / "run", progress=False)
        assert updates == want
