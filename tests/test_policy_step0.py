"""The IRPO policy at step 0 is AdaIR at every resolution (issue 16, item 1).

Under the default ``mask_rule="anchored"`` a rate of 0.5 is the module's own official mask and the
initial Beta is symmetric, so the deterministic policy must compute what the plain AdaIR with
the official rule computes, also where that rule opens masks at fre2 and fre3. Also: the
anchored rule against a numpy transcription, the exploration of the default initial Beta
against the former default, and policy model directories saved before these settings existed.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from irpo_jax import checkpointing
from irpo_jax.models import adair, convert, policy


@pytest.fixture(scope="module")
def weights(tiny_dir):
    with np.load(tiny_dir / "state_dict.npz") as z:
        return {k: z[k] for k in z.files}


def opening_weights(weights: dict) -> dict:
    """Random (golden-fixture) AdaIR weights whose rate_conv makes the official rule open masks.

    rate_conv has no biases: its first layer gets columns (+v, -v) scaled by 100, so one of each
    pair of hidden units is large whatever the pooled input, and the second layer weights +100,
    so the logits are >> 17 and the float32 sigmoid is exactly 1.0: the half-size is H // 128 on
    both axes (adair-spec section 5). (Unsaturated thresholds, where the float32 product and
    the truncation matter, are covered by the mask-rule tests below.)
    """
    w = dict(weights)
    for k in (2, 3):
        first = w[f"fre{k}.rate_conv.0.weight"]  # (C // 8, C, 1, 1)
        v = first[0] / np.linalg.norm(first[0])
        pairs = np.stack([v if j % 2 == 0 else -v for j in range(first.shape[0])])
        w[f"fre{k}.rate_conv.0.weight"] = (100 * pairs).astype(np.float32)
        w[f"fre{k}.rate_conv.2.weight"] = np.full_like(w[f"fre{k}.rate_conv.2.weight"], 100.0)
    return w


def official_half_sizes(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """adair-spec 4.8 step 4 in numpy: int(float32(H // 128) * float32 sigmoid), per axis."""
    t = (1 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    return (np.asarray([height // 128, width // 128], np.float32) * t).astype(np.int32)


@jax.jit
def _three_passes(plain_graph, plain_state, pol_graph, pol_state, closing_graph, img):
    """The plain AdaIR (official rule, with its intermediates), the deterministic policy, and
    the policy with every rate at ~0 under the "anchored" rule (``closing_graph``: all masks
    empty, which the default "widen" rule cannot do: shows the masks matter)."""
    inter = {}
    plain = nnx.merge(plain_graph, plain_state)(img, intermediates=inter)
    pol = nnx.merge(pol_graph, pol_state)
    det = pol.mean(img)
    closed = det.actions.at[:, 0::4].set(1e-6).at[:, 1::4].set(1e-6)  # r_h, r_l of every module
    empty = nnx.merge(closing_graph, pol_state).given(img, closed[:, None]).restored[:, 0]
    logits = {name: inter[f"{name}_rate_logits"] for name in adair.FRE_NAMES}
    sizes = {name: inter[f"{name}_half_sizes"] for name in adair.FRE_NAMES}
    return plain, det, empty, logits, sizes


def _policy_from(w: dict, **settings) -> policy.IRPOPolicy:
    p = policy.IRPOPolicy("tiny", settings, rngs=nnx.Rngs(1))  # the defaults: widen, spectrum input
    convert.load_state_dict(p.net, w)
    return p


# input size -> the FreModules whose official mask is open there (with opening_weights).
CASES = {
    (128, 128): (),
    (320, 480): ("fre3",),  # fre3 160x240: half-sizes (1, 1)
    (400, 592): ("fre3",),  # fre3 200x296: (1, 2)
    (512, 768): ("fre2", "fre3"),  # fre2 128x192: (1, 1); fre3 256x384: (2, 3)
}


@pytest.mark.parametrize("size", list(CASES), ids=lambda s: f"{s[0]}x{s[1]}")
def test_deterministic_policy_is_the_official_adair_at_every_size(weights, size):
    """Issue 16's Done-when: at 128x128, 320x480, 400x592 and 512x768 (where the official rule
    opens masks at fre3, and at fre2 and fre3), the policy initialised from an AdaIR equals it
    in its deterministic mode to 1e-5 (float32, highest precision)."""
    (h, w), open_at = size, CASES[size]
    wts = opening_weights(weights)
    img = jnp.asarray(np.random.default_rng(h + w).uniform(size=(1, h, w, 3)).astype(np.float32))
    with jax.default_matmul_precision("highest"):
        plain, det, empty, logits, sizes = _three_passes(
            *nnx.split(convert.from_state_dict(wts)),
            *nnx.split(_policy_from(wts)),
            nnx.split(_policy_from(wts, mask_rule="anchored"))[0],
            img,
        )
    for k, name in enumerate(adair.FRE_NAMES):
        fh, fw = h // 2 ** (3 - k), w // 2 ** (3 - k)  # fre1 at 1/8, fre2 1/4, fre3 1/2
        expected = official_half_sizes(np.asarray(logits[name]), fh, fw)
        np.testing.assert_array_equal(np.asarray(sizes[name]), expected, err_msg=name)
        np.testing.assert_array_equal(np.asarray(det.mask_half_sizes[:, k]), expected, err_msg=name)
        assert bool(np.all(expected > 0)) == (name in open_at), (name, expected)
    if size == (512, 768):
        np.testing.assert_array_equal(np.asarray(det.mask_half_sizes[0]), [[0, 0], [1, 1], [2, 3]])
    np.testing.assert_array_equal(np.asarray(det.actions)[:, 0::4], 0.5)  # the Beta means, exactly
    np.testing.assert_array_equal(np.asarray(det.actions)[:, 2::4], 0.5)
    err = float(jnp.abs(det.restored - plain).max())
    assert err <= 1e-5, err
    if open_at:  # the open masks change the output: the comparison above can see them
        assert float(jnp.abs(empty - plain).max()) > 1e-3
    else:
        assert float(jnp.abs(empty - plain).max()) <= 1e-5


def test_deterministic_policy_reproduces_the_pytorch_mask_case(weights, tiny_dir):
    """The golden fixture's mask case (fre3's sigmoid saturated by the official PyTorch model's
    own weights: a 2x2 low-pass block at 256x256), through the policy's deterministic mode."""
    w = dict(weights)
    w["fre3.rate_conv.2.weight"] = np.load(tiny_dir / "mask_fre3_rate_conv_2_weight.npy")
    x = np.load(tiny_dir / "mask_input_u8.npy").astype(np.float32) / np.float32(255)
    mean = jax.jit(lambda g, s, img: nnx.merge(g, s).mean(img))
    with jax.default_matmul_precision("highest"):
        out = mean(*nnx.split(_policy_from(w)), jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_array_equal(np.asarray(out.mask_half_sizes[0]), [[0, 0], [0, 0], [1, 1]])
    ref = np.load(tiny_dir / "mask_output.npy").transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(out.restored), ref, rtol=0, atol=1e-5)


def anchored_reference(r: np.ndarray, t: np.ndarray, height: int, width: int) -> np.ndarray:
    """The issue's formula in float32 numpy: h_a = int(float32(H // 128) * t); r <= 0.5:
    floor(h_a * 2r); r >= 0.5: floor(h_a + (N - h_a) * (2r - 1)), N = H // 2; same for W."""
    r, t = r.astype(np.float32), t.astype(np.float32)
    h_a = (np.asarray([height // 128, width // 128], np.float32) * t).astype(np.int32).astype(np.float32)
    n = np.asarray([height // 2, width // 2], np.float32)
    low = np.floor(h_a * (np.float32(2) * r))
    high = np.floor(h_a + (n - h_a) * (np.float32(2) * r - np.float32(1)))
    return np.where(r <= 0.5, low, high).astype(np.int32)


def test_anchored_mask_rule_against_numpy_and_by_hand():
    rng = np.random.default_rng(0)
    r = rng.uniform(size=(4096, 2)).astype(np.float32)
    t = rng.uniform(size=(4096, 2)).astype(np.float32)
    for height, width in ((64, 64), (160, 240), (256, 384), (512, 1024)):
        got = np.asarray(adair.mask_half_sizes(jnp.asarray(r), height, width, "anchored", jnp.asarray(t)))
        np.testing.assert_array_equal(got, anchored_reference(r, t, height, width))
        assert got.min() >= 0 and np.all(got <= [height // 2, width // 2])
        # r = 0.5 is the official rule, exactly, for any thresholds
        half = jnp.full_like(jnp.asarray(t), 0.5)
        np.testing.assert_array_equal(
            adair.mask_half_sizes(half, height, width, "anchored", jnp.asarray(t)),
            adair.mask_half_sizes(jnp.asarray(t), height, width, "adair"),
        )
    # By hand, 256x384 (N = 128, 192; H // 128 = 2, 3) with t = (0.9, 0.5): h_a = (1, 1).
    rates = jnp.asarray([[0.25, 0.5], [0.75, 1 - 1e-6], [1e-6, 0.5 + 1 / 384]], jnp.float32)
    t = jnp.asarray([[0.9, 0.5]] * 3, jnp.float32)
    # floor(1 * 0.5) = 0; 1 | floor(1 + 127 * 0.5) = 64; floor(1 + 191 * (1 - 2e-6)) = 191 | 0; 1 (1.99 -> 1)
    np.testing.assert_array_equal(adair.mask_half_sizes(rates, 256, 384, "anchored", t), [[0, 1], [64, 191], [0, 1]])
    with pytest.raises(ValueError, match="thresholds"):
        adair.mask_half_sizes(rates, 256, 384, "anchored")


def test_default_rate_init_explores_at_least_as_often_as_the_former_default():
    """At 128x128 crops (official masks empty at every level) the default Beta(50, 50) opens a
    mask on both axes at least as often as the former "fraction" rule with Beta(1, 35), per level,
    by the exact Beta tails at the thresholds where ``mask_half_sizes`` itself opens."""
    assert policy.PolicyConfig().rate_init == (50.0, 50.0)
    assert policy.PolicyConfig(mask_rule="fraction").rate_init == (1.0, 35.0)
    grid = jnp.linspace(0.0, 1.0, 2**16 + 1, dtype=jnp.float32)[1:-1]
    rates = jnp.stack([grid, grid], axis=-1)
    rule = policy.PolicyConfig().mask_rule
    for side in (16, 32, 64):  # fre1, fre2, fre3 of a 128x128 crop
        t = jnp.full_like(rates, 0.99)  # anything: 128-pixel-or-less features have H // 128 = 0
        opens_new = np.asarray(adair.mask_half_sizes(rates, side, side, rule, t))[:, 0] > 0
        opens_old = np.asarray(adair.mask_half_sizes(rates, side, side, "fraction"))[:, 0] > 0
        r_new, r_old = float(grid[np.argmax(opens_new)]), float(grid[np.argmax(opens_old)])
        # "widen": floor((N + 1)(2r - 1)) >= 1 from r = 0.5 + 1 / (2 (N + 1)), N = side // 2
        assert abs(r_new - (0.5 + 1 / (side + 2))) < 2e-5 and abs(r_old - 2 / side) < 2e-5, side
        p_new = scipy.stats.beta(*policy.RATE_INIT[rule]).sf(r_new) ** 2
        p_old = scipy.stats.beta(*policy.RATE_INIT["fraction"]).sf(r_old) ** 2
        assert p_new >= p_old, (side, p_new, p_old)


# A policy model.json's "policy" as written before mask_rule "anchored" and rate_input existed
# (every field of the PolicyConfig of then; this model's rate_init, so that its masks open).
OLD_POLICY_JSON = (
    '{"mask_rule": "fraction", "fuse_mode": "modulate", "rate_init": [4.0, 8.0], "fuse_init": [20.0, 20.0], '
    '"min_concentration": 0.001, "max_concentration": 10000.0, "action_eps": 1e-06}'
)


def test_policy_model_saved_before_the_new_settings_loads_and_computes_as_before(weights, tmp_path):
    """A model directory whose model.json lacks ``rate_input`` (and, written by hand, even
    ``mask_rule``) loads with the settings it was trained with, "pooled" and "fraction", not
    today's defaults (whose rate heads have another shape and whose mask rule differs)."""
    old_cfg = policy.PolicyConfig(mask_rule="fraction", rate_input="pooled", spectrum_tile=0, rate_init=(4.0, 8.0))
    pol = policy.IRPOPolicy("tiny", old_cfg, rngs=nnx.Rngs(2))
    convert.load_state_dict(pol.net, opening_weights(weights))
    for heads in pol.heads.values():  # trained-looking heads: the means depend on the image
        for head in (heads.policy_rate, heads.policy_fuse):
            head.fc2.kernel[...] = 0.3 * jnp.asarray(np.random.default_rng(3).normal(size=head.fc2.kernel.shape))
    img = jnp.asarray(np.random.default_rng(4).uniform(size=(2, 128, 128, 3)).astype(np.float32))
    mean = jax.jit(lambda g, s, x: nnx.merge(g, s).mean(x))
    expected = mean(*nnx.split(pol), img)
    assert np.asarray(expected.mask_half_sizes).max() > 0  # the fraction rule opens masks here
    for policy_json in (OLD_POLICY_JSON, OLD_POLICY_JSON.replace('"mask_rule": "fraction", ', "")):
        dst = tmp_path / f"old{len(policy_json)}"
        with checkpointing.atomic_directory(dst) as tmp:
            checkpointing.write_model(tmp, pol)
        meta = json.loads((dst / "model.json").read_text())
        meta["policy"] = json.loads(policy_json)
        (dst / "model.json").write_text(json.dumps(meta))
        restorer = checkpointing.load_model(dst)
        assert restorer.module.policy_config == old_cfg
        got = mean(*nnx.split(restorer.module), img)
        np.testing.assert_array_equal(np.asarray(got.restored), np.asarray(expected.restored))
        np.testing.assert_array_equal(np.asarray(got.actions), np.asarray(expected.actions))


def test_policy_configs():
    cfg = policy.PolicyConfig()
    assert (cfg.mask_rule, cfg.rate_input, cfg.rate_init, cfg.spectrum_tile) == ("widen", "spectrum", (50.0, 50.0), 128)
    assert policy.PolicyConfig(mask_rule="anchored").rate_init == (50.0, 50.0)
    assert policy.PolicyConfig.from_dict(cfg.to_dict()) == cfg
    assert policy.PolicyConfig.from_dict({"rate_init": ()}) == cfg  # the config file's "by rule"
    assert policy.PolicyConfig(mask_rule="adair").rate_init == (1.0, 35.0)
    assert policy.PolicyConfig(rate_init=(3, 4)).rate_init == (3.0, 4.0)
    assert policy.PolicyConfig.from_saved({}) == policy.PolicyConfig(
        mask_rule="fraction", rate_input="pooled", spectrum_tile=0
    )
    # a model saved with the "anchored" default, before the spectrum tiles: whole-image statistics
    anchored = {k: v for k, v in policy.PolicyConfig(mask_rule="anchored").to_dict().items() if k != "spectrum_tile"}
    assert policy.PolicyConfig.from_saved(anchored).spectrum_tile == 0
    assert policy.PolicyConfig.from_saved(cfg.to_dict()) == cfg  # a new model.json is read as written
    with pytest.raises(ValueError, match="rate_input must be one of"):
        policy.PolicyConfig(rate_input="fft")
    with pytest.raises(ValueError, match="mask_rule must be one of"):
        policy.PolicyConfig(mask_rule="relative")
    with pytest.raises(ValueError, match="spectrum_tile must be 0"):
        policy.PolicyConfig(spectrum_tile=4)
    with pytest.raises(ValueError, match=r"rate_init must be \(alpha, beta\)"):
        policy.PolicyConfig(rate_init=(1.0, 2.0, 3.0))
