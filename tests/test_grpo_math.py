"""GRPO advantages and losses against numbers computed by hand (in the comments)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irpo_jax.grpo import advantages as adv
from irpo_jax.grpo import losses


def test_group_advantages_eq8():
    # mean 2.5, deviations -1.5 -.5 .5 1.5, population var (2.25+.25+.25+2.25)/4 = 1.25
    a = adv.group_advantages(jnp.asarray([[1.0, 2.0, 3.0, 4.0]]), eps=0.0)
    np.testing.assert_allclose(np.asarray(a), [[-1.5, -0.5, 0.5, 1.5]] / np.sqrt(1.25), rtol=1e-6)
    # eps sits inside the sqrt
    a = adv.group_advantages(jnp.asarray([[1.0, 2.0, 3.0, 4.0]]), eps=0.75)
    np.testing.assert_allclose(np.asarray(a), [[-1.5, -0.5, 0.5, 1.5]] / np.sqrt(2.0), rtol=1e-6)


def test_nan_rewards_are_excluded_and_get_zero_advantage():
    # valid 1, 3, 5: mean 3, deviations -2, 0, 2, var 8/3
    a = np.asarray(adv.group_advantages(jnp.asarray([[1.0, np.nan, 3.0, 5.0]]), eps=0.0))
    np.testing.assert_allclose(a, [[-2 / math.sqrt(8 / 3), 0.0, 0.0, 2 / math.sqrt(8 / 3)]], rtol=1e-6)


def test_zero_std_group_and_scales():
    r = jnp.asarray([[0.5, 0.5, 0.5, 0.5], [0.0, 1.0, 0.0, 1.0]])
    a = np.asarray(adv.group_advantages(r))
    np.testing.assert_array_equal(a[0], 0.0)
    np.testing.assert_allclose(a[1], [-1, 1, -1, 1], rtol=1e-6)  # std 0.5
    assert float(adv.frac_zero_std(r)) == 0.5
    # batch scope: all centred values (0 x4, +-0.5 x4) -> var 0.125
    b = np.asarray(adv.group_advantages(r, eps=0.0, scale="batch"))
    np.testing.assert_allclose(b[1], np.array([-0.5, 0.5, -0.5, 0.5]) / math.sqrt(0.125), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(adv.group_advantages(r, scale="none"))[1], [-0.5, 0.5, -0.5, 0.5])
    with pytest.raises(ValueError, match="scale"):
        adv.group_advantages(r, scale="global")


def test_normalize_then_sum():
    # component 1 spread 0.5 (+-1 after normalising), component 2 spread 0.05 (+-1 too)
    comps = jnp.asarray([[[0.0, 0.2], [1.0, 0.3]]])  # (B=1, G=2, K=2)
    a = np.asarray(adv.component_advantages(comps, jnp.asarray([0.25, 0.75]), eps=0.0))
    np.testing.assert_allclose(a, [[-1.0, 1.0]], rtol=1e-5)


def test_rl_loss_by_hand():
    # ratio = [1.5, 0.5], A = [1, -1], eps 0.2:
    #   surrogate = [min(1.5, 1.2), min(-0.5, -0.8)] = [1.2, -0.8] -> policy loss -(0.4)/2 = -0.2
    #   kl (Eq. 11, ref log-probs 0) = (1.5 ln 1.5 + 0.5 ln 0.5) / 2 = 0.1308120
    #   entropy mean 3 -> loss = -0.2 + 0.1 * 0.1308120 - 0.01 * 3 = -0.2169188
    logp = jnp.log(jnp.asarray([[1.5, 0.5]]))
    zeros = jnp.zeros((1, 2))
    loss, m = losses.rl_loss(
        logp, zeros, zeros, jnp.asarray([[1.0, -1.0]]), jnp.asarray([[2.0, 4.0]]),
        clip_eps=0.2, kl_coef=0.1, entropy_coef=0.01,
    )  # fmt: skip
    assert float(loss) == pytest.approx(-0.2169188, abs=1e-6)
    assert float(m["loss/policy"]) == pytest.approx(-0.2, abs=1e-6)
    assert float(m["grpo/kl_ref"]) == pytest.approx(0.1308120, abs=1e-6)
    assert float(m["grpo/clipfrac"]) == 1.0
    # k3: (r - 1) - ln r -> ((0.5 - ln 1.5) + (-0.5 - ln 0.5)) / 2 = 0.1438410
    assert float(m["grpo/approx_kl"]) == pytest.approx(0.1438410, abs=1e-6)


def test_one_policy_iteration_is_reinforce_with_a_group_baseline():
    """old == current log-probs: ratio 1, nothing clipped, gradient -A / (B G) per log-prob."""
    logp = jnp.asarray([[-1.0, -2.0, -0.5, -3.0]])
    a = adv.group_advantages(jnp.asarray([[0.1, 0.4, 0.2, 0.9]]))

    def f(lp):
        loss, m = losses.rl_loss(
            lp, jax.lax.stop_gradient(lp), lp, a, jnp.zeros_like(lp),
            clip_eps=0.2, kl_coef=0.0, entropy_coef=0.0,
        )  # fmt: skip
        return loss, m

    grad, m = jax.grad(f, has_aux=True)(logp)
    assert float(m["grpo/ratio_mean"]) == 1.0 and float(m["grpo/clipfrac"]) == 0.0
    np.testing.assert_allclose(np.asarray(grad), -np.asarray(a) / 4, rtol=1e-6)


def test_analytic_kl_option():
    z = jnp.zeros((1, 2))
    loss, m = losses.rl_loss(
        z, z, z, z, z, clip_eps=0.2, kl_coef=1.0, entropy_coef=0.0,
        kl_estimator="analytic", kl_analytic=jnp.asarray([[0.3, 0.1]]),
    )  # fmt: skip
    assert float(m["grpo/kl_ref"]) == pytest.approx(0.2) and float(loss) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="kl_analytic"):
        losses.rl_loss(z, z, z, z, z, clip_eps=0.2, kl_coef=1.0, entropy_coef=0.0, kl_estimator="analytic")


def test_supervision_losses_pick_the_best_rollout():
    restored = jnp.stack([jnp.full((2, 2, 3), 0.2), jnp.full((2, 2, 3), 0.6)])[None]  # (1, 2, 2, 2, 3)
    clean, y_det = jnp.full((1, 2, 2, 3), 0.5), jnp.full((1, 2, 2, 3), 0.4)
    sup, cons = losses.supervision_losses(restored, y_det, clean, jnp.asarray([[0.1, 0.9]]))
    assert float(sup) == pytest.approx(0.1) and float(cons) == pytest.approx(0.2)
    # A NaN reward is never the best.
    sup, _ = losses.supervision_losses(restored, y_det, clean, jnp.asarray([[0.1, np.nan]]))
    assert float(sup) == pytest.approx(0.3)


def test_images_without_a_scored_rollout_are_left_out_of_the_supervision_losses():
    rng = np.random.default_rng(0)
    restored = jnp.asarray(rng.uniform(size=(3, 2, 4, 4, 3)), jnp.float32)
    clean, y_det = (jnp.asarray(rng.uniform(size=(3, 4, 4, 3)), jnp.float32) for _ in range(2))
    rewards = jnp.asarray([[0.1, 0.9], [np.nan, np.nan], [0.5, 0.2]])  # image 1: nothing scored
    scored = jnp.any(~jnp.isnan(rewards), axis=1)
    sup, cons = losses.supervision_losses(restored, y_det, clean, rewards, scored=scored)
    # By hand over images 0 (best rollout 1) and 2 (best rollout 0) only.
    best = np.stack([np.asarray(restored)[0, 1], np.asarray(restored)[2, 0]])
    keep = np.asarray([0, 2])
    assert float(sup) == pytest.approx(np.mean(np.abs(best - np.asarray(clean)[keep])), rel=1e-6)
    assert float(cons) == pytest.approx(np.mean(np.abs(best - np.asarray(y_det)[keep])), rel=1e-6)
    # All scored: the plain means. Nothing scored: 0, not NaN.
    all_scored = losses.supervision_losses(restored, y_det, clean, rewards.at[1].set(0.0), scored=jnp.ones(3, bool))
    plain = losses.supervision_losses(restored, y_det, clean, rewards.at[1].set(0.0))
    np.testing.assert_allclose(all_scored, plain, rtol=1e-6)
    none = losses.supervision_losses(restored, y_det, clean, rewards, scored=jnp.zeros(3, bool))
    assert float(none[0]) == 0.0 and float(none[1]) == 0.0


def test_linear_annealing():
    assert float(losses.linear_anneal(0.35, 0.1, 0, 11)) == pytest.approx(0.35)
    assert float(losses.linear_anneal(0.35, 0.1, 5, 11)) == pytest.approx(0.225)
    assert float(losses.linear_anneal(0.2, 0.05, 10, 11)) == pytest.approx(0.05)
    assert float(losses.linear_anneal(0.2, 0.05, 99, 11)) == pytest.approx(0.05)


def test_clipfrac_counts_only_the_clips_that_are_active_for_the_advantages_sign():
    """TRL's ``clip_ratio/region_mean``: a term counts when min() takes its clipped side, i.e.
    rho > 1 + eps with A > 0 or rho < 1 - eps with A < 0. Outside the range on the other side
    (rho 1.5 with A < 0, rho 0.5 with A > 0) min() takes rho * A, whose gradient flows: not
    clipped. By hand: ratios [1.5, 1.5, 0.5, 0.5, 1.1], A [1, -1, -1, 1, 1] -> 2 of 5 clipped."""
    ratio = jnp.asarray([[1.5, 1.5, 0.5, 0.5, 1.1]])
    a = jnp.asarray([[1.0, -1.0, -1.0, 1.0, 1.0]])
    z = jnp.zeros_like(ratio)

    def policy_loss(lp):
        return losses.rl_loss(lp, z, z, a, z, clip_eps=0.2, kl_coef=0.0, entropy_coef=0.0)

    (loss, m), grad = jax.value_and_grad(policy_loss, has_aux=True)(jnp.log(ratio))
    assert float(m["grpo/clipfrac"]) == pytest.approx(0.4)
    # The counted terms are exactly those without gradient: -d/dlp mean(rho A) = -rho A / 5 elsewhere.
    np.testing.assert_allclose(np.asarray(grad), [[0.0, 1.5 / 5, 0.0, -0.5 / 5, -1.1 / 5]], rtol=1e-6)
    # surrogate = [1.2, -1.5, -0.8, 0.5, 1.1] -> loss -(0.5) / 5
    assert float(loss) == pytest.approx(-0.1, abs=1e-6)


def test_batch_scale_counts_only_the_scored_rollouts():
    # Group 0: valid 1, 3, 5 (mean 3) -> centred -2, 0, 2; group 1: valid 2, 2, 4 (mean 8/3) ->
    # -2/3, -2/3, 4/3. Pooled over the 6 scored rollouts (not the 8 slots):
    # var = (4 + 0 + 4 + 4/9 + 4/9 + 16/9) / 6 = (32/3) / 6 = 16/9, std 4/3.
    r = jnp.asarray([[1.0, np.nan, 3.0, 5.0], [2.0, 2.0, np.nan, 4.0]])
    a = np.asarray(adv.group_advantages(r, eps=0.0, scale="batch"))
    centred = np.asarray([[-2.0, 0.0, 0.0, 2.0], [-2 / 3, -2 / 3, 0.0, 4 / 3]])
    np.testing.assert_allclose(a, centred / (4 / 3), rtol=1e-6)
    # eps inside the square root here too
    a = np.asarray(adv.group_advantages(r, eps=0.2, scale="batch"))
    np.testing.assert_allclose(a, centred / math.sqrt(16 / 9 + 0.2), rtol=1e-6)


def test_within_group_correlation_against_numpy():
    """The mean over groups of Pearson's r (numpy's corrcoef), leaving out groups with a NaN or
    no spread in either argument; NaN when none is left."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    b[1] = 2 * a[1] + 1  # r = 1
    a[2, 0] = np.nan  # left out
    b[3] = 0.5  # no spread: left out
    a[4] = -a[5]
    b[4] = b[5]
    expected = np.mean([np.corrcoef(a[i], b[i])[0, 1] for i in (0, 1, 4, 5)])
    got = float(adv.within_group_correlation(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
    assert got == pytest.approx(expected, abs=1e-6)
    assert math.isnan(float(adv.within_group_correlation(jnp.ones((2, 4)), jnp.asarray(rng.normal(size=(2, 4))))))
