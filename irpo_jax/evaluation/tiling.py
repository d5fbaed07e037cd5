"""Memory-bounded tiled inference with overlap, and padding to the network's multiple.

An image too large for the device is cut into ``tile x tile`` windows that overlap by
``overlap`` pixels, the windows are restored in batches (every window has the same shape, so
one compiled program serves the whole image), and the results are blended back on the host::

    out = tiled_apply(fn, image, tile=512, overlap=64, batch_size=n_devices)

**Geometry.** Window starts along an axis of length ``L`` are ``0, s, 2s, ...`` with stride
``s = tile - overlap``, and the last window is moved back to end exactly at ``L`` (so it may
overlap its neighbour by more than ``overlap``; no window ever leaves the image, so nothing is
padded). ``tile`` and ``overlap`` must be multiples of the network's ``multiple`` (8 for AdaIR:
three 2x PixelUnshuffle downsamplings): then every window starts on the 8-pixel grid of the
whole image, and a network that is only equivariant to shifts by multiples of 8 sees each
window exactly as it sees that part of the whole image. An axis no longer than ``tile`` is one
window of the full length.

**Blending.** Each window's output is weighted by a separable ramp that is 0 within
``m = overlap // 4`` pixels of an *inner* window edge (an edge that is not an image border),
rises linearly to 1 over the next ``overlap - 2m`` pixels and stays 1 elsewhere; the result is
``sum(w * out) / sum(w)``. At image borders the weight is 1 up to the edge, so border pixels are
treated exactly as whole-image inference treats them (the network's own padding).

**What is exact, and what is not.** For a *local* network -- one whose output at a pixel depends
only on the input within ``m`` pixels of it (any plain CNN with receptive radius <= ``m``) and
that is equivariant to shifts by ``multiple`` pixels -- every pixel with non-zero weight is
computed exactly as by whole-image inference, so ``tiled_apply`` equals whole-image inference
everywhere up to float rounding (tested with such a network). AdaIR is *not* local: the MDTA
channel attention L2-normalises queries and keys over all tokens and mixes channels with a
``C x C`` matrix computed from the whole image, and each FreModule takes an FFT of the whole
feature map, sizes its frequency mask from the input's height and width, and pools globally
(GAP in the channel gate). A window therefore sees different global statistics than the whole
image, and tiled AdaIR output differs from whole-image output *everywhere*, not only near
seams; the overlap only hides seams. Larger tiles are closer to whole-image inference; a tile
that covers the image reproduces it exactly. No bound is claimed for trained models: on the
untrained tiny test fixture, 32-pixel tiles of a 128-pixel image differ from whole-image output
by a mean absolute 0.2 (outputs of order 1), which says nothing about a trained checkpoint; for
the demo's supervised model, 128- and 256-pixel tiles of 300-640-pixel photographs are 35-58 dB
PSNR from whole-image output (the README's "Tiling", ``benchmarks/tiling_error.py``). Measure
the gap on your own model and images with that script before relying on tiles. This is why
evaluation runs images whole (the published protocol) and tiling is only a fallback for images
that do not fit in memory.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["blend_weights", "pad_to_multiple", "tile_starts", "tiled_apply"]


def pad_to_multiple(image: np.ndarray, multiple: int = 8, mode: str = "reflect") -> np.ndarray:
    """Pads the bottom and right of an ``(H, W, C)`` image up to multiples of ``multiple``.

    Reflect padding (``np.pad``'s ``"reflect"``: the edge pixel is not repeated) keeps the image
    statistics the network sees close to the original; crop back with ``out[:H, :W]``. numpy
    reflects repeatedly when the pad is wider than the image, and a one-pixel axis (where
    reflection is undefined) is padded by repetition.

    Args:
      image: ``(H, W, C)`` array.
      multiple: target multiple of H and W.
      mode: ``np.pad`` mode.

    Returns:
      ``(H', W', C)`` with ``H' = ceil(H / multiple) * multiple`` (same for W).
    """
    h, w = image.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return image
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (image.ndim - 2)
    # np.pad(mode="reflect") returns garbage-free but *edge* values for a length-1 axis; make
    # that explicit so the behaviour does not depend on numpy's corner-case handling.
    use = "edge" if mode == "reflect" and min(h, w) == 1 else mode
    return np.pad(image, pad, mode=use)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts along one axis (see the module docstring).

    Args:
      length: axis length.
      tile: window length (``>= overlap``).
      overlap: nominal overlap of neighbouring windows.

    Returns:
      Sorted starts; ``[0]`` when ``length <= tile``.
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    if stride <= 0:
        raise ValueError(f"tile ({tile}) must be larger than the overlap ({overlap})")
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return sorted(set(starts))


def _ramp(n: int, overlap: int, left_inner: bool, right_inner: bool) -> np.ndarray:
    """1-D weights of a window of length ``n`` (zero margin, linear ramp, then ones)."""
    w = np.ones(n, np.float64)
    if overlap <= 0:
        return w
    margin = overlap // 4
    width = max(overlap - 2 * margin, 1)
    i = np.arange(n, dtype=np.float64)
    if left_inner:
        w *= np.clip((i - margin + 0.5) / width, 0.0, 1.0)
    if right_inner:
        w *= np.clip((n - 1 - i - margin + 0.5) / width, 0.0, 1.0)
    return w


def blend_weights(length: int, starts: list[int], tile: int, overlap: int) -> list[np.ndarray]:
    """The 1-D blending weight of each window along one axis (see the module docstring)."""
    n = min(tile, length)
    return [_ramp(n, overlap, s > 0, s + n < length) for s in starts]


def tiled_apply(
    fn: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    *,
    tile: int,
    overlap: int,
    multiple: int = 8,
    batch_size: int = 1,
) -> np.ndarray:
    """Applies an image-to-image network window by window and blends the windows.

    Device memory is bounded by one batch of windows; the blended output and the weight sum
    live on the host (float32/float64 of the image size).

    Args:
      fn: ``(N, t, t', C) float32 -> (N, t, t', C)``; called with ``N == batch_size`` (the last
        batch is padded by repeating a window, so one shape is compiled per image shape).
      image: ``(H, W, C)`` float32, H and W multiples of ``multiple``.
      tile: window side in pixels, a multiple of ``multiple``.
      overlap: nominal overlap in pixels, a multiple of ``multiple``, ``< tile``.
      multiple: the network's size multiple (8 for AdaIR).
      batch_size: windows per call of ``fn`` (e.g. the number of devices).

    Returns:
      ``(H, W, C)`` float32.

    Raises:
      ValueError: a tile, overlap or image size that is not a multiple of ``multiple``.
    """
    h, w, c = image.shape
    if tile <= 0 or tile % multiple or overlap < 0 or overlap % multiple or overlap >= tile:
        raise ValueError(
            f"tile={tile} and overlap={overlap} must be multiples of {multiple} with "
            f"0 <= overlap < tile (the network downsamples by {multiple})"
        )
    if h % multiple or w % multiple:
        raise ValueError(f"image {h}x{w} is not a multiple of {multiple}; pad it first (pad_to_multiple)")
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    wy, wx = blend_weights(h, ys, tile, overlap), blend_weights(w, xs, tile, overlap)
    windows = [(y, x, wy[i], wx[j]) for i, y in enumerate(ys) for j, x in enumerate(xs)]

    acc = np.zeros((h, w, c), np.float64)
    total = np.zeros((h, w, 1), np.float64)
    for k in range(0, len(windows), batch_size):
        chunk = windows[k : k + batch_size]
        crops = [image[y : y + th, x : x + tw] for y, x, _, _ in chunk]
        crops += [crops[-1]] * (batch_size - len(crops))  # pad the batch: one compiled shape
        out = np.asarray(fn(np.stack(crops).astype(np.float32)))  # (batch_size, th, tw, C)
        for (y, x, ry, rx), o in zip(chunk, out):
            weight = (ry[:, None] * rx[None, :])[..., None]  # (th, tw, 1)
            acc[y : y + th, x : x + tw] += weight * o
            total[y : y + th, x : x + tw] += weight
    if total.min() <= 0:  # cannot happen with the ramps above; guard the invariant anyway
        raise AssertionError("tiling left pixels without weight; please report this")
    return (acc / total).astype(np.float32)
