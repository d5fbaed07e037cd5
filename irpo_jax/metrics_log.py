"""Training logs: JSON lines (``metrics.jsonl``) plus TensorBoard event files (tensorboardX).

Names are namespaced as DESIGN.md lists them (``reward/{name}/mean``, ``grpo/clipfrac``,
``loss/rl``, ``opt/lr`` ...). Only process 0 writes. :func:`image_panel` draws the periodic
image panels (degraded / rollouts / deterministic / clean with their rewards, DESIGN decision 8).
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from collections.abc import Mapping, Sequence

import numpy as np


class MetricWriter:
    """Writes scalars to ``workdir/metrics.jsonl`` and ``workdir/tensorboard/``; images to TensorBoard."""

    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True):
        self.enabled = enabled
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.tb_dir = pathlib.Path(workdir) / "tensorboard"
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.tb_dir), flush_secs=30)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()}
        record = {"step": int(step), "time": time.time()}
        record.update({k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in clean.items():
            if math.isfinite(v):  # NaN/inf stay visible in the JSONL record
                self._tb.add_scalar(k, v, int(step))

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """``image``: (H, W, 3) float in [0, 1]."""
        if self.enabled:
            self._tb.add_image(tag, np.clip(image, 0, 1), int(step), dataformats="HWC")

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            self._tb.add_text(tag, text, int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
    """All records of ``workdir/metrics.jsonl`` (for tests and reports)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Short names in panel captions (tiles are 32-128 pixels wide; the bitmap font is 6 pixels a character).
_CAPTION_NAMES = {"aesthetic": "aes"}


def image_panel(
    degraded: np.ndarray,
    clean: np.ndarray,
    *,
    rollouts: np.ndarray | None = None,
    deterministic: np.ndarray | None = None,
    deterministic_label: str = "mean",
    rewards: np.ndarray | None = None,
    scores: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """One image's panel: degraded | rollouts ... | deterministic | clean, captions underneath.

    Captions: each rollout's composite reward ``R`` and its raw component scores (PSNR in dB,
    SSIM, task, ...: the values before normalisation, as a person reads them), and the PSNR
    against the clean image of the degraded input and of the deterministic output. The
    captions sit in a strip below the tiles, one column per tile clipped to its width, so the
    tiles are the inputs pixel for pixel.

    Args:
      degraded: (H, W, 3) the input, float in [0, 1].
      clean: (H, W, 3) the ground truth.
      rollouts: (G, H, W, 3) sampled restorations (None: no rollout tiles, e.g. supervised).
      deterministic: (H, W, 3) the policy-mean (or plain model) restoration, or None.
      deterministic_label: its caption's first line.
      rewards: (G,) the composite reward of each rollout, or None.
      scores: component name -> (G,) raw scores of each rollout, or None.

    Returns:
      (H + caption height, W * tiles, 3) float32.
    """
    tiles, captions = [degraded], [["input", f"psnr={_fmt(_psnr(degraded, clean))}"]]
    for i, rollout in enumerate(rollouts if rollouts is not None else ()):
        lines = [f"R={_fmt(rewards[i])}"] if rewards is not None else [f"rollout {i}"]
        lines += [f"{_CAPTION_NAMES.get(k, k)}={_fmt(v[i])}" for k, v in (scores or {}).items()]
        tiles.append(rollout)
        captions.append(lines)
    if deterministic is not None:
        tiles.append(deterministic)
        captions.append([deterministic_label, f"psnr={_fmt(_psnr(deterministic, clean))}"])
    tiles.append(clean)
    captions.append(["clean"])
    image = np.concatenate([np.asarray(t, np.float32) for t in tiles], axis=1)
    font = _caption_font()
    captions = [_wrap(lines, np.shape(tile)[1], font) for tile, lines in zip(tiles, captions)]
    rows = max(map(len, captions))
    strips = [_caption_strip(lines, np.shape(tile)[1], rows, font) for tile, lines in zip(tiles, captions)]
    return np.concatenate([image, np.concatenate(strips, axis=1)], axis=0)


def _psnr(x: np.ndarray, y: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
    return 10 * math.log10(1.0 / mse) if mse > 0 else math.inf


def _fmt(value: float) -> str:
    """27.1, .84, -.12, nan: short enough for a narrow tile."""
    value = float(value)
    if not math.isfinite(value) or abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}".replace("0.", ".", 1) if abs(value) < 1 else f"{value:.2f}"


def _caption_font():
    from PIL import ImageFont

    # The bitmap font ships inside Pillow (no file, no download); Pillow < 10.1 has only that one.
    return getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()


def _wrap(lines: Sequence[str], width: int, font) -> list[str]:
    """``name=value`` lines too wide for the tile become two lines (32-pixel smoke tiles)."""
    out = []
    for line in lines:
        name, eq, value = line.partition("=")
        if eq and font.getbbox(line)[2] > width - 2:
            out += [name + eq, value]
        else:
            out.append(line)
    return out


def _caption_strip(lines: Sequence[str], width: int, rows: int, font) -> np.ndarray:
    """White text on black, ``rows`` lines high, clipped to ``width``: (h, width, 3) float32."""
    from PIL import Image, ImageDraw

    line_height = font.getbbox("Ag")[3] + 1
    strip = Image.new("L", (width, rows * line_height + 2), 0)
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((1, 1 + i * line_height), line, fill=255, font=font)
    gray = np.asarray(strip, np.float32) / 255.0
    return np.repeat(gray[..., None], 3, axis=-1)
