"""IRPO's hard set inside ``train``: a GRPO run without ``data.manifest`` mines the worst 30 % with
its starting model first and post-trains on them; resumed and interrupted runs reuse what was
mined; ``data.manifest="all"`` opts out; a manifest of another model or other settings is refused.

Shares the session fixtures ``demo_root`` and ``supervised_run`` (conftest.py) with test_train.
"""

import json
import pathlib

import pytest

from irpo_jax import mine, trainer
from irpo_jax.data import readers
from irpo_jax.training import hard_set
from test_train import smoke_config


@pytest.fixture(scope="module")
def mining_cfg(demo_root, supervised_run):
    # train.steps as test_train's grpo_run: the update bakes the run's length into its lambda
    # schedule, so the same length reuses that compiled program (the persistent cache).
    return smoke_config(demo_root, **{"model.init_from": str(supervised_run[0] / "model"), "data.manifest": "",
                                      "train.steps": 4})  # fmt: skip


def selected(path):
    header, entries = readers.read_manifest(path)
    return header, sorted(e["id"] for e in entries if e["selected"])


def test_grpo_mines_the_hard_set_first_and_a_resumed_run_reuses_it(mining_cfg, tmp_path, monkeypatch):
    cfg = mining_cfg
    # The reference: the same ranking by the mining CLI's library function, uninterrupted.
    mine.mine(readers.resolve_config(cfg.data) | {"manifest": ""}, cfg.model.init_from, tmp_path / "ref.jsonl",
              crop=cfg.mining.crop, progress=False)  # fmt: skip
    _, want = selected(tmp_path / "ref.jsonl")
    assert 0 < len(want) < len(readers.read_manifest(tmp_path / "ref.jsonl")[1])

    # Interrupted while mining (after one written record): the run fails and leaves its partial file ...
    workdir = tmp_path / "run"
    real = mine.mine
    monkeypatch.setattr(mine, "mine", lambda *a, **k: real(*a, **k, stop_after=1))
    with pytest.raises(mine.MiningInterrupted):
        trainer.run(cfg, workdir, progress=False)
    assert not (workdir / hard_set.MINED).exists()
    assert (workdir / (hard_set.MINED + ".partial.jsonl")).is_file()
    # ... which the same command continues: it finishes mining, then trains on the selected pairs.
    calls = []
    monkeypatch.setattr(mine, "mine", lambda *a, **k: calls.append(k) or real(*a, **k))
    first = trainer.run(cfg, workdir, progress=False, stop_after=1)
    assert calls and calls[0]["resume"] and first["steps"] == 1
    header, got = selected(workdir / hard_set.MINED)
    assert got == want
    assert header["model"]["id"] == mine.checkpoint_id(cfg.model.init_from)  # what it was mined with
    plan = first["plan"]["per_task"]
    assert sum(v["pairs"] for v in plan.values()) == len(want)
    # Resumed (checkpointed after step 1): the run's data is its hard set, not mined again.
    calls.clear()
    assert hard_set.training_data(cfg, workdir, progress=False)["manifest"] == str(workdir / hard_set.MINED)
    assert not calls


def test_every_pair_opts_out_and_other_manifests_are_checked(mining_cfg, tmp_path):
    cfg = mining_cfg.copy_and_resolve_references()
    cfg.data.manifest = "all"
    data = hard_set.training_data(cfg, tmp_path, progress=False)
    assert data["manifest"] == "" and not (tmp_path / hard_set.MINED).exists()

    # A manifest mined by another model: refused, naming both models.
    path = tmp_path / "mined_by_another.jsonl"
    mine.mine(readers.resolve_config(cfg.data) | {"manifest": ""}, cfg.model.init_from, path, crop=32, progress=False)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header["model"] = {"checkpoint": "/elsewhere/adair5d", "id": "0" * 16, "source": None}
    path.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
    cfg.data.manifest = str(path)
    with pytest.raises(trainer.TrainingError, match=r"was mined by the model /elsewhere/adair5d.*model.init_from="):
        hard_set.training_data(cfg, tmp_path, progress=False)
    cfg.mining.allow_other_model = True
    assert hard_set.training_data(cfg, tmp_path, progress=False)["manifest"] == str(path)

    # The run's own hard set, mined with other settings than the (changed) config's: refused.
    cfg = mining_cfg.copy_and_resolve_references()
    mine.mine(readers.resolve_config(cfg.data) | {"manifest": ""}, cfg.model.init_from, tmp_path / hard_set.MINED,
              crop=32, progress=False)  # fmt: skip
    cfg.mining.fraction = 0.5
    with pytest.raises(trainer.TrainingError, match=r"other settings \(fraction: 0.3 -> 0.5\).*new --workdir"):
        hard_set.training_data(cfg, tmp_path, progress=False)


def test_task_repeats_switch_sets_what_an_epoch_is(mining_cfg, tmp_path):
    cfg = mining_cfg.copy_and_resolve_references()
    cfg.data.manifest = "all"
    cfg.data.repeats = {"derain": 3, "deblur": 2}
    with_repeats = hard_set.training_data(cfg, tmp_path, progress=False)
    assert with_repeats["repeats"]["derain"] == 3 and with_repeats["repeats"]["deblur"] == 2
    cfg.grpo.task_repeats = False
    once = hard_set.training_data(cfg, tmp_path, progress=False)
    assert set(once["repeats"].values()) == {1}
    records, _ = readers.train_records(once)
    assert len(readers.mixture_indices(records, once)) == len(records)
    assert len(readers.mixture_indices(records, with_repeats)) == sum(
        {"derain": 3, "deblur": 2}[r.task] for r in records)  # fmt: skip


def test_the_papers_30_epochs_in_optimizer_steps():
    """The run-length report on the full AdaIR training set's hard 30 % (counts, not files): the
    numbers configs/allinone5.py states, derived independently here from the mining rule (ceil
    of 30 % per degradation, each sigma alone) and AdaIR's per-task repeats."""
    import math

    from irpo_jax import config_lib
    from irpo_jax.training import run_length
    from irpo_jax.training.loop import total_steps_of

    pairs = {("denoise", 15): 5144, ("denoise", 25): 5144, ("denoise", 50): 5144, ("derain", 0): 200,
             ("dehaze", 0): 72135, ("deblur", 0): 2103, ("lowlight", 0): 485}  # fmt: skip
    hard = {k: math.ceil(0.3 * n) for k, n in pairs.items()}
    records = [readers.Record(f"{t}:{s}:{i}", t, s, "c.png", None if t == "denoise" else "d.png", None)
               for (t, s), n in hard.items() for i in range(n)]  # fmt: skip
    config_file = pathlib.Path(__file__).resolve().parent.parent / "configs" / "allinone5.py"
    cfg = config_lib.load_config(str(config_file))
    repeats = {"denoise": 3, "derain": 120, "dehaze": 1, "deblur": 5, "lowlight": 20}  # adair-spec 10.2
    for task_repeats, samples in ((True, sum(n * repeats[t] for (t, _), n in hard.items())), (False, len(records))):
        cfg.grpo.task_repeats = task_repeats
        data = readers.resolve_config(cfg.data) | {"manifest": "hard.jsonl"}
        if not task_repeats:
            data["repeats"] = {t: 1 for t in data["repeats"]}
        total = total_steps_of(cfg, samples)
        assert total == math.ceil(30 * samples / 2)
        text, plan = run_length.describe(cfg, data, records, total, samples)
        assert plan["epochs"] == pytest.approx(30, rel=1e-5) and f"{total:,} optimizer steps" in text
        assert plan["lambda_sup"] == pytest.approx((0.35, 0.1)) and plan["lambda_cons"] == pytest.approx((0.2, 0.05))
        assert plan["lr"]["first"] == plan["lr"]["last"] == pytest.approx(3e-5)
        assert f"{total:,}" in config_file.read_text()  # the docstring states these numbers
    assert len(records) == 27110
