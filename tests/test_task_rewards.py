"""Task-aware rewards (IRPO Appendix B.3) against hand-computed numbers.

Expected values are derived by hand in the comments (grey ramps, constant colours), or, for
random tiny images, by a float64 numpy reference written here from the paper's formulas with
explicit loops over the 3x3 Sobel kernels — independent of the shifted-slice implementation.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from irpo_jax.rewards import (
    TASK_REWARDS,
    r_aniso,
    r_color,
    r_contrast,
    r_exp,
    r_grad,
    r_lowlight,
    r_sharp,
    task_reward,
    task_reward_by_id,
)
from irpo_jax.tasks import TASKS

EPS = 1e-6
KX = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)  # along width
KY = KX.T  # along height


# ----------------------------------------------------------------------------------------------
# Independent float64 reference (one image, HWC).


def _ref_luma(img):
    return 0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]


def _ref_sobel(y):
    h, w = y.shape
    gx = np.zeros((h - 2, w - 2))
    gy = np.zeros((h - 2, w - 2))
    for i in range(1, h - 1):
        for j in range(1, w - 1):
            for a in range(3):
                for b in range(3):
                    gx[i - 1, j - 1] += KX[a, b] * y[i + a - 1, j + b - 1]
                    gy[i - 1, j - 1] += KY[a, b] * y[i + a - 1, j + b - 1]
    return gx, gy


def _ref_mag(y):
    gx, gy = _ref_sobel(y)
    return np.sqrt(gx**2 + gy**2 + 1e-12)


def _clip(t):
    return min(max(t, 0.0), 1.0)


def _ref_all(rest, gt):
    """The five rewards for one (restored, clean) pair, in TASKS order."""
    yr, yg = _ref_luma(rest), _ref_luma(gt)
    mr, mg = _ref_mag(yr), _ref_mag(yg)
    grad = _clip(1 - np.mean(np.abs(mr - mg)) / (np.mean(mg) + EPS))
    gx, gy = _ref_sobel(yr)
    ex, ey = np.mean(np.abs(gx)), np.mean(np.abs(gy))
    aniso = 1 - _clip(abs(ex - ey) / max(ex + ey, EPS))
    cr, cg = np.std(yr), np.std(yg)
    contrast = _clip(min(cr / (cg + EPS), cg / (cr + EPS)))
    sr, sg = np.mean(mr), np.mean(mg)
    sharp = _clip(min(sr / (sg + EPS), sg / (sr + EPS)))
    r_e = _clip(1 - abs(yr.mean() - yg.mean()) / 0.5)
    r_c = _clip(1 - sum(abs(rest[..., c].mean() - gt[..., c].mean()) for c in range(3)) / 0.6)
    return np.array([grad, aniso, contrast, sharp, 0.2 * r_e + 0.1 * r_c])


# ----------------------------------------------------------------------------------------------
# Shared compiled functions.


@jax.jit
def _all_rewards(restored, clean):
    return jnp.stack([TASK_REWARDS[t](restored, clean) for t in TASKS], axis=-1)  # (B, 5)


_by_id = jax.jit(task_reward_by_id)


@jax.jit
def _all_grads(restored, clean):
    return [jax.grad(lambda r, t=t: TASK_REWARDS[t](r, clean).sum())(restored) for t in TASKS]


def _grey(y):
    """A grey RGB batch of one image from a 2-D luminance (R = G = B, so Y equals it)."""
    y = np.asarray(y, np.float32)
    return np.repeat(y[None, :, :, None], 3, axis=-1)  # (1, H, W, 3)


def _const(rgb, h=4, w=4):
    return np.broadcast_to(np.asarray(rgb, np.float32), (1, h, w, 3)).copy()


# ----------------------------------------------------------------------------------------------
# Hand-computed values.


def test_luminance_weights_on_primaries():
    # A pure-red image vs black: mu(Y) = 0.299, so R_exp = 1 - 0.299 / 0.5 = 0.402; the channel
    # deviations are (1, 0, 0), so R_color = clip(1 - 1 / 0.6) = 0.
    red, black = _const((1, 0, 0)), _const((0, 0, 0))
    np.testing.assert_allclose(r_exp(red, black), [0.402], rtol=1e-6)
    np.testing.assert_allclose(r_color(red, black), [0.0])
    green = _const((0, 1, 0))  # mu(Y) = 0.587 > 0.5: R_exp clips to 0
    np.testing.assert_allclose(r_exp(green, black), [0.0])
    blue = _const((0, 0, 1))  # 1 - 0.114 / 0.5 = 0.772
    np.testing.assert_allclose(r_exp(blue, black), [0.772], rtol=1e-6)


def test_ramps_sobel_denoise_deblur():
    # Grey ramp Y[i, j] = a * j on 4x4: every interior Sobel G_x = (1 + 2 + 1) * 2a = 8a, G_y = 0.
    j = np.arange(4.0)
    ramp = lambda a: _grey(np.tile(a * j, (4, 1)))  # noqa: E731
    clean, restored = ramp(0.1), ramp(0.08)  # M_g = 0.8, M_rest = 0.64 (plus the 1e-12)
    m_g, m_r = math.sqrt(0.64 + 1e-12), math.sqrt(0.4096 + 1e-12)
    # Denoise: B = 0.8, D = 0.16 -> 1 - 0.16 / (0.8 + 1e-6) ~ 0.8.
    np.testing.assert_allclose(r_grad(restored, clean), [1 - (m_g - m_r) / (m_g + EPS)], rtol=1e-5)
    # Deblur: min(0.64 / 0.800001, 0.8 / 0.640001) = 0.799999.
    np.testing.assert_allclose(r_sharp(restored, clean), [m_r / (m_g + EPS)], rtol=1e-5)
    # Over-sharpened restoration (slope 0.2, M = 1.6): denoise D = 0.8 -> 1 - 0.8/0.8 = 0 (clip);
    # deblur min(1.6 / 0.8, 0.8 / 1.6) = 0.5.
    np.testing.assert_allclose(r_grad(ramp(0.2), clean), [0.0], atol=2e-6)
    np.testing.assert_allclose(r_sharp(ramp(0.2), clean), [0.5], rtol=1e-5)


def test_derain_anisotropy():
    i, j = np.meshgrid(np.arange(5.0), np.arange(5.0), indexing="ij")
    a = 0.05
    # Horizontal ramp: E_x = 8a, E_y = 0 -> A = 1 -> reward 0.
    np.testing.assert_allclose(r_aniso(_grey(a * j)), [0.0], atol=1e-6)
    # Diagonal ramp: E_x = E_y = 8a -> A = 0 -> reward 1.
    np.testing.assert_allclose(r_aniso(_grey(a * (i + j))), [1.0], atol=1e-6)
    # Y = a j + 2a i: E_x = 8a, E_y = 16a -> A = 8 / 24 -> reward 2/3.
    np.testing.assert_allclose(r_aniso(_grey(a * j + 2 * a * i)), [2 / 3], rtol=1e-5)
    # A vertical edge (rain-streak-like), columns [0, 0, 1, 1, 1]: G_x = 4 * (Y[j+1] - Y[j-1])
    # = 4, 4, 0 on interior columns 1..3, so E_x = 8/3 and E_y = 0 -> A = 1 -> reward 0.
    step = _grey(np.tile([0.0, 0.0, 1.0, 1.0, 1.0], (5, 1)))
    np.testing.assert_allclose(r_aniso(step), [0.0], atol=1e-6)
    # The clean argument is ignored.
    np.testing.assert_array_equal(r_aniso(step, np.zeros_like(step)), r_aniso(step))


def test_dehaze_contrast():
    # Clean: half the pixels 0.2, half 0.6 -> std 0.2. Restored: 0.3 / 0.5 -> std 0.1.
    # R = min(0.1 / (0.2 + 1e-6), 0.2 / (0.1 + 1e-6)) = 0.1 / 0.200001.
    clean = _grey(np.array([[0.2] * 4] * 2 + [[0.6] * 4] * 2))
    restored = _grey(np.array([[0.3] * 4] * 2 + [[0.5] * 4] * 2))
    np.testing.assert_allclose(r_contrast(restored, clean), [0.1 / 0.200001], rtol=1e-5)
    # Symmetric: swapping the roles gives the same value.
    np.testing.assert_allclose(r_contrast(clean, restored), [0.1 / 0.200001], rtol=1e-5)


def test_lowlight_exposure_and_colour():
    # Restored (0.1, 0.2, 0.3): Y = 0.0299 + 0.1174 + 0.0342 = 0.1815.
    # Clean (0.4, 0.5, 0.2):    Y = 0.1196 + 0.2935 + 0.0228 = 0.4359.
    # R_exp = 1 - 0.2544 / 0.5 = 0.4912; d_c = 0.3 + 0.3 + 0.1 = 0.7 > 0.6 -> R_color = 0.
    r, c = _const((0.1, 0.2, 0.3)), _const((0.4, 0.5, 0.2))
    np.testing.assert_allclose(r_exp(r, c), [0.4912], rtol=1e-5)
    np.testing.assert_allclose(r_color(r, c), [0.0], atol=1e-7)
    np.testing.assert_allclose(r_lowlight(r, c), [0.2 * 0.4912], rtol=1e-5)
    # Restored grey 0.3 (Y = 0.3) vs clean (0.35, 0.3, 0.25): Y = 0.10465 + 0.1761 + 0.0285
    # = 0.30925 -> R_exp = 1 - 0.00925 / 0.5 = 0.9815; d_c = 0.1 -> R_color = 1 - 1/6.
    r, c = _const((0.3, 0.3, 0.3)), _const((0.35, 0.3, 0.25))
    np.testing.assert_allclose(r_lowlight(r, c), [0.2 * 0.9815 + 0.1 * (5 / 6)], rtol=1e-5)


def test_edge_cases_flat_and_black():
    """Flat / black images give finite, documented values (see task.py's docstring)."""
    black, grey, white = (_const((v, v, v), 5, 5) for v in (0.0, 0.5, 1.0))
    textured = _grey(np.random.default_rng(0).uniform(size=(5, 5)))
    # Flat vs same flat: grad 1 (D = 0), aniso 1 (A = 0), contrast 0 (both std 0: both ratios 0),
    # sharp 0.5 (S = sqrt(1e-12) = 1e-6 on both sides: 1e-6 / 2e-6), lowlight 0.3.
    for flat in (black, grey, white):
        np.testing.assert_allclose(_all_rewards(flat, flat)[0], [1, 1, 0, 0.5, 0.3], rtol=1e-5)
    # Black restored vs textured clean (and the reverse): everything finite and in range.
    for r, c in ((black, textured), (textured, black), (grey, black)):
        out = np.asarray(_all_rewards(r, c))[0]
        ref = _ref_all(r[0].astype(np.float64), c[0].astype(np.float64))
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    # Black vs textured by hand: aniso of a flat image is 1, contrast 0 (C_rest = 0).
    out = np.asarray(_all_rewards(black, textured))[0]
    assert out[1] == 1 and out[2] == 0
    # Grey 0.5 vs black: exposure d = 0.5 -> 0; colour d_c = 1.5 -> 0; lowlight 0.
    np.testing.assert_allclose(np.asarray(_all_rewards(grey, black))[0, 4], 0.0, atol=1e-6)


def test_random_tiny_images_match_reference():
    rng = np.random.default_rng(1)
    # Non-square 6x7 catches a swapped height/width; smooth + noisy content keeps values unclipped.
    base = rng.uniform(0.2, 0.8, size=(4, 6, 7, 3))
    restored = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1).astype(np.float32)
    clean = base.astype(np.float32)
    out = np.asarray(_all_rewards(restored, clean))  # (4, 5)
    pairs = zip(restored.astype(np.float64), clean.astype(np.float64))
    ref = np.stack([_ref_all(r, c) for r, c in pairs])  # (4, 5)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6)
    assert np.all((ref > 0) & (ref < 1))  # the comparison exercised the unclipped branch


# ----------------------------------------------------------------------------------------------
# Dispatch, jit, gradients.


def test_task_reward_by_name_and_errors():
    rng = np.random.default_rng(2)
    r = rng.uniform(size=(2, 5, 5, 3)).astype(np.float32)
    c = rng.uniform(size=(2, 5, 5, 3)).astype(np.float32)
    all_r = np.asarray(_all_rewards(r, c))
    for k, task in enumerate(TASKS):
        np.testing.assert_allclose(task_reward(task, r, c), all_r[:, k], rtol=1e-6)
    with pytest.raises(ValueError, match="denoise, derain, dehaze, deblur, lowlight"):
        task_reward("desnow", r, c)
    with pytest.raises(ValueError, match="NHWC"):
        task_reward("denoise", r[0], c[0])
    with pytest.raises(ValueError, match="differ"):
        task_reward("denoise", r, c[:, :4])
    assert TASKS == ("denoise", "derain", "dehaze", "deblur", "lowlight")


def test_by_id_matches_per_task_calls_under_jit():
    rng = np.random.default_rng(3)
    r = rng.uniform(size=(10, 6, 6, 3)).astype(np.float32)
    c = rng.uniform(size=(10, 6, 6, 3)).astype(np.float32)
    ids = np.array([0, 1, 2, 3, 4, 4, 3, 2, 1, 0], np.int32)
    got = np.asarray(_by_id(ids, r, c))
    per_task = np.stack([np.asarray(task_reward(t, r, c)) for t in TASKS])  # (5, B), eager
    want = per_task[ids, np.arange(len(ids))]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # Eager equals jit.
    np.testing.assert_allclose(np.asarray(task_reward_by_id(ids, r, c)), got, rtol=1e-6)
    # Out-of-range ids are NaN (a failed component), the rest untouched.
    bad = np.array([0, -1, 2, 5, 4, 4, 3, 2, 1, 0], np.int32)
    got_bad = np.asarray(_by_id(bad, r, c))
    assert np.isnan(got_bad[1]) and np.isnan(got_bad[3])
    keep = [0, 2, 4, 5, 6, 7, 8, 9]
    np.testing.assert_allclose(got_bad[keep], got[keep], rtol=1e-6)


def test_gradients_finite():
    rng = np.random.default_rng(4)
    textured = rng.uniform(size=(1, 6, 6, 3)).astype(np.float32)
    black, grey = np.zeros_like(textured), np.full_like(textured, 0.5)
    restored = np.concatenate([textured, black, grey, black, textured * 0.5])  # (5, 6, 6, 3)
    clean = np.concatenate([textured[:, ::-1], black, grey, textured, textured])
    grads = _all_grads(restored, clean)
    for task, g in zip(TASKS, grads):
        assert g.shape == restored.shape
        assert np.all(np.isfinite(np.asarray(g))), task
    # The by-id path is differentiable too.
    ids = jnp.arange(5)
    g = jax.jit(jax.grad(lambda r: task_reward_by_id(ids, r, clean).sum()))(restored)
    assert np.all(np.isfinite(np.asarray(g)))


def test_behaviour_on_a_photograph():
    """Sanity on a real 64x64 crop: identity scores top marks, each degradation is penalised."""
    clean = (data.astronaut()[100:164, 180:244] / 255.0).astype(np.float32)[None]  # (1, 64, 64, 3)
    rng = np.random.default_rng(5)
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    hazy = (0.5 * clean + 0.4).astype(np.float32)  # affine: luminance std exactly halved
    blurred = ndimage.gaussian_filter(clean, sigma=(0, 1.5, 1.5, 0)).astype(np.float32)
    ident = np.asarray(_all_rewards(clean, clean))[0]
    np.testing.assert_allclose(ident[[0, 2, 3, 4]], [1.0, 1.0, 1.0, 0.3], atol=1e-4)
    assert np.asarray(r_grad(noisy, clean))[0] < 0.5  # noise inflates gradients
    np.testing.assert_allclose(r_contrast(hazy, clean), [0.5], atol=1e-4)
    assert np.asarray(r_sharp(blurred, clean))[0] < 0.7  # blur lowers mean |grad| (0.64 here)
