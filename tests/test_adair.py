"""The Flax AdaIR against the golden outputs of the official PyTorch model (no torch needed).

The fixture weights are read from ``state_dict.npz``, a numpy copy of ``state_dict.pth`` made by
``tests/fixtures/make_npz.py`` (so this file runs without torch); ``test_checkpoint_io`` checks
that the copy equals the ``.pth``.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from irpo_jax.models import adair, convert, layers

OUTPUT_ATOL = 1e-4
INTERMEDIATE_ATOL = 1e-5


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def weights(tiny_dir):
    with np.load(tiny_dir / "state_dict.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def model(weights):
    return convert.from_state_dict(weights)


@jax.jit
def _forward(graphdef, state, x):
    inter = {}
    out = nnx.merge(graphdef, state)(x, intermediates=inter)
    return out, inter


def run(model, x):
    graphdef, state = nnx.split(model)
    with jax.default_matmul_precision("highest"):
        return jax.block_until_ready(_forward(graphdef, state, jnp.asarray(x)))


@pytest.fixture(scope="module")
def main_case(model, tiny_dir):
    return run(model, nhwc(np.load(tiny_dir / "input.npy")))


def test_config_inferred_from_fixture(weights, tiny_dir):
    expected = json.loads((tiny_dir / "config.json").read_text())["config"]
    cfg = convert.infer_config(weights)
    for key, value in expected.items():
        got = getattr(cfg, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    assert cfg == adair.VARIANTS["tiny"]


def test_output_matches_pytorch(main_case, tiny_dir):
    out, _ = main_case
    ref = nhwc(np.load(tiny_dir / "output.npy"))
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=OUTPUT_ATOL)


INTERMEDIATES = [
    "encoder_level1_0", "latent", "decoder_level3", "decoder_level2", "fre1", "fre2", "fre3",
    *[f"fre{i}_{s}" for i in (1, 2, 3) for s in ("high", "cross_l", "cross_h", "refine", "cross_agg")],
]  # fmt: skip


@pytest.mark.parametrize("name", INTERMEDIATES)
def test_intermediates_match_pytorch(main_case, tiny_dir, name):
    _, inter = main_case
    ref = nhwc(np.load(tiny_dir / f"{name}.npy"))
    np.testing.assert_allclose(np.asarray(inter[name]), ref, rtol=0, atol=INTERMEDIATE_ATOL)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rate_logits_and_empty_mask(main_case, tiny_dir, k):
    _, inter = main_case
    ref = np.load(tiny_dir / f"fre{k}_rate_logits.npy").reshape(1, 2)
    np.testing.assert_allclose(np.asarray(inter[f"fre{k}_rate_logits"]), ref, rtol=0, atol=INTERMEDIATE_ATOL)
    # 64x64 input: every mask is empty, so the low band is exactly zero.
    assert not np.any(np.asarray(inter[f"fre{k}_low"]))


def test_mask_case(weights, tiny_dir):
    """One overridden tensor saturates fre3's sigmoid: a 2x2 low-pass block at rows/cols 63-64."""
    w = dict(weights)
    w["fre3.rate_conv.2.weight"] = np.load(tiny_dir / "mask_fre3_rate_conv_2_weight.npy")
    x = np.load(tiny_dir / "mask_input_u8.npy").astype(np.float32) / np.float32(255)
    out, inter = run(convert.from_state_dict(w), nhwc(x))
    np.testing.assert_allclose(np.asarray(out), nhwc(np.load(tiny_dir / "mask_output.npy")), rtol=0, atol=OUTPUT_ATOL)
    for band in ("low", "high"):
        ref = nhwc(np.load(tiny_dir / f"mask_fre3_{band}_c0.npy"))
        np.testing.assert_allclose(np.asarray(inter[f"fre3_{band}"])[..., :1], ref, rtol=0, atol=INTERMEDIATE_ATOL)
    assert np.asarray(inter["fre3_low"]).max() > 0.5


def test_float64_forward(weights, tiny_dir):
    with jax.enable_x64(True):
        model = convert.from_state_dict(weights)
        graphdef, state = nnx.split(model)
        state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state)
        x = jnp.asarray(nhwc(np.load(tiny_dir / "input.npy")), jnp.float64)
        out = jax.jit(lambda g, s, x: nnx.merge(g, s)(x))(graphdef, state, x)
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(out), nhwc(np.load(tiny_dir / "output_f64.npy")), rtol=0, atol=1e-10)


def test_base_variant_keys_and_parameter_count(fixtures_dir):
    expected = {}
    for line in (fixtures_dir / "adair_default_state_dict_keys.txt").read_text().splitlines():
        key, shape = line.split("\t")
        expected[key] = tuple(json.loads(shape))
    keys = convert.official_keys("base")
    assert list(keys) == list(expected)  # same keys, same (registration) order
    assert keys == expected
    assert sum(int(np.prod(s)) for s in keys.values()) == 28_784_824
    abstract = nnx.eval_shape(lambda: adair.AdaIR("base"))
    assert adair.count_params(abstract) == 28_784_824


def test_state_dict_round_trip_is_bit_exact(model, weights):
    back = convert.state_dict(model)
    assert list(back) == list(weights)
    for key, value in weights.items():
        assert back[key].dtype == np.float32
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_conv_implementations_agree(model, tiny_dir):
    x = jnp.asarray(nhwc(np.load(tiny_dir / "input.npy")))
    graphdef, state = nnx.split(model)
    outs = {}
    for impl in ("rewrite", "xla"):
        # The choice is made at trace time, so each implementation gets its own jit.
        with layers.conv_implementation(impl), jax.default_matmul_precision("highest"):
            outs[impl] = np.asarray(jax.jit(lambda g, s, x: nnx.merge(g, s)(x))(graphdef, state, x))
    np.testing.assert_allclose(outs["rewrite"], outs["xla"], rtol=0, atol=1e-5)


def test_conv_implementations_have_the_same_gradients(model, tiny_dir):
    """The rewrites' hand-written depthwise backward and 2-D 1x1 GEMMs against autodiff of XLA's
    convolutions: gradients w.r.t. every parameter and the input."""
    x = jnp.asarray(nhwc(np.load(tiny_dir / "input.npy")))
    target = jnp.asarray(np.random.default_rng(0).uniform(size=x.shape).astype(np.float32))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, img):
        return jnp.mean(jnp.abs(nnx.merge(graphdef, p, rest)(img) - target))

    grads = {}
    for impl in ("rewrite", "xla"):
        with layers.conv_implementation(impl), jax.default_matmul_precision("highest"):
            grads[impl] = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    flat = {impl: jax.tree_util.tree_leaves_with_path(g) for impl, g in grads.items()}
    assert len(flat["rewrite"]) > 100
    for (path, a), (_, b) in zip(flat["rewrite"], flat["xla"], strict=True):
        scale = float(jnp.max(jnp.abs(b))) + 1e-12
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 * scale + 1e-9, jax.tree_util.keystr(path)


def test_rejects_sides_not_multiple_of_8(model):
    with pytest.raises(ValueError, match=r"multiples of 8.*60x64"):
        model(jnp.zeros((1, 60, 64, 3)))
    with pytest.raises(ValueError, match="NHWC"):
        model(jnp.zeros((60, 64, 3)))


def test_gradients_are_finite_with_empty_mask(weights):
    """channel_cross_h's query is exactly 0 with an empty mask; a naive L2 norm gives NaN grads."""
    model = convert.from_state_dict(weights)
    graphdef, params = nnx.split(model, nnx.Param)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(1, 32, 32, 3)).astype(np.float32))

    def loss(p):
        return jnp.mean(jnp.abs(nnx.merge(graphdef, p)(x) - x))

    grads = jax.jit(jax.grad(loss))(params)
    flat = nnx.to_flat_state(grads)
    assert all(bool(jnp.all(jnp.isfinite(v[...]))) for _, v in flat)
    by_key = {".".join(map(str, k)): v[...] for k, v in flat}
    assert float(jnp.abs(by_key["fre3.channel_cross_h.q.kernel"]).max()) == 0.0  # dead, as in PyTorch
    assert float(jnp.abs(by_key["fre3.channel_cross_l.q.kernel"]).max()) > 0.0


# ----------------------------------------------------------------------------- layer-level checks


def test_pixel_unshuffle_matches_index_formula():
    x = np.random.default_rng(1).normal(size=(2, 4, 6, 3)).astype(np.float32)
    out = np.asarray(layers.pixel_unshuffle(jnp.asarray(x)))
    b, h, w, c = x.shape
    ref = np.empty((b, h // 2, w // 2, 4 * c), np.float32)
    for ch in range(c):
        for i in range(2):
            for j in range(2):
                ref[..., 4 * ch + 2 * i + j] = x[:, i::2, j::2, ch]
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(np.asarray(layers.pixel_shuffle(jnp.asarray(out))), x)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_downscale_matches_bilinear_without_antialias(factor):
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(1, 32, 48, 3)).astype(np.float32))
    h, w = 32 // factor, 48 // factor
    ref = jax.image.resize(x, (1, h, w, 3), "bilinear", antialias=False)
    np.testing.assert_allclose(np.asarray(layers.downscale_bilinear(x, h, w)), np.asarray(ref), atol=1e-6)


def test_mask_rules():
    rates = jnp.asarray([[0.3, 0.99], [1.0, 1.0]], jnp.float32)
    # adair: (H//128) * t, truncated -> 256 rows: int(2*0.3)=0, int(2*1.0)=2
    np.testing.assert_array_equal(adair.mask_half_sizes(rates, 256, 128, "adair"), [[0, 0], [2, 1]])
    # fraction: floor(t * (H//2)) -> 16x16: floor(0.3*8)=2, floor(0.99*8)=7
    np.testing.assert_array_equal(adair.mask_half_sizes(rates, 16, 16, "fraction"), [[2, 7], [8, 8]])
    mask = np.asarray(adair.low_pass_mask(jnp.asarray([[1, 2]]), 6, 8))[0]
    ref = np.zeros((6, 8), bool)
    ref[2:4, 2:6] = True  # [H//2 - h_, H//2 + h_) x [W//2 - w_, W//2 + w_)
    np.testing.assert_array_equal(mask, ref)


def test_frequency_split_against_numpy_fftshift():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(1, 8, 10, 2)).astype(np.float32)
    mask = np.zeros((1, 8, 10), bool)
    mask[0, 3:5, 4:7] = True
    low, high = adair.frequency_split(jnp.asarray(f), jnp.asarray(mask))
    spec = np.fft.fftshift(np.fft.fft2(f, axes=(1, 2), norm="forward"), axes=(1, 2))
    m = mask[..., None]
    ref_low = np.abs(np.fft.ifft2(np.fft.ifftshift(spec * m, axes=(1, 2)), axes=(1, 2), norm="forward"))
    ref_high = np.abs(np.fft.ifft2(np.fft.ifftshift(spec * ~m, axes=(1, 2)), axes=(1, 2), norm="forward"))
    np.testing.assert_allclose(np.asarray(low), ref_low, atol=1e-5)
    np.testing.assert_allclose(np.asarray(high), ref_high, atol=1e-5)


# ----------------------------------------------------------------------------- conversion table


def test_unknown_and_missing_keys_are_reported_together(weights):
    w = dict(weights)
    del w["output.weight"]
    w["extra.head.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(convert.ConversionError) as err:
        convert.from_state_dict(w, "tiny")
    msg = str(err.value)
    assert "unexpected keys (1): extra.head.weight" in msg and "missing keys (1): output.weight" in msg


def test_config_inference_for_non_default_configs():
    cfg = adair.AdaIRConfig(
        dim=16, num_blocks=(1, 2, 1, 2), num_refinement_blocks=2, heads=(2, 2, 4, 4),
        ffn_expansion_factor=2.0, bias=True, LayerNorm_type="BiasFree",
    )  # fmt: skip
    model = nnx.eval_shape(lambda: adair.AdaIR(cfg))
    shapes = {k: np.zeros(s, np.float32) for k, s in convert.official_keys(cfg).items()}
    assert convert.infer_config(shapes) == cfg
    assert "encoder_level1.0.attn.qkv.bias" in shapes and "encoder_level1.0.norm1.body.bias" not in shapes
    assert adair.count_params(model) == sum(v.size for v in shapes.values())
