"""The run directory's rules (irpo_jax/training/workdir.py), without training: which workdir holds
a saved run, and which config changes resuming it accepts.

A workdir with ``config.json`` holds a saved run only when ``checkpoints/`` holds a committed
step; the ``config.json`` of a start that failed before its first save (also one that had created
an empty ``checkpoints/``, or left an orbax temporary directory there) is replaced by the new
config. A saved run refuses a changed config, except the fields of ``RESUMABLE_CHANGES`` or with
``train.allow_config_change``.
"""

import json

import pytest

from irpo_jax import config_lib
from irpo_jax.training import TrainingError
from irpo_jax.training.workdir import check_workdir_config, config_json


def _cfg(**changes):
    cfg = config_lib.apply_variant(config_lib.base_config("supervised"), "smoke")
    for key, value in changes.items():
        section, leaf = key.split(".")
        cfg[section][leaf] = value
    return cfg


def _start(workdir, cfg):
    """The start's workdir check; releases the lock it takes."""
    lock = check_workdir_config(workdir, cfg)
    if lock is not None:
        lock.release()


def _saved_config(workdir) -> dict:
    return json.loads((workdir / "config.json").read_text())


@pytest.mark.parametrize("leftover", ["nothing", "empty checkpoints/", "an orbax temporary directory"])
def test_a_start_that_failed_before_its_first_save_is_not_a_saved_run(tmp_path, leftover):
    """Its config.json is replaced by a changed config: nothing was trained with the old one."""
    _start(tmp_path, _cfg(**{"optim.lr": 1e-3}))
    if leftover != "nothing":
        (tmp_path / "checkpoints").mkdir()
    if leftover == "an orbax temporary directory":
        (tmp_path / "checkpoints" / "1.orbax-checkpoint-tmp-1234").mkdir()
    _start(tmp_path, _cfg(**{"optim.lr": 5e-4}))
    assert _saved_config(tmp_path)["optim"]["lr"] == 5e-4
    assert not list(tmp_path.glob("config.previous.*"))


def test_a_saved_run_refuses_a_changed_config_unless_allowed(tmp_path):
    _start(tmp_path, _cfg(**{"optim.lr": 1e-3}))
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)  # a committed step
    with pytest.raises(
        TrainingError, match=r"holds a run with a different config \(changed: optim\.lr \(0\.001 -> 0\.0005\)\)"
    ):
        _start(tmp_path, _cfg(**{"optim.lr": 5e-4}))
    assert _saved_config(tmp_path)["optim"]["lr"] == 1e-3
    # The fields that do not change the numbers need no permission ...
    _start(tmp_path, _cfg(**{"optim.lr": 1e-3, "train.log_every": 7, "train.steps": 9}))
    assert _saved_config(tmp_path)["train"]["log_every"] == 7
    assert not list(tmp_path.glob("config.previous.*"))
    # ... the others need train.allow_config_change, and the previous config is kept.
    before = _saved_config(tmp_path)
    _start(tmp_path, _cfg(**{"optim.lr": 5e-4, "train.allow_config_change": True}))
    assert _saved_config(tmp_path)["optim"]["lr"] == 5e-4
    (previous,) = tmp_path.glob("config.previous.*.json")
    assert json.loads(previous.read_text()) == before


def test_the_saved_config_is_the_resolved_config(tmp_path):
    cfg = _cfg(**{"grpo.group_size": 3})
    _start(tmp_path, cfg)
    assert _saved_config(tmp_path) == config_json(cfg)


def test_a_step_count_needs_no_epochs_and_a_run_needs_one_or_the_other():
    from irpo_jax.training.workdir import validate_config

    cfg = config_lib.base_config("grpo")
    cfg.train.update(steps=5, epochs=0)
    validate_config(cfg)  # train.steps alone is a run length
    cfg.train.update(steps=0, epochs=2)
    validate_config(cfg)  # so are epochs alone
    for steps, epochs in ((0, 0), (-1, 3)):
        cfg.train.update(steps=steps, epochs=epochs)
        with pytest.raises(TrainingError, match=f"train.steps={steps}, train.epochs={epochs}: give steps > 0"):
            validate_config(cfg)
