"""Readers for the out-of-domain test sets of IRPO Table 3, each in its own release layout.

The five real-world sets (one per task) are read where their downloads unpack, by default
``<data.root>/test/ood/<set>/`` (``data.test_dirs.<set>`` or ``evaluate --test_dir SET=DIR``
point elsewhere). Each reader returns a :class:`Listing` that :func:`irpo_jax.data.eval_sets.eval_sets`
turns into an :class:`~irpo_jax.data.eval_sets.EvalSet`; pixels are decoded only when evaluated.
Image names are paths below the set's folder (their common leading folders dropped), so images
with the same file name in different sub-folders stay apart.

What each release looks like, where it was found, and what is not confirmed:

``rrshid`` (dehaze; Zhu et al. 2025, "Real-World Remote Sensing Image Dehazing: Benchmark and
Baseline", arXiv 2503.17966). Download: ``RRSHID.zip`` from the releases of
github.com/lwCVer/RRSHID (README: GitHub release, Baidu, Google Drive). The README does not show
the archive's folders; loaders written for it (e.g. an ``RRSHIDDataset`` in public dehazing code)
read ``<split>/hazy/N.png`` with ``<split>/gt/N.png``, and others report thin/moderate/thick
subsets. Accepted: every ``hazy``/``haze`` folder with a sibling ``GT``/``gt``/``clear``/
``clean``/``target`` folder anywhere below the set folder, only those of the ``test`` split when
there is one (else ``val``, else any that is not ``train``), all subsets pooled into one row;
files paired by name, by stem (another extension), or by the stem without role words and leading
zeros (``0012_hazy.jpg`` -> ``12.png``) when that is unique.

``gtrain`` (derain; Ba et al., ECCV 2022, "Not Just Streaks"). Download: the test split
(``GT-RAIN_test``) from the Google Drive folder linked in github.com/UCLA-VMG/GT-RAIN's README.
Layout, as the official ``testing_deraining_code.ipynb`` reads it: one folder per scene holding
rainy frames ``<scene>-R-NNN.png`` and the clean frame ``*C-000.png``; every rainy frame of a
scene is scored against that one clean frame, and the set's score is the **mean over scenes of
each scene's mean** (the notebook's ``total_PSNR_output / num_scenes``). Webcam scenes name their
frames ``<scene>-Webcam-R-NNN.png`` / ``-Webcam-C-000.png`` (noted by public loaders); the clean
frame with the rainy frame's prefix is taken first, else the scene's ``*C-000`` frame as the
notebook's glob does. Deviation: the notebook crops to a multiple of 4 from the top-left corner;
here, as for every set, to a multiple of 16 about the centre (``crop_img``).

``sidd`` (denoise; Abdelhamed et al., CVPR 2018). The sRGB validation blocks the restoration
literature reports: ``ValidationNoisyBlocksSrgb.mat`` and ``ValidationGtBlocksSrgb.mat`` from
the SIDD site (abdokamel.github.io/sidd, "SIDD Validation Data and Ground Truth"), 40 images x 32
blocks of 256x256 sRGB, uint8, MATLAB v5 files read with ``scipy.io`` (as Restormer's and
MPRNet's test scripts do). Scored as 1280 blocks, the set's score their mean (the SIDD MATLAB
evaluation averages over all blocks; it uses MATLAB's SSIM, here skimage's). The benchmark blocks
(``BenchmarkNoisyBlocksSrgb.mat``) have no public ground truth and are refused. Without the
.mat files, PNG pairs are read: SIDD-Medium (``Data/<instance>/NNNN_NOISY_SRGB_010.PNG`` with
``NNNN_GT_SRGB_010.PNG``, two pairs per instance; its ``_ReadMe_sRGB.txt``) or SIDD-Small
(``Data/<instance>/NOISY_SRGB_010.PNG`` with ``GT_SRGB_010.PNG``), or blocks converted to PNG in
``input|noisy`` + ``target|groundtruth|gt`` folders. Those are full camera frames (about 12 MP)
and the training sets of most papers: not the benchmark.

``reloblur`` (deblur; Li et al., AAAI 2023, "Real-World Deep Local Motion Deblurring").
Download: "ReLoBlur test" (395 pairs, 2152x1436) from github.com/LeiaLi/ReLoBlur's README.
Layout, as its ``dataset.py`` reads it: ``test/<scene>/<NN>/<MM>_sharp.png`` with
``<MM>_blur.png`` beside it. Accepted: every ``*_blur.<ext>`` below the set folder (the ``test``
split when there is one; ``masks`` trees ignored) paired with ``*_sharp.<ext>`` in the same
folder. The official metrics also weight PSNR/SSIM by the local-blur masks; Table 3 reports plain
PSNR/SSIM, so masks are not read.

``lolistreet`` (low light; Islam et al., ACCV 2024, "LoLI-Street", arXiv 2410.09831). Download:
Kaggle (tanvirnwu/loli-street-low-light-image-enhancement-of-street) or the Google Drive file in
github.com/tanvirnwu/TriFuse's README. Public loaders read ``<split>/low`` with ``<split>/high``
paired by name; the release's real low-light test images have no ground truth. Not confirmed
here: the split folders' exact names. Accepted: ``low`` folders with a sibling
``high``/``gt``/``normal`` folder, the ``test`` split's when it is paired, else ``val``; files
paired by name or stem.

**Protocol** for all five, where Table 3's paper is silent: as the in-domain sets (RGB in [0, 1],
``crop_img(base=16)``, the whole image in one pass, output clipped, PSNR/SSIM with data range 1,
no border shave, skimage's SSIM), a set's score the mean over its images (GT-Rain: over scenes).
**Memory**: the images run whole, and AdaIR's activations grow with the pixel count; GT-Rain's
video frames, ReLoBlur's 2152x1436 and LoLI-Street's street photographs need far more memory than
the in-domain sets (see README "Out-of-domain evaluation"). ``evaluate --tile`` trades the
protocol for memory and says so; nothing here tiles.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from irpo_jax.data.records import IMAGE_EXTENSIONS, DataError, Record

__all__ = [
    "READERS",
    "Listing",
    "read_gtrain",
    "read_lolistreet",
    "read_reloblur",
    "read_rrshid",
    "read_sidd",
]


@dataclasses.dataclass
class Listing:
    """What a reader found: records in order, their unique names, and the inputs it could not pair.

    Attributes:
      records: one per (degraded, clean) pair; ``Record.id`` is ``"<set>:<path below the set>"``.
      names: per record, the image's name in tables and saved files.
      missing: inputs without a target, each with what was looked for.
      groups: per record, the group averaged first (GT-Rain's scenes); None: plain mean.
      loader: (record index) -> (degraded, clean), for pixels not stored as image files.
      protocol: how this set is paired and scored, recorded with the results.
    """

    records: list[Record]
    names: list[str]
    missing: list[str]
    groups: list[str] | None = None
    loader: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None
    protocol: str = ""


# --------------------------------------------------------------------------- helpers


def _natural_key(text: str) -> tuple:
    """Sort key with digit runs compared as numbers (``R-2`` before ``R-10``), as ``natsorted``."""
    return tuple(int(t) if t.isdigit() else t.casefold() for t in re.split(r"(\d+)", text))


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk(folder: Path) -> list[tuple[Path, list[str], list[str]]]:
    """``(dir, sub-folders, image files)`` for every folder below ``folder``, hidden ones skipped."""
    out = []
    for d, subs, files in os.walk(folder):
        subs[:] = sorted((s for s in subs if not s.startswith(".")), key=_natural_key)
        out.append((Path(d), subs, sorted((f for f in files if _is_image(f)), key=_natural_key)))
    return out


def _require_folder(folder: Path, name: str, layout: str) -> None:
    if not folder.is_dir():
        raise DataError(
            f"test set {name}: {folder} does not exist. Unpack the release there "
            f"({layout}), or point data.test_dirs.{name} (evaluate --test_dir "
            f"{name}=DIR) at it; README 'Out-of-domain evaluation' shows the layout."
        )


def _words(part: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", part.casefold()))


def _choose_split(items: Sequence[Path], folder: Path, name: str) -> list[Path]:
    """The items (paths below ``folder``) of the evaluation split: ``test`` if any lies in a folder
    named so, else ``val``, else those outside ``train``; a release's training split never."""

    def parts(p: Path) -> list[set[str]]:
        return [_words(q) for q in p.relative_to(folder).parts[:-1]]

    for split in ({"test", "testing"}, {"val", "valid", "validation"}):
        chosen = [p for p in items if any(w & split for w in parts(p))]
        if chosen:
            return chosen
    chosen = [p for p in items if not any("train" in w or "training" in w for w in parts(p))]
    if not chosen:
        raise DataError(
            f"test set {name}: only a training split was found under {folder}; unpack the release's test split there"
        )
    return chosen


def _short_names(paths: Sequence[Path], folder: Path) -> list[str]:
    """Paths below ``folder`` with their common leading folders dropped (``test/hazy/1.png`` ->
    ``1.png`` when every image lies in ``test/hazy``)."""
    rel = [p.relative_to(folder).parts for p in paths]
    common = 0
    while all(len(r) > common + 1 and r[common] == rel[0][common] for r in rel):
        common += 1
    return ["/".join(r[common:]) for r in rel]


# Words that name an image's role rather than its identity, dropped by the loose match.
_ROLE_WORDS = {
    "hazy",
    "haze",
    "gt",
    "clear",
    "clean",
    "low",
    "high",
    "normal",
    "input",
    "target",
    "noisy",
    "blur",
    "sharp",
    "rain",
    "rainy",
    "img",
    "image",
}


def _loose_key(stem: str) -> str:
    tokens = [t for t in re.split(r"[_\-\s.]+", stem.casefold()) if t and t not in _ROLE_WORDS]
    return "_".join(str(int(t)) if t.isdigit() else t for t in tokens)


class _Targets:
    """The images of a target folder, found by name, by stem, or by a unique loose key."""

    def __init__(self, folder: Path):
        files = [folder / f for f in sorted(os.listdir(folder)) if _is_image(f)] if folder.is_dir() else []
        self.by_name = {p.name: p for p in files}
        self.by_stem: dict[str, Path] = {}
        loose: dict[str, list[Path]] = {}
        for p in files:
            self.by_stem.setdefault(p.stem.casefold(), p)
            loose.setdefault(_loose_key(p.stem), []).append(p)
        self.by_loose = {k: v[0] for k, v in loose.items() if len(v) == 1}  # ambiguous keys: none

    def find(self, degraded: Path) -> Path | None:
        return (
            self.by_name.get(degraded.name)
            or self.by_stem.get(degraded.stem.casefold())
            or self.by_loose.get(_loose_key(degraded.stem))
        )


def _dir_pairs(folder: Path, degraded_dirs: Sequence[str], clean_dirs: Sequence[str]) -> list[tuple[Path, Path]]:
    """``(degraded folder, clean folder)`` for every folder named one of ``degraded_dirs`` (any
    case) with a sibling named one of ``clean_dirs``, below ``folder`` (itself included)."""
    out = []
    for d, subs, _ in _walk(folder):
        by_case = {s.casefold(): s for s in subs}
        for deg in degraded_dirs:
            clean = next((by_case[c] for c in clean_dirs if c in by_case), None)
            if deg in by_case and clean is not None:
                out.append((d / by_case[deg], d / clean))
    return out


def _paired_listing(name: str, task: str, folder: Path, pairs: Sequence[tuple[Path, Path]]) -> Listing:
    """Records of every image in each degraded folder, matched in its clean folder."""
    items: list[tuple[Path, Path | None]] = []
    for deg_dir, clean_dir in pairs:
        targets = _Targets(clean_dir)
        for f in sorted((f for f in os.listdir(deg_dir) if _is_image(f)), key=_natural_key):
            items.append((deg_dir / f, targets.find(deg_dir / f)))
    return _listing(name, task, folder, items)


def _listing(
    name: str,
    task: str,
    folder: Path,
    items: Sequence[tuple[Path, Path | None]],
    groups: Sequence[str] | None = None,
    protocol: str = "",
    why: str = "",
) -> Listing:
    """A :class:`Listing` of ``(degraded, clean or None)`` pairs; unpaired inputs go to ``missing``."""
    if not items:
        raise DataError(f"test set {name}: no images found under {folder}{why}")
    names = _short_names([d for d, _ in items], folder)
    records, kept, kept_groups, missing = [], [], [], []
    for k, ((deg, clean), short) in enumerate(zip(items, names)):
        if clean is None:
            missing.append(short)
            continue
        rel = deg.relative_to(folder).as_posix()
        records.append(Record(f"{name}:{rel}", task, 0, str(clean), str(deg)))
        kept.append(short)
        if groups is not None:
            kept_groups.append(groups[k])
    if not records:
        raise DataError(
            f"test set {name}: none of the {len(items)} input(s) under {folder} has a "
            f"matching target (e.g. {missing[0]}){why}"
        )
    return Listing(records, kept, missing, kept_groups if groups is not None else None, protocol=protocol)


# --------------------------------------------------------------------------- the five sets


def read_rrshid(folder: Path, name: str = "rrshid") -> Listing:
    """RRSHID: ``.../hazy/X`` with ``.../GT/X`` (any sub-folders), the test split when present."""
    layout = "RRSHID.zip: <split>/hazy/*.png with <split>/GT/*.png"
    _require_folder(folder, name, layout)
    pairs = _dir_pairs(folder, ("hazy", "haze"), ("gt", "clear", "clean", "target", "groundtruth"))
    if not pairs:
        raise DataError(
            f"test set {name}: no hazy/ folder with a GT/ (or clear/, clean/, target/) "
            f"sibling under {folder} (expected {layout})"
        )
    chosen = set(_choose_split([h for h, _ in pairs], folder, name))  # by the folders above hazy/
    pairs = [(h, c) for h, c in pairs if h in chosen]
    return _paired_listing(name, "dehaze", folder, pairs)


def read_gtrain(folder: Path, name: str = "gtrain") -> Listing:
    """GT-Rain: scene folders of ``*-R-NNN`` rainy frames, each scored against the scene's
    ``*-C-000`` clean frame; averaged per scene first (see the module docstring)."""
    layout = "GT-RAIN_test/<scene>/<scene>-R-NNN.png and <scene>-C-000.png"
    _require_folder(folder, name, layout)
    scenes = [d for d, _, files in _walk(folder) if any("-R-" in Path(f).stem for f in files)]
    if not scenes:
        raise DataError(
            f"test set {name}: no scene folder with rainy frames (*-R-NNN.png) under {folder} (expected {layout})"
        )
    scenes = _choose_split(scenes, folder, name)  # by the folders above the scenes
    items: list[tuple[Path, Path | None]] = []
    groups: list[str] = []
    for scene in scenes:
        files = sorted((f for f in os.listdir(scene) if _is_image(f)), key=_natural_key)
        stems = {Path(f).stem: scene / f for f in files}
        any_c000 = [scene / f for f in files if Path(f).stem.endswith("C-000")]
        for f in (f for f in files if "-R-" in Path(f).stem):
            prefix = Path(f).stem.rsplit("-R-", 1)[0]
            clean = stems.get(f"{prefix}-C-000") or (any_c000[0] if any_c000 else None)
            items.append((scene / f, clean))
            groups.append(scene.relative_to(folder).as_posix())
    protocol = (
        "each rainy frame against its scene's clean frame *C-000; set score = mean over "
        "scenes of each scene's mean (GT-Rain's testing_deraining_code.ipynb)"
    )
    return _listing(
        name, "derain", folder, items, groups, protocol, why=" (every scene needs its clean frame <scene>-C-000.png)"
    )


class _MatBlocks:
    """Noisy/clean blocks of two .mat files, loaded on first use (about 250 MB each for SIDD's
    validation blocks) and shared by the evaluation's decoding threads."""

    def __init__(self, noisy: tuple[Path, str], clean: tuple[Path, str], index: list[tuple[int, ...]]):
        self.sources = (noisy, clean)
        self.index = index
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self._lock = threading.Lock()

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        import scipy.io

        with self._lock:
            if self._arrays is None:
                arrays = []
                for path, var in self.sources:
                    try:
                        a = np.asarray(scipy.io.loadmat(path, variable_names=[var])[var])
                    except (OSError, ValueError) as err:
                        raise DataError(f"cannot read {path}: {err}", path) from err
                    if a.dtype not in (np.uint8, np.uint16):
                        raise DataError(
                            f"{path}: variable {var!r} is {a.dtype}; expected the "
                            "uint8 sRGB blocks of the SIDD release",
                            path,
                        )
                    arrays.append(a)
                self._arrays = (arrays[0], arrays[1])
            return self._arrays

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        noisy, clean = self._load()
        j = self.index[i]
        return np.ascontiguousarray(noisy[j]), np.ascontiguousarray(clean[j])


def _mat_variable(path: Path, name: str) -> tuple[str, tuple[int, ...]]:
    """The blocks variable of a .mat file (named as the file, or its only variable) and its shape,
    read from the header only."""
    import scipy.io

    try:
        info = scipy.io.whosmat(path)
    except NotImplementedError as err:  # scipy: "Please use HDF reader for matlab v7.3 files"
        raise DataError(
            f"test set {name}: {path} is a MATLAB v7.3 (HDF5) file; the SIDD release's "
            "blocks are v5 files that scipy reads: download them again from the SIDD "
            "site, or re-save with MATLAB's save(..., '-v7')",
            path,
        ) from err
    except (OSError, ValueError, TypeError) as err:
        raise DataError(f"test set {name}: cannot read {path} as a MATLAB file: {err}", path) from err
    variables = {v: tuple(int(n) for n in shape) for v, shape, _ in info}
    var = path.stem if path.stem in variables else (next(iter(variables)) if len(variables) == 1 else None)
    if var is None:
        raise DataError(f"test set {name}: {path} holds {sorted(variables)}, none named {path.stem!r}", path)
    shape = variables[var]
    if len(shape) not in (4, 5) or shape[-1] != 3:
        raise DataError(
            f"test set {name}: {path}:{var} has shape {shape}; expected (images, "
            "blocks, H, W, 3) or (blocks, H, W, 3) sRGB blocks",
            path,
        )
    return var, shape


def _sidd_blocks(noisy: Path, clean: Path, name: str) -> Listing:
    (nv, nshape), (cv, cshape) = _mat_variable(noisy, name), _mat_variable(clean, name)
    if nshape != cshape:
        raise DataError(f"test set {name}: {noisy} holds {nshape} blocks but {clean} holds {cshape}")
    lead = nshape[:-3]  # (images, blocks) or (blocks,)
    index = [tuple(int(v) for v in i) for i in np.ndindex(*lead)]
    names = ["_".join(f"{v:02d}" for v in i) + ".png" for i in index]
    records = [Record(f"{name}:{n[:-4]}", "denoise", 0, str(clean), str(noisy)) for n in names]
    protocol = (
        f"SIDD sRGB validation blocks ({noisy.name}, {clean.name}: {'x'.join(map(str, nshape))}); "
        "set score = mean over all blocks; names <image>_<block>, 0-based"
    )
    return Listing(records, names, [], loader=_MatBlocks((noisy, nv), (clean, cv), index), protocol=protocol)


def read_sidd(folder: Path, name: str = "sidd") -> Listing:
    """SIDD: the sRGB validation blocks (.mat) if present, else SIDD-Medium/Small PNG pairs, else
    ``input``/``target`` folders of converted blocks."""
    layout = "ValidationNoisyBlocksSrgb.mat and ValidationGtBlocksSrgb.mat"
    _require_folder(folder, name, layout)
    mats = {}
    for d, _, _ in _walk(folder):
        for f in sorted(os.listdir(d)):
            if f.lower().endswith(".mat"):
                mats.setdefault(f.casefold(), d / f)
    noisy, clean = mats.get("validationnoisyblockssrgb.mat"), mats.get("validationgtblockssrgb.mat")
    if noisy or clean:
        if not (noisy and clean):
            have, need = (noisy, "ValidationGtBlocksSrgb.mat") if noisy else (clean, "ValidationNoisyBlocksSrgb.mat")
            raise DataError(
                f"test set {name}: found {have} but not {need} under {folder}; download "
                "both 'SIDD Validation Data and Ground Truth' sRGB files"
            )
        return _sidd_blocks(noisy, clean, name)
    items: list[tuple[Path, Path | None]] = []
    for d, _, files in _walk(folder):
        by_upper = {Path(f).stem.upper(): d / f for f in files}
        for f in files:
            stem = Path(f).stem.upper()
            if "NOISY_SRGB" in stem:
                items.append((d / f, by_upper.get(stem.replace("NOISY_SRGB", "GT_SRGB"))))
    if items:
        protocol = "SIDD sRGB PNG pairs (*NOISY_SRGB_* with *GT_SRGB_*): full frames, not the benchmark blocks"
        return _listing(name, "denoise", folder, items, protocol=protocol)
    pairs = _dir_pairs(folder, ("input", "noisy"), ("target", "groundtruth", "gt", "clean"))
    if pairs:
        return _paired_listing(name, "denoise", folder, pairs)
    if "benchmarknoisyblockssrgb.mat" in mats:
        raise DataError(
            f"test set {name}: {mats['benchmarknoisyblockssrgb.mat']} is SIDD's benchmark "
            "set, whose ground truth is not public (it is scored by the SIDD server); "
            f"download the validation blocks ({layout}) instead"
        )
    raise DataError(
        f"test set {name}: none of the SIDD layouts under {folder}: expected {layout}, "
        "or SIDD-Medium/Small PNGs (Data/<instance>/*NOISY_SRGB_010.PNG with "
        "*GT_SRGB_010.PNG)"
    )


def read_reloblur(folder: Path, name: str = "reloblur") -> Listing:
    """ReLoBlur: ``*_blur.png`` with ``*_sharp.png`` in the same folder (the test split)."""
    layout = "test/<scene>/<NN>/<MM>_blur.png with <MM>_sharp.png"
    _require_folder(folder, name, layout)
    blurs = []
    for d, _, files in _walk(folder):
        if any(_words(q) & {"mask", "masks"} for q in d.relative_to(folder).parts):
            continue  # the local-blur masks release: not images to restore
        blurs += [d / f for f in files if Path(f).stem.casefold().endswith("_blur")]
    if not blurs:
        raise DataError(f"test set {name}: no *_blur images under {folder} (expected {layout})")
    items = []
    for b in _choose_split(blurs, folder, name):
        by_stem = {Path(f).stem.casefold(): b.parent / f for f in os.listdir(b.parent) if _is_image(f)}
        items.append((b, by_stem.get(b.stem.casefold()[: -len("_blur")] + "_sharp")))
    return _listing(
        name,
        "deblur",
        folder,
        items,
        protocol="each *_blur image against the *_sharp "
        "image beside it; whole-image PSNR/SSIM (the blur masks are not used)",
    )


def read_lolistreet(folder: Path, name: str = "lolistreet") -> Listing:
    """LoLI-Street: ``<split>/low/X`` with ``<split>/high/X`` (test if paired, else val)."""
    layout = "LoLI-Street: <Val or Test>/low/*.png with <Val or Test>/high/*.png"
    _require_folder(folder, name, layout)
    pairs = _dir_pairs(folder, ("low",), ("high", "gt", "normal"))
    if not pairs:
        raise DataError(
            f"test set {name}: no low/ folder with a high/ sibling under {folder} "
            f"(expected {layout}; the real low-light test images have no ground truth)"
        )
    chosen = set(_choose_split([lo for lo, _ in pairs], folder, name))
    return _paired_listing(name, "lowlight", folder, [(lo, hi) for lo, hi in pairs if lo in chosen])


READERS: dict[str, Callable[[Path, str], Listing]] = {
    "rrshid": read_rrshid,
    "gtrain": read_gtrain,
    "sidd": read_sidd,
    "reloblur": read_reloblur,
    "lolistreet": read_lolistreet,
}
