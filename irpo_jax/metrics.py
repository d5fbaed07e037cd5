"""PSNR and SSIM in JAX, numerically matching ``skimage.metrics`` (the AdaIR/PromptIR protocol).

The published all-in-one tables are computed with
``skimage.metrics.peak_signal_noise_ratio(gt, out, data_range=1)`` and
``structural_similarity(gt, out, data_range=1, channel_axis=-1)`` on RGB float images in [0, 1]
(DESIGN.md, "Metrics protocol"). These functions reproduce those definitions so that the same
code scores evaluation images and serves as a reward inside the jitted GRPO step:

* jittable and differentiable, float32 (float64 when given float64 with x64 enabled);
* ``HWC`` input gives a scalar, ``NHWC`` gives one value per image, shape ``(N,)``;
* both arguments are symmetric, so the (gt, out) order of skimage does not matter.

SSIM is skimage's default (not Wang et al.'s Gaussian variant): a 7x7 *uniform* window,
K1 = 0.01, K2 = 0.03, sample covariance (``cov_norm = 49 / 48``), computed per channel, averaged
over the SSIM map with a ``(7 - 1) // 2 = 3`` pixel border excluded, then averaged over channels.
Because that border is excluded, every kept window lies fully inside the image, so skimage's
``reflect`` padding never enters the result: we compute the "valid" box filter directly, which is
exactly the cropped map.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["psnr", "ssim", "SSIM_WIN_SIZE", "SSIM_K1", "SSIM_K2"]

SSIM_WIN_SIZE = 7  # skimage default window side (uniform window)
SSIM_K1 = 0.01  # skimage default
SSIM_K2 = 0.03  # skimage default


def _as_batch(x: jax.Array, y: jax.Array, name: str) -> tuple[jax.Array, jax.Array, bool]:
    """Checks shapes, promotes to a float compute dtype and adds a batch axis to HWC input.

    Returns:
      ``(x, y, batched)`` with ``x, y`` of shape ``(N, H, W, C)``; ``batched`` is False when the
      input was a single HWC image (the caller then returns a scalar).
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"{name}: images must have the same shape, got {x.shape} and {y.shape}")
    if x.ndim not in (3, 4):
        raise ValueError(f"{name}: expected an HWC image or an NHWC batch, got shape {x.shape} ({x.ndim}-D)")
    # At least float32: bf16/uint8 inputs would lose the precision the skimage parity needs.
    dtype = jnp.promote_types(jnp.result_type(x, y), jnp.float32)
    x = x.astype(dtype)
    y = y.astype(dtype)
    batched = x.ndim == 4
    if not batched:
        x, y = x[None], y[None]
    return x, y, batched


def psnr(x: jax.Array, y: jax.Array, data_range: float = 1.0, *, eps: float = 0.0) -> jax.Array:
    """Peak signal-to-noise ratio, as ``skimage.metrics.peak_signal_noise_ratio``.

    ``10 * log10(data_range**2 / mse)`` with the MSE over all pixels and channels of each image.

    Identical images (``mse == 0``): with the default ``eps=0`` the value is ``+inf``, exactly as
    skimage, and the gradient is 0 there (PSNR is at its maximum, so 0 is the right
    subgradient; a plain ``log10(1/mse)`` would give NaN). Rewards that cannot take ``inf`` either
    clip the mapped value (``clip((psnr - lo) / (hi - lo), 0, 1)`` maps inf to 1 with zero
    gradient) or pass a small ``eps`` (``1e-10`` caps PSNR at 100 dB); ``eps`` changes the
    metric, so it is never used for evaluation.

    Args:
      x: image(s) in [0, data_range], ``(H, W, C)`` or ``(N, H, W, C)``.
      y: same shape as ``x``.
      data_range: peak value (1.0 for float images in [0, 1]).
      eps: added to the MSE before the log; 0 reproduces skimage.

    Returns:
      PSNR in dB: a scalar for HWC input, ``(N,)`` for NHWC input.
    """
    x, y, batched = _as_batch(x, y, "psnr")
    mse = jnp.mean(jnp.square(x - y), axis=(1, 2, 3)) + eps  # (N,)
    # Double `where`: the log never sees 0, so neither value nor gradient becomes NaN at mse == 0.
    positive = mse > 0
    safe_mse = jnp.where(positive, mse, 1.0)
    value = jnp.where(positive, 10.0 * jnp.log10(data_range**2 / safe_mse), jnp.inf)
    return value if batched else value[0]


def _box_sum_valid(z: jax.Array, size: int) -> jax.Array:
    """Sum over every ``size x size`` window fully inside the image ("valid" box filter).

    Separable sum of shifted slices: 2 * (size - 1) adds on XLA, fast on CPU (a depthwise
    convolution with feature_group_count is ~40x slower on XLA:CPU) and, unlike a cumulative
    sum, free of the float32 cancellation of differencing large running totals.

    Args:
      z: ``(N, H, W, C)``.
      size: window side.

    Returns:
      ``(N, H - size + 1, W - size + 1, C)``.
    """
    h, w = z.shape[1], z.shape[2]
    rows = sum(z[:, k : k + h - size + 1] for k in range(size))  # (N, H', W, C)
    return sum(rows[:, :, k : k + w - size + 1] for k in range(size))  # (N, H', W', C)


def ssim(x: jax.Array, y: jax.Array, data_range: float = 1.0) -> jax.Array:
    """Mean structural similarity, as ``skimage.metrics.structural_similarity(channel_axis=-1)``.

    skimage defaults throughout: 7x7 uniform window, ``K1=0.01``, ``K2=0.03``, sample covariance
    (``cov_norm = 49/48``), per-channel SSIM maps averaged with a 3-pixel border excluded, then
    averaged over channels (every channel map has the same size, so this is the mean over
    (H', W', C)). Smooth everywhere (``C1, C2 > 0``), so gradients are finite for any input.

    Args:
      x: image(s) in [0, data_range], ``(H, W, C)`` or ``(N, H, W, C)``, with H, W >= 7.
      y: same shape as ``x``.
      data_range: dynamic range of the images (1.0 for float images in [0, 1]).

    Returns:
      Mean SSIM in [-1, 1]: a scalar for HWC input, ``(N,)`` for NHWC input.

    Raises:
      ValueError: if shapes differ or an image side is smaller than the 7-pixel window (skimage
        raises too).
    """
    x, y, batched = _as_batch(x, y, "ssim")
    n, h, w, c = x.shape
    win = SSIM_WIN_SIZE
    if h < win or w < win:
        raise ValueError(f"ssim: images must be at least {win}x{win} pixels, got {h}x{w}")
    np_ = win * win
    cov_norm = np_ / (np_ - 1)  # sample covariance, skimage's use_sample_covariance=True

    # Variances are shift-invariant, so compute the second moments of images centred on their
    # own per-channel means: uxx - ux^2 then cancels between numbers near the variance instead
    # of near 0.25 (measured: typically 5-10x closer to skimage's float64, worst case ~5e-6 on
    # the test photographs). The centre is a constant (stop_gradient): the result does not
    # depend on it mathematically.
    cx = jax.lax.stop_gradient(jnp.mean(x, axis=(1, 2), keepdims=True))  # (N, 1, 1, C)
    cy = jax.lax.stop_gradient(jnp.mean(y, axis=(1, 2), keepdims=True))
    xc, yc = x - cx, y - cy
    # One filter pass for all five moments: stack them along channels.
    moments = jnp.concatenate([xc, yc, xc * xc, yc * yc, xc * yc], axis=-1)  # (N, H, W, 5C)
    means = _box_sum_valid(moments, win) / np_  # (N, H', W', 5C)
    mxc, myc, mxx, myy, mxy = jnp.split(means, 5, axis=-1)  # each (N, H', W', C)
    vx = cov_norm * (mxx - mxc * mxc)
    vy = cov_norm * (myy - myc * myc)
    vxy = cov_norm * (mxy - mxc * myc)
    ux, uy = mxc + cx, myc + cy  # local means of the original images

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    a1 = 2 * ux * uy + c1
    a2 = 2 * vxy + c2
    b1 = ux * ux + uy * uy + c1
    b2 = vx + vy + c2
    s = (a1 * a2) / (b1 * b2)  # (N, H', W', C): the SSIM map, already border-cropped
    value = jnp.mean(s, axis=(1, 2, 3))  # (N,)
    return value if batched else value[0]
