"""An action means the same on 128-pixel training crops and on whole test images (issue 23, item 1).

The default ``mask_rule="widen"`` keeps AdaIR's own mask for rates up to 0.5 and widens it above
to the low-pass cutoff ``2r - 1`` in normalised frequency. Checked here against a numpy
transcription, and for the three properties the issue asks of a default rule:

(a) step 0 is AdaIR at every size (``tests/test_policy_step0.py`` runs the default rule);
(b) every change of the mask an action makes at a test size it also makes at the training crop,
    in normalised frequency and up to the crop grid's resolution; nothing acts at test that is
    inert in training (the former ``"anchored"`` rule fails this: its rates below 0.5 shrink
    AdaIR's masks on large images and do nothing on crops);
(c) the step-0 deterministic policy is not on a jump of the rule: moving every rate mean by
    +-1e-3 leaves every module's mask unchanged at 128x128, 512x768 and 720x1280, with
    ``rate_conv`` weights that open AdaIR's masks there (the "anchored" rule changes them).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from irpo_jax.models import adair, convert, policy
from tests.test_policy_step0 import opening_weights

TRAIN = (128, 128)
TEST_SIZES = ((512, 768), (720, 1280))


def widen_reference(r: np.ndarray, t: np.ndarray, height: int, width: int) -> np.ndarray:
    """The docstring's formula in float32 numpy: h_a = int(float32(H // 128) * t), N = H // 2;
    r <= 0.5: h_a; r > 0.5: max(h_a, min(floor((N + 1)(2r - 1)), N)); same for W."""
    r, t = r.astype(np.float32), t.astype(np.float32)
    h_a = (np.asarray([height // 128, width // 128], np.float32) * t).astype(np.int32)
    n = np.asarray([height // 2, width // 2], np.float32)
    cutoff = np.minimum(np.floor((n + 1) * (np.float32(2) * r - np.float32(1))), n).astype(np.int32)
    return np.where(r <= 0.5, h_a, np.maximum(h_a, cutoff))


def test_widen_rule_against_numpy_and_by_hand():
    rng = np.random.default_rng(0)
    r = rng.uniform(size=(4096, 2)).astype(np.float32)
    t = rng.uniform(size=(4096, 2)).astype(np.float32)
    for height, width in ((16, 16), (64, 64), (160, 240), (256, 384), (360, 640), (512, 1024)):
        got = np.asarray(adair.mask_half_sizes(jnp.asarray(r), height, width, "widen", jnp.asarray(t)))
        np.testing.assert_array_equal(got, widen_reference(r, t, height, width))
        assert got.min() >= 0 and np.all(got <= [height // 2, width // 2])
        half = jnp.full_like(jnp.asarray(t), 0.5)  # r = 0.5: the official rule, exactly
        np.testing.assert_array_equal(
            adair.mask_half_sizes(half, height, width, "widen", jnp.asarray(t)),
            adair.mask_half_sizes(jnp.asarray(t), height, width, "adair"),
        )
    # By hand, 256x384 (N = 128, 192; H // 128 = 2, 3) with t = (0.9, 0.5): h_a = (1, 1).
    rates = jnp.asarray([[0.25, 0.5], [0.75, 1 - 1e-6], [0.5 + 1 / 258, 0.5 + 1.5 / 129]], jnp.float32)
    t = jnp.asarray([[0.9, 0.5]] * 3, jnp.float32)
    # 1 (kept), 1 | floor(129 * 0.5) = 64, floor(193 * (1 - 2e-6)) = 192 = N (the whole spectrum) |
    # floor(129 / 129) = 1 = h_a, floor(193 * 3 / 129) = 4
    np.testing.assert_array_equal(adair.mask_half_sizes(rates, 256, 384, "widen", t), [[1, 1], [64, 192], [1, 4]])
    with pytest.raises(ValueError, match="thresholds"):
        adair.mask_half_sizes(rates, 256, 384, "widen")


@pytest.fixture(scope="module")
def thresholds(tiny_dir):
    """``sigmoid(rate_conv(.))`` of each FreModule of an AdaIR whose rate_conv opens its masks
    (``opening_weights``), on a random image of each size: (size, module) -> (1, 2)."""
    with np.load(tiny_dir / "state_dict.npz") as z:
        net = convert.from_state_dict(opening_weights({k: z[k] for k in z.files}))
    out = {}
    for h, w in (TRAIN, *TEST_SIZES):
        img = jnp.asarray(np.random.default_rng(h + w).uniform(size=(1, h, w, 3)).astype(np.float32))
        for k, name in enumerate(adair.FRE_NAMES):
            module, fh, fw = getattr(net, name), h // 2 ** (3 - k), w // 2 ** (3 - k)
            out[(h, w), name] = jax.nn.sigmoid(module.rate_logits(module.image_features(img, fh, fw)))
    return out


def feature_size(size: tuple[int, int], name: str) -> tuple[int, int]:
    k = adair.FRE_NAMES.index(name)
    return size[0] // 2 ** (3 - k), size[1] // 2 ** (3 - k)


def test_official_masks_are_open_at_the_test_sizes(thresholds):
    """What makes (b) and (c) bite: AdaIR's own masks are non-empty at fre2 and fre3 of both test
    sizes (GoPro's 720x1280: fre3 (2, 5)) and empty everywhere at the training crop."""
    for size in (TRAIN, *TEST_SIZES):
        for name in adair.FRE_NAMES:
            fh, fw = feature_size(size, name)
            h_a = np.asarray(adair.mask_half_sizes(thresholds[size, name], fh, fw, "adair"))[0]
            assert bool(np.all(h_a > 0)) == (size != TRAIN and name != "fre1"), (size, name, h_a)
    np.testing.assert_array_equal(adair.mask_half_sizes(thresholds[(720, 1280), "fre3"], 360, 640, "adair"), [[2, 5]])


def test_an_action_changes_the_mask_at_test_sizes_only_as_it_does_on_training_crops(thresholds):
    """(b): over a fine grid of rates, wherever a rate changes AdaIR's mask at a test size, the
    half-size it sets is, in normalised frequency h / (N + 1), within one bin of the training
    crop's (1 / (N_crop + 1)) for the same rate, and never narrower than AdaIR's; rates up to 0.5
    change nothing at any size. The former "anchored" rule fails exactly here."""
    r = jnp.linspace(0.0, 1.0, 4001, dtype=jnp.float32)[1:-1]
    rates = jnp.stack([r, r], axis=-1)  # (R, 2)
    for name in adair.FRE_NAMES:
        th, tw = feature_size(TRAIN, name)
        n_train = np.asarray([th // 2, tw // 2]) + 1
        t_train = jnp.broadcast_to(thresholds[TRAIN, name], rates.shape)
        h_train = np.asarray(adair.mask_half_sizes(rates, th, tw, "widen", t_train))
        assert not np.any(h_train[np.asarray(r) <= 0.5])  # inert half of the action space at the crop...
        for size in TEST_SIZES:
            fh, fw = feature_size(size, name)
            n_test = np.asarray([fh // 2, fw // 2]) + 1
            t_test = jnp.broadcast_to(thresholds[size, name], rates.shape)
            official = np.asarray(adair.mask_half_sizes(t_test, fh, fw, "adair"))
            h_test = np.asarray(adair.mask_half_sizes(rates, fh, fw, "widen", t_test))
            assert np.all(h_test >= official), (name, size)  # only ever widens
            np.testing.assert_array_equal(
                h_test[np.asarray(r) <= 0.5], official[np.asarray(r) <= 0.5]
            )  # ... inert here too
            changed = h_test != official
            assert changed.any(), (name, size)
            gap = np.abs(h_test / n_test - h_train / n_train)[changed]
            assert gap.max() < 1 / n_train.min(), (name, size, gap.max())
            if name != "fre1":  # open official masks: the former rule shrinks them where crops see nothing
                anchored = np.asarray(adair.mask_half_sizes(rates, fh, fw, "anchored", t_test))
                acts_at_test_only = (anchored != official) & (h_train == 0)
                assert acts_at_test_only[np.asarray(r) < 0.5].any(), (name, size)


@pytest.mark.parametrize("drift", [-1e-3, 1e-3])
def test_the_step0_policy_is_not_on_a_jump_of_the_mask_rule(thresholds, drift):
    """(c): the rate heads' Beta means moved by ``drift`` (their last layer's bias, as training
    would move it; the means computed as ``IRPOPolicy.mean`` takes them) leave every module's
    mask at AdaIR's own at 128x128, 512x768 and 720x1280. Under "anchored" a drift of -1e-3
    moves GoPro-sized fre3 masks (2, 5) to (1, 4): the defect this rule removes."""
    pol = policy.IRPOPolicy("tiny", rngs=nnx.Rngs(0))
    alpha, beta = 50 * (1 + 2 * drift), 50 * (1 - 2 * drift)  # mean 0.5 + drift, concentration 100
    bias = jnp.asarray([policy._inverse_softplus(v - pol.policy_config.min_concentration) for v in (alpha, beta) * 2])
    changed_anchored = []
    for name in adair.FRE_NAMES:
        head = pol.heads[name].policy_rate
        head.fc2.bias[...] = bias
        conc = head(jnp.zeros((1, head.fc1.in_features)))  # (1, 2, 2); any input at a zero last layer
        means = pol._clamp(conc[..., 0] / (conc[..., 0] + conc[..., 1]))  # (1, 2)
        np.testing.assert_allclose(np.asarray(means), 0.5 + drift, rtol=0, atol=1e-6)
        for size in (TRAIN, *TEST_SIZES):
            fh, fw = feature_size(size, name)
            t = thresholds[size, name]
            official = np.asarray(adair.mask_half_sizes(t, fh, fw, "adair"))
            np.testing.assert_array_equal(np.asarray(adair.mask_half_sizes(means, fh, fw, "widen", t)), official)
            anchored = np.asarray(adair.mask_half_sizes(means, fh, fw, "anchored", t))
            if np.any(anchored != official):
                changed_anchored.append((name, size, anchored.tolist()))
    if drift < 0:
        assert (("fre3", (720, 1280), [[1, 4]]) in changed_anchored
                and ("fre3", (512, 768), [[1, 2]]) in changed_anchored), changed_anchored  # fmt: skip
    assert all(size != TRAIN for _, size, _ in changed_anchored)
