"""The mini-IRPO benchmark: a five-task set large enough to measure small differences, with a
validation split and an out-of-domain split per task (issue 24; ``benchmarks/mini_irpo.py``).

    python -m irpo_jax.data.minibench --out runs/mini_irpo/data [--seed 0] [--quick]

Built like the demo set (:mod:`irpo_jax.data.demo`): no download, the clean images are crops of
photographs that ship with scikit-image, degraded by :mod:`irpo_jax.data.degradations`, and the
output is a pure function of the seed (and ``--quick``). The folder is the AdaIR layout the
readers already read, plus two kinds of paired folders (``input/`` + ``target/``) that a config
names in ``data.eval_paired`` (:func:`eval_paired`)::

    DIR/Train/...  DIR/data_dir/...         training pairs, exactly as the demo set lays them out
    DIR/test/{denoise/bsd68, derain/Rain100L, dehaze, deblur/gopro, enhance/lol}/
                                            in-domain test sets (rows sots, rain100l, bsd68_s*,
                                            gopro, lol: the five-task table)
    DIR/val/<task>/{input,target}/          validation (rows val_<task>): training's degradations
    DIR/ood/<task>/{input,target}/          out of domain (rows ood_<task>): degradation types or
                                            levels that never occur in training (see OOD below)
    DIR/README.md, DIR/manifest.json        the split table; every file's provenance and sha256

**Disjointness is by region, not by photograph.** Scikit-image ships eight usable photographs
(:data:`PHOTOS`); holding whole photographs out would leave each split one or two scenes. So
every photograph is cut into three non-overlapping column strips: training (left), validation
(middle), test (right). Training images come only from training strips, validation images only
from validation strips, and the test and out-of-domain images only from test strips (the two
held-out splits share those strips: they measure the same content under other degradations).
Training images are 160x160 crops with a random dihedral orientation (64-pixel training
crops are drawn from them); every evaluation image is an unrotated 128x128 crop (one shape:
one compile per model).

**Task ids**: the readers' names (``denoise, derain, dehaze, deblur, lowlight``); the AdaIR
folders keep their official names (``Enhance``, ``lol``).

OOD degradations (never in training; the in-domain models are the demo's, :data:`SPLITS`):

* denoise: signal-dependent Poisson-Gaussian noise (photon count ``peak`` at white, read noise),
  spatially correlated by a Gaussian of std 0.6 px (demosaicking-like), instead of white
  Gaussian noise of sigma 15/25/50;
* derain: heavy rain blended by *screen* (``1 - (1 - B)(1 - S)``) with a rain veil, longer, wider,
  more slanted and denser streaks than training's thin additive ones;
* dehaze: non-homogeneous haze (a random field modulates beta across the image) with a
  *coloured* airlight (smog/dusk tints), instead of homogeneous grey-airlight haze;
* deblur: defocus (a disk kernel) instead of linear motion;
* lowlight: a *linear* exposure drop with a colour cast and Poisson shot noise, instead of the
  gamma curve with Gaussian noise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from irpo_jax import cli, safe_files
from irpo_jax.data import degradations as deg
from irpo_jax.data.demo import Box, _orient, _png_bytes, _skimage
from irpo_jax.tasks import TASKS

GENERATOR = "irpo_jax.data.minibench"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
README = "README.md"


@dataclasses.dataclass(frozen=True)
class Photo:
    """A bundled photograph and its three disjoint column strips."""

    loader: Callable[[], np.ndarray]
    train: Box
    val: Box
    test: Box


def _grey(name: str) -> Callable[[], np.ndarray]:
    load = _skimage(name)
    return lambda: np.repeat(load()[..., None], 3, axis=-1)  # grey photographs as RGB


# Column strips (shapes of scikit-image 0.26): training on the left, validation in the middle,
# test (also the out-of-domain split) on the right; each held-out strip is >= 128 px wide.
PHOTOS: dict[str, Photo] = {
    "astronaut": Photo(_skimage("astronaut"), Box(0, 0, 512, 256), Box(0, 256, 512, 128), Box(0, 384, 512, 128)),
    "chelsea": Photo(_skimage("chelsea"), Box(0, 0, 300, 195), Box(0, 195, 300, 128), Box(0, 323, 300, 128)),
    "coffee": Photo(_skimage("coffee"), Box(0, 0, 400, 330), Box(0, 330, 400, 130), Box(0, 460, 400, 140)),
    "rocket": Photo(_skimage("rocket"), Box(0, 0, 427, 360), Box(0, 360, 427, 130), Box(0, 490, 427, 150)),
    "immunohistochemistry": Photo(
        _skimage("immunohistochemistry"), Box(0, 0, 512, 256), Box(0, 256, 512, 128), Box(0, 384, 512, 128)
    ),
    "motorcycle": Photo(
        _skimage("stereo_motorcycle"), Box(0, 0, 500, 441), Box(0, 441, 500, 140), Box(0, 581, 500, 160)
    ),
    "hubble_deep_field": Photo(
        _skimage("hubble_deep_field"), Box(0, 0, 872, 600), Box(0, 600, 872, 160), Box(0, 760, 872, 240)
    ),
    "camera": Photo(_grey("camera"), Box(0, 0, 512, 256), Box(0, 256, 512, 128), Box(0, 384, 512, 128)),
}
# Photographs per task, cycled (the demo's choice: Hubble's stars on black only where a mostly
# black image means something, i.e. not for rain, haze or low light).
TASK_PHOTOS: dict[str, tuple[str, ...]] = {
    "denoise": (
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "immunohistochemistry",
        "motorcycle",
        "hubble_deep_field",
        "camera",
    ),
    "derain": ("coffee", "rocket", "motorcycle", "astronaut", "chelsea", "immunohistochemistry", "camera"),
    "dehaze": ("rocket", "motorcycle", "chelsea", "astronaut", "coffee", "camera"),
    "deblur": (
        "motorcycle",
        "hubble_deep_field",
        "astronaut",
        "immunohistochemistry",
        "coffee",
        "chelsea",
        "rocket",
        "camera",
    ),
    "lowlight": ("chelsea", "astronaut", "immunohistochemistry", "coffee", "motorcycle", "rocket", "camera"),
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How many images of what size each split has."""

    train: dict[str, int]  # training images per task (dehaze: scenes, HAZY_PER_SCENE hazy each)
    val: int  # validation pairs per task (denoise: sigmas 15/25/50 in turn)
    test: int  # in-domain test images per task (denoise: clean images, scored at every sigma)
    ood: int  # out-of-domain pairs per task
    train_side: int  # training image side (pixels)
    eval_side: int  # evaluation image side (pixels, a multiple of 16)


FULL = Sizes(
    train={"denoise": 30, "derain": 40, "dehaze": 20, "deblur": 40, "lowlight": 40},
    val=8,
    test=12,
    ood=12,
    train_side=160,
    eval_side=128,
)
# The pipeline test's set: the tiny model on 32-pixel crops.
QUICK = Sizes(
    train={"denoise": 3, "derain": 4, "dehaze": 2, "deblur": 4, "lowlight": 4},
    val=2,
    test=2,
    ood=2,
    train_side=48,
    eval_side=32,
)
HAZY_PER_SCENE = 2

# The out-of-domain models' parameter ranges (uniform), in the order they are drawn.
OOD_NOISE = {"peak": (30.0, 100.0), "read": (0.01, 0.03)}  # photons at white; read noise std [0, 1]
OOD_NOISE_CORRELATION = 0.6  # Gaussian std (px) that correlates the noise spatially
OOD_RAIN = {
    "density": (0.006, 0.012),
    "length": (25.0, 45.0),
    "angle": (25.0, 45.0),
    "intensity": (0.5, 0.85),
    "width": (1.0, 1.6),
    "veil": (0.08, 0.2),
}
OOD_HAZE = {"beta": (0.1, 0.2), "spread": (0.4, 0.8), "airlight": (0.75, 0.95), "tint_mix": (0.0, 1.0)}
OOD_HAZE_TINTS = ((1.0, 0.9, 0.7), (0.8, 0.9, 1.0))  # smog (yellow-brown), dusk (blue): per-channel factors
OOD_DEFOCUS = {"radius": (2.0, 4.5)}  # disk radius, pixels
OOD_LOWLIGHT = {"exposure": (0.05, 0.14), "cast": (0.75, 1.25), "peak": (150.0, 500.0), "read": (0.004, 0.01)}

# What README.md's table says of each split (kept next to the code that makes them).
SPLITS: dict[str, dict[str, str]] = {
    "train / val / test": {
        "denoise": "white Gaussian noise, sigma 15 / 25 / 50 (0..255), truncated to uint8 as AdaIR's code "
        "(train: added on the fly; test: BSD68's seeded protocol; val: sigmas in turn)",
        "derain": "additive thin streaks: density 0.002-0.006, length 10-25 px, angle +-20 deg from vertical, "
        "intensity 0.3-0.6, width 0.4-0.8 px (Rain100L-like)",
        "dehaze": "homogeneous haze I = J t + A (1 - t), t = exp(-beta d), grey A in {0.8..1.0}, beta in "
        "{0.04..0.2} (RESIDE's grid), smooth synthetic depth 1-10",
        "deblur": "linear motion kernel, length 7-21 px, any angle (GoPro stand-in)",
        "lowlight": "0.12-0.3 x J^gamma, gamma 1.3-2.0, + Gaussian noise std 0.003-0.012 (LOL-like)",
    },
    "ood": {
        "denoise": "Poisson-Gaussian (signal-dependent) noise, 30-100 photons at white + read noise std "
        "0.01-0.03, spatially correlated (Gaussian, 0.6 px)",
        "derain": "heavy rain, screen-blended: density 0.006-0.012, length 25-45 px, angle 25-45 deg (either "
        "side), intensity 0.5-0.85, width 1.0-1.6 px, plus a rain veil 0.08-0.2",
        "dehaze": "non-homogeneous haze (beta 0.1-0.2 modulated x exp(+-0.4-0.8 field)) with a coloured "
        "airlight 0.75-0.95 (smog/dusk tints)",
        "deblur": "defocus: disk kernel of radius 2-4.5 px",
        "lowlight": "linear exposure 0.05-0.14 (no gamma), colour cast 0.75-1.25 per channel, Poisson shot "
        "noise (150-500 photons at white) + read noise 0.004-0.01",
    },
}


# --------------------------------------------------------------------------- OOD degradations


def _correlated(noise: np.ndarray, std: float) -> np.ndarray:
    """Spatially smoothed noise rescaled to keep its standard deviation per channel."""
    out = np.empty_like(noise)
    for c in range(noise.shape[-1]):
        smooth = ndimage.gaussian_filter(noise[..., c], std, mode="reflect")
        out[..., c] = smooth * (noise[..., c].std() / max(float(smooth.std()), 1e-12))
    return out


def ood_noise(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """Poisson-Gaussian noise, spatially correlated: ``x + corr(poisson(x p) / p - x + read n)``."""
    p = deg.sample_params(OOD_NOISE, rng)
    shot = rng.poisson(img.astype(np.float64) * p["peak"]) / p["peak"] - img
    noise = shot + p["read"] * rng.standard_normal(img.shape)
    noisy = img + _correlated(noise, OOD_NOISE_CORRELATION)
    return np.clip(noisy, 0, 1).astype(np.float32), p


def ood_rain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """Heavy rain: a streak layer S (training's streak model at other levels) blended by screen,
    over a rain veil (a light grey fog of strength ``veil``)."""
    p = deg.sample_params(OOD_RAIN, rng)
    p["angle"] *= float(rng.choice((-1.0, 1.0)))
    streaks = deg.add_rain(
        np.zeros(img.shape[:2], np.float32),
        rng,
        density=p["density"],
        length=p["length"],
        angle=p["angle"],
        intensity=p["intensity"],
        width=p["width"],
    )[..., None]
    veiled = img * (1 - p["veil"]) + 0.9 * p["veil"]
    return np.clip(1 - (1 - veiled) * (1 - streaks), 0, 1).astype(np.float32), p


def ood_haze(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """Non-homogeneous haze with a coloured airlight (Koschmieder's model with beta varying in space)."""
    p = deg.sample_params(OOD_HAZE, rng)
    h, w = img.shape[:2]
    depth = deg.synthetic_depth((h, w), rng)
    field = ndimage.gaussian_filter(rng.standard_normal((h, w)), max(h, w) / 8.0, mode="reflect")
    field /= max(float(np.abs(field).max()), 1e-12)  # in [-1, 1]
    beta_map = np.exp(p["spread"] * field).astype(np.float32)  # beta(x, y) / beta
    tint = np.asarray(OOD_HAZE_TINTS[0]) * (1 - p["tint_mix"]) + np.asarray(OOD_HAZE_TINTS[1]) * p["tint_mix"]
    airlight = p["airlight"] * tint
    return deg.add_haze(img, depth * beta_map, airlight.tolist(), p["beta"]), p


def disk_kernel(radius: float, supersample: int = 8) -> np.ndarray:
    """A normalised, anti-aliased disk (defocus) of ``radius`` pixels: each pixel's weight is the
    share of its cell inside the circle, measured on a ``supersample`` x finer grid."""
    r = int(math.ceil(radius))
    s = int(supersample)
    offsets = (np.arange(s) + 0.5) / s - 0.5  # sub-pixel positions inside a cell
    centres = np.arange(-r, r + 1, dtype=np.float64)
    fine = (centres[:, None] + offsets[None, :]).ravel()  # ((2r+1) s,)
    yy, xx = np.meshgrid(fine, fine, indexing="ij")
    inside = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    k = inside.reshape(2 * r + 1, s, 2 * r + 1, s).mean(axis=(1, 3))
    return k / k.sum()


def ood_defocus(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """Defocus blur: a disk kernel, reflect borders."""
    p = deg.sample_params(OOD_DEFOCUS, rng)
    k = disk_kernel(p["radius"]).astype(np.float32)
    out = np.stack([ndimage.convolve(img[..., c], k, mode="reflect") for c in range(img.shape[-1])], -1)
    return np.clip(out, 0, 1).astype(np.float32), p


def ood_lowlight(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """A linear exposure drop with a colour cast and Poisson shot noise (no gamma curve)."""
    p = deg.sample_params(OOD_LOWLIGHT, rng)
    cast = rng.uniform(*OOD_LOWLIGHT["cast"], size=3)
    p.update({f"cast_{c}": float(v) for c, v in zip("rgb", cast)})
    signal = np.clip(img * p["exposure"] * cast, 0, 1).astype(np.float64)
    dark = rng.poisson(signal * p["peak"]) / p["peak"] + p["read"] * rng.standard_normal(img.shape)
    return np.clip(dark, 0, 1).astype(np.float32), p


# --------------------------------------------------------------------------- in-domain degradations


def _in_domain(
    task: str, clean_u8: np.ndarray, rng: np.random.Generator, sigma: int | None = None
) -> tuple[np.ndarray, dict[str, float]]:
    """The demo's (training) degradation of ``task`` as a uint8 image, with its parameters."""
    x = deg.to_float32(clean_u8)
    if task == "denoise":
        return deg.add_gaussian_noise_uint8(clean_u8, sigma, rng), {"sigma": float(sigma)}
    if task == "derain":
        p = deg.sample_params(deg.RAIN_RANGES, rng)
        return deg.to_uint8(deg.add_rain(x, rng, **p)), p
    if task == "dehaze":
        depth = deg.synthetic_depth(x.shape[:2], rng)
        a, b = float(rng.choice(deg.HAZE_A_VALUES)), float(rng.choice(deg.HAZE_BETA_VALUES))
        return deg.to_uint8(deg.add_haze(x, depth, a, b)), {"A": a, "beta": b}
    if task == "deblur":
        p = deg.sample_params(deg.BLUR_RANGES, rng)
        return deg.to_uint8(deg.motion_blur(x, rng, **p)), p
    p = deg.sample_params(deg.LOW_LIGHT_RANGES, rng)
    return deg.to_uint8(deg.low_light(x, rng, **p)), p


OOD_MODELS = {
    "denoise": ood_noise,
    "derain": ood_rain,
    "dehaze": ood_haze,
    "deblur": ood_defocus,
    "lowlight": ood_lowlight,
}


# --------------------------------------------------------------------------- generation


_SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "ood": 3}


def _rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    # One independent stream per image, so adding an image never changes the others.
    return np.random.default_rng([seed, TASKS.index(task), _SPLIT_IDS[split], index, 24])


def _crop(photo: np.ndarray, region: Box, side: int, rng: np.random.Generator) -> tuple[np.ndarray, Box]:
    if side > region.height or side > region.width:
        raise ValueError(f"a {side}x{side} crop does not fit the region {region}")
    top = region.top + int(rng.integers(0, region.height - side + 1))
    left = region.left + int(rng.integers(0, region.width - side + 1))
    return np.ascontiguousarray(photo[top : top + side, left : left + side]), Box(top, left, side, side)


def _generate(seed: int, sizes: Sizes, photos: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Every image in memory: ``{relative path: uint8 image}`` and one provenance record per pair."""
    images: dict[str, np.ndarray] = {}
    samples: list[dict] = []

    def put(rel: str, img: np.ndarray) -> str:
        assert rel not in images, rel
        images[rel] = img
        return rel

    def record(task, split, clean, degraded, name, box, orientation, params):
        samples.append(
            {
                "task": task,
                "split": split,
                "clean": clean,
                "degraded": degraded,
                "photo": name,
                "box": box.as_list(),
                "orientation": orientation,
                "params": {k: float(v) for k, v in params.items()},
            }
        )

    for task in TASKS:
        names = TASK_PHOTOS[task]
        # ---- training: 160x160 crops of the training strips, random dihedral orientation.
        for i in range(sizes.train[task]):
            rng = _rng(seed, task, "train", i)
            name = names[i % len(names)]
            crop, box = _crop(photos[name], PHOTOS[name].train, sizes.train_side, rng)
            k = int(rng.integers(0, 8))
            clean = _orient(crop, k)
            n = i + 1
            if task == "denoise":
                record(task, "train", put(f"Train/Denoise/{n:05d}.png", clean), None, name, box, k, {})
            elif task == "dehaze":
                scene = f"{1 + i:04d}"
                x = deg.to_float32(clean)
                depth = deg.synthetic_depth(clean.shape[:2], rng)
                grid = [(a, b) for a in deg.HAZE_A_VALUES for b in deg.HAZE_BETA_VALUES]
                gt = put(f"Train/Dehaze/original/{scene}.png", clean)
                for j in sorted(int(v) for v in rng.choice(len(grid), size=HAZY_PER_SCENE, replace=False)):
                    a, b = grid[j]
                    rel = put(
                        f"Train/Dehaze/synthetic/part1/{scene}_{a:g}_{b:g}.png",
                        deg.to_uint8(deg.add_haze(x, depth, a, b)),
                    )
                    record(task, "train", gt, rel, name, box, k, {"A": a, "beta": b})
            else:
                degraded, p = _in_domain(task, clean, rng)
                gt_rel, deg_rel = {
                    "derain": (f"Train/Derain/gt/norain-{n}.png", f"Train/Derain/rainy/rain-{n}.png"),
                    "deblur": (f"Train/Deblur/sharp/{n:06d}.png", f"Train/Deblur/blur/{n:06d}.png"),
                    "lowlight": (f"Train/Enhance/gt/{n}.png", f"Train/Enhance/low/{n}.png"),
                }[task]
                record(task, "train", put(gt_rel, clean), put(deg_rel, degraded), name, box, k, p)

        # ---- held out: unrotated crops of the validation / test strips.
        for split, count in (("val", sizes.val), ("test", sizes.test), ("ood", sizes.ood)):
            for i in range(count):
                rng = _rng(seed, task, split, i)
                name = names[(i + (split != "val")) % len(names)]
                region = PHOTOS[name].val if split == "val" else PHOTOS[name].test
                clean, box = _crop(photos[name], region, sizes.eval_side, rng)
                n = i + 1
                if split == "test" and task == "denoise":  # BSD68's layout: noise by the seeded protocol
                    record(
                        task,
                        split,
                        put(f"test/denoise/bsd68/test{n:03d}.png", clean),
                        None,
                        name,
                        box,
                        0,
                        {"sigma": -1},
                    )
                    continue
                if split == "ood":
                    degraded, p = OOD_MODELS[task](deg.to_float32(clean), rng)
                    degraded = deg.to_uint8(degraded)
                else:
                    sigma = deg.NOISE_SIGMAS[i % len(deg.NOISE_SIGMAS)] if task == "denoise" else None
                    degraded, p = _in_domain(task, clean, rng, sigma)
                if split == "test":
                    if task == "dehaze":
                        scene = f"{501 + i:04d}"  # SOTS: input/IIII_A_beta.png -> target/IIII.png
                        root, inp, tgt = "test/dehaze", f"{scene}_{p['A']:g}_{p['beta']:g}.png", f"{scene}.png"
                    else:
                        root = {
                            "derain": "test/derain/Rain100L",
                            "deblur": "test/deblur/gopro",
                            "lowlight": "test/enhance/lol",
                        }[task]
                        inp = tgt = f"{n:03d}.png"
                else:
                    root, inp, tgt = f"{split}/{task}", f"{n:03d}.png", f"{n:03d}.png"
                record(
                    task,
                    split,
                    put(f"{root}/target/{tgt}", clean),
                    put(f"{root}/input/{inp}", degraded),
                    name,
                    box,
                    0,
                    p,
                )
    return images, samples


def _list_files(images: dict[str, np.ndarray]) -> dict[str, str]:
    """The official data_dir/ name lists (as the demo set writes them)."""

    def lines(root: str, sub: str) -> str:
        return "".join(r[len(root) :] + "\n" for r in sorted(images) if r.startswith(root + sub))

    return {
        "data_dir/noisy/denoise.txt": lines("Train/Denoise/", ""),
        "data_dir/rainy/rainTrain.txt": lines("Train/Derain/", "rainy/"),
        "data_dir/hazy/hazy_outside.txt": lines("Train/Dehaze/", "synthetic/"),
    }


# --------------------------------------------------------------------------- the rows a config reads


IN_DOMAIN_ROWS = ("sots", "rain100l", "bsd68", "gopro", "lol")  # the five-task table's sets


def eval_paired(root: str = "") -> dict[str, dict[str, str]]:
    """``data.eval_paired`` for the validation and out-of-domain rows (paths relative to ``root``)."""
    del root  # paths are relative to data.root
    return {f"{split}_{task}": {"path": f"{split}/{task}", "task": task} for split in ("val", "ood") for task in TASKS}


def rows(split: str) -> tuple[str, ...]:
    """The evaluation rows of a split: ``"test"`` (the five-task sets), ``"val"`` or ``"ood"``."""
    if split == "test":
        return IN_DOMAIN_ROWS
    if split not in ("val", "ood"):
        raise ValueError(f"unknown split {split!r}; valid: test, val, ood")
    return tuple(f"{split}_{task}" for task in TASKS)


# --------------------------------------------------------------------------- writing


def readme_tables(counts: dict[str, dict[str, int]], sizes: Sizes) -> str:
    """The two markdown tables of the splits: their sizes, and each task's degradations."""
    lines = ["| split | size | " + " | ".join(TASKS) + " |", "|:--|:-:|" + "--:|" * len(TASKS)]
    for split in ("train", "val", "test", "ood"):
        side = sizes.train_side if split == "train" else sizes.eval_side
        lines.append(f"| {split} | {side}x{side} | " + " | ".join(str(counts[split][t]) for t in TASKS) + " |")
    lines += ["", "| task | train, val, test (in domain) | ood (never in training) |", "|:--|:--|:--|"]
    lines += [f"| {t} | {SPLITS['train / val / test'][t]} | {SPLITS['ood'][t]} |" for t in TASKS]
    return "\n".join(lines)


def _readme(seed: int, quick: bool, sizes: Sizes, counts: dict[str, dict[str, int]]) -> str:
    return "\n".join(
        [
            "# mini-IRPO benchmark (synthetic; built, not downloaded)",
            "",
            f"Built by `python -m {GENERATOR} --out DIR --seed {seed}{' --quick' if quick else ''}`; the same "
            "command rewrites every file byte for byte.",
            "",
            "Disjoint **by region**: each photograph is cut into a training, a validation and a test column strip "
            "(boxes in manifest.json); test and out-of-domain images both come from the test strips.",
            "",
            "Images (pairs) per task. Train denoise and test denoise hold clean images, noised at every sigma; "
            "train dehaze holds 2 hazy images per scene.",
            "",
            readme_tables(counts, sizes),
            "",
        ]
    )


def _fingerprint(seed: int, quick: bool) -> str:
    return hashlib.sha256(f"{GENERATOR} v{FORMAT_VERSION} seed={seed} quick={quick}".encode()).hexdigest()[:16]


def build(out: str | Path, seed: int = 0, quick: bool = False) -> dict:
    """Builds the benchmark under ``out``, or finds it already built there.

    Written into a temporary sibling and renamed (``safe_files.atomic_directory``), so ``out`` is
    either absent or complete. An existing
    ``out`` built by this builder with the same seed and size is kept as it is (the study's runner
    calls this on every start); anything else there is refused.

    Returns:
      ``{"out", "seed", "quick", "counts": {split: {task: n}}, "built": bool, "seconds"}``.

    Raises:
      FileExistsError: ``out`` exists and is not this benchmark with this seed and size.
    """
    t0 = time.perf_counter()
    out = Path(out)
    fingerprint = _fingerprint(int(seed), bool(quick))
    if out.exists():
        try:
            manifest = json.loads((out / MANIFEST).read_text())
        except (OSError, ValueError) as err:
            raise FileExistsError(
                f"{out} exists but holds no {MANIFEST} of {GENERATOR} ({err}); choose another folder or remove it"
            ) from err
        if manifest.get("fingerprint") != fingerprint:
            raise FileExistsError(
                f"{out} holds a benchmark built with other settings ({manifest.get('command')}); "
                "choose another folder or remove it"
            )
        return {
            "out": str(out),
            "seed": seed,
            "quick": quick,
            "counts": manifest["counts"],
            "built": False,
            "seconds": time.perf_counter() - t0,
        }
    sizes = QUICK if quick else FULL
    photos = {name: p.loader() for name, p in PHOTOS.items()}
    for name, p in PHOTOS.items():
        for box in (p.train, p.val, p.test):
            if box.top + box.height > photos[name].shape[0] or box.left + box.width > photos[name].shape[1]:
                raise RuntimeError(f"scikit-image's {name!r} is {photos[name].shape}, too small for {box}")
        assert not p.train.overlaps(p.val) and not p.train.overlaps(p.test) and not p.val.overlaps(p.test)
    images, samples = _generate(int(seed), sizes, photos)
    counts = {s: {t: sum(1 for r in samples if r["split"] == s and r["task"] == t) for t in TASKS} for s in _SPLIT_IDS}
    payload = {rel: _png_bytes(img) for rel, img in images.items()}
    payload.update({rel: text.encode() for rel, text in _list_files(images).items()})
    payload[README] = _readme(int(seed), bool(quick), sizes, counts).encode()
    import skimage

    manifest = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "command": f"python -m {GENERATOR} --out DIR --seed {int(seed)}{' --quick' if quick else ''}",
        "seed": int(seed),
        "quick": bool(quick),
        "skimage_version": skimage.__version__,
        "counts": counts,
        "sizes": dataclasses.asdict(sizes),
        "regions": {
            n: {"train": p.train.as_list(), "val": p.val.as_list(), "test": p.test.as_list()} for n, p in PHOTOS.items()
        },
        "samples": samples,
        "files": {rel: hashlib.sha256(data).hexdigest() for rel, data in sorted(payload.items())},
    }
    with safe_files.atomic_directory(out) as partial:
        for rel, data in sorted(payload.items()):
            path = partial / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return {
        "out": str(out),
        "seed": seed,
        "quick": quick,
        "counts": counts,
        "built": True,
        "seconds": time.perf_counter() - t0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog=f"python -m {GENERATOR}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (new, or this benchmark built before)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (>= 0)")
    parser.add_argument("--quick", action="store_true", help="the pipeline test's tiny set")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")

    def run() -> int:
        summary = build(args.out, args.seed, args.quick)
        for split, per in summary["counts"].items():
            print(f"{split:5s}: " + ", ".join(f"{t} {n}" for t, n in per.items()))
        print(("built" if summary["built"] else "already built:") + f" {summary['out']} in {summary['seconds']:.1f} s")
        return 0

    return cli.main_errors(run, (FileExistsError,), resume="the same command builds it anew")


if __name__ == "__main__":
    sys.exit(main())
