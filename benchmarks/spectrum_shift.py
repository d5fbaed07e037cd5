"""Do the rate heads' spectrum features read the same on whole images as on training crops? (issue 23)

  python benchmarks/spectrum_shift.py [--markdown] [--crops 256] [--tile 128]

The Policy Rate heads learn on 128x128 training crops and act on whole test images, so the 17
:func:`irpo_jax.models.policy.spectrum_features` of a whole image should be what its crops read.
For each of the seven scikit-image photographs of the demo set (300x451 to 872x1000 pixels),
clean and with Gaussian noise (sigma 25, as the denoising task adds it), this computes the
features of the whole image and of ``--crops`` random 128x128 crops of it, and per feature the
shift ``(whole - mean over crops) / std over crops``: how many crop-to-crop standard deviations a
whole image reads off what training saw. Two settings: ``spectrum_tile=0`` (one periodogram of
the whole image: the behaviour before issue 23) and ``spectrum_tile=--tile`` (the default: the
features averaged over tile-sized tiles at every tile/8 pixels). The goal is a mean shift of at
most 0.1 in every band. The reference (a mean of random crops) is itself noisy: a second set of
random crops against the first gives the noise floor of the largest |shift|.

Reported per feature: the mean of the raw difference and of the shift over the 14 images, and
the largest |shift|. (The DC feature, ``ln(mean luminance / 0.5)``, is the mean of a linear
statistic only up to the log; it is listed too.)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from irpo_jax.data import degradations as deg
from irpo_jax.data import demo
from irpo_jax.models import policy

CROP = 128
NAMES = (
    [f"level {b}" for b in range(policy.SPECTRUM_BANDS)]
    + [f"anisotropy {b}" for b in range(policy.SPECTRUM_BANDS)]
    + ["dc"]
)


def images(seed: int) -> list[tuple[str, np.ndarray]]:
    """The seven photographs as float32 RGB in [0, 1], clean and with sigma-25 noise."""
    rng = np.random.default_rng(seed)
    out = []
    for name, photo in demo.PHOTOS.items():
        full = photo.loader()
        full = np.repeat(full[..., None], 3, axis=-1) if full.ndim == 2 else full[..., :3]
        full = np.ascontiguousarray(full)
        out.append((f"{name} {full.shape[0]}x{full.shape[1]}", deg.to_float32(full)))
        noisy = deg.add_gaussian_noise_uint8(full, 25, rng)
        out.append((f"{name} {full.shape[0]}x{full.shape[1]} + noise 25", deg.to_float32(noisy)))
    return out


def features(img: np.ndarray, tile: int) -> np.ndarray:
    return np.asarray(jax.jit(policy.spectrum_features, static_argnums=1)(jnp.asarray(img[None]), tile))[0]


def random_crop_features(img: np.ndarray, crops: int, rng: np.random.Generator) -> np.ndarray:
    """Features of ``crops`` random 128x128 crops (uniform offsets, as the training pipeline draws)."""
    h, w = img.shape[:2]
    tops, lefts = rng.integers(0, h - CROP + 1, crops), rng.integers(0, w - CROP + 1, crops)
    batch = np.stack([img[t : t + CROP, lf : lf + CROP] for t, lf in zip(tops, lefts)])
    run = jax.jit(policy.spectrum_features)  # one tile each
    return np.concatenate([np.asarray(run(jnp.asarray(batch[i : i + 128]))) for i in range(0, crops, 128)])


def shifts(img: np.ndarray, crops: int, tile: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    crop_features = random_crop_features(img, crops, rng)
    mean, std = crop_features.mean(axis=0), crop_features.std(axis=0, ddof=1)
    out = {}
    for label, t in (("whole image (tile 0, before)", 0), (f"tiles of {tile} (now)", tile)):
        diff = features(img, t) - mean
        out[label] = np.stack([diff, diff / np.maximum(std, 1e-9)])  # (2, 17)
    # The reference's own noise: another set of random crops against the first.
    diff = random_crop_features(img, crops, rng).mean(axis=0) - mean
    out["another set of random crops (noise floor)"] = np.stack([diff, diff / np.maximum(std, 1e-9)])
    return out


def run(crops: int, tile: int, seed: int) -> dict:
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    per_image = {}
    for name, img in images(seed):
        per_image[name] = {k: v.tolist() for k, v in shifts(img, crops, tile, rng).items()}
    summary = {}
    for label in next(iter(per_image.values())):
        stack = np.asarray([v[label] for v in per_image.values()])  # (images, 2, 17)
        summary[label] = {
            "mean_diff": stack[:, 0].mean(axis=0).tolist(),
            "mean_shift": stack[:, 1].mean(axis=0).tolist(),
            "max_abs_shift": np.abs(stack[:, 1]).max(axis=0).tolist(),
        }
    return {
        "crops": crops, "tile": tile, "seed": seed, "images": list(per_image), "summary": summary,
        "per_image": per_image, "seconds": round(time.perf_counter() - t0, 1),
        "machine": platform.node(), "command": "python benchmarks/spectrum_shift.py " + " ".join(sys.argv[1:]),
    }  # fmt: skip


def markdown(res: dict) -> str:
    labels = list(res["summary"])
    lines = [
        f"{len(res['images'])} images (the demo's 7 photographs, clean and with sigma-25 noise), "
        f"{res['crops']} random 128x128 crops each; {res['seconds']} s.",
        "",
        "| feature | " + " | ".join(f"{lb}: mean diff / mean shift / max abs shift" for lb in labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for i, name in enumerate(NAMES):
        cells = []
        for lb in labels:
            s = res["summary"][lb]
            cells.append(f"{s['mean_diff'][i]:+.3f} / {s['mean_shift'][i]:+.2f} / {s['max_abs_shift'][i]:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crops", type=int, default=256, help="random 128x128 crops per image (x2: the noise floor)")
    parser.add_argument("--tile", type=int, default=policy.PolicyConfig().spectrum_tile)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    res = run(args.crops, args.tile, args.seed)
    print(markdown(res) if args.markdown else json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
