"""The test sets: whole, ``crop_img``-ed image pairs, the denoise sets' seeded noise.

:func:`eval_sets` turns a data config and set names (:data:`irpo_jax.tasks.TEST_SETS`, a group
such as ``ood5``, or a key of ``data.eval_paired``) into :class:`EvalSet` s, random access to
lazily decoded pairs. The in-domain sets are read in the official layout; the out-of-domain sets
of IRPO Table 3 in each release's own (:mod:`irpo_jax.data.ood_sets`)::

    ROOT/test/dehaze/{input,target}/     SOTS outdoor: input/IIII_A_B.ext -> target/IIII.png
    ROOT/test/derain/Rain100L/{input,target}/, ROOT/test/deblur/gopro/..., ROOT/test/enhance/lol/...
    ROOT/test/denoise/{bsd68,urban100}/  clean images; noisy inputs by the seeded protocol below
    ROOT/test/ood/{rrshid,gtrain,sidd,reloblur,lolistreet}/  the out-of-domain sets of IRPO
                                         Table 3, each as its release unpacks
                                         (:mod:`irpo_jax.data.ood_sets`; group name ``ood5``)

**Test-set noise protocol** (BSD68, Urban100; documented deviation: sorted order). The official
``test.py`` calls ``np.random.seed(0)`` once, then for sigma = 15, 25, 50 in turn and for each
file in ``os.listdir`` order draws ``np.random.randn(H, W, 3)`` for the ``crop_img(base=16)``-ed
clean image and forms ``uint8(clip(clean + sigma * n, 0, 255))`` (truncated), the stream
continuing across files and sigmas. ``os.listdir`` order depends on the filesystem, so here the
files are **sorted by name**; otherwise the stream is the same (legacy ``RandomState(seed)``,
``randn`` draws, one stream per folder starting at ``data.test_noise_seed``, default 0). The
stream always runs through sigma 15, 25, 50 in that order, whichever of them ``data.sigmas``
evaluates.

**Test sets are whole or refused**: a set's score is a mean over its images, comparable only
when every image is there, so an input without a matching target (a missing or misnamed file)
refuses the set, naming the files, as an unreadable image does when it is decoded.
``allow_partial=True`` (``evaluate --allow_partial``) scores what is there instead; the set then
lists what it left out in :attr:`EvalSet.missing` and the evaluation marks the row partial.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from irpo_jax.data import ood_sets
from irpo_jax.data.config import DataConfig, data_root, resolve_data_config, under
from irpo_jax.data.images import (
    OFFICIAL_SIGMAS,
    add_official_noise,
    crop_img,
    cropped_size,
    image_size,
    load_image,
    to_uint8_domain,
)
from irpo_jax.data.records import DataError, Record, find_by_stem, images_in, paired_folder
from irpo_jax.tasks import OOD_SETS, SET_GROUPS, TEST_SETS, expand_set_names

__all__ = ["EvalSet", "eval_sets"]


class _NoiseStream:
    """The official test-noise stream of one folder: ``RandomState(seed)``, then ``randn(H, W, 3)``
    per (sigma, file) in order. Random access is served by remembering the generator state at
    every item reached, so evaluating in order costs exactly the draws themselves."""

    _CHUNK = 1 << 22

    def __init__(self, seed: int, shapes: Sequence[tuple[int, int, int]]):
        self.shapes = list(shapes)
        self._states: dict[int, tuple] = {0: np.random.RandomState(seed).get_state()}
        self._lock = threading.Lock()

    def normals(self, k: int) -> np.ndarray:
        with self._lock:
            start = max(j for j in self._states if j <= k)
            rs = np.random.RandomState()
            rs.set_state(self._states[start])
            for j in range(start, k):
                n = int(np.prod(self.shapes[j]))
                while n > 0:  # skip in chunks; consecutive randn calls continue one stream
                    rs.randn(min(n, self._CHUNK))
                    n -= self._CHUNK
                self._states[j + 1] = rs.get_state()
            out = rs.randn(*self.shapes[k])
            self._states.setdefault(k + 1, rs.get_state())
            return out


@dataclasses.dataclass
class EvalSet:
    """A test set: random access to whole, ``crop_img``-ed image pairs (lazily decoded).

    ``dataset[i]`` is ``{"degraded": uint8 (H, W, 3), "clean": uint8 (H, W, 3) (uint16 for 16-bit
    files), "name": str, "task": str, "sigma": int}``. ``name`` is unique within the set (the
    file name, or for sets with sub-folders the path below the set's folder, e.g.
    ``scene/frame.png``); ``group`` is added for sets averaged per group (GT-Rain's scenes).
    """

    name: str
    task: str
    records: list[Record]
    sigma: int = 0
    crop_base: int = 16
    noise: _NoiseStream | None = None
    noise_offset: int = 0  # index of this set's first item in the shared noise stream
    names: list[str] | None = None  # per record; default: the degraded (or clean) file's name
    # Per record: the group whose mean the set's score averages (GT-Rain: the scene); None: the
    # set's score is the mean over its images.
    groups: list[str] | None = None
    # (record index) -> (degraded, clean) arrays, for sets not stored as image files (SIDD's
    # .mat blocks); None: decode the record's files.
    loader: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None
    missing: list[str] = dataclasses.field(default_factory=list)  # inputs without a target, left out
    protocol: str = ""  # how this set is read and scored, where that differs from the default

    def __len__(self) -> int:
        return len(self.records)

    def item_name(self, i: int) -> str:
        """The unique name of image ``i`` (see the class docstring)."""
        if self.names is not None:
            return self.names[i]
        r = self.records[i]
        return Path(r.degraded or r.clean).name

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.records[i]
        if self.loader is not None:  # pixels not stored as image files (SIDD's .mat blocks)
            degraded, clean = (crop_img(a, self.crop_base) for a in self.loader(i))
        elif r.degraded is None:  # noise synthesised by the seeded protocol
            clean = to_uint8_domain(crop_img(load_image(r.clean), self.crop_base))
            normals = self.noise.normals(self.noise_offset + i)  # (H, W, 3) float64
            degraded = add_official_noise(clean, self.sigma, normals)
        else:
            clean = crop_img(load_image(r.clean), self.crop_base)
            degraded = crop_img(load_image(r.degraded), self.crop_base)
        if degraded.shape != clean.shape:
            raise DataError(
                f"{self.name}: {r.degraded} is {degraded.shape[:2]} but its target "
                f"{r.clean} is {clean.shape[:2]} after crop_img; fix the pair"
            )
        item = {"degraded": degraded, "clean": clean, "name": self.item_name(i), "task": self.task, "sigma": self.sigma}
        if self.groups is not None:
            item["group"] = self.groups[i]
        return item


def _sots_records(folder: Path, name: str) -> tuple[list[Record], list[str]]:
    """``(records, inputs without a target)`` of SOTS: ``input/IIII_A_B.ext`` -> ``target/IIII.png``."""
    for sub in ("input", "target"):
        if not (folder / sub).is_dir():
            raise DataError(
                f"test set {name}: {folder / sub} does not exist (SOTS layout: input/IIII_A_B.ext and target/IIII.png)"
            )
    out, missing = [], []
    for p in images_in(folder / "input"):
        # DerainDehazeDataset._get_gt_path: target/<id>.png (other extensions accepted too)
        t = find_by_stem(folder / "target", p.name.split("_")[0], ".png")
        if not t.exists():
            missing.append(f"{p.name} (no {t.relative_to(folder).as_posix()})")
            continue
        out.append(Record(f"{name}:{p.name}", "dehaze", 0, str(t), str(p)))
    if not out:
        raise DataError(f"test set {name}: no input/target pairs in {folder}")
    return out, missing


def eval_sets(cfg: Any, names: Sequence[str] | None = None, *, allow_partial: bool = False) -> dict[str, EvalSet]:
    """The test sets, in order; noisy sets expand to one set per sigma (``bsd68_s25``).

    Args:
      cfg: the data config (a :class:`~irpo_jax.data.config.DataConfig`, or a dict or ConfigDict
        that :func:`~irpo_jax.data.config.resolve_data_config` resolves).
      names: set names (keys of :data:`TEST_SETS` or of ``data.eval_paired``, or a group of
        :data:`SET_GROUPS` such as ``ood5``); default ``data.eval_sets``. A requested set whose
        folder is missing raises.
      allow_partial: keep a set some of whose inputs have no matching target, listing them in
        :attr:`EvalSet.missing` (default: refuse it).

    Returns:
      ``{name: EvalSet}``; noisy sets are ``{set}_s{sigma}`` for each of ``data.sigmas``.

    Raises:
      DataError: a missing folder, a layout that is not the set's, an empty set, or (unless
        ``allow_partial``) inputs without a target; the message names the files and what to do.
    """
    cfg = resolve_data_config(cfg)
    root = data_root(cfg)
    names = expand_set_names(list(cfg.eval_sets if names is None else names))
    out: dict[str, EvalSet] = {}
    for name in names:
        try:
            sets = _eval_set(name, cfg, root)
            for es in sets.values():
                if es.missing and not allow_partial:
                    shown = ", ".join(es.missing[:5]) + (
                        f" and {len(es.missing) - 5} more" if len(es.missing) > 5 else ""
                    )
                    raise DataError(
                        f"test set {name}: {len(es.missing)} of its {len(es.missing) + len(es)} "
                        f"input(s) have no matching target: {shown}. A set's score is comparable "
                        "only over all its images: add or rename the targets, or allow a partial "
                        "set (evaluate --allow_partial) whose row is marked partial"
                    )
            out.update(sets)
        except DataError as err:
            where = f"data.eval_paired.{name}" if name in cfg.eval_paired else f"data.test_dirs.{name}"
            raise DataError(f"{err} (fix {where}, or leave {name!r} out of data.eval_sets)") from err
    return out


def _eval_set(name: str, cfg: DataConfig, root: Path) -> dict[str, EvalSet]:
    """One named test set (noisy sets: one per sigma)."""
    base = cfg.crop_base
    if name in cfg.eval_paired:
        spec = dict(cfg.eval_paired[name])
        recs, missing = paired_folder(under(root, spec["path"]).absolute(), spec["task"], name)
        return {name: EvalSet(name, spec["task"], recs, crop_base=base, missing=missing)}
    if name not in TEST_SETS:
        raise DataError(
            f"unknown test set {name!r}; valid: {sorted(TEST_SETS)}, a group "
            f"({', '.join(SET_GROUPS)}) or a key of data.eval_paired "
            f"({sorted(cfg.eval_paired)})"
        )
    task, _, layout = TEST_SETS[name]
    folder = under(root, cfg.test_dirs[name])
    if layout == "paired":
        recs, missing = paired_folder(folder, task, name)
        return {name: EvalSet(name, task, recs, crop_base=base, missing=missing)}
    if layout == "sots":
        recs, missing = _sots_records(folder, name)
        return {name: EvalSet(name, task, recs, crop_base=base, missing=missing)}
    if name in OOD_SETS:
        listing = ood_sets.READERS[name](folder, name)
        return {
            name: EvalSet(
                name,
                task,
                listing.records,
                crop_base=base,
                names=listing.names,
                groups=listing.groups,
                loader=listing.loader,
                missing=listing.missing,
                protocol=listing.protocol,
            )
        }
    # noisy: clean images + the seeded protocol, in sorted order
    if not folder.is_dir():
        raise DataError(f"test set {name}: {folder} does not exist")
    files = images_in(folder)
    if not files:
        raise DataError(f"test set {name}: no images in {folder}")
    shapes = [(*cropped_size(image_size(str(p), decode=False), base), 3) for p in files]
    sigmas = [int(s) for s in cfg.sigmas]
    # The stream runs over the official sigmas in their order whatever data.sigmas holds (it is
    # also the training setting): sigma 25's test noise stays the published one when training
    # uses only some levels. Other levels continue the stream after sigma 50.
    stream_sigmas = list(OFFICIAL_SIGMAS) + [s for s in sigmas if s not in OFFICIAL_SIGMAS]
    stream = _NoiseStream(int(cfg.test_noise_seed), shapes * len(stream_sigmas))
    out = {}
    for s in sigmas:
        recs = [Record(f"{name}:{p.name}@s{s}", "denoise", s, str(p), None) for p in files]
        out[f"{name}_s{s}"] = EvalSet(
            f"{name}_s{s}",
            task,
            recs,
            sigma=s,
            crop_base=base,
            noise=stream,
            noise_offset=stream_sigmas.index(s) * len(files),
        )
    return out
