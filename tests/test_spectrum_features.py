"""The rate heads' spectrum input (issue 16, item 2): :func:`irpo_jax.models.policy.spectrum_features`."""

import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from irpo_jax.models import policy


def reference_features(img: np.ndarray) -> np.ndarray:
    """The docstring's definition in float64 numpy, bin by bin with radii (not squared radii)."""
    out = []
    for x in img.astype(np.float64):
        h, w, _ = x.shape
        luma = x @ np.asarray([0.299, 0.587, 0.114])
        power = h * w * np.abs(np.fft.fft2(luma) / (h * w)) ** 2
        f_y, f_x = np.meshgrid(2 * np.fft.fftfreq(h), 2 * np.fft.fftfreq(w), indexing="ij")
        rho = np.hypot(f_x, f_y)
        edges = [0, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1, math.sqrt(2)]
        centres = [2.0 ** (b - 6.5) for b in range(7)] + [2.0**0.25]
        weight_x = np.where(np.abs(f_x) > np.abs(f_y), 1.0, np.where(np.abs(f_x) == np.abs(f_y), 0.5, 0.0))
        level, aniso = [None] * 8, [None] * 8
        for b in range(7, -1, -1):
            sel = (rho > edges[b]) & (rho <= edges[b + 1] + 1e-12)
            wx, wy = weight_x[sel], 1 - weight_x[sel]
            if sel.any():
                level[b] = (math.log(power[sel].mean() + 1e-6) + 2 * math.log(centres[b]) + 6) / 2
            else:
                level[b] = level[b + 1]
            if wx.sum() > 0 and wy.sum() > 0:
                px = (power[sel] * wx).sum() / wx.sum()
                py = (power[sel] * wy).sum() / wy.sum()
                aniso[b] = (math.log(px + 1e-6) - math.log(py + 1e-6)) / 2
            else:
                aniso[b] = aniso[b + 1]
        dc = (math.log(luma.mean() ** 2 + 1e-6) - math.log(0.25)) / 2
        out.append(level + aniso + [dc])
    return np.asarray(out)


def test_features_against_numpy():
    """64x96 (every band has bins; non-square) and 32x32 (the lowest bin, rho = 1/16, is in band 2:
    bands 0 and 1 are empty and copy band 2)."""
    rng = np.random.default_rng(0)
    for shape in ((2, 64, 96, 3), (1, 32, 32, 3)):
        img = rng.uniform(size=shape).astype(np.float32)
        img[0] = np.clip(img[0] * 0.2 + np.linspace(0, 0.8, shape[2])[None, :, None], 0, 1)  # some structure
        got = np.asarray(jax.jit(policy.spectrum_features)(jnp.asarray(img)))
        assert got.shape == (shape[0], policy.SPECTRUM_FEATURES)
        np.testing.assert_allclose(got, reference_features(img), rtol=0, atol=2e-4)
    assert np.all(got[:, 0:2] == got[:, 2:3]) and np.all(got[:, 8:10] == got[:, 10:11])


def test_white_noise_reads_its_variance_at_every_size():
    """Grey white noise of std s: every band's mean power is s^2 (the periodogram is normalised),
    so the top band's level is (ln s^2 + 2 ln 2^0.25 + 6) / 2 at 128x128 and at 256x384 alike, and
    the noise is isotropic; a structured (not noise-like) image has other levels."""
    s = 0.1
    expected = (math.log(s**2) + 0.5 * math.log(2) + 6) / 2
    for h, w in ((128, 128), (256, 384)):
        noise = np.random.default_rng(h).normal(0.5, s, size=(1, h, w, 1)).astype(np.float32)
        got = np.asarray(policy.spectrum_features(jnp.asarray(np.repeat(noise, 3, axis=-1))))[0]
        assert abs(got[7] - expected) < 0.02, (h, w, got[7], expected)
        assert np.all(np.abs(got[8 + 4 : 16]) < 0.05), got[8:16]  # bands 4-7: thousands of bins each
        assert abs(got[16]) < 1e-3  # mean 0.5: the DC term is ln(0.5 / 0.5)


def test_transposing_the_image_negates_the_anisotropy():
    """Normalised frequencies per axis: swapping the axes swaps f_x and f_y, also for a
    non-square image, so the levels (and the DC) stay and the anisotropies change sign."""
    img = np.random.default_rng(1).uniform(size=(1, 64, 96, 3)).astype(np.float32)
    img = img * np.linspace(0.2, 1, 96)[None, None, :, None] ** 3  # stronger variation along x
    a = np.asarray(policy.spectrum_features(jnp.asarray(img)))
    b = np.asarray(policy.spectrum_features(jnp.asarray(img.transpose(0, 2, 1, 3))))
    np.testing.assert_allclose(b[:, :8], a[:, :8], atol=1e-5)
    np.testing.assert_allclose(b[:, 8:16], -a[:, 8:16], atol=1e-5)
    np.testing.assert_allclose(b[:, 16], a[:, 16], atol=1e-6)  # the DC
    assert np.abs(a[:, 8:16]).max() > 0.1


def test_per_device_under_a_mesh():
    """Batch-sharded over two devices, the FFT runs per device (no collective), same values."""
    img = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 32, 48, 3)).astype(np.float32))
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    fn = jax.jit(policy.spectrum_features)
    with jax.set_mesh(mesh):
        sharded = jax.device_put(img, NamedSharding(mesh, P("data")))
        compiled = fn.lower(sharded).compile()
        got = jax.block_until_ready(compiled(sharded))
    assert not [op for op in ("all-gather(", "all-to-all(", "collective-permute(") if op in compiled.as_text()]
    np.testing.assert_allclose(np.asarray(got), np.asarray(fn(img)), rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def pair():
    """The same seed with either rate input."""
    return tuple(policy.IRPOPolicy("tiny", {"rate_input": r}, rngs=nnx.Rngs(5)) for r in ("spectrum", "pooled"))


def test_spectrum_is_computed_once_per_image(pair):
    """In a sampled pass the image spectrum is one FFT of the (B, H, W) luminances, before the
    G-fold repeat; the other FFTs are the FreModules' band splits of (B*G, h, w, C) features."""
    spectral, pooled = pair
    img = jnp.zeros((2, 32, 32, 3))
    for model, luma_ffts in ((spectral, 1), (pooled, 0)):
        jaxpr = jax.make_jaxpr(lambda x, m=model: m.sample(x, jax.random.key(0), 4))(img)
        shapes = []

        def visit(jp):
            for eqn in jp.eqns:
                if eqn.primitive.name == "fft":
                    shapes.append(eqn.invars[0].aval.shape)
                for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                    visit(sub)

        visit(jaxpr.jaxpr)
        assert [s for s in shapes if len(s) == 3] == [(2, 32, 32)] * luma_ffts
        assert all(s[0] == 8 for s in shapes if len(s) == 4) and len(shapes) > luma_ffts


def test_spectrum_inputs_start_unread(pair):
    """The rate heads' new input rows start at zero and the others as the "pooled" head's, so
    the two heads agree on any input, also once the zero last layer has been trained."""
    spectral, pooled = pair
    rng = np.random.default_rng(6)
    for name in ("fre1", "fre2", "fre3"):
        a, b = spectral.heads[name].policy_rate, pooled.heads[name].policy_rate
        c = b.fc1.kernel.shape[0]
        np.testing.assert_array_equal(np.asarray(a.fc1.kernel[...][:c]), np.asarray(b.fc1.kernel[...]))
        assert not np.any(np.asarray(a.fc1.kernel[...][c:])) and a.fc1.kernel.shape[0] == c + 17
        trained = jnp.asarray(rng.normal(size=a.fc2.kernel.shape), jnp.float32)
        a.fc2.kernel[...], b.fc2.kernel[...] = trained, trained
        x = jnp.asarray(rng.normal(size=(3, c + 17)), jnp.float32)
        np.testing.assert_array_equal(np.asarray(a(x)), np.asarray(b(x[:, :c])))
        assert float(jnp.std(a(x)[..., 0])) > 0
