"""A small five-task all-in-one demo set, in exactly the official AdaIR data layout.

    python -m irpo_jax.data.demo --out /tmp/irpo_demo [--seed 0] [--overwrite]

No download: the clean images are crops of the photographs that ship inside the scikit-image
wheel, and the five degradations are synthesised with :mod:`irpo_jax.data.degradations`. The
folder is laid out as the official code expects its ``data/`` root plus its ``data_dir/`` list
files (adair-spec.md section 10), so the real-data readers read it unchanged::

    DIR/data_dir/noisy/denoise.txt          bare file names of Train/Denoise (e.g. 00001.png)
    DIR/data_dir/rainy/rainTrain.txt        rainy/rain-N.png (relative to Train/Derain/)
    DIR/data_dir/hazy/hazy_outside.txt      synthetic/part1/IIII_A_B.png (relative to Train/Dehaze/)
    DIR/Train/Denoise/                      clean only; noise is added on the fly (sigma 15/25/50)
    DIR/Train/Derain/{rainy,gt}/            rain-N.png / norain-N.png
    DIR/Train/Dehaze/synthetic/part1/       IIII_A_B.png, A = atmospheric light, B = beta (RESIDE)
    DIR/Train/Dehaze/original/              IIII.png (the hazy file's extension, as the code wants)
    DIR/Train/Deblur/{blur,sharp}/          same names
    DIR/Train/Enhance/{low,gt}/             same names
    DIR/test/denoise/bsd68/                 clean only; noise is added at evaluation
    DIR/test/derain/Rain100L/{input,target}/   same names
    DIR/test/dehaze/{input,target}/         input/IIII_A_B.png -> target/IIII.png (SOTS)
    DIR/test/deblur/gopro/{input,target}/   same names
    DIR/test/enhance/lol/{input,target}/    same names
    DIR/README.txt, DIR/manifest.json       how it was made; what the builder wrote

No leakage: every photograph is split into a training strip (left columns) and a disjoint test
strip (right columns), see ``PHOTOS``; training crops come only from training strips, test
crops only from test strips. Training crops are 160-256 px with a random dihedral orientation;
test crops are unrotated, 128x128 to 256x192, one 150x190 per task so that crop-to-16 matters.

The output is a pure function of the seed: the same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from irpo_jax.data import degradations as deg

MANIFEST = "manifest.json"
README = "README.txt"
GENERATOR = "irpo_jax.data.demo"
FORMAT_VERSION = 1
TASKS = ("denoise", "derain", "dehaze", "deblur", "enhance")
_SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Box:
    """A rectangle of a photograph, in pixels."""

    top: int
    left: int
    height: int
    width: int

    def as_list(self) -> list[int]:
        return [self.top, self.left, self.height, self.width]

    def overlaps(self, other: Box) -> bool:
        return not (
            self.top + self.height <= other.top
            or other.top + other.height <= self.top
            or self.left + self.width <= other.left
            or other.left + other.width <= self.left
        )


@dataclasses.dataclass(frozen=True)
class Photo:
    """A bundled scikit-image photograph and its disjoint train/test strips."""

    loader: Callable[[], np.ndarray]
    train: Box
    test: Box


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data  # heavy-ish; only when building

        img = getattr(skimage.data, name)()
        # stereo_motorcycle returns (left, right, disparity): use the left view only, since
        # the right view is nearly the same scene and would leak between splits.
        return img[0] if isinstance(img, tuple) else img

    return load


# Each photo is split by columns: training strip on the left, test strip on the right. Shapes are
# those of scikit-image 0.26 (environment-notes section 6).
PHOTOS: dict[str, Photo] = {
    "astronaut": Photo(_skimage("astronaut"), Box(0, 0, 512, 320), Box(0, 320, 512, 192)),
    "chelsea": Photo(_skimage("chelsea"), Box(0, 0, 300, 256), Box(0, 256, 300, 195)),
    "coffee": Photo(_skimage("coffee"), Box(0, 0, 400, 380), Box(0, 380, 400, 220)),
    "rocket": Photo(_skimage("rocket"), Box(0, 0, 427, 420), Box(0, 420, 427, 220)),
    "immunohistochemistry": Photo(_skimage("immunohistochemistry"), Box(0, 0, 512, 320), Box(0, 320, 512, 192)),
    "motorcycle": Photo(_skimage("stereo_motorcycle"), Box(0, 0, 500, 480), Box(0, 480, 500, 261)),
    "hubble_deep_field": Photo(_skimage("hubble_deep_field"), Box(0, 0, 872, 600), Box(0, 600, 872, 400)),
}

# Which photos each task draws from, cycled in this order (different orders so that tasks do not
# all start on the same photo). Hubble (stars on black) is kept out of the tasks where a mostly
# black image is meaningless: derain/dehaze/enhance.
TASK_PHOTOS: dict[str, tuple[str, ...]] = {
    "denoise": ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "motorcycle", "hubble_deep_field"),
    "derain": ("coffee", "rocket", "motorcycle", "astronaut", "chelsea", "immunohistochemistry"),
    "dehaze": ("rocket", "motorcycle", "chelsea", "astronaut", "coffee"),
    "deblur": ("motorcycle", "hubble_deep_field", "astronaut", "immunohistochemistry", "coffee", "chelsea", "rocket"),
    "enhance": ("chelsea", "astronaut", "immunohistochemistry", "coffee", "motorcycle", "rocket"),
}
# Training images per task (dehaze: scenes, each with HAZY_PER_SCENE hazy versions, as RESIDE
# has several A/beta per clean image).
TRAIN_COUNTS = {"denoise": 6, "derain": 5, "dehaze": 3, "deblur": 5, "enhance": 5}
HAZY_PER_SCENE = 2
TRAIN_SIDES = tuple(range(160, 257, 8))  # crop side lengths, >= 128 after crop-to-16
# Test image sizes (H, W); each task has one 150x190 (-> 144x176 after crop-to-16).
TEST_SIZES: dict[str, tuple[tuple[int, int], ...]] = {
    "denoise": ((256, 192), (150, 190), (128, 128)),
    "derain": ((192, 176), (150, 190), (128, 128)),
    "dehaze": ((256, 192), (150, 190), (192, 176)),
    "deblur": ((192, 176), (150, 190), (256, 192)),
    "enhance": ((128, 128), (150, 190), (192, 176)),
}
# Ids of the dehaze scenes (RESIDE-style 4 digits); test ids are disjoint from train ids.
_DEHAZE_TRAIN_ID0 = 1
_DEHAZE_TEST_ID0 = 501


@dataclasses.dataclass
class _Sample:
    task: str
    split: str
    clean: str  # relative path of the clean file (dehaze: shared by a scene's hazy versions)
    degraded: str | None  # relative path of the degraded file (None: noise added on the fly)
    photo: str
    box: Box
    orientation: int
    params: dict[str, float]


def _orient(img: np.ndarray, k: int) -> np.ndarray:
    """The 8 dihedral orientations: rot90 by k % 4, then flip up-down if k >= 4."""
    out = np.rot90(img, k % 4)
    if k >= 4:
        out = np.flipud(out)
    return np.ascontiguousarray(out)


def _crop(
    photos: dict[str, np.ndarray],
    name: str,
    region: Box,
    size: tuple[int, int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, Box]:
    h, w = size
    if h > region.height or w > region.width:
        raise ValueError(f"crop {size} does not fit the region {region} of photo {name!r}")
    top = region.top + int(rng.integers(0, region.height - h + 1))
    left = region.left + int(rng.integers(0, region.width - w + 1))
    box = Box(top, left, h, w)
    return photos[name][top : top + h, left : left + w], box


def _png_bytes(img_u8: np.ndarray) -> bytes:
    # PIL writes no timestamp or other varying chunk, so equal arrays give equal bytes.
    # Level 1: a third of the time of the default level for ~10 % larger files.
    buf = io.BytesIO()
    Image.fromarray(img_u8).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _sample_rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    # One independent stream per image, so adding an image never changes the others.
    return np.random.default_rng([seed, TASKS.index(task), _SPLITS.index(split), index])


def _generate(seed: int, photos: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[_Sample]]:
    """Synthesises every image in memory; returns {relative path: uint8 image} and provenance."""
    images: dict[str, np.ndarray] = {}
    samples: list[_Sample] = []

    def put(rel: str, img_u8: np.ndarray) -> str:
        assert rel not in images, rel
        images[rel] = img_u8
        return rel

    for task in TASKS:
        names = TASK_PHOTOS[task]
        # ---- training images: random size, position inside the training strip, orientation.
        for i in range(TRAIN_COUNTS[task]):
            rng = _sample_rng(seed, task, "train", i)
            name = names[i % len(names)]
            size = (int(rng.choice(TRAIN_SIDES)), int(rng.choice(TRAIN_SIDES)))
            crop, box = _crop(photos, name, PHOTOS[name].train, size, rng)
            k = int(rng.integers(0, 8))
            clean = _orient(crop, k)
            x = deg.to_float32(clean)
            n = i + 1
            if task == "denoise":
                rel = put(f"Train/Denoise/{n:05d}.png", clean)
                samples.append(_Sample(task, "train", rel, None, name, box, k, {}))
            elif task == "derain":
                p = deg.sample_params(deg.RAIN_RANGES, rng)
                put(f"Train/Derain/gt/norain-{n}.png", clean)
                put(f"Train/Derain/rainy/rain-{n}.png", deg.to_uint8(deg.add_rain(x, rng, **p)))
                samples.append(
                    _Sample(
                        task,
                        "train",
                        f"Train/Derain/gt/norain-{n}.png",
                        f"Train/Derain/rainy/rain-{n}.png",
                        name,
                        box,
                        k,
                        p,
                    )
                )
            elif task == "dehaze":
                scene = f"{_DEHAZE_TRAIN_ID0 + i:04d}"
                depth = deg.synthetic_depth(clean.shape[:2], rng)
                # Distinct (A, beta) pairs per scene, from RESIDE's grid.
                grid = [(a, b) for a in deg.HAZE_A_VALUES for b in deg.HAZE_BETA_VALUES]
                picks = rng.choice(len(grid), size=HAZY_PER_SCENE, replace=False)
                # The official reader looks for original/IIII.<extension of the hazy file>.
                gt_rel = put(f"Train/Dehaze/original/{scene}.png", clean)
                for j in sorted(int(v) for v in picks):
                    a, b = grid[j]
                    rel = put(
                        f"Train/Dehaze/synthetic/part1/{scene}_{a:g}_{b:g}.png",
                        deg.to_uint8(deg.add_haze(x, depth, a, b)),
                    )
                    samples.append(
                        _Sample(
                            task,
                            "train",
                            gt_rel,
                            rel,
                            name,
                            box,
                            k,
                            {"A": a, "beta": b, "depth_min": 1.0, "depth_max": 10.0},
                        )
                    )
            elif task == "deblur":
                p = deg.sample_params(deg.BLUR_RANGES, rng)
                put(f"Train/Deblur/sharp/{n:06d}.png", clean)
                put(f"Train/Deblur/blur/{n:06d}.png", deg.to_uint8(deg.motion_blur(x, rng, **p)))
                samples.append(
                    _Sample(
                        task,
                        "train",
                        f"Train/Deblur/sharp/{n:06d}.png",
                        f"Train/Deblur/blur/{n:06d}.png",
                        name,
                        box,
                        k,
                        p,
                    )
                )
            elif task == "enhance":
                p = deg.sample_params(deg.LOW_LIGHT_RANGES, rng)
                put(f"Train/Enhance/gt/{n}.png", clean)
                put(f"Train/Enhance/low/{n}.png", deg.to_uint8(deg.low_light(x, rng, **p)))
                samples.append(
                    _Sample(task, "train", f"Train/Enhance/gt/{n}.png", f"Train/Enhance/low/{n}.png", name, box, k, p)
                )

        # ---- test images: fixed sizes, random position inside the test strip, no rotation.
        for i, size in enumerate(TEST_SIZES[task]):
            rng = _sample_rng(seed, task, "test", i)
            name = names[(i + 1) % len(names)]
            clean, box = _crop(photos, name, PHOTOS[name].test, size, rng)
            clean = np.ascontiguousarray(clean)
            x = deg.to_float32(clean)
            n = i + 1
            if task == "denoise":
                rel = put(f"test/denoise/bsd68/test{n:03d}.png", clean)
                samples.append(_Sample(task, "test", rel, None, name, box, 0, {}))
                continue
            if task == "derain":
                p = deg.sample_params(deg.RAIN_RANGES, rng)
                root, inp, tgt = "test/derain/Rain100L", f"rain-{n:03d}.png", f"rain-{n:03d}.png"
                degraded = deg.add_rain(x, rng, **p)
            elif task == "dehaze":
                scene = f"{_DEHAZE_TEST_ID0 + i:04d}"
                depth = deg.synthetic_depth(clean.shape[:2], rng)
                a = float(rng.choice(deg.HAZE_A_VALUES))
                b = float(rng.choice(deg.HAZE_BETA_VALUES))
                p = {"A": a, "beta": b, "depth_min": 1.0, "depth_max": 10.0}
                root, inp, tgt = "test/dehaze", f"{scene}_{a:g}_{b:g}.png", f"{scene}.png"
                degraded = deg.add_haze(x, depth, a, b)
            elif task == "deblur":
                p = deg.sample_params(deg.BLUR_RANGES, rng)
                root, inp, tgt = "test/deblur/gopro", f"{n:06d}.png", f"{n:06d}.png"
                degraded = deg.motion_blur(x, rng, **p)
            else:  # enhance
                p = deg.sample_params(deg.LOW_LIGHT_RANGES, rng)
                root, inp, tgt = "test/enhance/lol", f"{n}.png", f"{n}.png"
                degraded = deg.low_light(x, rng, **p)
            put(f"{root}/target/{tgt}", clean)
            put(f"{root}/input/{inp}", deg.to_uint8(degraded))
            samples.append(_Sample(task, "test", f"{root}/target/{tgt}", f"{root}/input/{inp}", name, box, 0, p))
    return images, samples


def _list_files(images: dict[str, np.ndarray]) -> dict[str, str]:
    """The official data_dir/ name lists, each line relative to the root the official code joins
    it to: ``denoise_dir + name``, ``derain_dir + "rainy/rain-N.png"``,
    ``dehaze_dir + "synthetic/part1/IIII_A_B.png"``."""

    def lines(root: str, sub: str) -> str:
        rels = sorted(r[len(root) :] for r in images if r.startswith(root + sub))
        return "".join(rel + "\n" for rel in rels)

    return {
        "data_dir/noisy/denoise.txt": lines("Train/Denoise/", ""),
        "data_dir/rainy/rainTrain.txt": lines("Train/Derain/", "rainy/"),
        "data_dir/hazy/hazy_outside.txt": lines("Train/Dehaze/", "synthetic/"),
    }


def _counts(samples: list[_Sample]) -> dict[str, dict[str, int]]:
    """Degraded/clean pairs per split and task (denoise: clean images)."""
    counts = {split: {task: 0 for task in TASKS} for split in _SPLITS}
    for s in samples:
        counts[s.split][s.task] += 1
    return counts


def _readme(seed: int, counts: dict[str, dict[str, int]]) -> str:
    regions = "\n".join(
        f"  {name:22s} train rows {p.train.top}-{p.train.top + p.train.height - 1}, cols "
        f"{p.train.left}-{p.train.left + p.train.width - 1}; test rows {p.test.top}-"
        f"{p.test.top + p.test.height - 1}, cols {p.test.left}-{p.test.left + p.test.width - 1}"
        for name, p in PHOTOS.items()
    )
    table = "\n".join(
        f"  {task:8s} train {counts['train'][task]:2d}   test {counts['test'][task]:2d}" for task in TASKS
    )
    return f"""IRPO-JAX demo set (synthetic; NOT a benchmark)

Built by: python -m irpo_jax.data.demo --out DIR --seed {seed}
Seed: {seed}. The same seed reproduces every file byte for byte.

Clean images are crops of photographs bundled with scikit-image (no download); the degraded
images are synthesised by irpo_jax/data/degradations.py:
  derain   additive thin slanted streaks (Rain100L-like), parameters in RAIN_RANGES
  dehaze   I = J t + A (1 - t), t = exp(-beta d), smooth synthetic depth d in [1, 10],
           A and beta from RESIDE's grid and written in the file name IIII_A_beta.png
  deblur   linear motion kernel, length 7-21 px, any angle, reflect borders (GoPro stand-in)
  enhance  scale * J ** gamma + Gaussian noise (LOL-like)
  denoise  clean images only: noise (sigma 15/25/50) is added by the pipeline on the fly and by
           the evaluator, as in the official code (uint8(clip(x + sigma n, 0, 255)), truncated).

Layout: the official AdaIR data/ root (Train/, test/) plus its data_dir/ list files, as in
adair-spec.md section 10. PNG everywhere (lossless); dehaze ground truth has the hazy file's
extension, as the official reader expects. The official readers find clean files by splitting
paths on "rainy", "synthetic" and "input": keep those words out of DIR's own path.

Images per task (degraded/clean pairs; denoise: clean images; dehaze train: hazy images, from
{TRAIN_COUNTS["dehaze"]} scenes x {HAZY_PER_SCENE} (A, beta)):
{table}

No leakage: each photo is split into a training strip and a disjoint test strip (pixels,
inclusive); training crops (160-256 px, random dihedral orientation) come only from training
strips, test crops (unrotated) only from test strips:
{regions}
Every file's photo, box [top, left, height, width], orientation and degradation parameters are
in manifest.json ("samples"), with the sha256 of every file the builder wrote ("files").
"""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_rel(out: Path, rel: str) -> Path:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts:
        raise ValueError(f"{out / MANIFEST} lists {rel!r}, which is outside {out}")
    return out / p


def _previous_files(out: Path, overwrite: bool) -> dict[str, str]:
    """Checks the output folder; returns the builder's files from an earlier build (if any)."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return {}
    if not overwrite:
        raise FileExistsError(
            f"{out} exists and is not empty. Choose a new --out, or pass --overwrite to replace "
            f"a demo set built there earlier (only the files listed in its {MANIFEST} are "
            "replaced)."
        )
    manifest = out / MANIFEST
    try:
        previous = json.loads(manifest.read_text())
        if previous.get("generator") != GENERATOR:
            raise ValueError(f"generator is {previous.get('generator')!r}, not {GENERATOR!r}")
        files = dict(previous["files"])
        for rel in files:
            _check_rel(out, rel)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FileExistsError(
            f"{out} is not empty and has no readable {MANIFEST} written by {GENERATOR} ({err}); "
            "--overwrite only replaces files this builder wrote, so nothing was touched. Choose "
            "another --out or empty the folder yourself."
        ) from err
    changed = []
    for rel, digest in files.items():
        path = _check_rel(out, rel)
        if path.is_symlink() or (path.exists() and not path.is_file()):
            changed.append(rel)
        elif path.is_file() and _sha256(path.read_bytes()) != digest:
            changed.append(rel)
    if changed:
        raise FileExistsError(
            f"{len(changed)} file(s) in {out} listed in its {MANIFEST} were modified since the "
            f"demo build (e.g. {changed[:3]}); refusing to delete them, nothing was touched. "
            "Move them away and rerun."
        )
    return files


def _remove_previous(out: Path, files: dict[str, str]) -> None:
    """Deletes an earlier build's files (checked unmodified by :func:`_previous_files`)."""
    dirs = set()
    for rel in files:
        path = _check_rel(out, rel)
        if path.is_file():
            path.unlink()
        dirs.update(p for p in path.parents if p != out and out in p.parents)
    # Remove the folders that only held the builder's files (deepest first; non-empty kept).
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    (out / MANIFEST).unlink(missing_ok=True)


def build_demo_set(out: Path, seed: int = 0, overwrite: bool = False) -> dict:
    """Builds the demo set under ``out`` (see the module docstring for the layout).

    Args:
        out: output folder; created if missing. Must be empty unless ``overwrite``.
        seed: the one seed every crop position, orientation and degradation derives from.
        overwrite: allow a non-empty ``out`` holding an earlier demo build: its files (as listed
            with their hashes in its manifest.json) are deleted and rewritten. Files the builder
            did not write are never deleted, and are never overwritten (it refuses instead).

    Returns:
        Summary: ``{"out", "seed", "counts": {split: {task: n}}, "num_files", "seconds"}``; counts
        are degraded/clean pairs (clean images for denoise).

    Raises:
        ValueError: a negative seed.
        FileExistsError: ``out`` is not empty and ``overwrite`` is false, or it holds files the
            builder did not write (or that were modified since) where it would write.
    """
    start = time.perf_counter()
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    out = Path(out)
    previous = _previous_files(out, overwrite)

    photos = {name: photo.loader() for name, photo in PHOTOS.items()}
    for name, photo in PHOTOS.items():
        shape = photos[name].shape
        for box in (photo.train, photo.test):
            if box.top + box.height > shape[0] or box.left + box.width > shape[1]:
                raise RuntimeError(
                    f"scikit-image's {name!r} photo is {shape}, too small for the demo region "
                    f"{box}; PHOTOS was written for the shapes of scikit-image 0.26."
                )
    images, samples = _generate(int(seed), photos)
    payload: dict[str, bytes] = {rel: _png_bytes(img) for rel, img in images.items()}
    for rel, text in _list_files(images).items():
        payload[rel] = text.encode()
    counts = _counts(samples)
    payload[README] = _readme(int(seed), counts).encode()

    # Never overwrite a file the builder did not write.
    foreign = [rel for rel in sorted(payload) if (out / rel).exists() and rel not in previous]
    if foreign:
        raise FileExistsError(
            f"{out} already has {len(foreign)} file(s) the demo builder did not write where it "
            f"would write (e.g. {foreign[:3]}); nothing was changed. Choose another --out."
        )
    if previous:
        _remove_previous(out, previous)

    import skimage  # only for the version stamp

    manifest = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "command": f"python -m {GENERATOR} --out DIR --seed {int(seed)}",
        "seed": int(seed),
        "skimage_version": skimage.__version__,
        "counts": counts,
        "regions": {name: {"train": p.train.as_list(), "test": p.test.as_list()} for name, p in PHOTOS.items()},
        "samples": [{**dataclasses.asdict(s), "box": s.box.as_list()} for s in samples],
        "files": {rel: _sha256(data) for rel, data in sorted(payload.items())},
    }
    out.mkdir(parents=True, exist_ok=True)
    # The manifest goes first, so that an interrupted build can still be replaced by --overwrite.
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    for rel, data in sorted(payload.items()):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return {
        "out": str(out),
        "seed": int(seed),
        "counts": counts,
        "num_files": len(payload) + 1,
        "seconds": time.perf_counter() - start,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {GENERATOR}",
        description="Write the small synthetic five-task demo set (AdaIR layout) to --out.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a demo set built earlier in --out (only the builder's own files)",
    )
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    try:
        summary = build_demo_set(args.out, seed=args.seed, overwrite=args.overwrite)
    except (FileExistsError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # an --out that cannot be created or written
        print(
            f"error: cannot write the demo set to {args.out}: {err.strerror or err}; choose a writable --out",
            file=sys.stderr,
        )
        return 1
    for split in _SPLITS:
        row = ", ".join(f"{task} {n}" for task, n in summary["counts"][split].items())
        print(f"{split:5s}: {row}")
    print(
        f"wrote {summary['num_files']} files to {summary['out']} (seed {summary['seed']}) in {summary['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
