"""Restore your own images: files or folders, any size, 8/16-bit, grayscale, with alpha.

    python -m irpo_jax.restore --checkpoint checkpoints/adair5d photo.jpg scans/ --out restored/
        [--tile 512 --tile_overlap 64] [--overwrite]

**What happens to an image.** It is decoded at full precision (8 or 16 bits per sample), EXIF
orientation applied (files Pillow decodes); grayscale is replicated to RGB and the restored RGB averaged back to one
channel; an alpha channel is kept aside and re-attached unchanged; the image is reflect-padded
at the bottom/right to a multiple of 8 (AdaIR downsamples three times), restored whole (or in
overlapping tiles with ``--tile``, which warns: tiled outputs differ from whole-image ones; see
:mod:`irpo_jax.evaluation.tiling` and the README's "Tiling" for what tiling changes), cropped
back, clipped to [0, 1] and rounded to the input's bit depth. Outputs are PNG (TIFF for TIFF
inputs), named after the input with its path relative to the input folder kept; a 16-bit input
gives a 16-bit output with every bit the network produced (``x / 65535`` in float32 and back is
exact).

**16-bit files.** Pillow decodes 16-bit *colour* PNGs to 8 bits, so those (colour types 2, 4, 6)
are read and written by the small PNG codec below (zlib + numpy; the Average and Paeth row
filters are sequential, so they run in a Python loop: 1-3 s per megapixel of such rows). 16-bit
grayscale PNGs go through Pillow (``I;16``), TIFFs through ``tifffile`` (installed with
scikit-image). Interlaced 16-bit colour PNGs are refused with a message (re-save them
non-interlaced or as TIFF). ICC profiles are carried over for Pillow-written outputs only.

**Safety.** Inputs are never overwritten: an output folder equal to an input folder, or any
output path equal to an input path, is refused before anything runs; an existing output file is
refused unless ``--overwrite``; files under ``--out`` are never taken as inputs (so
``restore photos/ --out photos/restored`` is fine); every output is written to a temporary file
and renamed, with the mode ``open`` gives new files (0644 under the default umask). Flags and
``--out`` are checked before the model loads. A file that fails (unreadable, unsupported, out
of memory) is reported and the rest continue; the exit code is 1 if any failed, with a summary.

**Memory and speed.** Same-size images are batched over the local devices (one image each,
parameters replicated; a partial batch is padded with copies that are discarded) and each
distinct padded size compiles once (different sizes recompile: the persistent compilation
cache helps across runs). An image whose whole-image
inference runs out of device memory is retried in ``--fallback_tile`` windows, with a warning.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import os
import pathlib
import struct
import sys
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from irpo_jax import cli, safe_files
from irpo_jax.evaluation import tiling

log = logging.getLogger("irpo_jax.restore")

__all__ = [
    "Decoded",
    "ImageError",
    "RestoreError",
    "RestoreReport",
    "check_out",
    "check_tiling",
    "main",
    "plan",
    "read_image",
    "read_png16",
    "restore_files",
    "write_image",
    "write_png16",
]

NETWORK_MULTIPLE = 8  # AdaIR: three 2x PixelUnshuffle downsamplings
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
TIFF_EXTENSIONS = (".tif", ".tiff")


class ImageError(ValueError):
    """An image that cannot be read or written; the message names the file."""


class RestoreError(ValueError):
    """A restore run refused before it starts (it would overwrite something, bad --out, ...)."""


# ----------------------------------------------------------------------------- a minimal PNG codec

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}


def _png_chunks(data: bytes, path: os.PathLike | str) -> Iterator[tuple[bytes, bytes]]:
    if not data.startswith(_PNG_SIGNATURE):
        raise ImageError(f"{path} is not a PNG file")
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise ImageError(f"{path}: truncated PNG (chunk {kind!r} is cut off)")
        if kind[0:1].isupper() and struct.unpack(">I", crc)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise ImageError(f"{path}: corrupt PNG (CRC mismatch in chunk {kind.decode(errors='replace')})")
        yield kind, body
        if kind == b"IEND":
            return
        pos += 12 + length
    raise ImageError(f"{path}: truncated PNG (no IEND chunk)")


def png_header(path: os.PathLike | str) -> tuple[int, int, int, int, int] | None:
    """``(width, height, bit depth, colour type, interlace)`` of a PNG, or None if not a PNG."""
    with open(path, "rb") as f:
        head = f.read(33)
    if not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return w, h, depth, ctype, interlace


def _unfilter_average(line: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    cur, up = bytearray(line.tobytes()), prev.tobytes()
    for i in range(len(cur)):
        left = cur[i - bpp] if i >= bpp else 0
        cur[i] = (cur[i] + ((left + up[i]) >> 1)) & 0xFF
    return np.frombuffer(bytes(cur), np.uint8)


def _unfilter_paeth(line: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    cur, up = bytearray(line.tobytes()), prev.tobytes()
    for i in range(len(cur)):
        a = cur[i - bpp] if i >= bpp else 0
        b = up[i]
        c = up[i - bpp] if i >= bpp else 0
        pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)  # |p-a|, |p-b|, |p-c|, p = a+b-c
        cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
    return np.frombuffer(bytes(cur), np.uint8)


def read_png16(path: os.PathLike | str) -> np.ndarray:
    """Decodes a non-interlaced 16-bit PNG losslessly.

    Returns:
      uint16 ``(H, W)`` (grayscale) or ``(H, W, C)`` with C = 2 (grey + alpha), 3 or 4.

    Raises:
      ImageError: not a 16-bit PNG, interlaced, truncated or corrupt.
    """
    data = pathlib.Path(path).read_bytes()
    header, idat = None, []
    for kind, body in _png_chunks(data, path):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            idat.append(body)
    if header is None:
        raise ImageError(f"{path}: PNG without IHDR chunk")
    w, h, depth, ctype, _, _, interlace = header
    if depth != 16 or ctype not in _CHANNELS:
        raise ImageError(f"{path}: read_png16 reads 16-bit grey/RGB(A) PNGs, this is {depth}-bit type {ctype}")
    if interlace:
        raise ImageError(
            f"{path}: interlaced 16-bit PNGs are not supported; re-save it without interlacing or as a 16-bit TIFF"
        )
    channels = _CHANNELS[ctype]
    bpp, stride = 2 * channels, 2 * channels * w
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as err:
        raise ImageError(f"{path}: corrupt PNG image data ({err})") from err
    if len(raw) < h * (stride + 1):
        raise ImageError(f"{path}: truncated PNG image data ({len(raw)} of {h * (stride + 1)} bytes)")
    rows = np.frombuffer(raw, np.uint8)[: h * (stride + 1)].reshape(h, stride + 1)
    out = np.empty((h, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(h):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            cur = line
        elif kind == 1:  # Sub: a running sum per byte lane; uint8 arithmetic wraps mod 256
            cur = np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:
            cur = line + prev
        elif kind == 3:
            cur = _unfilter_average(line, prev, bpp)
        elif kind == 4:
            cur = _unfilter_paeth(line, prev, bpp)
        else:
            raise ImageError(f"{path}: corrupt PNG (row {y} has filter type {kind})")
        out[y] = cur
        prev = out[y]
    img = out.view(">u2").reshape(h, w, channels).astype(np.uint16)
    return img[..., 0] if channels == 1 else img


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def write_png16(path: os.PathLike | str, img: np.ndarray) -> None:
    """Encodes a uint16 ``(H, W)`` or ``(H, W, C)`` (C = 1..4) image as a 16-bit PNG.

    Every row uses the "Up" filter (vectorised, and it compresses smooth images well).
    """
    if img.dtype != np.uint16:
        raise TypeError(f"write_png16 needs uint16, got {img.dtype}")
    a = img[..., None] if img.ndim == 2 else img
    h, w, c = a.shape
    raw = np.ascontiguousarray(a.astype(">u2")).view(np.uint8).reshape(h, w * c * 2)
    filtered = raw.copy()
    filtered[1:] -= raw[:-1]  # uint8 wraps mod 256, as the filter is defined
    body = np.concatenate([np.full((h, 1), 2, np.uint8), filtered], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, 16, _COLOR_TYPE[c], 0, 0, 0)
    data = _PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(body, 6)) + _chunk(b"IEND", b"")
    pathlib.Path(path).write_bytes(data)


# ----------------------------------------------------------------------------- image I/O


@dataclasses.dataclass
class Decoded:
    """An input image ready for the network, and what is needed to write it back.

    Attributes:
      rgb: (H, W, 3) float32 in [0, 1].
      alpha: (H, W) alpha in the file's integer type, or None.
      grey: the file was single-channel (write back one channel).
      dtype: ``np.uint8`` or ``np.uint16`` (the output's sample type).
      icc: the ICC profile bytes, or None.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    grey: bool
    dtype: Any
    icc: bytes | None = None


def _split(a: np.ndarray, path: os.PathLike | str, icc: bytes | None = None) -> Decoded:
    """``(H, W[, C])`` uint8/uint16 samples -> :class:`Decoded`."""
    if a.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: {a.dtype} samples are not supported (8- or 16-bit integers only)")
    a = a[..., None] if a.ndim == 2 else a
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise ImageError(f"{path}: unsupported image layout {a.shape} (expected H x W with 1-4 channels)")
    c = a.shape[-1]
    colour = a[..., :1] if c in (1, 2) else a[..., :3]
    alpha = a[..., -1].copy() if c in (2, 4) else None
    scale = np.float32(255.0 if a.dtype == np.uint8 else 65535.0)
    rgb = np.repeat(colour, 3, axis=-1) if colour.shape[-1] == 1 else colour
    return Decoded(rgb.astype(np.float32) / scale, alpha, c in (1, 2), a.dtype.type, icc)


def read_image(path: os.PathLike | str) -> Decoded:
    """Decodes an image at full precision (see the module docstring).

    Raises:
      ImageError: an unreadable, truncated or unsupported file (the message names it).
    """
    path = pathlib.Path(path)
    try:
        if path.suffix.lower() in TIFF_EXTENSIONS:
            import tifffile

            return _split(np.asarray(tifffile.imread(path)), path)
        head = png_header(path)
        if head is not None and head[2] == 16 and head[3] in (2, 4, 6):
            return _split(read_png16(path), path)
        return _read_pillow(path)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, struct.error, zlib.error) as err:
        raise ImageError(f"cannot read image {path}: {err}") from err


def _read_pillow(path: pathlib.Path) -> Decoded:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()
        icc = im.info.get("icc_profile")
        im = ImageOps.exif_transpose(im)  # users' photographs: show them as their viewer does
        mode = im.mode
        if mode.startswith("I;16") or mode == "I":
            a = np.asarray(im)
            if a.min(initial=0) < 0 or a.max(initial=0) > 65535:
                raise ImageError(f"{path}: 32-bit integer samples outside 0..65535 are not supported")
            return _split(a.astype(np.uint16), path, icc)
        if mode == "F":
            raise ImageError(f"{path}: floating-point images are not supported; save it as 8- or 16-bit")
        if mode in ("P", "PA"):
            im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
        elif mode == "1":
            im = im.convert("L")
        elif mode not in ("L", "LA", "RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in mode else "RGB")  # CMYK, YCbCr, La, RGBa, ...
        return _split(np.asarray(im), path, icc)


def write_image(path: os.PathLike | str, rgb: np.ndarray, like: Decoded) -> None:
    """Writes a restored ``(H, W, 3)`` float image in the input's format (see the module docstring).

    The file is written whole or not at all (:func:`irpo_jax.safe_files.atomic_path`); it gets
    the mode a new file gets from ``open`` (0666 less the umask: 0644 by default).
    """
    path = pathlib.Path(path)
    top = 255.0 if like.dtype == np.uint8 else 65535.0
    x = np.clip(rgb, 0.0, 1.0)
    x = x.mean(axis=-1, keepdims=True) if like.grey else x  # the inverse of replicating grey
    samples = np.rint(x * top).astype(like.dtype)
    if like.alpha is not None:
        samples = np.concatenate([samples, like.alpha[..., None].astype(like.dtype)], axis=-1)
    if samples.shape[-1] == 1:
        samples = samples[..., 0]
    with safe_files.atomic_path(path) as tmp:  # every writer below is told the format, not the suffix
        if path.suffix.lower() in TIFF_EXTENSIONS:
            import tifffile

            extra = {"photometric": "minisblack" if like.grey else "rgb"}
            if like.alpha is not None:
                extra["extrasamples"] = ["unassalpha"]
            tifffile.imwrite(tmp, samples, **extra)
        elif like.dtype == np.uint16 and not (like.grey and like.alpha is None):
            write_png16(tmp, samples)  # Pillow cannot write 16-bit colour or grey+alpha PNGs
        else:
            from PIL import Image

            im = Image.fromarray(samples)  # uint8 L/LA/RGB/RGBA, or uint16 grey (I;16)
            im.save(tmp, format="PNG", **({"icc_profile": like.icc} if like.icc else {}))


# ----------------------------------------------------------------------------- planning


def _within(p: pathlib.Path, folder: pathlib.Path) -> bool:
    return p == folder or folder in p.parents


def plan(
    inputs: Sequence[os.PathLike | str], out: os.PathLike | str, *, overwrite: bool = False
) -> tuple[list[tuple[pathlib.Path, pathlib.Path]], list[tuple[pathlib.Path, str]]]:
    """Maps inputs to output paths and checks that nothing would be overwritten.

    Folders are searched recursively for image files (hidden files and anything under ``out``
    left out); an output keeps the file's path relative to its folder, with a ``.png`` suffix
    (``.tif`` for TIFF inputs).

    Returns:
      ``(jobs, missing)``: ``[(input file, output file)]`` and ``[(input, reason)]`` for inputs
      that do not exist.

    Raises:
      RestoreError: ``out`` is an input folder, an output path is an input path, two inputs map
        to one output, or (without ``overwrite``) outputs exist already.
    """
    out = pathlib.Path(out).absolute()
    jobs: list[tuple[pathlib.Path, pathlib.Path]] = []
    missing: list[tuple[pathlib.Path, str]] = []
    for given in inputs:
        src = pathlib.Path(given).absolute()
        if src.is_dir():
            if src.resolve() == out.resolve():
                raise RestoreError(
                    f"--out {out} is the input folder {given}: restoring in place would "
                    "overwrite the inputs. Choose another --out."
                )
            files = sorted(
                p
                for p in src.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(src).parts)
                and not _within(p.resolve(), out.resolve())
            )
            if not files:
                log.warning("no image files (%s) in %s", ", ".join(IMAGE_EXTENSIONS), src)
            jobs += [(p, _output_name(out / p.relative_to(src))) for p in files]
        elif src.is_file():
            jobs.append((src, _output_name(out / src.name)))
        else:
            missing.append((pathlib.Path(given), "no such file or folder"))
    sources = {s.resolve() for s, _ in jobs}
    clash = [d for _, d in jobs if d.resolve() in sources]
    if clash:
        raise RestoreError(
            f"the output {clash[0]} would overwrite an input file; restoring never "
            "overwrites inputs. Choose another --out."
        )
    by_dst = collections.defaultdict(list)
    for s, d in jobs:
        by_dst[d].append(s)
    dup = {d: s for d, s in by_dst.items() if len(s) > 1}
    if dup:
        d, s = next(iter(dup.items()))
        raise RestoreError(
            f"{len(s)} inputs would be written to the same output {d} "
            f"({', '.join(str(x) for x in s[:4])}); restore them into different --out folders."
        )
    existing = [d for _, d in jobs if d.exists()]
    if existing and not overwrite:
        raise RestoreError(
            f"{len(existing)} output file(s) exist already, e.g. {existing[0]}; pass "
            "--overwrite to replace them, or choose another --out."
        )
    return jobs, missing


def check_out(out: os.PathLike | str) -> None:
    """Refuses an ``--out`` that is a file, lies under a file, or cannot be written in.

    Raises:
      RestoreError: naming the folder and what is wrong with it.
    """
    from irpo_jax import destinations

    try:
        destinations.check_directory(out, "--out")
    except destinations.DestinationError as err:
        raise RestoreError(str(err)) from err


def _output_name(p: pathlib.Path) -> pathlib.Path:
    return p.with_suffix(p.suffix if p.suffix.lower() in TIFF_EXTENSIONS else ".png")


# ----------------------------------------------------------------------------- restoring


@dataclasses.dataclass
class RestoreReport:
    """What a run did: ``written`` outputs, ``failed`` ``[(input, reason)]``, ``tiled`` inputs."""

    written: list[pathlib.Path] = dataclasses.field(default_factory=list)
    failed: list[tuple[pathlib.Path, str]] = dataclasses.field(default_factory=list)
    tiled: list[pathlib.Path] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [
            f"restored {len(self.written)} of {len(self.written) + len(self.failed)} image(s)"
            + (f" ({len(self.tiled)} in tiles)" if self.tiled else "")
        ]
        if self.failed:
            lines.append(f"{len(self.failed)} failed:")
            lines += [f"  {p}: {why}" for p, why in self.failed]
        return "\n".join(lines)


TILING_WARNING = (
    "tiled outputs differ from whole-image inference everywhere, not only at the seams (AdaIR "
    "normalises, pools and takes FFTs over the whole image); the README's 'Tiling' paragraph "
    "gives measured differences. Restore whole (no --tile) where memory allows."
)


def check_tiling(tile: int, tile_overlap: int, fallback_tile: int) -> None:
    """Refuses tiling flags restore cannot use, naming the flag.

    Raises:
      RestoreError: a negative value, a size or overlap that is not a multiple of 8 (AdaIR's
        downsampling), an overlap not smaller than ``--tile``, or a fallback tile of 8.
    """
    m = NETWORK_MULTIPLE
    for flag, value in (("--tile", tile), ("--tile_overlap", tile_overlap), ("--fallback_tile", fallback_tile)):
        if value < 0 or value % m:
            raise RestoreError(f"{flag} {value}: must be 0 or a positive multiple of {m} (AdaIR downsamples by {m})")
    if tile and tile_overlap >= tile:
        raise RestoreError(f"--tile_overlap {tile_overlap} must be smaller than --tile {tile}")
    if fallback_tile == m:
        raise RestoreError(f"--fallback_tile {m}: too small to restore anything; use a larger tile or 0 (do not retry)")


def restore_files(
    model: Any,
    inputs: Sequence[os.PathLike | str],
    out: os.PathLike | str,
    *,
    tile: int = 0,
    tile_overlap: int = 32,
    fallback_tile: int = 512,
    overwrite: bool = False,
    devices: Sequence[Any] | None = None,
    precision: str = "highest",
    progress: bool = True,
) -> RestoreReport:
    """Restores image files and folders into ``out`` (see the module docstring).

    Args:
      model: a :class:`~irpo_jax.checkpointing.Restorer`, an NNX module, or a jittable
        ``(B, H, W, 3) -> (B, H, W, 3)`` function (H, W multiples of 8).
      inputs: files and folders.
      out: output folder (created).
      tile: restore images with a side above ``tile`` in overlapping windows (0 = whole).
      tile_overlap: window overlap in pixels (multiple of 8).
      fallback_tile: window size used when whole-image inference runs out of memory (0 = fail).
      overwrite: replace existing outputs.
      devices: devices to batch over (default: all local devices).
      precision: matmul precision of the forward pass.
      progress: show a progress bar.

    Returns:
      A :class:`RestoreReport`; failures are in it, not raised.

    Raises:
      RestoreError: the run is refused before anything is restored (see :func:`plan`), or
        ``out`` is not writable.

    Over 100 lines with this docstring; the body (76 lines) is the one loop over the planned files
    (read, restore whole or tiled, write, record the failure of one file and go on).
    """
    from tqdm import tqdm

    from irpo_jax import destinations
    from irpo_jax.evaluation import runner as runner_lib

    check_tiling(tile, tile_overlap, fallback_tile)
    check_out(out)
    jobs, missing = plan(inputs, out, overwrite=overwrite)
    report = RestoreReport(failed=list(missing))
    if not jobs:
        return report
    try:
        pathlib.Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RestoreError(f"--out: {destinations.os_error_line(err, 'cannot create')}") from err
    if tile:
        log.warning("--tile %d: images with a side above %d px are restored in tiles; %s", tile, tile, TILING_WARNING)
    runner = runner_lib.make_runner(model, ensemble=False, oracle_k=0, devices=devices, precision=precision)
    bar = tqdm(total=len(jobs), unit="img", desc="restoring", disable=not progress, dynamic_ncols=True)

    def finish(src: pathlib.Path, dst: pathlib.Path, dec: Decoded, restored: np.ndarray) -> None:
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_image(dst, restored, dec)
            report.written.append(dst)
        except (OSError, ValueError, TypeError) as err:
            report.failed.append((src, f"cannot write {dst}: {err}"))
        bar.update(1)

    def tiled(src, dst, dec, padded, size) -> None:
        h, w = dec.rgb.shape[:2]
        try:
            restored = runner.restore_tiled(padded, tile=size, overlap=min(tile_overlap, size - NETWORK_MULTIPLE))
        except Exception as err:  # noqa: BLE001 -- report and continue with the next file
            report.failed.append(
                (
                    src,
                    f"{'out of memory' if runner_lib.out_of_memory(err) else type(err).__name__}"
                    f" with {size}px tiles: {str(err)[:300]}; try a smaller --tile",
                )
            )
            bar.update(1)
            return
        report.tiled.append(src)
        finish(src, dst, dec, restored[:h, :w])

    def run(group: list[tuple[pathlib.Path, pathlib.Path, Decoded, np.ndarray]]) -> None:
        try:
            outs = runner.restore_images([padded for _, _, _, padded in group])
        except Exception as err:  # noqa: BLE001 -- an OOM surfaces as a runtime error of the backend
            if not (runner_lib.out_of_memory(err) and fallback_tile):
                for src, _, _, _ in group:
                    report.failed.append((src, f"{type(err).__name__}: {str(err)[:300]}"))
                    bar.update(1)
                return
            for src, dst, dec, padded in group:
                log.warning(
                    "%s: out of memory whole; retrying in %dpx tiles (%s)",
                    src,
                    fallback_tile,
                    "tiled outputs differ from whole-image inference",
                )
                tiled(src, dst, dec, padded, fallback_tile)
            return
        for (src, dst, dec, _), o in zip(group, outs):
            h, w = dec.rgb.shape[:2]
            finish(src, dst, dec, o[:h, :w])

    buckets = runner_lib.ShapeBuckets(run, size=runner.n, max_waiting=4 * runner.n)  # bound host memory
    decoded = runner_lib.prefetch(
        lambda job: read_image(job[0]), jobs, workers=min(4, os.cpu_count() or 1), errors=(ImageError,)
    )  # a file that cannot be read comes as its ImageError
    for (src, dst), dec in decoded:
        if isinstance(dec, ImageError):
            report.failed.append((src, str(dec)))
            bar.update(1)
            continue
        padded = tiling.pad_to_multiple(dec.rgb, NETWORK_MULTIPLE)
        if tile and max(padded.shape[:2]) > tile:
            tiled(src, dst, dec, padded, tile)
            continue
        buckets.add(padded.shape, (src, dst, dec, padded))
    buckets.flush()
    bar.close()
    return report


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m irpo_jax.restore",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="model directory (convert_adair output or <workdir>/model)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (never an input folder)")
    p.add_argument("--tile", type=int, default=0, help="restore images with a side above SIZE in tiles (0 = whole)")
    p.add_argument("--tile_overlap", type=int, default=32, help="tile overlap in pixels (multiple of 8)")
    p.add_argument(
        "--fallback_tile",
        type=int,
        default=512,
        help="tile size to retry with when a whole image runs out of memory (0 = do not retry)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument(
        "--precision",
        default="highest",
        choices=("highest", "high", "default"),
        help="matmul precision ('default' allows TF32 on GPUs: faster)",
    )
    return p


def _run(args: argparse.Namespace) -> int:
    """The restoration the flags ask for: 0 every file written, 1 some failed, 2 none found."""
    from irpo_jax import checkpointing

    check_tiling(args.tile, args.tile_overlap, args.fallback_tile)
    checkpointing.read_metadata(args.checkpoint)
    check_out(args.out)
    plan(args.inputs, args.out, overwrite=args.overwrite)  # refuse before loading the model
    model = checkpointing.load_model(args.checkpoint)
    report = restore_files(
        model,
        args.inputs,
        args.out,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        fallback_tile=args.fallback_tile,
        overwrite=args.overwrite,
        precision=args.precision,
    )
    print(report.summary(), file=sys.stderr if report.failed else sys.stdout)
    if not report.written and not report.failed:
        print("error: no images found in the inputs", file=sys.stderr)
        return 2
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    cli.setup_logging(logging.INFO)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # its backend notes are noise here
    from irpo_jax.checkpointing import CheckpointError

    return cli.main_errors(lambda: _run(args), (RestoreError, CheckpointError), code=2)


if __name__ == "__main__":
    sys.exit(main())
