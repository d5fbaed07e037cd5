"""Values against closed forms and published constants: the per-step learning-rate schedules and
the optimizer's actual steps under them (heads at 6x), the Beta heads' concentration floor and
cap, and the CLIP / LAION-aesthetic image preprocessing (OpenAI CLIP's published pipeline).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from irpo_jax import config_lib, training
from irpo_jax.models import policy

# OpenAI CLIP's `_transform(n_px)` (clip/clip.py): Resize(n_px, BICUBIC) of the shorter side,
# CenterCrop(n_px), ToTensor, Normalize(mean, std); n_px = 224 for ViT-L/14, the model the LAION
# aesthetic predictor (sac+logos+ava1-l14-linearMSE) reads, L2-normalised, in its simple_inference.py.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 224


def _schedule_cfg(schedule: str, lr: float, warmup: int):
    cfg = config_lib.base_config("grpo")
    cfg.optim.update(schedule=schedule, lr=lr, warmup_steps=warmup)
    return cfg


def cosine_closed_form(t: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up from 0, then peak / 2 (1 + cos(pi (t - W) / (T - W))) down to 0 at T."""
    if t < warmup:
        return peak * t / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(t - warmup, total - warmup) / (total - warmup)))


@pytest.mark.parametrize("warmup", [0, 10])
def test_cosine_schedule_per_step(warmup):
    total, peak = 100, 3e-5
    schedule = training.learning_rate(_schedule_cfg("cosine", peak, warmup), total)
    steps = sorted({0, 3, warmup, warmup + 1, (warmup + total) // 2, 75, total - 1, total, total + 20})
    for t in steps:
        assert float(schedule(t)) == pytest.approx(cosine_closed_form(t, peak, warmup, total), rel=1e-5, abs=1e-12), t
    # Half-way through the decay the rate is half the peak; it reaches 0 at the last step, not before.
    assert float(schedule((warmup + total) // 2)) == pytest.approx(peak / 2, rel=1e-5)
    assert float(schedule(total - 5)) > 0


def test_constant_schedule_with_and_without_warmup():
    warm = training.learning_rate(_schedule_cfg("constant", 2e-4, 8), 50)
    for t, want in [(0, 0.0), (2, 5e-5), (4, 1e-4), (8, 2e-4), (30, 2e-4), (60, 2e-4)]:
        assert float(warm(t)) == pytest.approx(want, rel=1e-6, abs=1e-12), t
    flat = training.learning_rate(_schedule_cfg("constant", 3e-5, 0), 50)
    assert [float(flat(t)) for t in (0, 25, 49)] == pytest.approx([3e-5] * 3, rel=1e-7)


def test_adair_schedule_per_epoch():
    """AdaIR's LinearWarmupCosineAnnealingLR stepped per epoch e (the epoch of the batch's first
    sample): lr e / (W - 1) for e < W, then lr / 2 (1 + cos(pi (e - W) / (S - W))). Small numbers:
    W = 3, S = 10, 6 samples per epoch, batches of 4."""
    cfg = _schedule_cfg("adair", 1e-3, 0)
    cfg.optim.update(warmup_epochs=3, cosine_epochs=10)
    cfg.train.update(stage="supervised", batch_size=4)
    schedule = training.learning_rate(cfg, 100, epoch_size=6)
    for step in (0, 1, 2, 3, 4, 5, 6, 9, 12, 15, 30):
        e = step * 4 // 6
        want = 1e-3 * e / 2 if e < 3 else 0.5e-3 * (1 + math.cos(math.pi * (e - 3) / 7))
        assert float(schedule(step)) == pytest.approx(want, rel=1e-5, abs=1e-12), step
    cfg.optim.warmup_epochs = 10
    with pytest.raises(training.TrainingError, match="warmup_epochs < optim.cosine_epochs"):
        training.learning_rate(cfg, 100, epoch_size=6)


def test_the_optimizer_steps_follow_the_schedule_with_the_heads_at_6x():
    """Adam with a constant gradient 1: bias correction makes m_hat = v_hat = 1 at every step, so
    each step is -lr(t) / (1 + eps); with eps = 1, -lr(t) / 2 for the backbone and 6 times that
    for the policy heads (``heads`` ravel first)."""
    total, warmup, peak = 12, 3, 0.1
    cfg = _schedule_cfg("cosine", peak, warmup)
    cfg.optim.update(name="adam", eps=1.0, b1=0.9, b2=0.999, head_lr_mult=6.0, grad_clip=0.0)
    params = {"net": {"w": jnp.zeros((5,), jnp.float32)}, "heads": {"h": jnp.zeros((3,), jnp.float32)}}
    tx = training.build_optimizer(cfg, params, total)
    flat = jnp.zeros((8,), jnp.float32)  # ravel order: heads (3), net (5)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for t in range(total + 2):
        new, state = update(jnp.ones((8,), jnp.float32), state, flat)
        step = np.asarray(new - flat, np.float64)
        base = -cosine_closed_form(t, peak, warmup, total) / 2
        np.testing.assert_allclose(step[:3], 6 * base, rtol=2e-5, atol=1e-9, err_msg=f"heads, step {t}")
        np.testing.assert_allclose(step[3:], base, rtol=2e-5, atol=1e-9, err_msg=f"backbone, step {t}")
        flat = new


def test_optim_eps_is_adams_epsilon():
    """``optim.eps`` reaches Adam: its first step is -lr * g / (|g| + eps) (m_hat = g, v_hat = g^2)."""
    params = {"net": {"w": jnp.zeros((3,), jnp.float32)}}
    grads = jnp.asarray([1.0, 3.0, -0.5], jnp.float32)
    for eps in (1.0, 1e-8):
        cfg = _schedule_cfg("constant", 0.1, 0)
        cfg.optim.update(name="adam", eps=eps, grad_clip=0.0)
        tx = training.build_optimizer(cfg, params, 10)
        new, _ = tx.update(grads, tx.init(params), params["net"]["w"])
        g = np.asarray(grads, np.float64)
        np.testing.assert_allclose(np.asarray(new, np.float64), -0.1 * g / (np.abs(g) + eps), rtol=1e-5, err_msg=eps)


def test_weight_decay_is_adamw_only():
    """``optim.weight_decay`` is AdamW's decoupled decay: Adam ignores it; AdamW's first step is
    Adam's minus lr * wd * param."""
    params = {"net": {"w": jnp.asarray([1.0, -2.0, 0.5], jnp.float32)}}
    grads = jnp.asarray([0.3, -0.1, 2.0], jnp.float32)
    flat = params["net"]["w"]
    steps = {}
    for name in ("adam", "adamw"):
        cfg = _schedule_cfg("constant", 0.1, 0)
        cfg.optim.update(name=name, eps=1e-8, weight_decay=0.5, grad_clip=0.0)
        tx = training.build_optimizer(cfg, params, 10)
        new, _ = tx.update(grads, tx.init(params), flat)
        steps[name] = np.asarray(new - flat, np.float64)
    np.testing.assert_allclose(steps["adam"], -0.1 * np.sign(np.asarray(grads)), rtol=1e-5)  # -lr g / |g|
    np.testing.assert_allclose(steps["adamw"], steps["adam"] - 0.1 * 0.5 * np.asarray(flat), rtol=1e-5)


def test_beta_head_concentrations_floor_and_cap():
    """softplus(raw) + min_concentration, clipped at max_concentration; at initialisation (last
    layer zero) exactly the initial (alpha, beta) whatever the input."""
    cfg = policy.PolicyConfig(min_concentration=0.01, max_concentration=500.0)
    head = policy.BetaHead(16, (2.0, 3.0), cfg, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16)) * 3, jnp.float32)
    np.testing.assert_allclose(np.asarray(head(x)), np.broadcast_to([[2.0, 3.0], [2.0, 3.0]], (4, 2, 2)), rtol=1e-5)
    raw = np.asarray([-60.0, 0.5, 30.0, 2e5], np.float32)  # far below, middle, large, above the cap
    head.fc2.bias[...] = jnp.asarray(raw)
    softplus = np.log1p(np.exp(np.minimum(raw, 50.0))) + np.maximum(raw - 50.0, 0.0)
    want = np.minimum(softplus + 0.01, 500.0)  # [0.01 (the floor), 0.984, 30.01, 500 (the cap)]
    np.testing.assert_allclose(np.asarray(head(x)).reshape(4, 4), np.broadcast_to(want, (4, 4)), rtol=1e-6)
    assert want[0] == pytest.approx(0.01) and want[3] == 500.0


# ----------------------------------------------------------------------------- CLIP preprocessing


@pytest.mark.torch
def test_clip_fallback_constants_are_openais(tmp_path):
    pytest.importorskip("torch")
    from torch_bridge.reward_models import clip as rm

    assert rm._OPENAI_CLIP_MEAN == OPENAI_CLIP_MEAN and rm._OPENAI_CLIP_STD == OPENAI_CLIP_STD
    # A model directory without preprocessor_config.json gets OpenAI's pipeline at the model's size.
    prep = rm._read_clip_preprocessing(tmp_path, CLIP_SIZE)
    assert prep == {"resize_to": CLIP_SIZE, "crop": (CLIP_SIZE, CLIP_SIZE), "mean": OPENAI_CLIP_MEAN,
                    "std": OPENAI_CLIP_STD}  # fmt: skip


@pytest.mark.torch
def test_clip_preprocessing_is_openais_pipeline():
    """Shorter side to 224 with bicubic (PIL's, which OpenAI's Resize uses), centre crop 224,
    (x - mean) / std per channel: the encoder's preprocessing against PIL on a 256x320 image."""
    torch = pytest.importorskip("torch")
    from PIL import Image

    from torch_bridge.reward_models import clip as rm

    encoder = rm.ClipImageEncoder(
        None, model_id="test", directory=None, device=torch.device("cpu"), dtype=torch.float32,
        resize_to=CLIP_SIZE, crop=(CLIP_SIZE, CLIP_SIZE), mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
        batch_size=1, gt_cache_size=0,
    )  # fmt: skip
    img = np.random.default_rng(0).uniform(size=(3, 256, 320)).astype(np.float32)
    got = encoder.preprocess(torch.from_numpy(img)[None])[0].numpy()
    new_w = int(CLIP_SIZE * 320 / 256)  # 280, as torchvision's Resize(int)
    resized = np.stack(
        [np.asarray(Image.fromarray(c, mode="F").resize((new_w, CLIP_SIZE), Image.BICUBIC)) for c in img]
    )
    left = (new_w - CLIP_SIZE) // 2
    cropped = resized[:, :, left : left + CLIP_SIZE]
    want = (cropped - np.asarray(OPENAI_CLIP_MEAN)[:, None, None]) / np.asarray(OPENAI_CLIP_STD)[:, None, None]
    assert got.shape == (3, CLIP_SIZE, CLIP_SIZE)
    np.testing.assert_allclose(got, want, atol=2e-4)
    # A grey image maps to (0.5 - mean) / std exactly: the constants, not just their shape.
    grey = encoder.preprocess(torch.full((1, 3, 224, 224), 0.5))[0, :, 0, 0].numpy()
    np.testing.assert_allclose(grey, (0.5 - np.asarray(OPENAI_CLIP_MEAN)) / np.asarray(OPENAI_CLIP_STD), rtol=1e-6)
