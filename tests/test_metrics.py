"""irpo_jax.metrics against skimage.metrics on real photographs with synthetic degradations.

JAX computes in float32, skimage in float64 on the same (float32-representable) pixels, so the
tolerances measure the implementation, not the input rounding.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage import data
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from irpo_jax.metrics import psnr, ssim

PSNR_TOL_DB = 1e-3
SSIM_TOL = 1e-4

# Shared compiled functions: one compile per input shape for the whole file.
psnr_jit = jax.jit(psnr)
ssim_jit = jax.jit(ssim)


def _photo(name: str) -> np.ndarray:
    return getattr(data, name)().astype(np.float64) / 255.0  # (H, W, 3) in [0, 1]


def _degrade(clean: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "noise": np.clip(clean + rng.normal(0.0, 0.1, clean.shape), 0, 1),
        "blur": ndimage.gaussian_filter(clean, sigma=(1.5, 1.5, 0)),
        "bright": np.clip(clean + 0.2, 0, 1),
        "clip": np.clip((clean - 0.5) * 3 + 0.5, 0, 1),  # contrast stretch with saturation
        "dark": clean * 0.1,  # low-light-like
    }


def _sk(clean: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    a, b = clean.astype(np.float64), other.astype(np.float64)
    return (
        sk_psnr(a, b, data_range=1.0),
        sk_ssim(a, b, data_range=1.0, channel_axis=-1),
    )


@pytest.fixture(scope="module")
def pairs() -> tuple[list[str], np.ndarray, np.ndarray]:
    """15 (clean, degraded) float32 pairs, 96x128 crops of three photographs."""
    rng = np.random.default_rng(0)
    names, cleans, degs = [], [], []
    crops = {"astronaut": (40, 150), "chelsea": (60, 140), "coffee": (80, 200)}  # top-left
    for photo, (r0, c0) in crops.items():
        clean = _photo(photo)[r0 : r0 + 96, c0 : c0 + 128]
        for kind, deg in _degrade(clean, rng).items():
            names.append(f"{photo}/{kind}")
            cleans.append(clean)
            degs.append(deg)
    return names, np.stack(cleans).astype(np.float32), np.stack(degs).astype(np.float32)


def test_match_skimage_on_photographs(pairs):
    names, clean, deg = pairs
    p = np.asarray(psnr_jit(clean, deg))  # (15,)
    s = np.asarray(ssim_jit(clean, deg))
    assert p.shape == s.shape == (len(names),)
    ref = np.array([_sk(c, d) for c, d in zip(clean, deg)])  # (15, 2)
    dp, ds = np.abs(p - ref[:, 0]), np.abs(s - ref[:, 1])
    print(f"max |dPSNR| = {dp.max():.2e} dB, max |dSSIM| = {ds.max():.2e}")
    for i, name in enumerate(names):
        assert dp[i] < PSNR_TOL_DB, (name, p[i], ref[i, 0])
        assert ds[i] < SSIM_TOL, (name, s[i], ref[i, 1])
    # The degradations are not trivial: SSIM spans a real range.
    assert ref[:, 1].min() < 0.6 and ref[:, 1].max() > 0.8


def test_match_skimage_full_image_protocol():
    """A whole photograph centre-cropped to a multiple of 16, as in the evaluation protocol."""
    img = _photo("chelsea")  # (300, 451, 3)
    h, w = img.shape[0] // 16 * 16, img.shape[1] // 16 * 16
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    clean = img[top : top + h, left : left + w].astype(np.float32)
    noisy = np.clip(clean + np.random.default_rng(1).normal(0, 25 / 255, clean.shape), 0, 1)
    noisy = noisy.astype(np.float32)
    ref_p, ref_s = _sk(clean, noisy)
    assert abs(float(psnr(clean, noisy)) - ref_p) < PSNR_TOL_DB
    assert abs(float(ssim(clean, noisy)) - ref_s) < SSIM_TOL


def test_data_range_other_than_one(pairs):
    _, clean, deg = pairs
    c, d = clean[0] * 255, deg[0] * 255
    ref_p = sk_psnr(c.astype(np.float64), d.astype(np.float64), data_range=255)
    ref_s = sk_ssim(c.astype(np.float64), d.astype(np.float64), data_range=255, channel_axis=-1)
    assert abs(float(psnr(c, d, 255.0)) - ref_p) < PSNR_TOL_DB
    assert abs(float(ssim(c, d, 255.0)) - ref_s) < SSIM_TOL


def test_batched_equals_per_image_and_jit_equals_eager(pairs):
    _, clean, deg = pairs
    batch_jit_p = np.asarray(psnr_jit(clean, deg))
    batch_jit_s = np.asarray(ssim_jit(clean, deg))
    # Eager batched.
    np.testing.assert_allclose(np.asarray(psnr(clean, deg)), batch_jit_p, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ssim(clean, deg)), batch_jit_s, rtol=1e-6, atol=1e-7)
    # Per image (HWC -> scalar), eager.
    for i in (0, 7, 14):
        p_i, s_i = psnr(clean[i], deg[i]), ssim(clean[i], deg[i])
        assert p_i.shape == s_i.shape == ()
        np.testing.assert_allclose(float(p_i), batch_jit_p[i], rtol=1e-6)
        np.testing.assert_allclose(float(s_i), batch_jit_s[i], rtol=1e-6, atol=1e-7)


def test_identical_images(pairs):
    _, clean, _ = pairs
    x = clean[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # skimage: divide by zero -> inf
        assert np.isinf(sk_psnr(x[0].astype(np.float64), x[0].astype(np.float64), data_range=1))
    p = np.asarray(psnr_jit(x, x))
    assert np.all(np.isposinf(p))  # same as skimage
    np.testing.assert_allclose(np.asarray(ssim_jit(x, x)), 1.0, atol=1e-6)
    # eps caps the value (reward use): 10 log10(1 / 1e-10) = 100 dB.
    np.testing.assert_allclose(np.asarray(psnr(x, x, eps=1e-10)), 100.0, rtol=1e-6)


def test_gradients_finite_and_correct(pairs):
    _, clean, deg = pairs
    x, y = jnp.asarray(clean[:2]), jnp.asarray(deg[:2])

    @jax.jit
    def grads(x, y):
        g_p = jax.grad(lambda a: psnr(a, y).sum())(x)
        g_s = jax.grad(lambda a: ssim(a, y).sum())(x)
        g_p_same = jax.grad(lambda a: psnr(a, x).sum())(x)  # mse == 0: PSNR is inf here
        g_s_same = jax.grad(lambda a: ssim(a, x).sum())(x)
        return g_p, g_s, g_p_same, g_s_same

    g_p, g_s, g_p_same, g_s_same = (np.asarray(g) for g in grads(x, y))
    for g in (g_p, g_s, g_p_same, g_s_same):
        assert np.all(np.isfinite(g))
    assert np.all(g_p_same == 0)  # maximum of PSNR: zero (sub)gradient by design
    assert np.abs(g_s_same).max() < 1e-3  # SSIM is at its maximum too
    # Directional derivative vs a central finite difference (float32, so loose).
    v = jnp.asarray(np.random.default_rng(2).normal(size=x.shape).astype(np.float32))
    h = 1e-3
    for f, g in ((psnr, g_p), (ssim, g_s)):
        fd = (f(x + h * v, y).sum() - f(x - h * v, y).sum()) / (2 * h)
        np.testing.assert_allclose(float(fd), float(np.sum(g * np.asarray(v))), rtol=2e-2)


def test_smallest_image_is_the_window():
    """A 7x7 image has one window fully inside it: allowed, as in skimage (6 pixels are not)."""
    rng = np.random.default_rng(3)
    a, b = rng.uniform(size=(2, 7, 7, 3))
    want = sk_ssim(a, b, data_range=1.0, channel_axis=-1)
    assert float(ssim(a.astype(np.float32), b.astype(np.float32))) == pytest.approx(want, abs=SSIM_TOL)
    wide = rng.uniform(size=(7, 12, 3))
    assert float(ssim(wide.astype(np.float32), a[:, :1].repeat(12, 1).astype(np.float32))) == pytest.approx(
        sk_ssim(wide, a[:, :1].repeat(12, 1), data_range=1.0, channel_axis=-1), abs=SSIM_TOL)  # fmt: skip


def test_input_validation():
    x = np.zeros((8, 8, 3), np.float32)
    with pytest.raises(ValueError, match="same shape"):
        ssim(x, x[:7])
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(x[:6], x[:6])
    with pytest.raises(ValueError, match="HWC"):
        psnr(x[..., 0], x[..., 0])
