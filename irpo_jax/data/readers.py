"""Dataset readers for the AdaIR/PromptIR data layout, the test sets and plain paired folders.

Everything here is lightweight and host-side (numpy + PIL): readers turn a data config into lists
of :class:`Record` (paths + task + noise level, no pixels); images are decoded only when a
pipeline or evaluator asks for one (:func:`load_image`). The layout is the official one
(adair-spec.md section 10), so the demo set (``python -m irpo_jax.data.demo --out DIR``) and the
real data are read by the same code::

    ROOT/Train/Denoise/                  clean images; names listed in LISTS/noisy/denoise.txt;
                                         noise synthesised on the fly at sigma 15/25/50
    ROOT/Train/Derain/{rainy,gt}/        LISTS/rainy/rainTrain.txt: rainy/rain-N.png
                                         -> gt/norain-N.png
    ROOT/Train/Dehaze/{synthetic,original}/  LISTS/hazy/hazy_outside.txt:
                                         synthetic/partK/IIII_A_B.ext -> original/IIII.ext
                                         (the hazy file's extension)
    ROOT/Train/Deblur/{blur,sharp}/      GoPro, same names
    ROOT/Train/Enhance/{low,gt}/         LOL, same names
    ROOT/test/dehaze/{input,target}/     SOTS outdoor: input/IIII_A_B.ext -> target/IIII.png
    ROOT/test/derain/Rain100L/{input,target}/, ROOT/test/deblur/gopro/..., ROOT/test/enhance/lol/...
    ROOT/test/denoise/{bsd68,urban100}/  clean images; noisy inputs by the seeded protocol below
    ROOT/test/ood/{rrshid,gtrain,sidd,reloblur,lolistreet}/  the out-of-domain sets of IRPO
                                         Table 3, each as its release unpacks
                                         (:mod:`irpo_jax.data.ood_sets`; group name ``ood5``)

``LISTS`` is ``data.list_dir``; by default ``ROOT/data_dir`` (the demo set) or, failing that,
``ROOT/../data_dir`` (the official checkout, where ``data/`` and ``data_dir/`` are siblings).

**Task ids** are the names of :data:`irpo_jax.tasks.TASKS` (``denoise, derain, dehaze,
deblur, lowlight``); the official ``enhance`` is ``lowlight`` here, and the noise level of a
denoise record is kept separately in ``Record.sigma`` (0 for the other tasks) instead of the
official ``denoise_15/25/50`` ids.

**Test-set noise protocol** (BSD68, Urban100; documented deviation: sorted order). The official
``test.py`` calls ``np.random.seed(0)`` once, then for sigma = 15, 25, 50 in turn and for each
file in ``os.listdir`` order draws ``np.random.randn(H, W, 3)`` for the ``crop_img(base=16)``-ed
clean image and forms ``uint8(clip(clean + sigma * n, 0, 255))`` (truncated), the stream
continuing across files and sigmas. ``os.listdir`` order depends on the filesystem, so here the
files are **sorted by name**; otherwise the stream is the same (legacy ``RandomState(seed)``,
``randn`` draws, one stream per folder starting at ``data.test_noise_seed``, default 0). The
stream always runs through sigma 15, 25, 50 in that order, whichever of them ``data.sigmas``
evaluates.

**Bad input** is handled before training where possible (:func:`train_records` scans headers):
missing or unreadable files, degraded/clean size mismatches and images smaller than the
training crop are skipped, counted in a :class:`ScanReport` and logged with the file name;
missing folders, empty folders and manifests that do not match the data raise :class:`DataError`
naming the path and what to do. Decoding converts grayscale/palette/CMYK to RGB, drops alpha and
keeps 16-bit images at full range (see :func:`load_image`).

**Test sets are whole or refused** (:func:`eval_sets`): a set's score is a mean over its images,
comparable only when every image is there, so an input without a matching target (a missing or
misnamed file) refuses the set, naming the files, as an unreadable image does when it is decoded.
``allow_partial=True`` (``evaluate --allow_partial``) scores what is there instead; the set then
lists what it left out in :attr:`EvalSet.missing` and the evaluation marks the row partial.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from irpo_jax.tasks import OOD_SETS, SET_GROUPS, TASK_IDS, TASKS, TEST_SETS, expand_set_names

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST_KIND",
    "OFFICIAL_REPEATS",
    "OFFICIAL_SIGMAS",
    "OOD_SETS",
    "SET_GROUPS",
    "TASK_IDS",
    "TEST_SETS",
    "DataError",
    "EvalSet",
    "Record",
    "ScanReport",
    "add_official_noise",
    "crop_img",
    "cropped_size",
    "default_data_config",
    "eval_sets",
    "expand_set_names",
    "fingerprint",
    "load_image",
    "mixture_indices",
    "paired_folder_records",
    "read_manifest",
    "records_from_manifest",
    "relative_to_root",
    "resolve_config",
    "to_float01",
    "to_uint8_domain",
    "train_records",
]

OFFICIAL_SIGMAS = (15, 25, 50)
# Per-task repetition factors of the official all-in-one epoch (adair-spec.md 10.2); denoise is
# repeated x3 for each sigma, so every clean image appears 9 times per epoch.
OFFICIAL_REPEATS = {"denoise": 3, "derain": 120, "dehaze": 1, "deblur": 5, "lowlight": 20}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MANIFEST_KIND = "irpo-jax-mining-manifest"



class DataError(ValueError):
    """A data problem found before (or instead of) training; the message names the file or folder
    and says what to do. ``path`` is the one file to blame, when there is one."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


# --------------------------------------------------------------------------- config


def default_data_config(root: str = "") -> Any:
    """The data section of a training/mining config, with the official five-task mixture.

    Returns an ``ml_collections.ConfigDict`` (plain dicts with any subset of these keys are
    accepted too; see :func:`resolve_config`). Paths are relative to ``root`` unless absolute.

    Args:
      root: the AdaIR data root (holds ``Train/`` and ``test/``), e.g. a demo set's ``--out``.
    """
    import ml_collections

    c = ml_collections.ConfigDict()
    c.root = str(root)  # AdaIR data root holding Train/ and test/ (the demo set's --out)
    # Folder with the noisy/ rainy/ hazy/ list files; "" = ROOT/data_dir, else ROOT/../data_dir.
    c.list_dir = ""
    c.tasks = tuple(TASKS)  # tasks in the training mixture (names of irpo_jax.tasks.TASKS)
    c.sigmas = OFFICIAL_SIGMAS  # denoise noise levels (0..255 units); a record per image and sigma
    c.repeats = dict(OFFICIAL_REPEATS)  # per-task repetitions per epoch (denoise: per sigma)
    c.train_dirs = {  # per-task training folders, relative to root
        "denoise": "Train/Denoise",
        "derain": "Train/Derain",
        "dehaze": "Train/Dehaze",
        "deblur": "Train/Deblur",
        "lowlight": "Train/Enhance",
    }
    c.list_files = {  # official name lists, relative to list_dir; a missing one = all files
        "denoise": "noisy/denoise.txt",
        "derain": "rainy/rainTrain.txt",
        "dehaze": "hazy/hazy_outside.txt",
    }
    # Extra paired folders (input/ + target/, same names) mixed into training:
    # [{"name": "mydata", "path": "/data/mine", "task": "derain", "repeat": 1}, ...]
    c.paired_train = []
    c.test_dirs = {name: folder for name, (_, folder, _) in TEST_SETS.items()}  # relative to root
    c.eval_sets = ("sots", "rain100l", "bsd68", "gopro", "lol")  # five-task protocol
    # Extra paired evaluation folders (OOD sets, own data): {"rrshid": {"path": ..., "task": ...}}
    c.eval_paired = {}
    c.test_noise_seed = 0  # np.random.seed of the official BSD68/Urban100 noise stream
    c.patch_size = 128  # training crop side (pixels)
    c.crop_base = 16  # crop_img(base): every image is first cropped to a multiple of this
    c.augment = "flips"  # "flips" (IRPO: random h/v flips), "official" (AdaIR modes 1-7), "none"
    c.validate = "header"  # pre-training scan: "header" (fast), "decode" (every pixel), "none"
    c.worker_count = -1  # grain worker processes; -1 = auto (min(8, cpu_count - 1)), 0 = in-process
    c.worker_buffer_size = 2  # batches buffered per worker
    c.read_threads = 4  # decoding threads per process (PIL releases the GIL while decoding)
    c.max_skips = 16  # consecutive unreadable samples tolerated before a sample fails loudly
    c.manifest = ""  # mining manifest (python -m irpo_jax.mine): train only on its selected pairs
    c.manifest_allow_other_root = False  # accept a manifest mined under a different data root
    return c


def _to_plain(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    if isinstance(cfg, Mapping):
        return {k: (_to_plain(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}
    raise TypeError(f"a data config must be a dict or ConfigDict, got {type(cfg).__name__}")


def resolve_config(cfg: Any) -> dict[str, Any]:
    """Merges ``cfg`` (dict or ConfigDict, any subset of keys) over :func:`default_data_config`.

    Nested dicts (``repeats``, ``train_dirs``, ...) are merged key by key, so
    ``{"repeats": {"derain": 10}}`` keeps the other factors.

    Raises:
      DataError: an unknown key (most likely a typo), an unknown task name or a bad value.
    """
    base = default_data_config().to_dict()
    user = _to_plain(cfg)
    unknown = sorted(set(user) - set(base))
    if unknown:
        raise DataError(f"unknown data config key(s) {unknown}; valid keys: {sorted(base)}")
    out = dict(base)
    for key, value in user.items():
        if isinstance(base[key], dict) and isinstance(value, Mapping) and key != "eval_paired":
            out[key] = {**base[key], **value}
        else:
            out[key] = value
    out["tasks"] = tuple(out["tasks"])
    for t in out["tasks"]:
        if t not in TASK_IDS:
            raise DataError(f"unknown task {t!r} in data.tasks; valid tasks: {', '.join(TASKS)}")
    if out["augment"] not in ("flips", "official", "none"):
        raise DataError(f"data.augment={out['augment']!r}; valid: 'flips', 'official', 'none'")
    if out["validate"] not in ("header", "decode", "none"):
        raise DataError(f"data.validate={out['validate']!r}; valid: 'header', 'decode', 'none'")
    for t, r in out["repeats"].items():
        if int(r) < 0:
            raise DataError(f"data.repeats.{t} must be >= 0, got {r}")
    return out


def _root(cfg: Mapping[str, Any]) -> Path:
    if not cfg["root"]:
        raise DataError(
            "data.root is empty: point it at an AdaIR data folder (with Train/ and test/), e.g. "
            "a demo set built by `python -m irpo_jax.data.demo --out DIR`."
        )
    root = Path(os.path.expanduser(str(cfg["root"]))).absolute()
    if not root.is_dir():
        raise DataError(
            f"data.root {root} does not exist or is not a folder. Point data.root at the AdaIR "
            "data folder (holding Train/ and test/), or build the demo set there with "
            f"`python -m irpo_jax.data.demo --out {root}`."
        )
    return root


def _under(root: Path, rel: str) -> Path:
    p = Path(os.path.expanduser(str(rel)))
    return p if p.is_absolute() else root / p


def _list_dir(cfg: Mapping[str, Any], root: Path) -> Path:
    if cfg["list_dir"]:
        return _under(root, cfg["list_dir"])
    for cand in (root / "data_dir", root.parent / "data_dir"):
        if cand.is_dir():
            return cand
    return root / "data_dir"


# --------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class Record:
    """One training or test pair, by path; no pixels.

    Attributes:
      id: stable key, independent of where the data root lives: ``"<task>:<path>"`` with the
        degraded (or, for denoise, clean) path relative to the data root, plus ``"@s<sigma>"``
        for denoise records; ``"<set>:<name>"`` for paired folders.
      task: a name in :data:`TASKS`.
      sigma: noise level in 0..255 units for synthesised noise (denoise), else 0.
      clean: path of the ground truth.
      degraded: path of the degraded image; None when noise is synthesised from ``clean``.
      size: ``(H, W)`` of the stored clean image (before ``crop_img``), when scanned.
    """

    id: str
    task: str
    sigma: int
    clean: str
    degraded: str | None
    size: tuple[int, int] | None = None

    @property
    def task_id(self) -> int:
        return TASK_IDS[self.task]


@dataclasses.dataclass
class ScanReport:
    """What a scan kept and skipped. ``skipped`` is ``[(path, reason)]``."""

    kept: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def skip(self, path: str | os.PathLike, reason: str) -> None:
        self.skipped.append((str(path), reason))

    def log(self, what: str = "training data", limit: int = 20) -> None:
        """Logs one warning per skipped file (the first ``limit``) and a summary."""
        for path, reason in self.skipped[:limit]:
            log.warning("skipped %s: %s", path, reason)
        if len(self.skipped) > limit:
            log.warning("... and %d more skipped files", len(self.skipped) - limit)
        if self.skipped:
            log.warning(
                "%s: skipped %d record(s), kept %s", what, len(self.skipped),
                ", ".join(f"{t} {n}" for t, n in self.kept.items()),
            )


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_image(p))


def _require_dir(folder: Path, what: str, key: str) -> None:
    if not folder.is_dir():
        raise DataError(
            f"{what}: folder {folder} does not exist. Set {key} to the right place (paths are "
            "relative to data.root), or drop the task from data.tasks."
        )


def _read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def relative_to_root(root: Path, p: Path) -> str:
    """``p`` relative to ``root`` in POSIX form; ``p`` itself when it lies outside ``root``."""
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def _find_by_stem(folder: Path, stem: str, prefer_ext: str) -> Path:
    """``folder/stem.prefer_ext`` if it exists, else the first ``folder/stem.<image ext>`` found,
    else the preferred path (which then fails the scan as missing)."""
    preferred = folder / f"{stem}{prefer_ext}"
    if preferred.exists():
        return preferred
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        cand = folder / f"{stem}{ext}"
        if cand.exists():
            return cand
    return preferred


def _task_pairs(task: str, cfg: Mapping[str, Any], root: Path) -> list[tuple[str | None, str, str]]:
    """``[(degraded path or None, clean path, id base)]`` of one task's official training set."""
    folder = _under(root, cfg["train_dirs"][task])
    _require_dir(folder, f"{task} training set", f"data.train_dirs.{task}")
    list_rel = cfg["list_files"].get(task)
    listed: list[str] | None = None
    if list_rel:
        list_path = _list_dir(cfg, root) / list_rel
        if list_path.is_file():
            listed = _read_list(list_path)
        else:
            log.warning(
                "%s: list file %s not found; using every image in %s instead (set "
                "data.list_dir / data.list_files.%s to use the official list)",
                task, list_path, folder, task,
            )
    pairs: list[tuple[str | None, str, str]] = []
    if task == "denoise":
        names = listed if listed is not None else [p.name for p in _images_in(folder)]
        for name in names:
            p = folder / name
            pairs.append((None, str(p), relative_to_root(root, p)))
    elif task == "derain":
        if listed is None:
            _require_dir(folder / "rainy", "derain training set", "data.train_dirs.derain")
            listed = [f"rainy/{p.name}" for p in _images_in(folder / "rainy")]
        for line in listed:
            # dataset_utils._get_gt_name: rainy/rain-N.png -> gt/norain-N.png
            gt = line.split("rainy")[0] + "gt/norain-" + line.split("rain-")[-1]
            rainy = folder / line
            pairs.append((str(rainy), str(folder / gt), relative_to_root(root, rainy)))
    elif task == "dehaze":
        if listed is None:
            _require_dir(folder / "synthetic", "dehaze training set", "data.train_dirs.dehaze")
            listed = sorted(p.relative_to(folder).as_posix()
                            for p in (folder / "synthetic").rglob("*") if _is_image(p))
        for line in listed:
            hazy = folder / line
            # dataset_utils._get_nonhazy_name: original/IIII.<extension of the hazy file>; other
            # extensions are accepted too, since INSTALL.md draws .png GTs next to .jpg hazy files.
            gt_dir = folder / (line.split("synthetic")[0] + "original")
            gt = _find_by_stem(gt_dir, hazy.name.split("_")[0], hazy.suffix)
            pairs.append((str(hazy), str(gt), relative_to_root(root, hazy)))
    else:  # deblur (GoPro blur/sharp), lowlight (LOL low/gt): same names in both folders
        deg_sub, gt_sub = ("blur", "sharp") if task == "deblur" else ("low", "gt")
        _require_dir(folder / deg_sub, f"{task} training set", f"data.train_dirs.{task}")
        _require_dir(folder / gt_sub, f"{task} training set", f"data.train_dirs.{task}")
        for p in _images_in(folder / deg_sub):
            pairs.append((str(p), str(folder / gt_sub / p.name), relative_to_root(root, p)))
    if not pairs:
        raise DataError(
            f"{task} training set: no images found in {folder}"
            + (f" (list file {list_rel} is empty)" if listed is not None else "")
            + f". Put the data there, fix data.train_dirs.{task}, or drop {task!r} from data.tasks."
        )
    return pairs


def paired_folder_records(path: str | os.PathLike, task: str, name: str) -> list[Record]:
    """Records of a generic paired folder: ``path/input/X`` with ``path/target/X``.

    Names match exactly, or by stem when only the extension differs (``input/a.jpg`` ->
    ``target/a.png``). Unmatched inputs are logged and left out.

    Raises:
      DataError: a missing folder, no images, or no input with a matching target.
    """
    folder = Path(os.path.expanduser(str(path))).absolute()
    records, unmatched = _paired_folder(folder, task, name)
    if unmatched:
        log.warning("paired folder %s: %d input(s) without a target in %s, left out: %s",
                    name, len(unmatched), folder / "target", ", ".join(unmatched[:5]))
    return records


def _paired_folder(folder: Path, task: str, name: str) -> tuple[list[Record], list[str]]:
    """``(records, names of the inputs without a target)`` of ``folder/{input,target}``."""
    if task not in TASK_IDS:
        raise DataError(f"paired folder {name!r}: unknown task {task!r}; valid: {', '.join(TASKS)}")
    for sub in ("input", "target"):
        if not (folder / sub).is_dir():
            raise DataError(
                f"paired folder {name!r}: {folder / sub} does not exist. A paired folder needs "
                "input/ (degraded) and target/ (clean) sub-folders with matching file names."
            )
    inputs = _images_in(folder / "input")
    if not inputs:
        raise DataError(f"paired folder {name!r}: no images in {folder / 'input'}")
    targets = {p.name: p for p in _images_in(folder / "target")}
    by_stem = {p.stem: p for p in targets.values()}
    records, unmatched = [], []
    for p in inputs:
        t = targets.get(p.name) or by_stem.get(p.stem)
        if t is None:
            unmatched.append(p.name)
            continue
        records.append(Record(f"{name}:{p.name}", task, 0, str(t), str(p)))
    if not records:
        raise DataError(
            f"paired folder {name!r}: no file in {folder / 'input'} has a target of the same name "
            f"in {folder / 'target'}."
        )
    return records, unmatched


# --------------------------------------------------------------------------- decoding


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
                    raise DataError(f"{path}: 32-bit integer image outside 0..65535; convert it "
                                    "to 8- or 16-bit PNG", path)
                a = a.astype(np.uint16)
                return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=-1))
            if mode == "F":
                raise DataError(f"{path}: floating-point images (PIL mode F) are not supported; "
                                "convert it to 8- or 16-bit PNG", path)
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


# --------------------------------------------------------------------------- scanning


def _header(path: str, decode: bool) -> tuple[int, int]:
    """``(H, W)`` of an image, reading only its header unless ``decode``."""
    if decode:
        return load_image(path).shape[:2]
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read image header of {path}: {err}") from err


def _scan(pairs: Sequence[tuple[str | None, str]], validate: str, min_side: int, base: int,
          report: ScanReport) -> list[tuple[int, int] | None]:
    """Checks every pair; returns the clean size per pair, or None for a skipped pair."""
    paths = sorted({p for pair in pairs for p in pair if p is not None})
    sizes: dict[str, tuple[int, int] | str] = {}

    def probe(p: str) -> tuple[str, tuple[int, int] | str]:
        if not os.path.isfile(p):
            return p, "file not found"
        if validate == "none":
            return p, (0, 0)
        try:
            return p, _header(p, decode=validate == "decode")
        except DataError as err:
            return p, str(err)

    # Headers are I/O bound (network file systems): a thread pool hides the latency. RESIDE
    # alone is ~80k files, hence the progress bar for large sets.
    from tqdm import tqdm

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        for p, s in tqdm(pool.map(probe, paths), total=len(paths), unit="file",
                         desc=f"checking images ({validate})", disable=len(paths) < 5000,
                         leave=False):
            sizes[p] = s
    out: list[tuple[int, int] | None] = []
    for degraded, clean in pairs:
        s_clean = sizes[clean]
        s_deg = sizes[degraded] if degraded is not None else s_clean
        bad = next(((p, s) for p, s in ((clean, s_clean), (degraded, s_deg))
                    if p is not None and isinstance(s, str)), None)
        if bad is not None:
            report.skip(bad[0], bad[1])
            out.append(None)
            continue
        if validate == "none":  # sizes unknown: checked when a sample is decoded
            out.append((0, 0))
            continue
        if s_deg != s_clean:
            report.skip(degraded, f"size {s_deg[1]}x{s_deg[0]} differs from its ground truth "
                                  f"{clean} ({s_clean[1]}x{s_clean[0]}); pairs must be aligned")
            out.append(None)
            continue
        ch, cw = cropped_size(s_clean, base)
        if min(ch, cw) < max(min_side, 1):
            report.skip(degraded or clean,
                        f"{s_clean[1]}x{s_clean[0]} ({cw}x{ch} after crop_img(base={base})) is "
                        f"smaller than the {min_side}x{min_side} training crop")
            out.append(None)
            continue
        out.append(s_clean)
    return out


def train_records(cfg: Any, *, validate: str | None = None,
                  min_side: int | None = None) -> tuple[list[Record], ScanReport]:
    """The unique training pairs of the configured mixture (no repetition), scanned.

    Args:
      cfg: data config (dict or ConfigDict; see :func:`default_data_config`).
      validate: override ``data.validate`` ("header", "decode" or "none").
      min_side: smallest acceptable side after ``crop_img``; default ``data.patch_size``.

    Returns:
      ``(records, report)``: records in a fixed order (tasks in ``data.tasks`` order, then
      ``data.paired_train``; denoise images x sigmas), and what was skipped and why (already
      logged as warnings, one per file).

    Raises:
      DataError: a missing or empty folder, or every record of a task unusable.
    """
    cfg = resolve_config(cfg)
    root = _root(cfg)
    validate = validate or cfg["validate"]
    min_side = cfg["patch_size"] if min_side is None else min_side
    report = ScanReport()
    # (group name, task, [(degraded or None, clean, id)])
    groups: list[tuple[str, str, list[tuple[str | None, str, str]]]] = []
    for task in cfg["tasks"]:
        pairs = _task_pairs(task, cfg, root)
        groups.append((task, task, [(d, c, f"{task}:{key}") for d, c, key in pairs]))
    for spec in cfg["paired_train"]:
        spec = dict(spec)
        name = spec.get("name") or Path(spec["path"]).name
        if name in TASK_IDS:
            raise DataError(f"data.paired_train: the set name {name!r} is a task name; give the "
                            "entry another \"name\" (ids and repeat factors are keyed by it)")
        recs = paired_folder_records(_under(root, spec["path"]), spec["task"], name)
        groups.append((name, spec["task"], [(r.degraded, r.clean, r.id) for r in recs]))

    records: list[Record] = []
    for group, task, pairs in groups:
        sizes = _scan([(d, c) for d, c, _ in pairs], validate, min_side, cfg["crop_base"], report)
        kept = 0
        for (degraded, clean, key), size in zip(pairs, sizes):
            if size is None:
                continue
            size = None if size == (0, 0) else size
            if degraded is None:  # denoise: one record per noise level
                for s in cfg["sigmas"]:
                    records.append(Record(f"{key}@s{int(s)}", task, int(s), clean, None, size))
            else:
                records.append(Record(key, task, 0, clean, degraded, size))
            kept += 1
        report.kept[group] = kept
        if kept == 0:
            report.log()
            raise DataError(
                f"{group}: none of its {len(pairs)} pair(s) is usable (see the warnings above, "
                f"e.g. {report.skipped[-1][0]}: {report.skipped[-1][1]})."
            )
    report.log()
    return records, report


def mixture_indices(records: Sequence[Record], cfg: Any) -> list[int]:
    """Record indices of one epoch of the mixture: each record repeated ``data.repeats[task]``
    times (paired_train records: their own ``repeat``, default 1)."""
    cfg = resolve_config(cfg)
    paired = {(dict(s).get("name") or Path(dict(s)["path"]).name): int(dict(s).get("repeat", 1))
              for s in cfg["paired_train"]}
    out: list[int] = []
    for i, r in enumerate(records):
        set_name = r.id.split(":", 1)[0]
        n = paired[set_name] if set_name in paired else int(cfg["repeats"].get(r.task, 1))
        out.extend([i] * n)
    return out


def fingerprint(records: Iterable[Record]) -> str:
    """sha256 (16 hex) of the record ids, in order: identifies a dataset independent of its root."""
    h = hashlib.sha256()
    for r in records:
        h.update(r.id.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- manifests


def _manifest_lines(path: Path) -> tuple[dict[str, Any], list[tuple[int, dict[str, Any]]]]:
    """The header and ``(line number, entry)`` pairs of a mining manifest, every line checked.

    Line numbers are 1-based lines of the file (split at ``\\n`` only, as the writer does), so
    an error points at the line an editor shows.
    """
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist; write one with "
                        "`python -m irpo_jax.mine --data_root ... --checkpoint ... --out FILE`",
                        path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read manifest {path}: {err}", path) from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"manifest {path}, line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); a "
            "mining manifest is JSON lines written by `python -m irpo_jax.mine` -- is this the "
            "right file? Re-run mining to write it.", path) from err
    lines = text.split("\n")
    fix = "re-run mining (python -m irpo_jax.mine) to write it again"

    def parse(n: int, line: str, what: str) -> dict[str, Any]:
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:  # err.lineno is always 1: one line is parsed
            raise DataError(f"manifest {path}, line {n}: not valid JSON ({err.msg} at column "
                            f"{err.colno}); expected {what}; {fix}", path) from None
        if not isinstance(value, dict):
            raise DataError(f"manifest {path}, line {n}: expected a JSON object ({what}), got "
                            f"{type(value).__name__} {line.strip()[:60]}; {fix}", path)
        return value

    if not text.strip():
        raise DataError(f"manifest {path} is empty (line 1: expected the mining header); {fix}",
                        path)
    header = parse(1, lines[0], f"the header line with kind {MANIFEST_KIND!r}")
    if header.get("kind") != MANIFEST_KIND:
        raise DataError(f"{path} is not a mining manifest (line 1: kind={header.get('kind')!r}, "
                        f"expected {MANIFEST_KIND!r})", path)
    entries = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        e = parse(n, line, 'one record: {"id", "task", "selected", ...}')
        if not isinstance(e.get("id"), str) or not e["id"]:
            raise DataError(f"manifest {path}, line {n}: the record has no \"id\" (a string "
                            f"such as \"derain:Train/Derain/rainy/rain-1.png\"), got "
                            f"{e.get('id')!r}; {fix}", path)
        if not isinstance(e.get("selected", False), bool):
            raise DataError(f"manifest {path}, line {n}: \"selected\" must be true or false, "
                            f"got {e['selected']!r}; {fix}", path)
        entries.append((n, e))
    return header, entries


def read_manifest(path: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reads a mining manifest (JSON lines: a header line, then one line per record).

    Returns:
      The header and the records (each a dict with at least a string ``"id"``).

    Raises:
      DataError: a missing or unreadable file, one that is not a mining manifest, or a line that
        is not a JSON object with a string ``"id"`` (the message names the file and the line).
    """
    header, entries = _manifest_lines(Path(path))
    return header, [e for _, e in entries]


def records_from_manifest(records: Sequence[Record], manifest: str | os.PathLike,
                          root: str | os.PathLike, allow_other_root: bool = False) -> list[Record]:
    """The subset of ``records`` a manifest selected, in ``records`` order.

    Checked before training: the manifest's data root must be this root (unless
    ``allow_other_root``: the data was moved; ids are root-relative), and every selected pair must
    be among the readable records of this dataset.

    Raises:
      DataError: naming the manifest (and the line, for a bad line), the roots or the missing
        pairs, and what to do.
    """
    header, entries = _manifest_lines(Path(manifest))
    root = str(Path(root).absolute())
    if header.get("data_root") != root and not allow_other_root:
        raise DataError(
            f"manifest {manifest} was mined on the data under {header.get('data_root')}, but "
            f"data.root is {root}. Re-mine this dataset (python -m irpo_jax.mine), or, if the same "
            "data was only moved, set data.manifest_allow_other_root=True."
        )
    wanted = [(n, e["id"]) for n, e in entries if e.get("selected")]
    if not wanted:
        raise DataError(f"manifest {manifest} selects no pair; re-mine with a larger --fraction")
    by_id = {r.id: r for r in records}
    missing = [(n, i) for n, i in wanted if i not in by_id]
    if missing:
        examples = ", ".join(f"line {n}: {i!r}" for n, i in missing[:3])
        raise DataError(
            f"manifest {manifest}: {len(missing)} of its {len(wanted)} selected pairs are not "
            f"readable training pairs under {root} (missing, unreadable, or from another "
            f"dataset), e.g. {examples}. Restore those files or re-mine this dataset."
        )
    keep = {i for _, i in wanted}
    return [r for r in records if r.id in keep]


# --------------------------------------------------------------------------- test sets


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
            raise DataError(f"{self.name}: {r.degraded} is {degraded.shape[:2]} but its target "
                            f"{r.clean} is {clean.shape[:2]} after crop_img; fix the pair")
        item = {"degraded": degraded, "clean": clean, "name": self.item_name(i),
                "task": self.task, "sigma": self.sigma}
        if self.groups is not None:
            item["group"] = self.groups[i]
        return item


def _sots_records(folder: Path, name: str) -> tuple[list[Record], list[str]]:
    """``(records, inputs without a target)`` of SOTS: ``input/IIII_A_B.ext`` -> ``target/IIII.png``."""
    for sub in ("input", "target"):
        if not (folder / sub).is_dir():
            raise DataError(f"test set {name}: {folder / sub} does not exist (SOTS layout: "
                            "input/IIII_A_B.ext and target/IIII.png)")
    out, missing = [], []
    for p in _images_in(folder / "input"):
        # DerainDehazeDataset._get_gt_path: target/<id>.png (other extensions accepted too)
        t = _find_by_stem(folder / "target", p.name.split("_")[0], ".png")
        if not t.exists():
            missing.append(f"{p.name} (no {t.relative_to(folder).as_posix()})")
            continue
        out.append(Record(f"{name}:{p.name}", "dehaze", 0, str(t), str(p)))
    if not out:
        raise DataError(f"test set {name}: no input/target pairs in {folder}")
    return out, missing


def eval_sets(cfg: Any, names: Sequence[str] | None = None, *,
              allow_partial: bool = False) -> dict[str, EvalSet]:
    """The test sets, in order; noisy sets expand to one set per sigma (``bsd68_s25``).

    Args:
      cfg: data config.
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
    cfg = resolve_config(cfg)
    root = _root(cfg)
    names = expand_set_names(list(cfg["eval_sets"] if names is None else names))
    out: dict[str, EvalSet] = {}
    for name in names:
        try:
            sets = _eval_set(name, cfg, root)
            for es in sets.values():
                if es.missing and not allow_partial:
                    shown = ", ".join(es.missing[:5]) + (f" and {len(es.missing) - 5} more"
                                                         if len(es.missing) > 5 else "")
                    raise DataError(
                        f"test set {name}: {len(es.missing)} of its {len(es.missing) + len(es)} "
                        f"input(s) have no matching target: {shown}. A set's score is comparable "
                        "only over all its images: add or rename the targets, or allow a partial "
                        "set (evaluate --allow_partial) whose row is marked partial")
            out.update(sets)
        except DataError as err:
            where = (f"data.eval_paired.{name}" if name in cfg["eval_paired"]
                     else f"data.test_dirs.{name}")
            raise DataError(f"{err} (fix {where}, or leave {name!r} out of "
                            "data.eval_sets)") from err
    return out


def _eval_set(name: str, cfg: Mapping[str, Any], root: Path) -> dict[str, EvalSet]:
    """One named test set (noisy sets: one per sigma)."""
    base = cfg["crop_base"]
    if name in cfg["eval_paired"]:
        spec = dict(cfg["eval_paired"][name])
        recs, missing = _paired_folder(_under(root, spec["path"]).absolute(), spec["task"], name)
        return {name: EvalSet(name, spec["task"], recs, crop_base=base, missing=missing)}
    if name not in TEST_SETS:
        raise DataError(f"unknown test set {name!r}; valid: {sorted(TEST_SETS)}, a group "
                        f"({', '.join(SET_GROUPS)}) or a key of data.eval_paired "
                        f"({sorted(cfg['eval_paired'])})")
    task, _, layout = TEST_SETS[name]
    folder = _under(root, cfg["test_dirs"][name])
    if layout == "paired":
        recs, missing = _paired_folder(folder, task, name)
        return {name: EvalSet(name, task, recs, crop_base=base, missing=missing)}
    if layout == "sots":
        recs, missing = _sots_records(folder, name)
        return {name: EvalSet(name, task, recs, crop_base=base, missing=missing)}
    if name in OOD_SETS:
        from irpo_jax.data import ood_sets

        listing = ood_sets.READERS[name](folder, name)
        return {name: EvalSet(name, task, listing.records, crop_base=base, names=listing.names,
                              groups=listing.groups, loader=listing.loader,
                              missing=listing.missing, protocol=listing.protocol)}
    # noisy: clean images + the seeded protocol, in sorted order
    if not folder.is_dir():
        raise DataError(f"test set {name}: {folder} does not exist")
    files = _images_in(folder)
    if not files:
        raise DataError(f"test set {name}: no images in {folder}")
    shapes = [(*cropped_size(_header(str(p), decode=False), base), 3) for p in files]
    sigmas = [int(s) for s in cfg["sigmas"]]
    # The stream runs over the official sigmas in their order whatever data.sigmas holds (it is
    # also the training setting): sigma 25's test noise stays the published one when training
    # uses only some levels. Other levels continue the stream after sigma 50.
    stream_sigmas = list(OFFICIAL_SIGMAS) + [s for s in sigmas if s not in OFFICIAL_SIGMAS]
    stream = _NoiseStream(int(cfg["test_noise_seed"]), shapes * len(stream_sigmas))
    out = {}
    for s in sigmas:
        recs = [Record(f"{name}:{p.name}@s{s}", "denoise", s, str(p), None) for p in files]
        out[f"{name}_s{s}"] = EvalSet(f"{name}_s{s}", task, recs, sigma=s, crop_base=base, noise=stream,
                                      noise_offset=stream_sigmas.index(s) * len(files))
    return out
