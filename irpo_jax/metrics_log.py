"""Training logs: JSON lines (``metrics.jsonl``) plus TensorBoard event files (tensorboardX).

Names are namespaced as DESIGN.md lists them (``reward/{name}/mean``, ``grpo/clipfrac``,
``loss/rl``, ``opt/lr`` ...). Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from collections.abc import Mapping

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
