"""The rate heads' spectrum input (issue 16, item 2): :func:`irpo_jax.models.policy.spectrum_features`,
and its tiles, which make a whole image read what its training crops read (issue 23, item 2)."""

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


@pytest.mark.parametrize("tile", [0, 16])
def test_per_device_under_a_mesh(tile):
    """Batch-sharded over two devices, the FFT runs per device (no collective), same values;
    also with tiles (16-pixel tiles of a 32x48 image: a loop over rows of tiles)."""
    img = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 32, 48, 3)).astype(np.float32))
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    fn = jax.jit(policy.spectrum_features, static_argnums=1)
    with jax.set_mesh(mesh):
        sharded = jax.device_put(img, NamedSharding(mesh, P("data")))
        compiled = fn.lower(sharded, tile).compile()
        got = jax.block_until_ready(compiled(sharded))
    assert not [op for op in ("all-gather(", "all-to-all(", "collective-permute(") if op in compiled.as_text()]
    np.testing.assert_allclose(np.asarray(got), np.asarray(fn(img, tile)), rtol=1e-6, atol=1e-6)


def test_a_band_in_one_orientation_takes_the_next_bands_anisotropy():
    """At an aspect ratio of 2 or more the lowest bands hold bins of one orientation only (32x128:
    band 0 has just f_x = +-1/64 on f_y = 0, band 1 just f_x = +-1/32), so their anisotropy is
    undefined and copies the next band that has both, as the docstring says (the numpy
    transcription implements the rule bin by bin); their levels are their own."""
    img = np.random.default_rng(7).uniform(size=(2, 32, 128, 3)).astype(np.float32)
    img[1] = img[1] * np.linspace(0.1, 1, 128)[None, :, None]
    f_y, f_x = np.meshgrid(2 * np.fft.fftfreq(32), 2 * np.fft.fftfreq(128), indexing="ij")
    rho = np.hypot(f_x, f_y)
    for b, (lo, hi) in enumerate([(0, 1 / 64), (1 / 64, 1 / 32), (1 / 32, 1 / 16)]):
        sel = (rho > lo) & (rho <= hi + 1e-12)
        one_orientation = bool(np.all(np.abs(f_x[sel]) > np.abs(f_y[sel])))
        assert one_orientation == (b < 2), b  # bands 0 and 1 only: the case under test
    got = np.asarray(jax.jit(policy.spectrum_features)(jnp.asarray(img)))
    np.testing.assert_allclose(got, reference_features(img), rtol=0, atol=2e-4)
    np.testing.assert_array_equal(got[:, 8], got[:, 10])  # anisotropy 0 and 1 are band 2's
    np.testing.assert_array_equal(got[:, 9], got[:, 10])
    assert np.all(got[:, 0] != got[:, 1]) and np.all(got[:, 1] != got[:, 2])  # levels: their own


def test_tile_starts():
    """Every tile // 8 pixels, the last at the far border; one tile where the side is no longer."""
    assert policy.tile_starts(100, 0) == (0,) and policy.tile_starts(128, 128) == (0,)
    assert policy.tile_starts(64, 128) == (0,)
    assert policy.tile_starts(160, 128) == (0, 16, 32)
    assert policy.tile_starts(150, 128) == (0, 16, 22)
    for size, tile in ((200, 64), (720, 128), (1424, 128), (33, 32)):
        starts = policy.tile_starts(size, tile)
        assert starts[0] == 0 and starts[-1] == size - tile
        assert all(0 < b - a <= max(tile // 8, 1) for a, b in zip(starts, starts[1:]))


def test_tiled_features_are_the_mean_of_the_tiles_features():
    """A 72x104 image with 32-pixel tiles: the mean, feature by feature, of the numpy
    transcription on each 32x32 tile at every 4 pixels (offsets written out here), 10 x 18
    tiles; a 32x32 image (one tile) reads exactly what it read without tiles."""
    img = np.random.default_rng(8).uniform(size=(1, 72, 104, 3)).astype(np.float32)
    img = np.clip(img * 0.3 + np.linspace(0, 0.7, 104)[None, None, :, None], 0, 1)
    ys, xs = list(range(0, 41, 4)), list(range(0, 73, 4))  # 72 - 32 = 40, 104 - 32 = 72: no extra last
    tiles = np.concatenate([img[:, y : y + 32, x : x + 32] for y in ys for x in xs])
    expected = reference_features(tiles).mean(axis=0, keepdims=True)
    got = np.asarray(jax.jit(policy.spectrum_features, static_argnums=1)(jnp.asarray(img), 32))
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-4)
    crop = jnp.asarray(img[:, :32, :32])
    np.testing.assert_array_equal(
        np.asarray(policy.spectrum_features(crop, 32)), np.asarray(policy.spectrum_features(crop))
    )


def test_a_whole_photograph_reads_what_its_training_crops_read():
    """skimage's astronaut (512x512) whole, against the mean of 256 random 128x128 crops (the
    training pipeline's uniform offsets), in crop-to-crop standard deviations: with the default
    128-pixel tiles every feature within 0.3 (benchmarks/spectrum_shift.py: mean over 14 images
    <= 0.1, the crops' own noise floor up to 0.28); one periodogram of the whole image reads the
    lowest band more than one standard deviation high."""
    import skimage.data

    img = skimage.data.astronaut().astype(np.float32) / 255
    rng = np.random.default_rng(9)
    tops, lefts = rng.integers(0, 512 - 128 + 1, 256), rng.integers(0, 512 - 128 + 1, 256)
    crops = np.stack([img[t : t + 128, lf : lf + 128] for t, lf in zip(tops, lefts)])
    crop_features = np.asarray(jax.jit(policy.spectrum_features)(jnp.asarray(crops)))
    mean, std = crop_features.mean(axis=0), crop_features.std(axis=0, ddof=1)
    fn = jax.jit(policy.spectrum_features, static_argnums=1)
    tiled = (np.asarray(fn(jnp.asarray(img[None]), policy.PolicyConfig().spectrum_tile))[0] - mean) / std
    whole = (np.asarray(fn(jnp.asarray(img[None]), 0))[0] - mean) / std
    assert np.abs(tiled).max() < 0.3, tiled.round(2)
    assert whole[0] > 1.0, whole.round(2)


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
                    shapes.append(eqn.invars[0].aval.shape)  # noqa: B023 - called in this iteration
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
