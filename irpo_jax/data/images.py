"""Decoding images, and the official protocol's crop and noise.

Decoding (:func:`load_image`) converts grayscale/palette/CMYK to RGB, drops alpha and keeps
16-bit images at full range; :func:`to_float01` is the one conversion to the model's [0, 1]
floats. The official protocol's pieces every reader and evaluator share: ``crop_img`` (every
image cropped to a multiple of ``base``, about the centre) and the uint8-truncated Gaussian noise
of the denoise sets at the official levels :data:`OFFICIAL_SIGMAS`.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from irpo_jax.data.records import DataError

__all__ = [
    "OFFICIAL_SIGMAS",
    "add_official_noise",
    "crop_img",
    "cropped_size",
    "image_size",
    "load_image",
    "to_float01",
    "to_uint8_domain",
]

OFFICIAL_SIGMAS = (15, 25, 50)  # the official denoise noise levels (0..255 units)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decodes an image file to ``(H, W, 3)`` RGB, uint8 or (for 16-bit files) uint16.

    Deliberate conversions: grayscale, palette, CMYK, ... -> RGB (PIL ``convert``); alpha is
    dropped (not composited); 16-bit grayscale is kept at 16 bits (uint16, replicated to 3
    channels). PIL decodes 16-bit *RGB* PNGs to their high bytes, so those come back as uint8
    (within 1/255 of ``v / 65535``). EXIF orientation is ignored, as in the official code.

    Raises:
      DataError: unreadable, truncated or unsupported files (the message names the file).
    """
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                a = np.asarray(im)
                if a.min(initial=0) < 0 or a.max(initial=0) > 65535:
                    raise DataError(
                        f"{path}: 32-bit integer image outside 0..65535; convert it to 8- or 16-bit PNG", path
                    )
                a = a.astype(np.uint16)
                return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=-1))
            if mode == "F":
                raise DataError(
                    f"{path}: floating-point images (PIL mode F) are not supported; convert it to 8- or 16-bit PNG",
                    path,
                )
            if mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError) as err:  # PIL raises these for bad/truncated files
        raise DataError(f"cannot decode image {path}: {err}", path) from err


def to_float01(img: np.ndarray) -> np.ndarray:
    """uint8 / uint16 image -> float32 in [0, 1] (``x / 255`` or ``x / 65535``)."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / np.float32(255.0)
    if img.dtype == np.uint16:
        return img.astype(np.float32) / np.float32(65535.0)
    raise TypeError(f"expected a uint8 or uint16 image, got {img.dtype}")


def to_uint8_domain(img: np.ndarray) -> np.ndarray:
    """uint8 unchanged; uint16 rounded to uint8 (the noise protocol is defined on 0..255)."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return np.rint(img.astype(np.float32) / np.float32(257.0)).astype(np.uint8)
    raise TypeError(f"expected a uint8 or uint16 image, got {img.dtype}")


def crop_img(img: np.ndarray, base: int = 16) -> np.ndarray:
    """The official ``crop_img``: drop ``h % base`` rows, ``(h % base) // 2`` from the top and the
    rest from the bottom; likewise for columns.

    ``(H, W, ...) -> (H - H % base, W - W % base, ...)``.
    """
    h, w = img.shape[:2]
    ch, cw = h % base, w % base
    return img[ch // 2 : h - ch + ch // 2, cw // 2 : w - cw + cw // 2]


def cropped_size(size: tuple[int, int], base: int = 16) -> tuple[int, int]:
    """``(H, W)`` after :func:`crop_img`."""
    return size[0] - size[0] % base, size[1] - size[1] % base


def add_official_noise(clean_u8: np.ndarray, sigma: float, normals: np.ndarray) -> np.ndarray:
    """``uint8(clip(clean + sigma * n, 0, 255))`` with truncation, as AdaIR's denoise datasets.

    Args:
      clean_u8: uint8 ``(H, W, 3)``.
      sigma: noise level in 0..255 units.
      normals: standard normal draws of the same shape (float64 as numpy draws them).
    """
    if clean_u8.dtype != np.uint8:
        raise TypeError(f"clean_u8 must be uint8, got {clean_u8.dtype}")
    return np.clip(clean_u8 + normals * float(sigma), 0, 255).astype(np.uint8)


def image_size(path: str, decode: bool) -> tuple[int, int]:
    """``(H, W)`` of an image, reading only its header unless ``decode``."""
    if decode:
        return load_image(path).shape[:2]
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read image header of {path}: {err}") from err
