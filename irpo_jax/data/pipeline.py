"""The grain input pipeline: shuffled, augmented, sharded, checkpointable training batches.

    it = make_train_iterator(data_cfg, batch_size=32, seed=0)
    batch = next(it)   # {"degraded", "clean": (B_local, 128, 128, 3) float32 in [0, 1],
                       #  "task_id": (B_local,) int32, "sigma": (B_local,) float32, ...}
    state = it.get_state()          # JSON-able; store it with the model checkpoint
    it = make_train_iterator(data_cfg, batch_size=32, seed=0); it.set_state(state)  # resumes

**Sample order.** One epoch is the mixture of :func:`~irpo_jax.data.train_set.mixture_indices`
(every record repeated by its task's factor, the official 5-task factors by default). A
``grain.MapDataset`` shuffles it with ``seed`` and repeats it forever, reshuffling every epoch;
element ``p`` of this stream (its *position*) is the same on every host. Process ``i`` of ``n``
takes the positions ``p = i (mod n)`` -- disjoint across processes and together covering every epoch -- and groups
them into local batches of ``batch_size // n``. Batches do not straddle anything special: an
epoch boundary may fall inside a batch (the official DataLoader drops the remainder instead).

**Per-sample randomness** comes only from ``sample_rng(seed, p)`` (a numpy ``Generator`` seeded
with ``[seed, p, 0]``), so a sample depends on nothing but the seed, its position and the file
contents -- not on worker count, thread timing or what was read before. Draw order, after
``crop_img(base=16)`` of both images (as officially):

1. crop window: ``top = rng.integers(0, H - 128 + 1)``, ``left = rng.integers(0, W - 128 + 1)``,
   the same window for degraded and clean;
2. augmentation (same for both): ``"flips"`` (IRPO, default): ``rng.random() < 0.5`` -> flip
   left-right, then ``rng.random() < 0.5`` -> flip up-down; ``"official"`` (AdaIR):
   ``mode = rng.integers(1, 8)``, the 7 non-identity dihedral modes of
   ``utils/image_utils.data_augmentation``; ``"none"``;
3. denoise records only: ``n = rng.standard_normal((128, 128, 3))`` and
   ``noisy = uint8(clip(clean_u8 + sigma * n, 0, 255))`` (truncation, the official protocol).

**Bad files at run time** (one that changed or broke after the pre-training scan): the sample is
replaced by the next position's record (drawn with ``[seed, p, attempt]``), a warning names the
file once per process, and the element's ``skipped`` field counts the replacements, so a
training loop can sum and log it. ``data.max_skips`` consecutive failures raise instead.

**Resuming.** ``get_state()`` is ``{"next_batch": k, "fingerprint": ...}``; ``set_state`` restarts
the stream at local batch ``k`` (``MapDataset`` slicing, O(1)), whatever the worker count. The
fingerprint covers the records, the mixture, the seed, the batch size, the sharding and the
augmentation: a state saved under a different data config is refused (``strict=False`` skips
the check).

**Workers.** ``worker_count > 0`` uses grain's ``mp_prefetch`` (worker processes; each worker
decodes whole batches, round-robin, so the order does not depend on the worker count); batches
are copied out of grain's shared memory so that none leaks. grain reads an absl flag in its
workers; this module marks absl flags as parsed if nothing has parsed them yet.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import os
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from irpo_jax.data.config import resolve_data_config
from irpo_jax.data.eval_sets import eval_sets
from irpo_jax.data.images import (
    add_official_noise,
    crop_img,
    load_image,
    to_float01,
    to_uint8_domain,
)
from irpo_jax.data.manifest import records_from_manifest
from irpo_jax.data.records import DataError, Record, ScanReport, fingerprint
from irpo_jax.data.train_set import mixture_indices, train_records
from irpo_jax.tasks import TASK_IDS

log = logging.getLogger(__name__)

__all__ = [
    "STATE_FORMAT",
    "TrainIterator",
    "augment_pair",
    "make_eval_sets",
    "make_train_iterator",
    "make_train_sample",
    "sample_rng",
]

STATE_FORMAT = "irpo-jax-data-iterator"
# Files that failed to decode in this process (warned about once each).
_BAD_FILES: set[str] = set()


def sample_rng(seed: int, position: int, attempt: int = 0) -> np.random.Generator:
    """The generator of the sample at stream ``position`` (``attempt`` > 0: a replacement)."""
    return np.random.default_rng([int(seed), int(position), int(attempt)])


def _official_mode(img: np.ndarray, mode: int) -> np.ndarray:
    """``utils/image_utils.data_augmentation`` (numpy ``rot90`` is counter-clockwise)."""
    if mode == 0:
        return img
    if mode == 1:
        return np.flipud(img)
    k = (mode - 2) // 2 + 1  # modes 2,3 -> rot90 once; 4,5 -> twice; 6,7 -> three times
    out = np.rot90(img, k)
    return np.flipud(out) if mode % 2 == 1 else out


def augment_pair(images: Sequence[np.ndarray], rng: np.random.Generator, augment: str) -> list[np.ndarray]:
    """Applies one random augmentation (the same to every image). See the module docstring."""
    if augment == "none":
        return list(images)
    if augment == "flips":
        lr = rng.random() < 0.5
        ud = rng.random() < 0.5
        out = list(images)
        if lr:
            out = [np.fliplr(x) for x in out]
        if ud:
            out = [np.flipud(x) for x in out]
        return out
    if augment == "official":
        mode = int(rng.integers(1, 8))  # the official code never draws mode 0 (identity)
        return [_official_mode(x, mode) for x in images]
    raise ValueError(f"unknown augment {augment!r}; valid: 'flips', 'official', 'none'")


def make_train_sample(
    record: Record, rng: np.random.Generator, *, patch_size: int = 128, augment: str = "flips", crop_base: int = 16
) -> dict[str, np.ndarray]:
    """Decodes, crops, augments and (denoise) degrades one record. Pure given ``rng``.

    Returns:
      ``{"degraded", "clean": (P, P, 3) float32 in [0, 1], "task_id": int32, "sigma": float32}``.

    Raises:
      DataError: an undecodable file, a size mismatch or an image smaller than the crop.
    """
    clean = crop_img(load_image(record.clean), crop_base)  # (H, W, 3)
    degraded = None
    if record.degraded is not None:
        degraded = crop_img(load_image(record.degraded), crop_base)
        if degraded.shape[:2] != clean.shape[:2]:
            raise DataError(
                f"{record.degraded} is {degraded.shape[1]}x{degraded.shape[0]} but its "
                f"ground truth {record.clean} is {clean.shape[1]}x{clean.shape[0]}",
                record.degraded,
            )
    h, w = clean.shape[:2]
    if h < patch_size or w < patch_size:
        raise DataError(
            f"{record.degraded or record.clean} is {w}x{h} after crop_img, smaller "
            f"than the {patch_size}x{patch_size} training crop",
            record.degraded or record.clean,
        )
    top = int(rng.integers(0, h - patch_size + 1))
    left = int(rng.integers(0, w - patch_size + 1))
    window = (slice(top, top + patch_size), slice(left, left + patch_size))
    if degraded is None:
        (clean,) = augment_pair([to_uint8_domain(clean[window])], rng, augment)
        normals = rng.standard_normal(clean.shape)  # (P, P, 3) float64, as np.random.randn
        degraded = add_official_noise(np.ascontiguousarray(clean), record.sigma, normals)
    else:
        degraded, clean = augment_pair([degraded[window], clean[window]], rng, augment)
    return {
        "degraded": to_float01(np.ascontiguousarray(degraded)),
        "clean": to_float01(np.ascontiguousarray(clean)),
        "task_id": np.int32(record.task_id),
        "sigma": np.float32(record.sigma),
    }


@dataclasses.dataclass
class _Sampler:
    """``(position, record index) -> sample``; picklable, so it runs in grain workers."""

    records: list[Record]
    order: Any  # the MapDataset position -> record index (to find replacements)
    seed: int
    patch_size: int
    augment: str
    crop_base: int
    max_skips: int

    def __call__(self, position: int, index: int) -> dict[str, np.ndarray]:
        failures = []
        for attempt in range(self.max_skips + 1):
            i = int(index) if attempt == 0 else int(self.order[position + attempt])
            record = self.records[i]
            files = [f for f in (record.degraded, record.clean) if f is not None]
            if any(f in _BAD_FILES for f in files):
                failures.append(f"{record.id}: known bad file")
                continue
            try:
                out = make_train_sample(
                    record,
                    sample_rng(self.seed, position, attempt),
                    patch_size=self.patch_size,
                    augment=self.augment,
                    crop_base=self.crop_base,
                )
            except DataError as err:
                failures.append(str(err))
                # Blame the one file at fault (a dehaze ground truth is shared by many pairs).
                for f in [err.path] if err.path else files:
                    if f not in _BAD_FILES:
                        _BAD_FILES.add(f)
                        log.warning("skipping a bad training file (replaced by another sample): %s", err)
                continue
            out["index"] = np.int32(i)
            out["position"] = np.int32(position % (2**31))
            out["skipped"] = np.int32(attempt)
            return out
        raise DataError(
            f"{self.max_skips + 1} consecutive training samples failed to load at stream position "
            f"{position}; the data is broken or has changed since the pre-training scan. Last "
            f"errors: {failures[-3:]}"
        )


def _close_box(box: dict[str, Any]) -> None:
    """Closes the grain iterator in ``box`` and drops it (see ``TrainIterator._start``)."""
    it = box.pop("it", None)
    close = getattr(it, "close", None)
    if close is not None:
        try:
            close()
        except Exception as err:  # noqa: BLE001 -- shutting down; nothing left to protect
            log.debug("closing the grain iterator: %s", err)
    del it, close
    gc.collect()  # let grain's objects die now, while their modules are still intact


def _auto_workers() -> int:
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def _mark_absl_flags_parsed() -> None:
    # grain workers read an absl flag; unparsed flags raise UnparsedFlagAccessError there.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class TrainIterator:
    """An endless iterator of local training batches with a JSON-able, restorable state.

    Attributes:
      records: the training records (after scanning and manifest selection).
      epoch_size: samples per epoch over all processes (the mixture length).
      local_batch_size: batch size of this process.
      shard_count: number of processes (shards) sharing the stream.
      scan: the pre-training :class:`irpo_jax.data.records.ScanReport`.
    """

    def __init__(
        self,
        batches: grain.MapDataset,
        *,
        records: list[Record],
        epoch_size: int,
        local_batch_size: int,
        shard_count: int,
        fingerprint: str,
        worker_count: int,
        worker_buffer_size: int,
        read_threads: int,
        scan: ScanReport,
    ):
        self._batches = batches
        self.shard_count = shard_count
        self.records = records
        self.epoch_size = epoch_size
        self.local_batch_size = local_batch_size
        self.fingerprint = fingerprint
        self.worker_count = worker_count
        self.scan = scan
        self._worker_buffer_size = worker_buffer_size
        self._read_threads = read_threads
        self._next_batch = 0
        self._box: dict[str, Any] = {}  # {"it": the running grain iterator}
        self._finalizer: weakref.finalize | None = None

    def _start(self) -> None:
        ds = self._batches[self._next_batch :]
        # Threads decode whole batches in parallel; the buffer holds one batch per thread (the
        # default of 500 elements would hold ~6 GB of 32x128x128 batch pairs).
        threads = max(1, self._read_threads)
        it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads))
        if self.worker_count > 0:
            _mark_absl_flags_parsed()
            it_ds = it_ds.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=self.worker_count, per_worker_buffer_size=self._worker_buffer_size
                )
            )
        self._box = {"it": iter(it_ds)}
        # Close the workers at interpreter exit too (before module teardown), for callers that
        # never call close(): otherwise grain's own __del__ runs with half-torn-down modules and
        # prints tracebacks and leaked shared-memory warnings. Only the finalizer and this box
        # hold the grain iterator, so the finalizer can really drop it.
        self._finalizer = weakref.finalize(self, _close_box, self._box)

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if "it" not in self._box:
            self._start()
        batch = next(self._box["it"])
        # Copy out of grain's shared memory (cheap next to decoding), so nothing leaks when the
        # batch outlives the iterator.
        out = {k: np.array(v) for k, v in batch.items()}
        del batch
        self._next_batch += 1
        return out

    @property
    def steps_per_epoch(self) -> int:
        """Local batches per epoch (the same on every process)."""
        return self.epoch_size // (self.local_batch_size * self.shard_count)

    def get_state(self) -> dict[str, Any]:
        """JSON-able state: where the next batch starts, and what stream it belongs to."""
        return {"format": STATE_FORMAT, "version": 1, "next_batch": self._next_batch, "fingerprint": self.fingerprint}

    def set_state(self, state: Mapping[str, Any], *, strict: bool = True) -> None:
        """Continues from a saved :meth:`get_state` (the next batch is the one after it).

        Raises:
          DataError: not an iterator state, or (``strict``) saved under a different data config.
        """
        if isinstance(state, (str, bytes)):
            state = json.loads(state)
        if state.get("format") != STATE_FORMAT or "next_batch" not in state:
            raise DataError(f"not a data-iterator state (expected format {STATE_FORMAT!r}): {str(state)[:200]}")
        if strict and state.get("fingerprint") != self.fingerprint:
            raise DataError(
                "the saved data-iterator state belongs to a different data stream (records, "
                "mixture, seed, batch size, sharding or augmentation changed), so resuming would "
                "not continue the same sample order. Restore the original data config, or call "
                "set_state(..., strict=False) to continue at the saved batch count anyway."
            )
        self.close()
        self._next_batch = int(state["next_batch"])

    def close(self) -> None:
        """Stops the worker processes (if any). The iterator can be used again afterwards."""
        if self._finalizer is not None:
            self._finalizer()  # idempotent

    def __enter__(self) -> TrainIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stream_fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def make_train_iterator(
    data_cfg: Any,
    *,
    batch_size: int,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    worker_count: int | None = None,
) -> TrainIterator:
    """The training input pipeline for one process (see the module docstring).

    Everything that can be checked before training is checked here: folders, files (scan per
    ``data.validate``), the manifest (``data.manifest``: train only on its selected pairs).

    Args:
      data_cfg: data config (a resolved ``DataConfig``, ``default_data_config()`` or a dict with
        any subset of its keys).
      batch_size: global batch size (all processes); must divide by ``shard_count``.
      seed: shuffling and augmentation seed (>= 0).
      shard_index: this process's shard; default ``jax.process_index()``.
      shard_count: number of shards; default ``jax.process_count()``.
      worker_count: grain worker processes; default ``data.worker_count`` (-1: auto).

    Returns:
      A :class:`TrainIterator` of local batches ``{"degraded", "clean": (B, P, P, 3) float32,
      "task_id", "index", "position", "skipped": (B,) int32, "sigma": (B,) float32}`` with
      ``B = batch_size // shard_count``; ``index`` is the record index into ``.records``.

    Raises:
      DataError: a data problem, naming the path and what to do.
    """
    cfg = resolve_data_config(data_cfg)
    if shard_index is None or shard_count is None:
        import jax  # only here: worker processes never need it

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is outside [0, {shard_count})")
    if batch_size % shard_count:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {shard_count} shards")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    local_bs = batch_size // shard_count

    records, scan = train_records(cfg)
    if cfg.manifest and cfg.manifest != "all":  # "all": every pair (the trainer's opt-out of mining)
        records = records_from_manifest(records, cfg.manifest, cfg.root, cfg.manifest_allow_other_root)
        log.info("training on the %d pairs selected by %s", len(records), cfg.manifest)
    mix = mixture_indices(records, cfg)
    if len(mix) < batch_size:
        raise DataError(
            f"the training mixture has {len(mix)} samples per epoch, fewer than one "
            f"batch of {batch_size}; check data.repeats / data.tasks"
        )

    order = grain.MapDataset.source(mix).shuffle(seed=int(seed)).repeat(None)
    sampler = _Sampler(
        records, order, int(seed), int(cfg.patch_size), cfg.augment, int(cfg.crop_base), int(cfg.max_skips)
    )
    samples = order.map_with_index(sampler)[shard_index::shard_count]
    batches = samples.batch(local_bs, drop_remainder=True)

    workers = cfg.worker_count if worker_count is None else worker_count
    workers = _auto_workers() if workers < 0 else int(workers)
    fp = _stream_fingerprint(
        fingerprint(records),
        len(mix),
        int(seed),
        batch_size,
        shard_index,
        shard_count,
        cfg.patch_size,
        cfg.augment,
        cfg.crop_base,
        cfg.repeats,
    )
    return TrainIterator(
        batches,
        records=records,
        epoch_size=len(mix),
        local_batch_size=local_bs,
        shard_count=shard_count,
        fingerprint=fp,
        worker_count=workers,
        worker_buffer_size=int(cfg.worker_buffer_size),
        read_threads=int(cfg.read_threads),
        scan=scan,
    )


def _eval_element(item: dict[str, Any], task_id: int) -> dict[str, Any]:
    return {
        "degraded": to_float01(item["degraded"]),
        "clean": to_float01(item["clean"]),
        "task_id": np.int32(task_id),
        "sigma": np.float32(item["sigma"]),
        "name": item["name"],
    }


def make_eval_sets(data_cfg: Any, names: Sequence[str] | None = None) -> dict[str, grain.MapDataset]:
    """The test sets as random-access grain datasets of whole images (batch size 1, officially).

    Args:
      data_cfg: data config.
      names: set names (default ``data.eval_sets``); noisy sets expand per sigma (``bsd68_s25``).

    Returns:
      ``{name: MapDataset}`` whose elements are ``{"degraded", "clean": (H, W, 3) float32 in
      [0, 1], cropped to multiples of ``data.crop_base``; "task_id": int32; "sigma": float32;
      "name": file name}``. Noisy inputs follow the seeded protocol of :mod:`irpo_jax.data.eval_sets`.
    """
    import functools

    out = {}
    for name, es in eval_sets(data_cfg, names).items():
        task_id = TASK_IDS[es.task]
        to_float = functools.partial(_eval_element, task_id=task_id)
        out[name] = grain.MapDataset.source(es).map(to_float)
    return out
