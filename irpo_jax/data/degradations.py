"""Synthetic degradation models for the five AdaIR tasks (pure numpy/scipy, no jax).

Every function is deterministic given its arguments and, where it draws random numbers, the
``np.random.Generator`` it is handed: the same generator state gives the same output bit for bit.
Parameters left as ``None`` are drawn from ``rng`` (in a fixed order) from the ranges stated in
each docstring, so a caller can either pin them or let a seeded generator pick them.

Conventions:
* Images are ``(H, W, 3)`` (or ``(H, W)``) float32 in [0, 1]; results are float32 in [0, 1]
  (clipped). :func:`to_uint8` rounds them for PNG writing.
* The one exception is :func:`add_gaussian_noise_uint8`, which reproduces the official AdaIR
  denoising protocol in the 0..255 domain, including its truncation to uint8.

What each model is meant to resemble (for the demo set; none claims to match the real data
statistically): Gaussian noise = BSD/WED denoising (exact official protocol); rain = Rain100L
(light, thin, single-direction streaks); haze = RESIDE OTS/SOTS (atmospheric scattering model
with their A/beta ranges); motion blur = GoPro (a linear motion kernel standing in for frame
averaging); low light = LOL (gamma darkening, scaling and sensor noise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "BLUR_RANGES",
    "HAZE_A_VALUES",
    "HAZE_BETA_VALUES",
    "LOW_LIGHT_RANGES",
    "NOISE_SIGMAS",
    "RAIN_RANGES",
    "add_gaussian_noise_uint8",
    "add_haze",
    "add_rain",
    "line_kernel",
    "low_light",
    "motion_blur",
    "sample_params",
    "synthetic_depth",
    "to_float32",
    "to_uint8",
]

# The noise levels AdaIR trains and evaluates on (0..255 units).
NOISE_SIGMAS = (15, 25, 50)
# Uniform ranges of each model's free parameters, in the order they are drawn.
BLUR_RANGES = {"length": (7.0, 21.0), "angle": (0.0, 180.0)}  # pixels, degrees from horizontal
RAIN_RANGES = {
    "density": (0.002, 0.006),  # streak seeds per pixel (light rain)
    "length": (10.0, 25.0),  # pixels
    "angle": (-20.0, 20.0),  # degrees from the vertical
    "intensity": (0.3, 0.6),  # peak added brightness
    "width": (0.4, 0.8),  # Gaussian std of the streak cross-section, pixels
}
LOW_LIGHT_RANGES = {
    "gamma": (1.3, 2.0),
    "scale": (0.12, 0.3),  # exposure factor
    "noise_sigma": (0.003, 0.012),  # [0, 1] units
}
# RESIDE OTS/SOTS atmospheric lights and scattering coefficients (the values in its file names).
HAZE_A_VALUES = (0.8, 0.85, 0.9, 0.95, 1.0)
HAZE_BETA_VALUES = (0.04, 0.06, 0.08, 0.1, 0.12, 0.16, 0.2)


def sample_params(
    ranges: dict[str, tuple[float, float]], rng: np.random.Generator, **given: float | None
) -> dict[str, float]:
    """Fills in a model's parameters: given values are kept, the others drawn uniformly.

    Draws happen in the order of ``ranges`` and only for missing parameters, so pinning one
    parameter does not change how the others are drawn relative to each other.

    Args:
        ranges: ``{name: (low, high)}``, e.g. :data:`RAIN_RANGES`.
        rng: the generator to draw from.
        **given: parameters already chosen (``None`` counts as missing).

    Returns:
        ``{name: value}`` for every name in ``ranges``, as Python floats.
    """
    unknown = set(given) - set(ranges)
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)}; valid: {list(ranges)}")
    out = {}
    for name, (low, high) in ranges.items():
        value = given.get(name)
        out[name] = float(rng.uniform(low, high)) if value is None else float(value)
    return out


def to_float32(img_u8: np.ndarray) -> np.ndarray:
    """Converts a uint8 image to float32 in [0, 1] (``x / 255``, as torchvision's ToTensor).

    Args:
        img_u8: uint8 array of any shape.

    Returns:
        float32 array of the same shape.
    """
    if img_u8.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {img_u8.dtype}")
    return img_u8.astype(np.float32) / np.float32(255.0)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Quantises a [0, 1] float image to uint8 with rounding (for writing PNGs).

    Rounding, not truncation: the demo's degraded files should be the closest uint8 image to the
    float model. (The official *noise* protocol truncates; that is handled separately in
    :func:`add_gaussian_noise_uint8`.)

    Args:
        img: float array, any shape; values outside [0, 1] are clipped.

    Returns:
        uint8 array of the same shape.
    """
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_float_image(img: np.ndarray, name: str = "img") -> np.ndarray:
    if img.ndim not in (2, 3):
        raise ValueError(f"{name} must be (H, W) or (H, W, C), got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.floating):
        raise TypeError(
            f"{name} must be a float image in [0, 1], got dtype {img.dtype} (convert uint8 with to_float32 first)"
        )
    return img.astype(np.float32, copy=False)


def add_gaussian_noise_uint8(clean_u8: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Adds white Gaussian noise exactly as the official AdaIR/PromptIR code does.

    Model: ``noisy = uint8(clip(clean + sigma * n, 0, 255))`` with ``n ~ N(0, 1)`` i.i.d. per pixel
    and channel, drawn in float64 in the shape of ``clean_u8``, added in the 0..255 domain, clipped,
    then cast with ``astype(np.uint8)`` -- which **truncates** (floors the non-negative values)
    rather than rounds. The truncation biases the noisy image by about -0.5 DN; models trained
    with the official pipeline have learnt it, so evaluation must reproduce it (spec section 14).

    The official code draws ``n`` from the global legacy ``np.random.randn``; here it comes from
    ``rng.standard_normal`` so that pipelines stay reproducible. The distribution is the same,
    the stream is not.

    Args:
        clean_u8: clean uint8 image, (H, W, 3) or any shape.
        sigma: noise standard deviation in 0..255 units (AdaIR trains on 15, 25, 50).
        rng: the generator the noise is drawn from (``clean_u8.size`` normals).

    Returns:
        uint8 array with the shape of ``clean_u8``.
    """
    if clean_u8.dtype != np.uint8:
        raise TypeError(f"clean_u8 must be uint8 (0..255), got dtype {clean_u8.dtype}")
    noise = rng.standard_normal(clean_u8.shape)  # float64, like np.random.randn
    return np.clip(clean_u8 + noise * float(sigma), 0, 255).astype(np.uint8)


def line_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised linear motion kernel: an anti-aliased line segment through the centre.

    The segment of ``length`` pixels is sampled densely and splatted bilinearly onto an odd-sized
    grid, so non-integer lengths and any angle give a smooth, point-symmetric kernel (hence no
    shift of the image). Empty outer rows/columns are trimmed symmetrically to keep convolution
    cheap without moving the centre.

    Args:
        length: segment length in pixels (>= 1; 1 gives the identity kernel).
        angle: direction in degrees, counter-clockwise from the +x (column) axis with rows
            pointing down, i.e. 0 = horizontal, 90 = vertical.

    Returns:
        float64 (k, k') kernel with odd sides, summing to 1.
    """
    if not length >= 1.0:
        raise ValueError(f"length must be >= 1 pixel, got {length}")
    half = (float(length) - 1.0) / 2.0
    radius = int(math.ceil(half)) + 1  # +1: room for the bilinear footprint
    size = 2 * radius + 1
    kernel = np.zeros((size, size), np.float64)
    theta = math.radians(float(angle))
    n = max(2, int(math.ceil(4 * length)) + 1)
    t = np.linspace(-half, half, n)
    xs = radius + t * math.cos(theta)
    ys = radius - t * math.sin(theta)  # rows grow downwards
    x0 = np.floor(xs).astype(int)
    y0 = np.floor(ys).astype(int)
    fx = xs - x0
    fy = ys - y0
    for dy, dx, w in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        np.add.at(kernel, (y0 + dy, x0 + dx), w)
    kernel /= kernel.sum()
    # Trim the same number of empty rows (cols) from both ends: the kernel is point-symmetric, so
    # its centre stays the centre.
    for axis in (0, 1):
        nonzero = np.flatnonzero(kernel.sum(axis=1 - axis) > 1e-12)
        m = min(int(nonzero[0]), kernel.shape[axis] - 1 - int(nonzero[-1]))
        if m > 0:
            kernel = kernel[m:-m] if axis == 0 else kernel[:, m:-m]
    return kernel


def _convolve_channels(img: np.ndarray, kernel: np.ndarray, mode: str) -> np.ndarray:
    if img.ndim == 2:
        return ndimage.convolve(img, kernel.astype(img.dtype), mode=mode)
    out = np.empty_like(img)
    k = kernel.astype(img.dtype)
    for c in range(img.shape[2]):
        out[..., c] = ndimage.convolve(img[..., c], k, mode=mode)
    return out


def motion_blur(
    img: np.ndarray,
    rng: np.random.Generator,
    length: float | None = None,
    angle: float | None = None,
) -> np.ndarray:
    """Blurs with a uniform linear motion kernel (camera shake along a straight line).

    Model: ``B = J * k`` per channel, ``k = line_kernel(length, angle)`` (sums to 1, so flat
    regions and the interior mean are preserved), borders handled with scipy's ``'reflect'``
    mode (half-sample symmetric) so that no dark frame bleeds in. A stand-in for GoPro's
    frame-averaged blur, which is usually larger and non-linear.

    Args:
        img: float image in [0, 1], (H, W) or (H, W, C).
        rng: draws the parameters left as None (length first, then angle).
        length: blur length in pixels; default drawn uniformly from [7, 21].
        angle: direction in degrees (0 = horizontal); default drawn uniformly from [0, 180).

    Returns:
        float32 image in [0, 1], same shape.
    """
    img = _check_float_image(img)
    p = sample_params(BLUR_RANGES, rng, length=length, angle=angle)
    out = _convolve_channels(img, line_kernel(p["length"], p["angle"]), mode="reflect")
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def add_rain(
    img: np.ndarray,
    rng: np.random.Generator,
    density: float | None = None,
    length: float | None = None,
    angle: float | None = None,
    intensity: float | None = None,
    width: float | None = None,
) -> np.ndarray:
    """Adds light, thin, slanted rain streaks (Rain100L-like), additively.

    Model: ``O = clip(B + S, 0, 1)`` with the same grey streak layer ``S`` on every channel.
    ``S`` is built from sparse random seeds (each pixel is a seed with probability ``density``,
    seed brightness uniform in [0.5, 1]) convolved with a line of ``length`` pixels at ``angle``
    from the vertical (one direction per image, as in Rain100L), softened by a Gaussian of std
    ``width`` (the streak thickness), clipped at 1 and scaled by ``intensity``. Seeds are drawn on
    a margin around the image so streaks enter from the borders at the same density. Since
    ``S >= 0`` the rainy image is never darker than the background.

    Args:
        img: float image in [0, 1], (H, W) or (H, W, C).
        rng: draws the parameters left as None (in argument order), then the seeds.
        density: streak seeds per pixel; default uniform in [0.002, 0.006].
        length: streak length in pixels; default uniform in [10, 25].
        angle: degrees from the vertical, positive leaning right at the top; default uniform
            in [-20, 20].
        intensity: peak added brightness; default uniform in [0.3, 0.6].
        width: Gaussian std of the streak cross-section in pixels; default uniform in [0.4, 0.8].

    Returns:
        float32 image in [0, 1], same shape.
    """
    img = _check_float_image(img)
    p = sample_params(
        RAIN_RANGES,
        rng,
        density=density,
        length=length,
        angle=angle,
        intensity=intensity,
        width=width,
    )
    density, length, angle, intensity, width = (p["density"], p["length"], p["angle"], p["intensity"], p["width"])
    h, w = img.shape[:2]
    pad = int(math.ceil(length / 2)) + 4
    shape = (h + 2 * pad, w + 2 * pad)
    seeds = (rng.random(shape) < density) * rng.uniform(0.5, 1.0, shape)
    kernel = line_kernel(length, 90.0 - angle)
    kernel /= kernel.max()  # a streak's peak is its seed's brightness, not 1/length of it
    streaks = ndimage.convolve(seeds, kernel, mode="constant")
    if width > 0:
        # Blurring spreads the one-pixel line; rescale so thin streaks stay as bright.
        peak_before = streaks.max()
        streaks = ndimage.gaussian_filter(streaks, width, mode="constant")
        if peak_before > 0:
            streaks *= peak_before / max(streaks.max(), 1e-12)
    streaks = np.clip(streaks[pad : pad + h, pad : pad + w], 0.0, 1.0) * intensity
    if img.ndim == 3:
        streaks = streaks[..., None]
    return np.clip(img + streaks.astype(np.float32), 0.0, 1.0).astype(np.float32, copy=False)


def synthetic_depth(
    shape: tuple[int, int],
    rng: np.random.Generator,
    near: float = 1.0,
    far: float = 10.0,
) -> np.ndarray:
    """A smooth synthetic scene depth for :func:`add_haze` (no depth estimator offline).

    Outdoor photographs are usually far at the top (sky, horizon) and near at the bottom, so the
    map is a ramp, tilted by an angle uniform in [-30, 30] degrees from the vertical, plus a
    low-frequency random field (white noise smoothed by a Gaussian of std ``max(H, W) / 6``,
    weight 0.35 of the ramp), rescaled to [near, far].

    Args:
        shape: (H, W).
        rng: draws the tilt, then the random field.
        near: smallest depth (arbitrary units; with RESIDE's beta in [0.04, 0.2] the defaults give
            transmissions from about 0.96 down to 0.14).
        far: largest depth.

    Returns:
        float32 (H, W) depth map with min ``near`` and max ``far``.
    """
    h, w = shape
    tilt = math.radians(float(rng.uniform(-30.0, 30.0)))
    yy, xx = np.meshgrid(np.linspace(-1.0, 1.0, h), np.linspace(-1.0, 1.0, w), indexing="ij")
    ramp = -(yy * math.cos(tilt) + xx * math.sin(tilt))  # larger = farther, top is far
    field = ndimage.gaussian_filter(rng.standard_normal((h, w)), max(h, w) / 6.0, mode="reflect")
    field /= max(float(field.std()), 1e-12)
    depth = ramp / max(float(ramp.std()), 1e-12) + 0.35 * field
    depth = (depth - depth.min()) / max(float(depth.max() - depth.min()), 1e-12)
    return (near + (far - near) * depth).astype(np.float32)


def add_haze(
    img: np.ndarray,
    depth: np.ndarray | float,
    A: float | Sequence[float],  # noqa: N803 -- the atmospheric light is "A" in the literature
    beta: float,
) -> np.ndarray:
    """Applies the atmospheric scattering model (Koschmieder), as used to make RESIDE.

    Model: ``I = J * t + A * (1 - t)`` with transmission ``t = exp(-beta * d)``. Haze therefore
    lifts dark pixels towards ``A`` and scales contrast by ``t``: with ``A`` above the image mean
    the result is brighter and lower-contrast. RESIDE OTS draws ``A`` from
    {0.8, 0.85, 0.9, 0.95, 1.0} and ``beta`` from {0.04, 0.06, 0.08, 0.1, 0.12, 0.16, 0.2}
    (encoded in its file names ``IIII_A_beta``); the demo uses the same values with
    :func:`synthetic_depth` in [1, 10].

    Args:
        img: clean float image ``J`` in [0, 1], (H, W) or (H, W, C).
        depth: scene depth ``d``, a scalar or an (H, W) map (e.g. from :func:`synthetic_depth`).
        A: atmospheric light in [0, 1], scalar or one value per channel.
        beta: scattering coefficient (>= 0).

    Returns:
        float32 hazy image in [0, 1], same shape.
    """
    img = _check_float_image(img)
    t = np.exp(-float(beta) * np.asarray(depth, np.float32)).astype(np.float32)
    if t.ndim == 2 and img.ndim == 3:
        t = t[..., None]
    a = np.asarray(A, np.float32)
    out = img * t + a * (np.float32(1.0) - t)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def low_light(
    img: np.ndarray,
    rng: np.random.Generator,
    gamma: float | None = None,
    scale: float | None = None,
    noise_sigma: float | None = None,
) -> np.ndarray:
    """Darkens a well-exposed image into a noisy low-light one (LOL-like).

    Model: ``L = clip(scale * J ** gamma + noise_sigma * n, 0, 1)`` with ``n ~ N(0, 1)`` i.i.d.
    per pixel and channel. ``gamma > 1`` crushes the mid-tones more than the highlights (as an
    under-exposed camera response does) and ``scale`` sets the exposure; the mean typically
    drops to 5-20 % of the original, like LOL's low images. The added noise stands in for the
    read/shot noise that makes real low-light enhancement hard.

    Args:
        img: float image in [0, 1], (H, W) or (H, W, C).
        rng: draws the parameters left as None (in argument order), then the noise.
        gamma: default uniform in [1.3, 2.0].
        scale: default uniform in [0.12, 0.3].
        noise_sigma: noise std in [0, 1] units; default uniform in [0.003, 0.012].

    Returns:
        float32 image in [0, 1], same shape.
    """
    img = _check_float_image(img)
    p = sample_params(LOW_LIGHT_RANGES, rng, gamma=gamma, scale=scale, noise_sigma=noise_sigma)
    gamma, scale, noise_sigma = p["gamma"], p["scale"], p["noise_sigma"]
    dark = np.float32(scale) * np.power(img, np.float32(gamma))
    noise = rng.standard_normal(img.shape).astype(np.float32) * np.float32(noise_sigma)
    return np.clip(dark + noise, 0.0, 1.0).astype(np.float32, copy=False)
