"""Training logs: JSON lines (``metrics.jsonl``) plus TensorBoard event files.

Names are namespaced as DESIGN.md lists them (``reward/{name}/mean``, ``grpo/clipfrac``,
``loss/rl``, ``opt/lr`` ...). Only process 0 writes. :func:`image_panel` draws the periodic
image panels (degraded / rollouts / deterministic / clean with their rewards, DESIGN decision 8).

Each logged step is in the logs exactly once, also across kills and resumes: a resumed run
recomputes the steps after its checkpoint, so :class:`MetricWriter` first drops what was logged
after that checkpoint from ``metrics.jsonl`` (rewritten whole, then renamed over it) and from
the event files (each rewritten without those events: every reader, not only TensorBoard's
purge logic, then sees each step once). Events are written synchronously and flushed to disk
before each checkpoint (:meth:`MetricWriter.flush`), so nothing logged before a checkpoint can
be lost with a kill after it.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import pathlib
import struct
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from irpo_jax import safe_files

_EVENTS = "events.out.tfevents"
_WRITERS = itertools.count()  # event files opened by this process


class MetricWriter:
    """Writes scalars to ``workdir/metrics.jsonl`` and ``workdir/tensorboard/``; images and text to TensorBoard.

    Args:
      workdir: the run directory.
      enabled: False on processes other than 0 (nothing is read or written).
      keep_through_step: a resumed run's checkpoint step: records of later steps (logged by
        the invocation that was stopped or killed after that checkpoint) are deleted first.
        0 or -1: a run that starts at step 0 logs everything again, so every record goes.
        None: keep everything (append).
    """

    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True, keep_through_step: int | None = None):
        self.enabled = enabled
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.tb_dir = pathlib.Path(workdir) / "tensorboard"
        self._events = None
        self._logged: set[tuple[int, str]] = set()  # (step, name) of the records kept or written
        if not enabled:
            return
        if keep_through_step is not None:
            _truncate_jsonl(self.path, keep_through_step)
            _truncate_events(self.tb_dir, keep_through_step)
        self._logged = {(r["step"], k) for r in read_metrics(self.path.parent) for k in r if k not in ("step", "time")}

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        from tensorboardX.summary import scalar

        clean = {k: float(v) for k, v in values.items()}
        record = {"step": int(step), "time": time.time()}
        record.update({k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self._logged.update((int(step), k) for k in clean)
        for k, v in clean.items():
            if math.isfinite(v):  # NaN/inf stay visible in the JSONL record
                self._write(step, scalar(k, v))

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """``image``: (H, W, 3) float in [0, 1]."""
        if self.enabled:
            from tensorboardX.summary import image as image_summary

            self._write(step, image_summary(tag, np.clip(image, 0, 1), dataformats="HWC"))

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            from tensorboardX.summary import text as text_summary

            self._write(step, text_summary(tag, text))

    def logged(self, step: int, prefix: str) -> bool:
        """Whether a scalar named ``prefix...`` is in ``metrics.jsonl`` at ``step`` (kept or written)."""
        return any(s == step and name.startswith(prefix) for s, name in self._logged)

    def flush(self) -> None:
        """Puts every event written so far on disk (before a checkpoint: see the module docstring)."""
        if self._events is not None:
            self._events.flush()

    def close(self) -> None:
        if self._events is not None:
            self._events.flush()
            self._events.close()
            self._events = None

    def _write(self, step: int, summary) -> None:
        from tensorboardX.proto.event_pb2 import Event

        if self._events is None:  # opened at the first event: a rerun with nothing to do adds no file
            from tensorboardX.event_file_writer import EventsWriter

            self.tb_dir.mkdir(parents=True, exist_ok=True)
            # Synchronous (tensorboardX's SummaryWriter queues events for a thread, whose backlog
            # its flush does not drain). The file is named by the second it was opened in: the
            # pid and a count keep two writers of one second from truncating each other's file.
            self._events = EventsWriter(str(self.tb_dir / "events"), f".{os.getpid()}.{next(_WRITERS)}")
        self._events.write_event(Event(wall_time=time.time(), step=int(step), summary=summary))


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
    """All records of ``workdir/metrics.jsonl`` (for tests and reports); a line a kill cut short is skipped."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [record for _, record in _jsonl_records(path.read_bytes())]


def read_events(path: str | pathlib.Path) -> list:
    """The ``Event`` protos of one TensorBoard event file, up to a record a kill cut short."""
    from tensorboardX.proto.event_pb2 import Event

    return [Event.FromString(data) for _, data in _tfrecords(pathlib.Path(path).read_bytes())]


def _jsonl_records(raw: bytes) -> Iterator[tuple[bytes, dict]]:
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # the last line, cut short
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            yield line, record


def _keep(step: int, keep_through_step: int) -> bool:
    # Step-0 records (the first reward probe) are written again by a run that starts at step 0.
    return keep_through_step > 0 and step <= keep_through_step


def _truncate_jsonl(path: pathlib.Path, keep_through_step: int) -> None:
    if not path.exists():
        return
    raw = path.read_bytes()
    kept = b"".join(line for line, record in _jsonl_records(raw) if _keep(record["step"], keep_through_step))
    if kept != raw:
        safe_files.atomic_write_bytes(path, kept)


def _tfrecords(raw: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(whole record, payload) of a TFRecord stream: u64 length, u32 masked crc of it, payload,
    u32 masked crc of the payload. Stops at a record that is cut short or fails its checksum."""
    from tensorboardX.record_writer import masked_crc32c

    offset = 0
    while offset + 12 <= len(raw):
        header = raw[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        end = offset + 12 + length + 4
        if end > len(raw) or struct.unpack("<I", raw[offset + 8 : offset + 12])[0] != masked_crc32c(header):
            return
        data = raw[offset + 12 : offset + 12 + length]
        if struct.unpack("<I", raw[end - 4 : end])[0] != masked_crc32c(data):
            return
        yield raw[offset:end], data
        offset = end


def _truncate_events(tb_dir: pathlib.Path, keep_through_step: int) -> None:
    """Rewrites each event file without the events after ``keep_through_step`` (and a record a
    kill cut short); a file left with nothing but its header is deleted."""
    from tensorboardX.proto.event_pb2 import Event

    if not tb_dir.is_dir():
        return
    safe_files.remove_partial_files(tb_dir, max_age_s=0)  # under the workdir's lock: every writer is gone
    for path in sorted(tb_dir.glob(f"{_EVENTS}*")):
        raw = path.read_bytes()
        kept, events = [], 0
        for record, data in _tfrecords(raw):
            event = Event.FromString(data)
            if event.HasField("file_version") or _keep(event.step, keep_through_step):
                kept.append(record)
                events += not event.HasField("file_version")
        if not events:
            path.unlink()
        elif len(b"".join(kept)) != len(raw):
            safe_files.atomic_write_bytes(path, b"".join(kept))


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
