"""Synthetic miniatures of the five out-of-domain releases, laid out as each release unpacks
(irpo_jax/data/ood_sets.py cites the sources), with their quirks: subsets and a training split to
skip (RRSHID), several rainy frames per clean frame and webcam names (GT-Rain), .mat blocks with a
benchmark file beside them (SIDD), scene/sequence folders and a masks tree (ReLoBlur), a training
split and an unpaired real test split (LoLI-Street), names that differ in zero padding, case,
role words or extension, a grey image and a JPEG.

Every image crops to 32x32 (``crop_img(base=16)``), so a model compiles one shape for all five.
:func:`build` returns what each reader must find, written down independently of the readers.
"""

from __future__ import annotations

import pathlib

import numpy as np
import scipy.io
from PIL import Image

SIZES = ((32, 32), (35, 40), (47, 33))  # (H, W); all crop to 32x32


def _clean(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.uniform(40, 215, size=(1, 1, 3))
    ramp = np.linspace(-30, 30, w)[None, :, None] + np.linspace(-20, 20, h)[:, None, None]
    return np.clip(base + ramp + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def _degrade(rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
    return np.clip(clean.astype(np.float64) * 0.8 + 20 + rng.normal(0, 12, clean.shape), 0, 255).astype(np.uint8)


def _save(path: pathlib.Path, a: np.ndarray, mode: str | None = None) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(a)
    if mode:
        img = img.convert(mode)
    img.save(path)
    return path


def _pair(rng, deg: pathlib.Path, clean: pathlib.Path, k: int, *, deg_mode: str | None = None):
    h, w = SIZES[k % len(SIZES)]
    c = _clean(rng, h, w)
    _save(clean, c)
    _save(deg, _degrade(rng, c), deg_mode)
    return deg, clean


def build(root: pathlib.Path, seed: int = 0) -> dict[str, list[dict]]:
    """Writes ``root/test/ood/<set>/`` for the five sets.

    Returns:
      ``{set: [{"name", "degraded", "clean", ["group"]}]}`` in the order the reader lists them;
      ``degraded``/``clean`` are file paths, or for SIDD's blocks uint8 arrays.
    """
    rng = np.random.default_rng(seed)
    ood = root / "test" / "ood"
    out: dict[str, list[dict]] = {}

    # RRSHID.zip: subsets with their own splits; the training split is not evaluated.
    r = ood / "rrshid" / "RRSHID"
    rows = []
    for k, (deg, gt, name) in enumerate(
        [
            ("thick/test/hazy/0003_hazy.jpg", "thick/test/GT/3.png", "thick/test/hazy/0003_hazy.jpg"),
            ("thick/test/hazy/4.png", "thick/test/GT/4.png", "thick/test/hazy/4.png"),  # grey input
            ("thin/test/hazy/1.png", "thin/test/GT/1.png", "thin/test/hazy/1.png"),
            ("thin/test/hazy/2.png", "thin/test/GT/2.PNG", "thin/test/hazy/2.png"),  # case of the extension
            ("thin/test/hazy/10.png", "thin/test/GT/10.png", "thin/test/hazy/10.png"),  # natural order
        ]
    ):
        d, c = _pair(rng, r / deg, r / gt, k, deg_mode="L" if deg.endswith("4.png") else None)
        rows.append({"name": name, "degraded": d, "clean": c})
    _pair(rng, r / "thin/train/hazy/7.png", r / "thin/train/GT/7.png", 0)
    out["rrshid"] = rows

    # GT-RAIN_test: scene folders; every rainy frame against the scene's one clean frame.
    g = ood / "gtrain" / "GT-RAIN_test"
    rows = []
    scenes = [
        ("Gurutto_1-2", "Gurutto_1-2-Webcam", ["000", "001"], "Gurutto_1-2-Webcam-C-000.png"),
        ("M1135_0-0", "M1135_0-0", ["000"], "M1135_0-0_ref-C-000.png"),  # another prefix: *C-000
        ("Oinari_0-0", "Oinari_0-0", ["000", "002", "010"], "Oinari_0-0-C-000.png"),
    ]
    for k, (scene, prefix, frames, clean_name) in enumerate(scenes):
        h, w = SIZES[k % len(SIZES)]
        clean = _clean(rng, h, w)
        cpath = _save(g / scene / clean_name, clean)
        for f in frames:
            rows.append(
                {
                    "name": f"{scene}/{prefix}-R-{f}.png",
                    "group": f"GT-RAIN_test/{scene}",
                    "degraded": _save(g / scene / f"{prefix}-R-{f}.png", _degrade(rng, clean)),
                    "clean": cpath,
                }
            )
    _save(g / "Oinari_0-0" / "Oinari_0-0-C-001.png", _clean(rng, 32, 32))  # a second clean frame: unused
    t = ood / "gtrain" / "GT-RAIN_train" / "Train_0-0"
    clean = _clean(rng, 32, 32)
    _save(t / "Train_0-0-C-000.png", clean)
    _save(t / "Train_0-0-R-000.png", _degrade(rng, clean))
    out["gtrain"] = rows

    # SIDD: the sRGB validation blocks (images x blocks x H x W x 3, uint8) as MATLAB v5 files;
    # the benchmark file beside them (no ground truth) is not read.
    s = ood / "sidd" / "SIDD_Benchmark_zips"
    s.mkdir(parents=True)
    gt = np.stack([np.stack([_clean(rng, 32, 32) for _ in range(3)]) for _ in range(2)])  # (2, 3, 32, 32, 3)
    noisy = np.clip(gt + rng.normal(0, 15, gt.shape), 0, 255).astype(np.uint8)
    scipy.io.savemat(s / "ValidationGtBlocksSrgb.mat", {"ValidationGtBlocksSrgb": gt})
    scipy.io.savemat(s / "ValidationNoisyBlocksSrgb.mat", {"ValidationNoisyBlocksSrgb": noisy})
    scipy.io.savemat(s / "BenchmarkNoisyBlocksSrgb.mat", {"BenchmarkNoisyBlocksSrgb": noisy[:1]})
    out["sidd"] = [
        {"name": f"{i:02d}_{b:02d}.png", "degraded": noisy[i, b], "clean": gt[i, b]} for i in range(2) for b in range(3)
    ]

    # ReLoBlur test: test/<scene>/<seq>/<MM>_{blur,sharp}.png; the masks tree and train are skipped.
    b = ood / "reloblur"
    rows = []
    for k, rel in enumerate(["scene1/00/00", "scene1/00/01", "scene2/03/00"]):
        d, c = _pair(rng, b / "test" / f"{rel}_blur.png", b / "test" / f"{rel}_sharp.png", k)
        rows.append({"name": f"{rel}_blur.png", "degraded": d, "clean": c})
    _save(b / "masks/test/scene1/00/00.png", np.zeros((32, 32, 3), np.uint8))
    _pair(rng, b / "train/s01/00/00_blur.png", b / "train/s01/00/00_sharp.png", 0)
    out["reloblur"] = rows

    # LoLI-Street: Train/ and Val/ pairs of low/ and high/; Test/ has low-light images only.
    lo = ood / "lolistreet" / "LoLI-Street Dataset"
    rows = []
    for k, (low, high) in enumerate([("a.png", "a.png"), ("B.png", "b.png"), ("c.jpg", "c.png")]):
        d, c = _pair(rng, lo / "Val/low" / low, lo / "Val/high" / high, k)
        rows.append({"name": low, "degraded": d, "clean": c})
    _pair(rng, lo / "Train/low/1.png", lo / "Train/high/1.png", 0)
    _save(lo / "Test/low/x.png", _clean(rng, 32, 32))
    out["lolistreet"] = rows
    return out
