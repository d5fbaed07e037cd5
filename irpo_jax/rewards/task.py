"""The five task-aware rewards of IRPO Appendix B.3 (``R_task``), in JAX.

Each reward maps a restored batch ``y`` and its clean target ``y_hat`` (both NHWC RGB floats in
[0, 1], shape ``(B, H, W, 3)``) to one score per image, shape ``(B,)``, and is jittable and
differentiable with finite gradients for every input, including flat and all-black images.

Notation (Appendix B): ``Y = 0.299 R + 0.587 G + 0.114 B``; Sobel gradients ``G_x, G_y``;
magnitude ``M(Z) = sqrt(G_x^2 + G_y^2 + 1e-12)``; ``eps = 1e-6``; ``mu``/``std`` spatial mean and
standard deviation.

=========  ==============  =====================================================================
task       name            formula
=========  ==============  =====================================================================
denoise    ``r_grad``      clip(1 - mu|M(Y_y) - M(Y_g)| / (mu M(Y_g) + eps))              (12-13)
derain     ``r_aniso``     1 - clip(|E_x - E_y| / max(E_x + E_y, eps)), E = mu|G(Y_y)|     (14-16)
dehaze     ``r_contrast``  clip(min(C_y / (C_g + eps), C_g / (C_y + eps))), C = std(Y)     (17)
deblur     ``r_sharp``     clip(min(S_y / (S_g + eps), S_g / (S_y + eps))), S = mu M(Y)    (18)
lowlight   ``r_lowlight``  0.2 R_exp + 0.1 R_color                                         (19-21)
=========  ==============  =====================================================================

Readings chosen where the paper is ambiguous (each named, most literal reading kept):

* **RGB as given** ("linear RGB" in the paper): AdaIR data are sRGB and nothing linearises them,
  so the [0, 1] RGB input is used as is.
* **Sobel on luminance everywhere** (``sobel-on-luma``): Eq. 12 writes ``M(y)`` for the restored
  image but ``M(Y_g)`` for the target, and Eq. 18 writes ``M(Z)``; a Sobel of a 3-channel image is
  not defined in the notation and comparing an RGB magnitude with a luminance one would be
  inconsistent, so ``M`` is always taken of the luminance ``Y`` (Eq. 14 says so explicitly).
* **Sobel kernel unnormalised, cross-correlation** (``sobel-3x3``): ``G_x`` uses
  ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]`` along the width axis, ``G_y`` its transpose. Only the
  ``1e-12``/``eps`` constants see the scale (every reward is a ratio), and signs never matter.
* **Valid Sobel borders** (``sobel-valid``): the paper gives no border rule; padding would invent
  pixels (zero padding puts a false edge of up to ``4 Y`` on the frame), so gradients are only
  computed where the 3x3 window is inside the image, and ``mu`` runs over that
  ``(H - 2) x (W - 2)`` interior. Images must be at least 3x3.
* **Population std** (``std-ddof0``): ``std`` in Eq. 17 is ``sqrt(mu((Y - mu Y)^2))`` (ddof 0,
  matching the paper's ``sigma^2`` as a spatial variance); ddof only enters through ``eps``.
* **Luminance means for exposure** (``exp-luma``): Eq. 19 compares ``mu(y)`` with ``mu(Y_g)``;
  the text calls it "exposure alignment on luminance means" and ``mu(y)`` "the overall
  luminance", so both sides use ``Y``.
* **Low-light weights as printed** (``lowlight-0.3``): ``0.2 R_exp + 0.1 R_color`` caps this task
  at 0.3 while the other tasks reach 1; kept literal. Within one GRPO group the task is fixed,
  so this only lowers the task term's weight against the other components of Eq. 22 for
  low-light samples.

Edge cases, all finite (values for a flat restored image against a flat target, e.g. both black):
``r_grad`` = 1 (D = 0), ``r_aniso`` = 1 (A = 0), ``r_contrast`` = 0 (C = 0 on both sides, so
both ratios are 0: literal Eq. 17, a perfect flat match scores 0), ``r_sharp`` = 0.5 (S = 1e-6
from the ``1e-12`` inside M, so each ratio is 1e-6 / 2e-6), ``r_lowlight`` = 0.3 when the colours
match. A flat restored image against a textured target: ``r_aniso`` = 1, ``r_contrast`` = 0,
``r_grad`` ~ 2e-6 / (mu(M_g) + 1e-6) (float32 cancellation in 1 - D / B), ``r_sharp`` =
1e-6 / (mu(M_g) + 1e-6).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from irpo_jax.tasks import TASKS

__all__ = [
    "EPS",
    "LUMA_WEIGHTS",
    "TASK_REWARDS",
    "luminance",
    "sobel",
    "grad_magnitude",
    "r_grad",
    "r_aniso",
    "r_contrast",
    "r_sharp",
    "r_exp",
    "r_color",
    "r_lowlight",
    "task_reward",
    "task_reward_by_id",
]

EPS = 1e-6  # the paper's epsilon (Appendix B, notation)
MAG_EPS = 1e-12  # inside the square root of M(Z); keeps M and its gradient finite at G = 0
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # Y = 0.299 R + 0.587 G + 0.114 B (Rec. 601)


def _clip01(t: jax.Array) -> jax.Array:
    return jnp.clip(t, 0.0, 1.0)


def _check_nhwc(*images: jax.Array) -> tuple[jax.Array, ...]:
    """Validates NHWC RGB input of equal shapes and promotes it to at least float32."""
    shape = jnp.shape(images[0])
    out = []
    for z in images:
        z = jnp.asarray(z)
        if z.shape != shape:
            raise ValueError(f"task reward: restored and clean shapes differ: {shape} vs {z.shape}")
        if z.ndim != 4 or z.shape[-1] != 3 or z.shape[1] < 3 or z.shape[2] < 3:
            raise ValueError(f"task reward: expected NHWC RGB images of at least 3x3 pixels, got {z.shape}")
        out.append(z.astype(jnp.promote_types(z.dtype, jnp.float32)))
    return tuple(out)


def luminance(z: jax.Array) -> jax.Array:
    """Luminance ``Y = 0.299 R + 0.587 G + 0.114 B``.

    Args:
      z: RGB images, ``(..., 3)``.

    Returns:
      ``(...)``, the channel axis removed.
    """
    r, g, b = z[..., 0], z[..., 1], z[..., 2]
    return LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b


def sobel(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sobel gradients of single-channel images, valid region only (no padding).

    Written as shifted slices (a handful of adds) rather than a convolution: cheap on every
    backend and exact in float32.

    Args:
      y: ``(B, H, W)``.

    Returns:
      ``(g_x, g_y)``, each ``(B, H - 2, W - 2)``; ``g_x`` is the derivative along the width
      (kernel ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]``), ``g_y`` along the height (its transpose).
    """
    h, w = y.shape[-2], y.shape[-1]

    def at(di: int, dj: int) -> jax.Array:
        # Pixel (i + di, j + dj) for every interior (i, j); di, dj in {-1, 0, 1}.
        return y[..., 1 + di : h - 1 + di, 1 + dj : w - 1 + dj]  # (B, H-2, W-2)

    g_x = (at(-1, 1) + 2 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2 * at(0, -1) + at(1, -1))
    g_y = (at(1, -1) + 2 * at(1, 0) + at(1, 1)) - (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1))
    return g_x, g_y


def grad_magnitude(y: jax.Array) -> jax.Array:
    """``M(Y) = sqrt(G_x^2 + G_y^2 + 1e-12)`` of single-channel images ``(B, H, W)``.

    Returns:
      ``(B, H - 2, W - 2)``, >= 1e-6 everywhere.
    """
    g_x, g_y = sobel(y)
    return jnp.sqrt(g_x * g_x + g_y * g_y + MAG_EPS)


def _mean_hw(z: jax.Array) -> jax.Array:
    """Spatial mean of ``(B, H, W)`` -> ``(B,)``."""
    return jnp.mean(z, axis=(-2, -1))


def _std_hw(z: jax.Array) -> jax.Array:
    """Population spatial std of ``(B, H, W)`` -> ``(B,)``, with a finite gradient at 0.

    Shifted two-pass variance: subtracting the first pixel first makes a flat image exactly 0
    (in float32 the mean of n equal values is not always that value, and a spurious std of
    ~1e-8 would move Eq. 17's ratios by ~1e-2 through ``eps = 1e-6``). ``sqrt`` has an infinite
    derivative at 0, which times the zero derivative of a flat image's variance would give NaN;
    the double ``where`` returns exactly 0 there with gradient 0.
    """
    d = z - z[..., :1, :1]  # (B, H, W); the shift cancels mathematically
    var = jnp.mean(jnp.square(d - jnp.mean(d, axis=(-2, -1), keepdims=True)), axis=(-2, -1))
    positive = var > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)


def _closeness(a: jax.Array, b: jax.Array) -> jax.Array:
    """Symmetric ratio closeness of Eqs. 17-18: ``clip(min(a / (b + eps), b / (a + eps)))``."""
    return _clip01(jnp.minimum(a / (b + EPS), b / (a + EPS)))


def r_grad(restored: jax.Array, clean: jax.Array) -> jax.Array:
    """Denoising reward: gradient-magnitude consistency (Eqs. 12-13).

    ``B = mu(M_g)``, ``D = mu(|M_rest - M_g|)``, ``R_grad = clip(1 - D / (B + eps))``, with ``M``
    taken of the luminance of each image (reading ``sobel-on-luma``).

    Args:
      restored: ``(B, H, W, 3)`` in [0, 1].
      clean: ``(B, H, W, 3)`` in [0, 1].

    Returns:
      ``(B,)`` in [0, 1].
    """
    restored, clean = _check_nhwc(restored, clean)
    m_rest = grad_magnitude(luminance(restored))  # (B, H-2, W-2)
    m_g = grad_magnitude(luminance(clean))
    base = _mean_hw(m_g)  # B in the paper
    dev = _mean_hw(jnp.abs(m_rest - m_g))  # D in the paper
    return _clip01(1.0 - dev / (base + EPS))


def r_aniso(restored: jax.Array, clean: jax.Array | None = None) -> jax.Array:
    """Deraining reward: isotropy of the restored image's gradients (Eqs. 14-16).

    ``E_x = mu|G_x(Y)|``, ``E_y = mu|G_y(Y)|``, ``A = |E_x - E_y| / max(E_x + E_y, eps)``,
    ``R_aniso = 1 - clip(A)``. Uses only the restored image (the paper's reward is not relative to
    the target); ``clean`` is accepted for a uniform signature and ignored.

    Args:
      restored: ``(B, H, W, 3)`` in [0, 1].
      clean: ignored (same shape if given).

    Returns:
      ``(B,)`` in [0, 1]; 1 for a flat image (A = 0).
    """
    (restored,) = _check_nhwc(restored) if clean is None else _check_nhwc(restored, clean)[:1]
    g_x, g_y = sobel(luminance(restored))  # (B, H-2, W-2)
    e_x = _mean_hw(jnp.abs(g_x))
    e_y = _mean_hw(jnp.abs(g_y))
    aniso = jnp.abs(e_x - e_y) / jnp.maximum(e_x + e_y, EPS)
    return 1.0 - _clip01(aniso)


def r_contrast(restored: jax.Array, clean: jax.Array) -> jax.Array:
    """Dehazing reward: luminance-contrast closeness (Eq. 17).

    ``C(Z) = std(Y_Z)`` (population std over all pixels, reading ``std-ddof0``);
    ``R_contrast = clip(min(C_rest / (C_g + eps), C_g / (C_rest + eps)))``.

    Args:
      restored: ``(B, H, W, 3)`` in [0, 1].
      clean: ``(B, H, W, 3)`` in [0, 1].

    Returns:
      ``(B,)`` in [0, 1]; 0 whenever either image is flat (literal formula).
    """
    restored, clean = _check_nhwc(restored, clean)
    return _closeness(_std_hw(luminance(restored)), _std_hw(luminance(clean)))


def r_sharp(restored: jax.Array, clean: jax.Array) -> jax.Array:
    """Deblurring reward: sharpness closeness (Eq. 18).

    ``S(Z) = mu(M(Y_Z))``; ``R_sharp = clip(min(S_rest / (S_g + eps), S_g / (S_rest + eps)))``.

    Args:
      restored: ``(B, H, W, 3)`` in [0, 1].
      clean: ``(B, H, W, 3)`` in [0, 1].

    Returns:
      ``(B,)`` in [0, 1]; 0.5 when both images are flat (S = 1e-6 on both sides).
    """
    restored, clean = _check_nhwc(restored, clean)
    s_rest = _mean_hw(grad_magnitude(luminance(restored)))
    s_g = _mean_hw(grad_magnitude(luminance(clean)))
    return _closeness(s_rest, s_g)


def r_exp(restored: jax.Array, clean: jax.Array) -> jax.Array:
    """Low-light exposure alignment (Eq. 19): ``clip(1 - |mu(Y_rest) - mu(Y_g)| / 0.5)``.

    Both means are of the luminance (reading ``exp-luma``).

    Returns:
      ``(B,)`` in [0, 1].
    """
    restored, clean = _check_nhwc(restored, clean)
    d = jnp.abs(_mean_hw(luminance(restored)) - _mean_hw(luminance(clean)))
    return _clip01(1.0 - d / 0.5)


def r_color(restored: jax.Array, clean: jax.Array) -> jax.Array:
    """Low-light colour consistency (Eq. 20): ``clip(1 - sum_c |mu(c_rest) - mu(c_g)| / 0.6)``.

    Returns:
      ``(B,)`` in [0, 1].
    """
    restored, clean = _check_nhwc(restored, clean)
    mu_rest = jnp.mean(restored, axis=(1, 2))  # (B, 3)
    mu_g = jnp.mean(clean, axis=(1, 2))
    d_c = jnp.sum(jnp.abs(mu_rest - mu_g), axis=-1)  # (B,)
    return _clip01(1.0 - d_c / 0.6)


def r_lowlight(restored: jax.Array, clean: jax.Array) -> jax.Array:
    """Low-light reward (Eq. 21): ``0.2 R_exp + 0.1 R_color`` (reading ``lowlight-0.3``).

    Args:
      restored: ``(B, H, W, 3)`` in [0, 1].
      clean: ``(B, H, W, 3)`` in [0, 1].

    Returns:
      ``(B,)`` in [0, 0.3].
    """
    return 0.2 * r_exp(restored, clean) + 0.1 * r_color(restored, clean)


# Task name -> reward, in TASKS order. Every entry has the signature (restored, clean) -> (B,).
TASK_REWARDS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "denoise": r_grad,
    "derain": r_aniso,
    "dehaze": r_contrast,
    "deblur": r_sharp,
    "lowlight": r_lowlight,
}


def task_reward(task: str, restored: jax.Array, clean: jax.Array) -> jax.Array:
    """``R_task^{(k)}`` for one task applied to a whole batch (Eq. 21).

    Args:
      task: one of ``TASKS``.
      restored: ``(B, H, W, 3)`` in [0, 1].
      clean: ``(B, H, W, 3)`` in [0, 1].

    Returns:
      ``(B,)``.

    Raises:
      ValueError: for an unknown task name (the message lists the valid ones).
    """
    try:
        fn = TASK_REWARDS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}") from None
    return fn(restored, clean)


def task_reward_by_id(task_ids: jax.Array, restored: jax.Array, clean: jax.Array) -> jax.Array:
    """Per-sample ``R_task`` for a batch mixing degradations, selected by task id inside jit.

    Computes all five rewards for every image and picks each sample's own with its id. Under
    ``vmap`` a ``lax.switch`` on a batched index is lowered to exactly this (every branch runs,
    then a select), so nothing would be saved; and the five rewards share their expensive parts
    (luminance, Sobel maps), which XLA deduplicates under jit, so the total costs little more than
    one reward.

    Args:
      task_ids: ``(B,)`` integers, index into ``irpo_jax.tasks.TASKS`` (the task ids).
      restored: ``(B, H, W, 3)`` in [0, 1].
      clean: ``(B, H, W, 3)`` in [0, 1].

    Returns:
      ``(B,)``; NaN for an id outside ``[0, len(TASKS))`` (ids are traced values, so they cannot
      raise inside jit; NaN is what the trainer treats as a failed reward component).
    """
    restored, clean = _check_nhwc(restored, clean)
    task_ids = jnp.asarray(task_ids)
    if task_ids.shape != restored.shape[:1]:
        raise ValueError(
            f"task_reward_by_id: task_ids must have shape {restored.shape[:1]} (one id per image), got {task_ids.shape}"
        )
    all_rewards = jnp.stack([TASK_REWARDS[t](restored, clean) for t in TASKS], axis=-1)  # (B, 5)
    valid = (task_ids >= 0) & (task_ids < len(TASKS))
    idx = jnp.where(valid, task_ids, 0).astype(jnp.int32)
    picked = jnp.take_along_axis(all_rewards, idx[:, None], axis=-1)[:, 0]  # (B,)
    return jnp.where(valid, picked, jnp.nan)
