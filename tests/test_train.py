"""End-to-end training on the built-in demo data: supervised, GRPO, one-step-stale GRPO, resume,
data parallel, guards.

The fixtures ``demo_root`` and ``supervised_run`` live in conftest.py (shared with test_multihost).
"""

import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import jax
import numpy as np
import pytest

from irpo_jax import checkpointing, config_lib, training
from irpo_jax.metrics_log import read_metrics
from irpo_jax.rewards import remote
from irpo_jax.training.errors import TrainingError
from irpo_jax.training.rollouts import Rollouts, score_remotely

ROOT = pathlib.Path(__file__).resolve().parent.parent


def smoke_config(demo_root, stage="grpo", **overrides):
    cfg = config_lib.load_config(str(ROOT / "configs" / "allinone5.py") + f":{stage},smoke")
    cfg.data.root = str(demo_root)
    cfg.data.tasks = ("derain", "deblur")  # fewer files to scan; both paired tasks
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def params_of(workdir):
    module, _ = checkpointing.restore_model(pathlib.Path(workdir) / "model")
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def assert_trees_close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


def test_supervised_stage(supervised_run):
    workdir, summary = supervised_run
    assert summary["steps"] == 3 and summary["stop"] == "finished"
    records = read_metrics(workdir)
    assert [r["step"] for r in records if "loss/l1" in r] == [1, 2, 3]
    assert all(np.isfinite(r["loss/l1"]) for r in records if "loss/l1" in r)
    assert (workdir / "tensorboard").is_dir() and any((workdir / "tensorboard").iterdir())
    assert json.loads((workdir / "config.json").read_text())["train"]["stage"] == "supervised"
    results = json.loads(next((workdir / "eval").glob("3*/results.json")).read_text())
    assert set(results["rows"]) == {"rain100l", "gopro"}
    assert any("eval/average/psnr" in r for r in records)
    restorer = checkpointing.load_model(workdir / "model")
    assert restorer.meta["model"] == "adair"
    assert restorer(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 32, 32, 3)


@pytest.fixture(scope="module")
def grpo_run(demo_root, supervised_run, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("grpo")
    cfg = smoke_config(demo_root, **{"model.init_from": str(supervised_run[0] / "model"), "train.steps": 4,
                                     "train.probe_every": 2, "train.probe_batches": 1})  # fmt: skip
    return workdir, training.run(cfg, workdir, progress=False), cfg


def test_grpo_stage_logs_the_design_metrics(grpo_run):
    workdir, summary, _ = grpo_run
    assert summary["steps"] == 4
    last = [r for r in read_metrics(workdir) if "loss/rl" in r][-1]
    for name in ("loss/rl", "loss/sup", "loss/cons", "grpo/clipfrac", "grpo/approx_kl", "grpo/kl_ref",
                 "grpo/entropy", "reward/frac_zero_std", "reward/psnr/mean", "reward/task/std", "opt/lr",
                 "opt/grad_norm", "perf/rollouts_per_s"):  # fmt: skip
        assert name in last, name
    # One policy iteration: sampling and update parameters coincide, so the ratio is exactly 1.
    assert last["grpo/ratio_mean"] == 1.0 and last["grpo/clipfrac"] == 0.0
    report = json.loads((workdir / "reward_components.json").read_text())
    assert report["jax"] == ["psnr", "ssim", "task"] and set(report["torch_unavailable"]) == {
        "clip", "lpips", "aesthetic", "qwen"}  # fmt: skip
    restorer = checkpointing.load_model(workdir / "model")
    assert restorer.meta["model"] == "adair_policy"


def test_grpo_step_timings_are_per_step_durations(grpo_run):
    """``perf/{rollout,reward_wait,update}_s`` are seconds per step: together at most the wall
    time per step that ``perf/images_per_s`` gives (both run-so-far averages)."""
    workdir, _, cfg = grpo_run
    records = [r for r in read_metrics(workdir) if "perf/update_s" in r]
    assert records
    for r in records:
        parts = [r[f"perf/{k}_s"] for k in ("rollout", "reward_wait", "update")]
        assert min(parts) >= 0 and parts[2] > 0, r
        assert sum(parts) <= cfg.train.batch_size / r["perf/images_per_s"] * 1.001, r


def test_the_grpo_panel_shows_the_clipped_rollouts_of_the_first_image():
    from irpo_jax.metrics_log import image_panel
    from irpo_jax.training import loop

    rng = np.random.default_rng(0)
    b, g, h, w = 2, 3, 8, 8
    batch = {"degraded": rng.uniform(size=(b, h, w, 3)), "clean": rng.uniform(size=(b, h, w, 3))}
    restored = rng.uniform(-0.5, 1.5, size=(b, g, h, w, 3))  # outside [0, 1] on purpose
    rollout = {"restored": restored, "jax_scores": {"psnr": rng.uniform(10, 30, size=(b, g))}}
    rewards, y_det = rng.uniform(size=(b, g)), rng.uniform(-0.5, 1.5, size=(b, h, w, 3))
    result = loop._StepResult(0, {}, batch, rollout, {}, y_det, rewards)
    expected = image_panel(batch["degraded"][0], batch["clean"][0], rollouts=np.clip(restored[0], 0, 1),
                           scores={"psnr": rollout["jax_scores"]["psnr"][0]}, rewards=rewards[0],
                           deterministic=np.clip(y_det[0], 0, 1), deterministic_label="mean")  # fmt: skip
    np.testing.assert_array_equal(loop._panel(result), expected)
    assert loop._panel(result).shape[1] == w * (g + 3)  # input, G rollouts, mean, clean


def test_grpo_stage_logs_where_the_actions_are(grpo_run):
    """Issue 23, item 3: per module and action the Beta mean and concentration, per module the
    fraction of rollouts whose mask differs from AdaIR's, and the within-group correlation of the
    reward with PSNR, in metrics.jsonl and TensorBoard. At step 0 the heads are at their initial
    Beta(50, 50) / Beta(20, 20) (mean 0.5, concentration 100 / 40) whatever the image; at the
    smoke crops (32 px: fre3 16x16, N = 8) a rate opens a mask from r >= 0.5 + 1/18."""
    from irpo_jax.metrics_log import read_events

    workdir, _, _ = grpo_run
    records = [r for r in read_metrics(workdir) if "loss/rl" in r]
    first = records[0]
    assert first["step"] == 1  # the statistics of the rollouts step 0 sampled
    for name in ("fre1", "fre2", "fre3"):
        for action, conc in (("r_h", 100.0), ("r_l", 100.0), ("g_f", 40.0), ("g_o", 40.0)):
            assert first[f"actions/{name}/{action}/mean"] == pytest.approx(0.5, abs=1e-6)
            assert first[f"actions/{name}/{action}/concentration"] == pytest.approx(conc, rel=1e-5)
        assert 0.0 <= first[f"actions/{name}/mask_changed"] <= 1.0
    assert all(-1.0 <= r["reward/corr_psnr"] <= 1.0 for r in records if np.isfinite(r["reward/corr_psnr"]))
    assert any(np.isfinite(r["reward/corr_psnr"]) for r in records)
    tags = {v.tag for events in (workdir / "tensorboard").rglob("events.*") for event in read_events(events)
            for v in event.summary.value}  # fmt: skip
    assert {"actions/fre3/r_h/mean", "actions/fre3/mask_changed", "reward/corr_psnr"} <= tags


def test_reward_probe_scores_fixed_batches_with_fixed_keys(grpo_run):
    workdir, _, cfg = grpo_run
    probes = [r for r in read_metrics(workdir) if "probe/reward/total/mean" in r]
    assert [r["step"] for r in probes] == [0, 2, 4]
    # The step-0 probe rebuilt independently: the starting policy, the probe iterator's first
    # batch (seed + 1), the probe key, the composite reward.
    from flax import nnx

    from irpo_jax.data.pipeline import make_train_iterator
    from irpo_jax.rewards import compose

    graphdef, params = nnx.split(training.build_model(cfg), nnx.Param)
    params = nnx.to_pure_dict(params)
    raw = next(make_train_iterator(cfg.data, batch_size=cfg.train.batch_size, seed=cfg.seed + 1))
    batch = {k: jax.numpy.asarray(raw[k]) for k in ("degraded", "clean", "task_id")}
    rollout = jax.jit(training.make_rollout_step(graphdef, cfg, ("psnr", "ssim", "task")))(
        params, batch, jax.random.fold_in(jax.random.key(cfg.seed + 1), 0)
    )
    total, _ = compose.compose({k: v.reshape(-1) for k, v in rollout["jax_scores"].items()}, {}, cfg.reward)
    np.testing.assert_allclose(probes[0]["probe/reward/total/mean"], float(np.nanmean(total)), rtol=1e-5)
    assert np.isfinite(probes[0]["probe/reward/psnr/mean"])


def test_resume_equals_uninterrupted(demo_root, grpo_run, tmp_path):
    _, _, cfg = grpo_run
    first = training.run(cfg, tmp_path, progress=False, stop_after=2)  # as if preempted after 2 steps
    assert first["steps"] == 2 and "stop_after" in first["stop"]
    summary = training.run(cfg, tmp_path, progress=False)
    assert summary["steps"] == 4
    assert_trees_close(params_of(tmp_path), params_of(grpo_run[0]), atol=0)  # bit for bit


def test_several_policy_iterations_log_and_checkpoint_at_the_optimizer_step(grpo_run, tmp_path):
    """``grpo.policy_iters=2``: each batch makes two optimizer steps, and the logs and periodic
    checkpoints count optimizer steps (as ``train.steps`` does): every 2 steps is every batch.
    (Issue 28 found the loop counting batches: logs at steps 1, 3 and no checkpoint at all.)"""
    _, _, cfg = grpo_run
    cfg = cfg.copy_and_resolve_references()
    cfg.grpo.policy_iters = 2
    cfg.train.update(probe_every=0, log_every=2, checkpoint_every=2)
    summary = training.run(cfg, tmp_path, progress=False)
    assert summary["steps"] == 4 and summary["stop"] == "finished"
    assert [r["step"] for r in read_metrics(tmp_path) if "loss/rl" in r] == [2, 4]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4"]


class FakeRewardBridge:
    """Stands in for the reward process: ``lpips`` = 1 - mean |restored - clean|, after a delay."""

    live_components = ("lpips",)

    def score(self, degraded, restored, clean, *, task_ids, sample_ids, components):
        time.sleep(0.05)  # something for the update to overlap
        return types.SimpleNamespace(scores={"lpips": 1 - np.abs(restored - clean).mean(axis=(1, 2, 3))})

    def close(self):
        pass


class FailingRewardBridge(FakeRewardBridge):
    """The fake reward process, gone from its ``fail_at``-th request on."""

    def __init__(self, fail_at: int):
        self.calls, self.fail_at = 0, fail_at

    def score(self, *args, **kwargs):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise remote.RewardProcessError("the reward process is gone (test)")
        return super().score(*args, **kwargs)


def test_remote_scores_name_each_rollouts_source_image_across_steps():
    """score_remotely sends the B*G rollouts with their images' ids (``step * B + row``, each
    repeated G times: the components cache ground-truth features by them, so an id reused at a
    later step would score against an earlier step's image) and returns (B, G) scores in the
    rollouts' order (issue 28's survivor rollouts.py:197: ids without ``step * B``)."""
    cfg = config_lib.load_config(str(ROOT / "configs" / "allinone5.py") + ":grpo,smoke")
    sharded = jax.sharding.NamedSharding(training.make_mesh(), jax.sharding.PartitionSpec("data"))
    b, g = 4, 3
    rng = np.random.default_rng(0)
    batch = training.to_global({"degraded": rng.random((b, 8, 8, 3), np.float32),
                                "clean": rng.random((b, 8, 8, 3), np.float32),
                                "task_id": np.arange(b, dtype=np.int32)}, sharded)  # fmt: skip
    restored = rng.random((b, g, 8, 8, 3), np.float32)
    rollout = {"restored": jax.device_put(restored, sharded)}

    class Recording(FakeRewardBridge):
        sent = []

        def score(self, degraded, restored, clean, **kw):
            self.sent.append((kw["sample_ids"], kw["task_ids"]))
            return super().score(degraded, restored, clean, **kw)

    clean = np.asarray(batch["clean"])[:, None]
    want = 1 - np.abs(restored - clean).mean(axis=(2, 3, 4))
    for step in (0, 5):
        scores = score_remotely(Recording(), cfg, step, batch, rollout, ("lpips",))
        np.testing.assert_allclose(np.asarray(scores["lpips"]), want, rtol=1e-6)
    assert [ids.tolist() for ids, _ in Recording.sent] == [np.repeat(np.arange(b) + step * b, g).tolist()
                                                          for step in (0, 5)]  # fmt: skip
    assert all(np.asarray(t).tolist() == np.repeat(np.arange(b), g).tolist() for _, t in Recording.sent)


def test_a_failed_reward_request_saves_the_state_and_the_run_resumes(stale_run, tmp_path):
    workdir, cfg = stale_run
    shutil.copytree(workdir, tmp_path / "run")
    cfg = cfg.copy_and_resolve_references()
    cfg.train.steps, cfg.train.allow_config_change = 4, True
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(remote, "open_reward_bridge", lambda reward_cfg: FailingRewardBridge(fail_at=1))
        # From step 2: update 3 consumes the rollouts saved with the checkpoint, update 4 needs
        # those of request 1, which failed.
        with pytest.raises(training.TrainingError, match=r"(?s)reward scores of step 3 failed.*rerun the same command"):
            training.run(cfg, tmp_path / "run", progress=False)
        ckpt = training.TrainCheckpointer(tmp_path / "run", keep=3)
        assert ckpt.latest_step() == 3
        ckpt.close()
        patch.setattr(remote, "open_reward_bridge", lambda reward_cfg: FakeRewardBridge())
        summary = training.run(cfg, tmp_path / "run", progress=False)
    assert summary["steps"] == 4 and summary["stop"] == "finished"


class HungRewardBridge(FakeRewardBridge):
    """A reward process that never answers (until closed)."""

    def __init__(self):
        self.entered, self.closed = threading.Event(), threading.Event()

    def score(self, *args, **kwargs):
        self.entered.set()
        if not self.closed.wait(120):
            raise AssertionError("the trainer never closed the hung reward bridge")
        raise remote.RewardProcessError("closed while a request was in flight")

    def close(self):
        self.closed.set()


def test_sigterm_while_the_reward_process_hangs_stops_with_a_checkpoint(grpo_run, tmp_path):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    _, _, cfg = grpo_run
    cfg = cfg.copy_and_resolve_references()
    cfg.train.probe_every, cfg.train.steps = 0, 2
    bridge = HungRewardBridge()

    def preempt():
        if bridge.entered.wait(120):
            os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=preempt, daemon=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(remote, "open_reward_bridge", lambda reward_cfg: bridge)
        killer.start()
        t0 = time.monotonic()
        summary = training.run(cfg, tmp_path, progress=False)
    assert summary["stop"] == "stopped by SIGTERM while waiting for the reward process"
    assert summary["steps"] == 0 and time.monotonic() - t0 < 100
    ckpt = training.TrainCheckpointer(tmp_path, keep=3)
    assert ckpt.latest_step() == 0
    ckpt.close()


def test_stale_grpo_ratio_uses_the_sampling_log_probs(stale_run):
    workdir, _ = stale_run
    records = [r for r in read_metrics(workdir) if "grpo/ratio_mean" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert all("reward/lpips/mean" in r and r["perf/reward_wait_s"] >= 0 for r in records)
    # Update 1 consumes rollouts sampled by theta_0: the ratio moves off 1 (by ~1e-3 here; the
    # normal mode's is exactly 1, test_grpo_stage_logs_the_design_metrics).
    assert abs(records[1]["grpo/ratio_mean"] - 1) > 1e-5, records[1]
    events = b"".join(f.read_bytes() for f in (workdir / "tensorboard").iterdir())
    assert b"panels/degraded_rollouts_mean_clean" in events


def test_stale_update_consumes_the_previous_steps_rollouts(stale_run):
    """The run (across its resume) equals updates called by hand on the rollouts of theta_{t-1}."""
    from flax import nnx

    from irpo_jax.data.pipeline import make_train_iterator

    workdir, cfg = stale_run
    mesh = training.make_mesh()
    replicated, sharded = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*s)) for s in ((), ("data",)))
    data = make_train_iterator(cfg.data, batch_size=cfg.train.batch_size, seed=cfg.seed)
    graphdef, params = nnx.split(training.build_model(cfg), nnx.Param)
    params = nnx.to_pure_dict(params)
    tx = training.build_optimizer(cfg, params, 2)
    state = training.TrainState(step=np.int32(0), params=params, opt_state=tx.init(params),
                               rng=jax.random.key_data(jax.random.key(cfg.seed)),
                               ref_params=jax.tree.map(np.copy, params))  # fmt: skip
    state = jax.device_put(state, replicated)
    # The trainer's programs, built the trainer's way (also: the compilation cache has them).
    rollout_fn = training.on_mesh(mesh, jax.jit(training.make_rollout_step(graphdef, cfg, ("psnr", "ssim", "task"))))
    update_fn = training.on_mesh(mesh, jax.jit(training.make_grpo_update(graphdef, tx, cfg, 2), donate_argnums=0))
    key = lambda i: jax.random.fold_in(jax.random.key(cfg.seed), i)  # noqa: E731
    batches = [training.to_global(next(data), sharded) for _ in range(3)]
    sampled = rollout_fn(state.params, batches[0], key(0))
    for t in range(2):
        following = rollout_fn(state.params, batches[t + 1], key(t + 1))  # by theta_t, for update t + 1
        scores = score_remotely(FakeRewardBridge(), cfg, t, batches[t], sampled, ("lpips",))
        state, _ = update_fn(state, batches[t], sampled, scores)
        sampled = following
    assert_trees_close(params_of(workdir), state.params, atol=0)
    # The final checkpoint carries what a third update would consume: batch 2, sampled by theta_1.
    ckpt = training.TrainCheckpointer(workdir, 3)
    pending = ckpt.restore_pending(mesh)
    ckpt.close()
    rollout = {k: v for k, v in sampled.items() if k != "stats"}  # logged, not kept with the rollouts
    want = {
        "batch": batches[2],
        "rollout": rollout,
        "remote_scores": score_remotely(FakeRewardBridge(), cfg, 2, batches[2], sampled, ("lpips",)),
    }
    assert_trees_close(pending, want, atol=0)


def test_two_devices_equal_one(grpo_run, tmp_path):
    """The GRPO run on one device ends where grpo_run (train.devices=0: both devices) ended."""
    assert jax.device_count() == 2
    workdir, _, cfg = grpo_run
    assert cfg.train.devices == 0 and cfg.data.worker_count == 0
    one = cfg.copy_and_resolve_references()
    one.train.devices = 1
    training.run(one, tmp_path, progress=False)
    assert_trees_close(params_of(tmp_path), params_of(workdir), atol=2e-5)


def test_the_evaluate_cli_recognises_the_trainers_results(supervised_run, demo_root, capsys):
    """The trainer's end-of-run evaluation records the model and settings as the evaluate CLI does,
    so evaluating the run's model the same way replaces it (the same numbers) without --overwrite."""
    from irpo_jax import evaluate as ev

    workdir, _ = supervised_run
    path = next((workdir / "eval").glob("3*/results.json"))
    before = json.loads(path.read_text())
    args = ["--checkpoint", workdir / "model", "--config", "configs/allinone5.py:supervised,smoke",
            "--data_root", demo_root, "--sets", "rain100l,gopro", "--max_images", "1"]  # fmt: skip
    assert ev.main([str(a) for a in args]) == 0, capsys.readouterr().err
    after = json.loads(path.read_text())
    assert after["model"]["params_sha256"] == before["model"]["params_sha256"]
    assert after["settings"] == before["settings"] and after["model"]["checkpoint"] == str(
        (workdir / "model").absolute()
    )
    for row in ("rain100l", "gopro"):
        assert after["rows"][row]["psnr"] == pytest.approx(before["rows"][row]["psnr"], abs=1e-4)


def test_workdir_of_another_config_is_refused(supervised_run, demo_root):
    workdir, _ = supervised_run
    cfg = smoke_config(demo_root, "supervised", **{"optim.lr": 1e-3})
    with pytest.raises(training.TrainingError, match="different config.*optim.lr"):
        training.run(cfg, workdir, progress=False)


def test_a_workdir_from_before_a_default_changed_names_the_fields_and_resumes_as_it_was(
    supervised_run, demo_root, tmp_path
):
    """Issue 23, item 5: a GRPO workdir whose config.json predates the "widen" rule and the
    spectrum tiles (mask_rule "anchored", no model.policy.spectrum_tile) is refused on resume with
    each changed field's old and new value and the overrides that resume it as it was trained;
    with them it resumes without allow_config_change (the missing key reads as its former
    meaning, whole-image statistics)."""
    from irpo_jax.training import workdir as wd

    cfg = smoke_config(demo_root, **{"model.init_from": str(supervised_run[0] / "model")})
    old = wd.config_json(cfg)
    old["model"]["policy"]["mask_rule"] = "anchored"
    del old["model"]["policy"]["spectrum_tile"]
    run = tmp_path / "old_run"
    (run / "checkpoints" / "4").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(old))
    with pytest.raises(training.TrainingError) as err:
        wd.check_workdir_config(run, cfg).release()
    message = str(err.value)
    assert "model.policy.mask_rule ('anchored' -> 'widen')" in message
    assert "model.policy.spectrum_tile (0 -> 32)" in message
    assert message.endswith(
        "To resume it as it was started, pass --config.model.policy.mask_rule=anchored "
        "--config.model.policy.spectrum_tile=0."
    )
    as_trained = smoke_config(
        demo_root,
        **{
            "model.init_from": str(supervised_run[0] / "model"),
            "model.policy.mask_rule": "anchored",
            "model.policy.spectrum_tile": 0,
        },
    )
    wd.check_workdir_config(run, as_trained).release()  # no change: resumes
    assert json.loads((run / "config.json").read_text())["model"]["policy"]["spectrum_tile"] == 0


def test_adair_schedule_is_the_official_per_epoch_rule():
    """adair-spec section 11: lr(e) = e * 2e-4 / 14 for e < 15, then 1e-4 (1 + cos(pi (e - 15) / 165))."""
    cfg = config_lib.load_config(str(ROOT / "configs" / "allinone5.py") + ":supervised")
    assert (cfg.optim.schedule, cfg.train.batch_size, cfg.data.augment) == ("adair", 32, "official")
    epoch_size = 100  # 32-image batches: epoch e starts inside batch ceil(100 e / 32)
    schedule = training.learning_rate(cfg, total_steps=10_000, epoch_size=epoch_size)
    for step in (0, 3, 4, 40, 46, 47, 51, 300, 467, 468, 469):
        e = step * 32 // epoch_size  # the epoch of the batch's first sample
        want = e * 2e-4 / 14 if e < 15 else 1e-4 * (1 + math.cos(math.pi * (e - 15) / 165))
        assert float(schedule(step)) == pytest.approx(want, rel=1e-5, abs=1e-12), step
    assert float(schedule(150 * epoch_size // 32)) == pytest.approx(1.7e-5, rel=0.02)  # where AdaIR stops
    with pytest.raises(training.TrainingError, match="epoch size"):
        training.learning_rate(cfg, total_steps=10)
    cfg.optim.warmup_epochs = 200
    with pytest.raises(training.TrainingError, match="warmup_epochs < optim.cosine_epochs"):
        training.learning_rate(cfg, total_steps=10, epoch_size=epoch_size)
    demo = config_lib.load_config(str(ROOT / "configs" / "allinone5.py") + ":supervised,demo")
    assert demo.optim.schedule == "cosine"  # 40 steps: the per-step shape


def test_grpo_steps_must_be_whole_batches_of_policy_iterations(demo_root, tmp_path):
    cfg = smoke_config(demo_root, **{"grpo.policy_iters": 2, "train.steps": 3})
    with pytest.raises(training.TrainingError, match="train.steps=3 .* grpo.policy_iters=2 .* multiple of 2"):
        training.run(cfg, tmp_path, progress=False)


def test_a_workdir_that_is_not_a_run_is_refused_and_kept(demo_root, tmp_path):
    mine = tmp_path / "mine"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "weights.pth").write_bytes(b"the user's")
    with pytest.raises(training.TrainingError, match="not empty and holds no irpo-jax run .*model"):
        training.run(smoke_config(demo_root, "supervised"), mine, progress=False)
    assert (mine / "model" / "weights.pth").read_bytes() == b"the user's" and not (mine / "config.json").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(training.TrainingError, match="is a file"):
        training.run(smoke_config(demo_root, "supervised"), tmp_path / "file", progress=False)


def test_a_start_that_failed_does_not_block_the_corrected_command(demo_root, tmp_path):
    with pytest.raises(ValueError, match="data.root"):
        training.run(smoke_config(demo_root, **{"data.root": ""}), tmp_path, progress=False)
    assert (tmp_path / "config.json").exists()  # written before the data was read
    # The corrected command gets past the config check (to the next missing piece, here).
    with pytest.raises(training.TrainingError, match="model.init_from is empty"):
        training.run(smoke_config(demo_root), tmp_path, progress=False)


def test_bad_settings_are_named_before_any_work(demo_root, tmp_path):
    cfg = smoke_config(demo_root, "supervised", **{"train.steps": -1, "train.log_every": -1, "data.patch_size": 30})
    with pytest.raises(training.TrainingError, match=r"train\.steps=-1.*train\.log_every.*data\.patch_size=30"):
        training.run(cfg, tmp_path, progress=False)
    assert not tmp_path.joinpath("config.json").exists()


def test_zero_intervals_mean_only_at_the_end_and_a_finished_run_keeps_its_summary(demo_root, tmp_path):
    cfg = smoke_config(demo_root, "supervised", **{"train.steps": 2, "train.log_every": 0, "train.checkpoint_every": 0})
    summary = training.run(cfg, tmp_path, progress=False)
    assert summary["stop"] == "finished" and summary["last_metrics"]
    assert [r["step"] for r in read_metrics(tmp_path) if "loss/l1" in r] == [2]
    again = training.run(cfg, tmp_path, progress=False)
    assert again["stop"] == "already finished" and again["last_metrics"] == summary["last_metrics"]
    assert json.loads((tmp_path / "summary.json").read_text())["last_metrics"] == summary["last_metrics"]


def test_periodic_evaluations_and_their_image_limit(demo_root, tmp_path):
    """``train.eval_every``: an evaluation every N steps before the last, besides the end's
    (``train.eval_at_end``); ``train.eval_max_images``: each set's first N images only (the demo
    sets have 3)."""
    cfg = smoke_config(demo_root, "supervised", **{"train.steps": 3, "train.eval_every": 2, "train.eval_max_images": 2,
                                                   "train.eval_at_end": True})  # fmt: skip
    cfg.data.eval_sets = ("rain100l",)
    training.run(cfg, tmp_path, progress=False)
    assert [r["step"] for r in read_metrics(tmp_path) if "eval/average/psnr" in r] == [2, 3]
    for step in (2, 3):
        results = json.loads(next((tmp_path / "eval").glob(f"{step}*/results.json")).read_text())
        assert results["rows"]["rain100l"]["images"] == 2 and results["settings"]["max_images"] == 2


def test_train_cli_reports_flag_mistakes_in_one_line(tmp_path):
    cases = {
        "configs/nope.py": "error: --config: [Errno 2] No such file or directory: 'configs/nope.py'",
        "configs/allinone5.py:smokey": "unknown config argument 'smokey'",
    }
    runs = [[f"--config={c}"] for c in cases] + [["--config=configs/allinone5.py:smoke", "--config.optim.lrr=1"]]
    for args, want in zip(runs, [*cases.values(), "no such config field 'lrr' Did you mean \"lr\""]):
        out = subprocess.run([sys.executable, "-m", "irpo_jax.train", *args, f"--workdir={tmp_path / 'w'}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 2 and want in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_strict_reward_stops_the_run_only_when_a_weighted_torch_component_is_not_live(demo_root, tmp_path):
    """``reward.missing="strict"``: the smoke config's torch components with the bridge off stop the
    run, naming them; with their weights at 0 nothing is missing and the run opens its rewards
    (issue 28's survivor rollouts.py:109: a strict run that refused to start even then)."""

    def open_rewards(cfg):  # the constructor's rewards part alone (the rest compiles the rollout)
        rollouts = Rollouts.__new__(Rollouts)
        rollouts.cfg = cfg
        rollouts._open_rewards(tmp_path)
        return rollouts

    cfg = smoke_config(demo_root, **{"reward.missing": "strict", "reward.bridge.mode": "off"})
    with pytest.raises(TrainingError, match=r"\['aesthetic', 'clip', 'lpips', 'qwen'\].*not live"):
        open_rewards(cfg)
    for name in ("aesthetic", "clip", "lpips"):
        cfg.reward.groups.gen.components[name] = 0.0
    cfg.reward.groups.judge.weight = 0.0
    rollouts = open_rewards(cfg)
    report = json.loads((tmp_path / "reward_components.json").read_text())
    assert report["torch_unavailable"] == [] and report["torch_live"] == [] and rollouts.bridge is None
    assert report["jax"] == ["psnr", "ssim", "task"]


def test_grpo_without_a_starting_model_says_what_to_do(demo_root, tmp_path):
    with pytest.raises(training.TrainingError, match="model.init_from is empty.*convert_adair"):
        training.run(smoke_config(demo_root), tmp_path, progress=False)


def test_nan_stops_with_a_checkpoint_and_names_the_term(demo_root, tmp_path):
    cfg = smoke_config(demo_root, "supervised", **{"optim.lr": 1e30, "train.steps": 4})
    with pytest.raises(training.TrainingError, match=r"non-finite value in (loss/l1|a gradient)") as err:
        training.run(cfg, tmp_path, progress=False)
    assert "last good state was saved" in str(err.value)
    assert (tmp_path / "checkpoints").is_dir() and (tmp_path / "model" / "model.json").is_file()


def test_a_finished_run_with_a_stale_model_is_repaired(supervised_run, demo_root, tmp_path):
    """The issue's case: a kill (or a failed delete) after the final checkpoint's commit left
    model/ on an older step and a .model.previous; the same command rewrites model/ from the
    checkpoint, reports the run as finished, and logs its end-of-run evaluation only once."""
    workdir, _ = supervised_run
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    shutil.rmtree(run / "model")
    from flax import nnx

    from irpo_jax.models import adair

    older = adair.AdaIR("tiny", rngs=nnx.Rngs(7))  # other weights, and a manifest of step 2
    for name in ("model", ".model.previous"):
        (run / name).mkdir()
        checkpointing.write_model(run / name, older, {"manifest.json": {"trained_steps": 2}})
    cfg = smoke_config(demo_root, "supervised", **{"train.steps": 3, "train.eval_at_end": True})
    cfg.data.eval_sets = ("rain100l", "gopro")  # as conftest's supervised_run
    evals = [r for r in read_metrics(run) if "eval/average/psnr" in r]
    assert len(evals) == 1
    summary = training.run(cfg, run, progress=False)
    assert summary["stop"] == "already finished"
    assert json.loads((run / "model" / "manifest.json").read_text())["trained_steps"] == 3
    assert_trees_close(params_of(run), params_of(workdir), atol=0)
    assert not (run / ".model.previous").exists()
    assert [r for r in read_metrics(run) if "eval/average/psnr" in r] == evals


def test_a_signal_after_the_last_step_still_reports_finished(demo_root, tmp_path, monkeypatch):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    from irpo_jax.training import loop

    after_step = loop._Run._after_step

    def after_step_then_signal(self, result, *args):
        out = after_step(self, result, *args)
        if result.step + 1 == self.total_steps:  # the last step is done: Ctrl-C now
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        return out

    monkeypatch.setattr(loop._Run, "_after_step", after_step_then_signal)
    summary = training.run(smoke_config(demo_root, "supervised", **{"train.steps": 1}), tmp_path, progress=False)
    assert summary["stop"] == "finished" and summary["steps"] == 1


def test_signals_while_the_first_step_compiles(demo_root, tmp_path):
    """XLA compiles without the GIL and without running Python's signal handlers: the first
    SIGTERM is answered at once, the second (SIGINT) ends the process within a second, with
    the first signal's status (143) and without a checkpoint."""
    import queue

    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=1 --xla_cpu_use_fusion_emitters=false",
                        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "JAX_LOG_COMPILES": "1"}  # fmt: skip
    args = ["--config=configs/allinone5.py:supervised,smoke", f"--config.data.root={demo_root}",
            '--config.data.tasks=("derain","deblur")', "--config.train.compilation_cache=",  # a full compile
            f"--workdir={tmp_path}", "--noprogress"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-u", "-m", "irpo_jax.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    seen = []

    def wait_for(text: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
            if text in seen[-1]:
                return time.monotonic()
        raise AssertionError(f"no {text!r} within {timeout} s; last lines: {[x[:200] for x in seen[-5:]]}")

    try:
        wait_for("Finished jaxpr to MLIR module conversion jit(step)", 300)  # XLA compiles from here
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert wait_for("SIGTERM received: the run stops after the current step", 5) - sent < 1.5
        assert "a second SIGINT (Ctrl-C) or SIGTERM stops it at once" in seen[-1]
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        status = proc.wait(timeout=10)
        assert time.monotonic() - sent < 1.5
    finally:
        proc.kill()
    reader.join(timeout=10)
    rest = "".join(seen + list(lines.queue))
    assert status == 143, rest[-2000:]
    assert "SIGINT received again: stopping now, without a checkpoint" in rest
    assert "Finished XLA compilation of jit(step)" not in rest  # it was compiling all along
    assert "compiling the supervised step (the first step waits for it)" in rest  # said before it
    assert not [p for p in (tmp_path / "checkpoints").glob("*") if p.name.isdigit()]
