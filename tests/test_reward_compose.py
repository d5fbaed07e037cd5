"""The composite reward (Eq. 22): paper weights by hand, NaN handling, strict mode, jit, windows."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irpo_jax import metrics
from irpo_jax.rewards import compose as C
from irpo_jax.rewards.task import task_reward_by_id

# Raw scores for 3 samples, chosen so the normalised values are round numbers.
JAX_RAW = {
    "psnr": np.array([30.0, 30.0, 30.0], np.float32),  # (30 - 15) / 30 = 0.5
    "ssim": np.array([0.8, 0.8, 0.8], np.float32),
    "task": np.array([0.6, 0.6, 0.6], np.float32),
}
REMOTE_RAW = {
    "lpips": np.array([0.9, 0.9, 0.9], np.float32),  # already 1 - LPIPS
    "clip": np.array([0.95, 0.95, 0.95], np.float32),
    "aesthetic": np.array([5.5, 5.5, 5.5], np.float32),  # (5.5 - 1) / 9 = 0.5
    "qwen": np.array([0.75, 0.75, 0.75], np.float32),
}
# By hand: gen = .25*.95 + .25*.9 + .15*.5 + .20*.5 + .15*.8 = .7575
GEN = 0.25 * 0.95 + 0.25 * 0.9 + 0.15 * 0.5 + 0.20 * 0.5 + 0.15 * 0.8
TOTAL = 0.6 * GEN + 0.1 * 0.75 + 0.3 * 0.6  # = 0.7095


def _with(remote=None):
    out = {k: v.copy() for k, v in REMOTE_RAW.items()}
    out.update(remote or {})
    return out


def test_paper_weights_reproduce_hand_computed_total():
    cfg = C.default_reward_config()
    total, parts = C.compose(JAX_RAW, REMOTE_RAW, cfg)
    assert math.isclose(GEN, 0.7575, abs_tol=1e-12) and math.isclose(TOTAL, 0.7095, abs_tol=1e-12)
    np.testing.assert_allclose(total, TOTAL, rtol=0, atol=1e-6)
    np.testing.assert_allclose(parts["group/gen"], GEN, atol=1e-6)
    np.testing.assert_allclose(parts["group/judge"], 0.75, atol=1e-6)
    np.testing.assert_allclose(parts["group/task"], 0.6, atol=1e-6)
    np.testing.assert_allclose(parts["psnr"], 0.5, atol=1e-6)
    np.testing.assert_allclose(parts["aesthetic"], 0.5, atol=1e-6)
    assert set(parts) == {*C.active_components(cfg), "group/gen", "group/judge", "group/task"}
    # The strict mode gives the same number when nothing is missing.
    cfg.missing = "strict"
    np.testing.assert_allclose(C.compose(JAX_RAW, REMOTE_RAW, cfg)[0], TOTAL, atol=1e-6)


def test_nan_renormalises_within_each_group():
    cfg = C.default_reward_config()
    lpips = np.array([0.9, np.nan, 0.9], np.float32)  # sample 1: LPIPS failed
    qwen = np.array([0.75, 0.75, np.nan], np.float32)  # sample 2: judge answer unparsable
    total, parts = C.compose(JAX_RAW, _with({"lpips": lpips, "qwen": qwen}), cfg)
    # Sample 1: LPIPS's 0.25 is spread over the other gen components (live weight 0.75).
    gen1 = (GEN - 0.25 * 0.9) / 0.75
    # Sample 2: the judge group is empty, its 0.1 spread over gen and task (live weight 0.9).
    total2 = (0.6 * GEN + 0.3 * 0.6) / 0.9
    np.testing.assert_allclose(parts["group/gen"], [GEN, gen1, GEN], atol=1e-6)
    np.testing.assert_allclose(parts["group/judge"][:2], 0.75, atol=1e-6)
    assert np.isnan(parts["group/judge"][2]) and np.isnan(parts["lpips"][1])
    np.testing.assert_allclose(total, [TOTAL, 0.6 * gen1 + 0.075 + 0.18, total2], atol=1e-6)


def test_a_component_failed_for_one_rollout_is_left_out_for_its_whole_group():
    """GRPO groups (group_size): every rollout an advantage compares is scored by one formula."""
    cfg = C.default_reward_config()
    psnr = np.array([30.0, 30.5, 31.0, 31.5], np.float32)  # two groups of two; worst first
    jax_raw = {"psnr": psnr, "ssim": np.full(4, 0.8, np.float32), "task": np.full(4, 0.6, np.float32)}
    remote = {k: np.full(4, v[0], np.float32) for k, v in REMOTE_RAW.items()}
    remote["qwen"] = np.array([np.nan, 0.25, 0.25, 0.25], np.float32)  # rollout 0's answer did not parse
    gen = [0.25 * 0.95 + 0.25 * 0.9 + 0.15 * 0.5 + 0.20 * (p - 15) / 30 + 0.15 * 0.8 for p in psnr]
    with_judge = [0.6 * g + 0.1 * 0.25 + 0.3 * 0.6 for g in gen]
    without_judge = [(0.6 * g + 0.3 * 0.6) / 0.9 for g in gen]
    total, parts = C.compose(jax_raw, remote, cfg, group_size=2)
    # Group 0 (rollouts 0, 1): the judge is left out of both; group 1 keeps it.
    np.testing.assert_allclose(total, without_judge[:2] + with_judge[2:], atol=1e-6)
    assert np.isnan(parts["group/judge"][:2]).all() and not np.isnan(parts["group/judge"][2:]).any()
    np.testing.assert_allclose(parts["qwen"][1:], 0.25, atol=1e-6)  # the sibling's score is still logged
    # Per sample (no groups), rollout 0 alone is rescaled; here that makes the worst rollout the best.
    per_sample, _ = C.compose(jax_raw, remote, cfg)
    np.testing.assert_allclose(per_sample, without_judge[:1] + with_judge[1:], atol=1e-6)
    assert per_sample[0] > per_sample[1] and total[0] < total[1]
    # Strict mode is unchanged by groups: only the failed rollout is NaN.
    cfg.missing = "strict"
    strict, _ = C.compose(jax_raw, remote, cfg, group_size=2)
    assert np.isnan(strict[0]) and np.allclose(strict[1:], with_judge[1:], atol=1e-6)
    with pytest.raises(ValueError, match="group_size 3 does not divide the batch of 4"):
        C.compose(jax_raw, remote, cfg, group_size=3)
    with pytest.raises(ValueError, match="group_size 0 does not divide"):
        C.compose(jax_raw, remote, cfg, group_size=0)
    # Groups of one rollout are the independent samples.
    cfg.missing = "renormalise"
    np.testing.assert_array_equal(C.compose(jax_raw, remote, cfg, group_size=1)[0], per_sample)


def test_missing_component_counts_as_nan_and_all_missing_is_nan():
    cfg = C.default_reward_config()
    # The bridge is off: no remote scores at all -> only PSNR/SSIM (gen) and task remain.
    total, parts = C.compose(JAX_RAW, {}, cfg)
    gen = (0.20 * 0.5 + 0.15 * 0.8) / 0.35
    np.testing.assert_allclose(parts["group/gen"], gen, atol=1e-6)
    np.testing.assert_allclose(total, (0.6 * gen + 0.3 * 0.6) / 0.9, atol=1e-6)
    assert np.isnan(parts["clip"]).all()
    nan = np.full(3, np.nan, np.float32)
    total, _ = C.compose({k: nan for k in JAX_RAW}, {k: nan for k in REMOTE_RAW}, cfg)
    assert np.isnan(total).all()


def test_strict_mode_fails_the_sample():
    cfg = C.default_reward_config()
    cfg.missing = "strict"
    clip = np.array([0.95, np.nan, 0.95], np.float32)
    total, parts = C.compose(JAX_RAW, _with({"clip": clip}), cfg)
    assert np.isnan(total[1]) and np.isnan(parts["group/gen"][1])
    np.testing.assert_allclose(np.asarray(total)[[0, 2]], TOTAL, atol=1e-6)
    assert np.isnan(C.compose(JAX_RAW, {}, cfg)[0]).all()  # required components absent


def test_zero_weight_turns_a_component_off():
    cfg = C.default_reward_config()
    cfg.missing = "strict"
    cfg.groups.judge.weight = 0.0  # CPU run: no judge
    remote = _with({"qwen": np.full(3, np.nan, np.float32)})
    total, parts = C.compose(JAX_RAW, remote, cfg)  # a NaN judge does not matter in strict mode
    np.testing.assert_allclose(total, 0.6 * GEN + 0.3 * 0.6, atol=1e-6)  # literal sum, not rescaled
    assert "qwen" not in parts and "qwen" not in C.active_components(cfg)
    assert set(C.remote_components(cfg)) == {"clip", "lpips", "aesthetic"}


def test_psnr_window_clipping():
    cfg = C.default_reward_config()
    raw = jnp.array([10.0, 15.0, 22.5, 45.0, 60.0, jnp.inf, jnp.nan])
    out = C.normalise("psnr", raw, cfg)
    np.testing.assert_allclose(out[:6], [0.0, 0.0, 0.25, 1.0, 1.0, 1.0], atol=1e-7)
    assert np.isnan(out[6])
    cfg.windows.psnr = (20.0, 40.0)
    np.testing.assert_allclose(C.normalise("psnr", jnp.array([30.0]), cfg), [0.5], atol=1e-7)
    np.testing.assert_allclose(C.normalise("ssim", jnp.array([-0.2, 0.5]), cfg), [0.0, 0.5])
    aesthetic = C.normalise("aesthetic", jnp.array([0.0, 10.0, 12.0]), cfg)
    np.testing.assert_allclose(aesthetic, [0, 1, 1])


def test_jit_matches_eager_and_runs_from_images():
    cfg = C.default_reward_config()
    jitted = jax.jit(functools.partial(C.compose, cfg=cfg))
    total, parts = jitted(JAX_RAW, _with({"lpips": np.array([0.9, np.nan, 0.9], np.float32)}))
    eager, _ = C.compose(JAX_RAW, _with({"lpips": np.array([0.9, np.nan, 0.9], np.float32)}), cfg)
    np.testing.assert_allclose(total, eager, atol=1e-7)

    # End to end inside one jit: images -> JAX scores -> composite with remote scores.
    rng = np.random.default_rng(0)
    clean = rng.random((3, 16, 16, 3), np.float32)
    restored = np.clip(clean + 0.05 * rng.standard_normal(clean.shape, np.float32), 0, 1)
    task_ids = np.array([0, 3, 4], np.int32)

    @jax.jit
    def step(degraded, restored, clean, task_ids, remote):
        scores = C.jax_reward_scores(degraded, restored, clean, task_ids)
        return C.compose(scores, remote, cfg)

    total, parts = step(restored, restored, clean, task_ids, REMOTE_RAW)
    psnr = metrics.psnr(restored, clean)
    np.testing.assert_allclose(parts["psnr"], np.clip((psnr - 15) / 30, 0, 1), atol=1e-6)
    ssim = np.clip(metrics.ssim(restored, clean), 0, 1)
    np.testing.assert_allclose(parts["ssim"], ssim, atol=1e-6)
    task = task_reward_by_id(task_ids, restored, clean)
    np.testing.assert_allclose(parts["task"], task, atol=1e-6)
    gen = 0.25 * 0.95 + 0.25 * 0.9 + 0.15 * 0.5 + 0.2 * parts["psnr"] + 0.15 * parts["ssim"]
    np.testing.assert_allclose(total, 0.6 * gen + 0.075 + 0.3 * parts["task"], atol=1e-6)


def test_unknown_names_raise_listing_valid_ones():
    cfg = C.default_reward_config()
    with pytest.raises(ValueError, match=r"component 'lpip'.*psnr, ssim, task, lpips, clip"):
        C.compose(JAX_RAW, {"lpip": REMOTE_RAW["lpips"]}, cfg)
    with pytest.raises(ValueError, match="unknown reward component 'psnr2'"):
        C.jax_reward_scores(None, None, None, None, names=("psnr2",))
    with pytest.raises(ValueError, match="runs in the torch reward process"):
        C.jax_reward_scores(None, None, None, None, names=("lpips",))
    cfg.groups.gen.components.sharpness = 0.1
    with pytest.raises(ValueError, match="'sharpness'.*valid ones"):
        C.compose(JAX_RAW, REMOTE_RAW, cfg)
    cfg = C.default_reward_config()
    cfg.missing = "zero"
    with pytest.raises(ValueError, match="renormalise"):
        C.compose(JAX_RAW, REMOTE_RAW, cfg)
    with pytest.raises(ValueError, match="both from JAX and remotely"):
        C.compose(JAX_RAW, {"psnr": JAX_RAW["psnr"]}, C.default_reward_config())


def test_judge_every_k_steps():
    cfg = C.default_reward_config()
    cfg.judge_every = 3
    assert set(C.remote_components_for_step(cfg, 0)) == {"clip", "lpips", "aesthetic", "qwen"}
    assert set(C.remote_components_for_step(cfg, 1)) == {"clip", "lpips", "aesthetic"}
    cfg.judge_every = 0  # never: the judge is off, as with weight 0 (not loaded, not missing)
    assert "qwen" not in C.remote_components_for_step(cfg, 0)
    assert "qwen" not in C.active_components(cfg) and "qwen" not in C.remote_components(cfg)
    cfg.missing = "strict"
    total, parts = C.compose(JAX_RAW, {k: v for k, v in REMOTE_RAW.items() if k != "qwen"}, cfg)
    np.testing.assert_allclose(total, 0.6 * GEN + 0.3 * 0.6, atol=1e-6)
    assert "qwen" not in parts
    # A reward config without the field (written before it existed) asks the judge every step.
    legacy = C.default_reward_config()
    del legacy["judge_every"]
    assert "qwen" in C.active_components(legacy) and "qwen" in C.remote_components_for_step(legacy, 1)
