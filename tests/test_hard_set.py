"""IRPO's hard set inside ``train``: a GRPO run without ``data.manifest`` mines the worst 30 % with
its starting model first and post-trains on them; resumed and interrupted runs reuse what was
mined; ``data.manifest="all"`` opts out; a manifest of another model or other settings is refused.

Shares the session fixtures ``demo_root`` and ``supervised_run`` (conftest.py) with test_train.
"""

import json
import pathlib

import pytest
from test_train import smoke_config

from irpo_jax import training
from irpo_jax.data import readers
from irpo_jax.evaluation import mining
from irpo_jax.training import hard_set


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
    mining.mine(readers.resolve_config(cfg.data) | {"manifest": ""}, cfg.model.init_from, tmp_path / "ref.jsonl",
              crop=cfg.mining.crop, progress=False)  # fmt: skip
    _, want = selected(tmp_path / "ref.jsonl")
    assert 0 < len(want) < len(readers.read_manifest(tmp_path / "ref.jsonl")[1])

    # Interrupted while mining (after one written record): the run fails and leaves its partial file ...
    workdir = tmp_path / "run"
    real = mining.mine
    monkeypatch.setattr(mining, "mine", lambda *a, **k: real(*a, **k, stop_after=1))
    with pytest.raises(mining.MiningInterrupted):
        training.run(cfg, workdir, progress=False)
    assert not (workdir / hard_set.MINED).exists()
    assert (workdir / (hard_set.MINED + ".partial.jsonl")).is_file()
    # ... which the same command continues: it finishes mining, then trains on the selected pairs.
    calls = []
    monkeypatch.setattr(mining, "mine", lambda *a, **k: calls.append(k) or real(*a, **k))
    first = training.run(cfg, workdir, progress=False, stop_after=1)
    assert calls and calls[0]["resume"] and first["steps"] == 1
    header, got = selected(workdir / hard_set.MINED)
    assert got == want
    assert header["model"]["id"] == mining.checkpoint_id(cfg.model.init_from)  # what it was mined with
    plan = first["plan"]["per_task"]
    assert sum(v["pairs"] for v in plan.values()) == len(want)
    # Resumed (checkpointed after step 1): the run's data is its hard set, not mined again.
    calls.clear()
    assert hard_set.training_data(cfg, workdir, progress=False).manifest == str(workdir / hard_set.MINED)
    assert not calls


def test_the_runs_mining_follows_the_mining_settings(mining_cfg, tmp_path, monkeypatch):
    """Every ``mining.*`` setting reaches the run's own mining, none left at its default: the
    share kept (``fraction``), the ranking (``selection``, ``rank_by``), the images scored
    (``crop``: the model sees centre crops of that size), the forward batch (``batch_size``,
    rounded up to the 2 devices), and the seed (``seed``, recorded for the noise and a random
    selection). The selected pairs are checked against an independent sort of the recorded scores."""
    import math

    import irpo_jax

    cfg = mining_cfg.copy_and_resolve_references()
    cfg.seed = 3
    cfg.mining.update(fraction=0.5, selection="global", rank_by="ssim", crop=48, batch_size=3)
    shapes, real_load = [], irpo_jax.load_model

    def load_model(path):
        restorer = real_load(path)
        return lambda x: shapes.append(tuple(x.shape)) or restorer(x)

    monkeypatch.setattr(irpo_jax, "load_model", load_model)
    data = hard_set.training_data(cfg, tmp_path, progress=False)
    assert data.manifest == str(tmp_path / hard_set.MINED)
    header, entries = readers.read_manifest(tmp_path / hard_set.MINED)
    assert header["selection"] | {"selected": None} == {"mode": "global", "fraction": 0.5, "rank_by": "ssim", "seed": 3,
                                                        "selected": None}  # fmt: skip
    assert header["measure"]["crop"] == 48 and header["measure"]["noise_seed"] == 3
    assert shapes and {s[1:] for s in shapes} == {(48, 48, 3)} and max(s[0] for s in shapes) == 4
    # One ranking over both tasks, by SSIM, worst first: the ceil(0.5 n) lowest SSIMs.
    k = math.ceil(0.5 * len(entries))
    worst = sorted(entries, key=lambda e: (e["ssim"], e["id"]))[:k]
    assert {e["id"] for e in entries if e["selected"]} == {e["id"] for e in worst}
    by_psnr = sorted(entries, key=lambda e: (e["psnr"], e["id"]))[:k]
    assert {e["id"] for e in worst} != {e["id"] for e in by_psnr}  # rank_by is visible in this data
    per_task = [e for t in ("derain", "deblur") for e in
                sorted((e for e in entries if e["task"] == t), key=lambda e: (e["ssim"], e["id"]))
                [:math.ceil(0.5 * sum(e["task"] == t for e in entries))]]  # fmt: skip
    assert {e["id"] for e in worst} != {e["id"] for e in per_task}  # and so is the global ranking


def test_every_pair_opts_out_and_other_manifests_are_checked(mining_cfg, tmp_path):
    cfg = mining_cfg.copy_and_resolve_references()
    cfg.data.manifest = "all"
    data = hard_set.training_data(cfg, tmp_path, progress=False)
    assert data.manifest == "" and not (tmp_path / hard_set.MINED).exists()

    # A manifest mined by another model: refused, naming both models.
    path = tmp_path / "mined_by_another.jsonl"
    mining.mine(readers.resolve_config(cfg.data) | {"manifest": ""}, cfg.model.init_from, path, crop=32, progress=False)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header["model"] = {"checkpoint": "/elsewhere/adair5d", "id": "0" * 16, "source": None}
    path.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
    cfg.data.manifest = str(path)
    with pytest.raises(training.TrainingError, match=r"was mined by the model /elsewhere/adair5d.*model.init_from="):
        hard_set.training_data(cfg, tmp_path, progress=False)
    cfg.mining.allow_other_model = True
    assert hard_set.training_data(cfg, tmp_path, progress=False).manifest == str(path)

    # The run's own hard set, mined with other settings than the (changed) config's: refused.
    cfg = mining_cfg.copy_and_resolve_references()
    mining.mine(readers.resolve_config(cfg.data) | {"manifest": ""}, cfg.model.init_from, tmp_path / hard_set.MINED,
              crop=32, progress=False)  # fmt: skip
    cfg.mining.fraction = 0.5
    with pytest.raises(training.TrainingError, match=r"other settings \(fraction: 0.3 -> 0.5\).*new --workdir"):
        hard_set.training_data(cfg, tmp_path, progress=False)


def test_task_repeats_switch_sets_what_an_epoch_is(mining_cfg, tmp_path):
    cfg = mining_cfg.copy_and_resolve_references()
    cfg.data.manifest = "all"
    cfg.data.repeats = {"derain": 3, "deblur": 2}
    with_repeats = hard_set.training_data(cfg, tmp_path, progress=False)
    assert with_repeats.repeats["derain"] == 3 and with_repeats.repeats["deblur"] == 2
    cfg.grpo.task_repeats = False
    once = hard_set.training_data(cfg, tmp_path, progress=False)
    assert set(once.repeats.values()) == {1}
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


def test_the_plan_follows_policy_iterations_and_states_the_last_steps_learning_rate():
    """Several updates per batch (``grpo.policy_iters``) and a decaying schedule: the run is
    epochs x batches x policy_iters optimizer steps, the plan says it is that many epochs, and
    its learning rate "at the last step" is the rate of the run's last optimizer step (the
    schedule's closed form at step T - 1, which the loop logs with it), not the rate one step
    later (0 for a cosine that ends at T)."""
    import math

    from irpo_jax import config_lib
    from irpo_jax.training import run_length
    from irpo_jax.training.loop import total_steps_of

    cfg = config_lib.base_config("grpo")
    cfg.train.update(epochs=3, batch_size=5, steps=0)
    cfg.grpo.policy_iters = 3
    cfg.optim.update(schedule="cosine", lr=1e-3, warmup_steps=4)
    records = [readers.Record(f"derain:{i}", "derain", None, "c.png", "d.png", None) for i in range(5)]
    data = readers.resolve_config(cfg.data) | {"manifest": "hard.jsonl", "repeats": {"derain": 2}}
    samples = 10  # 5 pairs x 2 repeats
    total = total_steps_of(cfg, samples)
    assert total == 3 * math.ceil(3 * samples / 5) == 18
    text, plan = run_length.describe(cfg, data, records, total, samples)
    assert plan["epochs"] == pytest.approx(3) and plan["updates_per_batch"] == 3 and plan["batch_size"] == 5
    assert "18 optimizer steps = 3 epochs of 10 samples at batch 5, 3 updates per batch (train.epochs=3)" in text
    assert "learning rate (cosine): 0 at the first step -> " in text and "; policy heads x " in text
    last = 0.5e-3 * (1 + math.cos(math.pi * (total - 1 - 4) / (total - 4)))  # the cosine at step T - 1
    assert last > 1e-7
    assert plan["lr"]["first"] == 0.0 and plan["lr"]["last"] == pytest.approx(last, rel=1e-4)
    logged_last = float(training.learning_rate(cfg, total, samples)(total - 1))  # what the loop logs at the end
    assert plan["lr"]["last"] == pytest.approx(logged_last, rel=1e-6)
    assert plan["per_task"] == {"derain": {"pairs": 5, "samples": 10, "repeats": 2}}
    # train.steps overrides the epochs, and must be a whole number of batches' updates.
    cfg.train.steps = 12
    assert total_steps_of(cfg, samples) == 12
    text, plan = run_length.describe(cfg, data, records, 12, samples)
    assert plan["epochs"] == pytest.approx(12 / 3 * 5 / 10) and "(train.steps=12)" in text


def test_a_manifest_written_as_none_means_no_manifest(demo_root, tmp_path):
    """``data.manifest = None`` in a config file is the empty manifest (a GRPO run without a
    starting model then has nothing to mine with), not a file named ``None``."""
    cfg = smoke_config(demo_root, **{"data.manifest": ""})
    cfg.data.manifest = None
    assert cfg.train.stage == "grpo" and not cfg.model.init_from
    data = hard_set.training_data(cfg, tmp_path, progress=False)
    assert not data.manifest and not (tmp_path / hard_set.MINED).exists()
