"""How well the rate heads' inputs tell the degradations apart (issue 16, item 2).

  python benchmarks/head_input_separability.py [--markdown] [--model DIR] [--out results.json]

The Policy Rate heads choose the low-pass cutoff of each FreModule, so their input should say
which degradation (and how strong) an image has. This measures it for the two inputs of
``model.policy.rate_input``:

* ``pooled``: ``GAP(conv1(resize(x)))`` at each FreModule's resolution (what AdaIR's rate_conv
  reads). ``conv1`` is linear without bias, so this is (up to border effects) a fixed linear
  map of the image's mean colour: the "mean colour" row is its 3-number reference.
* ``spectrum``: the 17 :func:`irpo_jax.models.policy.spectrum_features`; the head input under
  ``rate_input="spectrum"`` is ``pooled + spectrum``.

Data: 128x128 crops (the training crop size) of (a) the built-in demo set's degraded images
(built into a temporary folder unless ``--demo-root``; denoising gets its clean images with
sigma 15/25/50 noise, as the pipeline adds it) and (b) synthetic degradations of several
strengths of random crops of the same scikit-image photographs (irpo_jax.data.degradations):
noise sigma 15/25/50, rain intensity 0.2/0.45/0.7, haze beta 0.04/0.1/0.2, motion blur length
5/11/21 px, low light scale 0.3/0.2/0.1.

Classifiers (numpy/scipy): nearest centroid and multinomial L2 logistic regression on
standardised features, cross-validated leave-one-photograph-out (a crop's photograph is never
in its training fold, so the classifier cannot recognise the scene instead of the degradation).
Two problems: the five tasks, and the three noise levels among the denoising samples.
Chance is 20 % and 33 %.

The conv1 weights are those of a randomly initialised base AdaIR (seed 0) unless ``--model``
names a model directory (e.g. a supervised run's ``model/``); the pooled input is a linear
function of the mean colour for any weights, trained or not.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from flax import nnx
from PIL import Image

from irpo_jax.data import degradations as deg
from irpo_jax.data import demo
from irpo_jax.models import adair, policy

TASKS = demo.TASKS  # denoise, derain, dehaze, deblur, enhance
CROP = 128
STRENGTHS = {
    "denoise": (15, 25, 50),  # sigma, 0..255
    "derain": (0.2, 0.45, 0.7),  # streak intensity (density 0.004, length 18, width 0.6)
    "dehaze": (0.04, 0.1, 0.2),  # beta (A = 0.9, synthetic depth 1..10)
    "deblur": (5.0, 11.0, 21.0),  # motion length in pixels
    "enhance": (0.3, 0.2, 0.1),  # exposure scale (gamma 1.6, noise 0.006)
}


# ----------------------------------------------------------------------------- data


def _centre_crop(img: np.ndarray, size: int = CROP) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return img[top : top + size, left : left + size]


def demo_samples(root: pathlib.Path, seed: int) -> list[dict]:
    """The demo set's degraded images (train and test), centre-cropped to 128x128."""
    manifest = json.loads((root / demo.MANIFEST).read_text())
    rng = np.random.default_rng(seed)
    out = []
    for s in manifest["samples"]:
        read = lambda rel: np.asarray(Image.open(root / rel).convert("RGB"))  # noqa: E731
        if s["degraded"] is None:  # denoise: clean only, noise added as the pipeline does
            clean = _centre_crop(read(s["clean"]))
            for sigma in STRENGTHS["denoise"]:
                noisy = deg.add_gaussian_noise_uint8(clean, sigma, rng)
                out.append({"img": deg.to_float32(noisy), "task": "denoise", "level": sigma, "photo": s["photo"],
                            "source": "demo"})  # fmt: skip
        else:
            out.append({"img": deg.to_float32(_centre_crop(read(s["degraded"]))), "task": s["task"], "level": None,
                        "photo": s["photo"], "source": "demo"})  # fmt: skip
    return out


def synthetic_samples(crops_per_photo: int, seed: int) -> list[dict]:
    """Random 128x128 crops of each photograph, each degraded five ways at three strengths."""
    rng = np.random.default_rng(seed)
    out = []
    for name, photo in demo.PHOTOS.items():
        full = photo.loader()
        full = np.repeat(full[..., None], 3, axis=-1) if full.ndim == 2 else full[..., :3]
        for _ in range(crops_per_photo):
            top = int(rng.integers(0, full.shape[0] - CROP + 1))
            left = int(rng.integers(0, full.shape[1] - CROP + 1))
            clean_u8 = np.ascontiguousarray(full[top : top + CROP, left : left + CROP])
            x = deg.to_float32(clean_u8)
            for task in TASKS:
                for level in STRENGTHS[task]:
                    if task == "denoise":
                        y = deg.to_float32(deg.add_gaussian_noise_uint8(clean_u8, level, rng))
                    elif task == "derain":
                        y = deg.add_rain(x, rng, density=0.004, length=18.0, intensity=level, width=0.6)
                    elif task == "dehaze":
                        y = deg.add_haze(x, deg.synthetic_depth(x.shape[:2], rng), 0.9, level)
                    elif task == "deblur":
                        y = deg.motion_blur(x, rng, length=level)
                    else:
                        y = deg.low_light(x, rng, gamma=1.6, scale=level, noise_sigma=0.006)
                    y = deg.to_float32(deg.to_uint8(y))  # as written to PNG
                    out.append({"img": y, "task": task, "level": level, "photo": name, "source": "synthetic"})
    return out


# ----------------------------------------------------------------------------- features


def head_features(net: adair.AdaIR, images: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
    """The rate heads' inputs: pooled conv1 features per FreModule, the spectrum features, the
    mean colour."""

    @jax.jit
    def run(graphdef, state, x):
        model = nnx.merge(graphdef, state)
        _, h, w, _ = x.shape
        # The policy's default tiles: a 128x128 crop is one tile (the same features as without tiles).
        spectrum = policy.spectrum_features(x, policy.PolicyConfig().spectrum_tile)
        out = {"spectrum": spectrum, "mean colour": jnp.mean(x, axis=(1, 2))}
        for k, name in enumerate(adair.FRE_NAMES):
            f = 2 ** (3 - k)  # fre1 at 1/8, fre2 at 1/4, fre3 at 1/2 of the input
            out[f"pooled {name}"] = jnp.mean(getattr(model, name).image_features(x, h // f, w // f), axis=(1, 2))
        return out

    graphdef, state = nnx.split(net)
    parts = []
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        pad = batch - len(chunk)  # one compiled shape
        x = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)]) if pad else chunk
        got = jax.device_get(run(graphdef, state, jnp.asarray(x)))
        parts.append({k: v[: len(chunk)] for k, v in got.items()})
    return {k: np.concatenate([p[k] for p in parts]).astype(np.float64) for k in parts[0]}


# ----------------------------------------------------------------------------- classifiers


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = train.mean(0), train.std(0)
    sd = np.where(sd > 1e-12 * max(1.0, float(np.abs(mu).max())), sd, 1.0)
    return (train - mu) / sd, (test - mu) / sd


def nearest_centroid(xtr, ytr, xte, n_classes: int) -> np.ndarray:
    centroids = np.stack([xtr[ytr == c].mean(0) if np.any(ytr == c) else np.full(xtr.shape[1], np.inf)
                          for c in range(n_classes)])  # fmt: skip
    return np.argmin(((xte[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)


def logistic_regression(xtr, ytr, xte, n_classes: int, l2: float = 1e-2) -> np.ndarray:
    """Multinomial logistic regression: mean cross-entropy + l2/2 |W|^2 (bias unpenalised), L-BFGS."""
    n, d = xtr.shape
    onehot = np.eye(n_classes)[ytr]

    def loss(theta):
        w, b = theta[: d * n_classes].reshape(d, n_classes), theta[d * n_classes :]
        logits = xtr @ w + b
        logits -= logits.max(1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        value = -np.sum(onehot * logp) / n + 0.5 * l2 * np.sum(w * w)
        g = (np.exp(logp) - onehot) / n
        return value, np.concatenate([(xtr.T @ g + l2 * w).ravel(), g.sum(0)])

    theta = scipy.optimize.minimize(loss, np.zeros(d * n_classes + n_classes), jac=True, method="L-BFGS-B",
                                    options={"maxiter": 500}).x  # fmt: skip
    w, b = theta[: d * n_classes].reshape(d, n_classes), theta[d * n_classes :]
    return np.argmax(xte @ w + b, axis=1)


def cross_validated(features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Leave-one-group-out accuracy of both classifiers."""
    n_classes = int(labels.max()) + 1
    correct = {"nearest centroid": 0, "logistic regression": 0}
    for g in np.unique(groups):
        test = groups == g
        xtr, xte = _standardise(features[~test], features[test])
        correct["nearest centroid"] += int(np.sum(nearest_centroid(xtr, labels[~test], xte, n_classes) == labels[test]))
        pred = logistic_regression(xtr, labels[~test], xte, n_classes)
        correct["logistic regression"] += int(np.sum(pred == labels[test]))
    return {k: v / len(labels) for k, v in correct.items()}


# ----------------------------------------------------------------------------- the benchmark


def feature_sets(feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sets = {"mean colour (3)": feats["mean colour"]}
    for name in adair.FRE_NAMES:
        pooled = feats[f"pooled {name}"]
        sets[f"pooled {name} ({pooled.shape[1]}): today"] = pooled
        both = np.concatenate([pooled, feats["spectrum"]], 1)
        sets[f"pooled {name} + spectrum ({both.shape[1]}): new"] = both
    sets[f"spectrum alone ({feats['spectrum'].shape[1]})"] = feats["spectrum"]
    return sets


def run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    if args.model:
        from irpo_jax import checkpointing

        module = checkpointing.load_model(args.model).module
        net, weights = getattr(module, "net", module), f"model {args.model}"
    else:
        net, weights = adair.AdaIR(args.variant, rngs=nnx.Rngs(0)), f"random init, {args.variant}, seed 0"
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(args.demo_root) if args.demo_root else pathlib.Path(tmp) / "data"
        if not args.demo_root:
            demo.build_demo_set(root, seed=0)
        samples = demo_samples(root, args.seed) + synthetic_samples(args.crops_per_photo, args.seed)
    feats = head_features(net, np.stack([s["img"] for s in samples]))
    task = np.asarray([TASKS.index(s["task"]) for s in samples])
    photos = sorted({s["photo"] for s in samples})
    group = np.asarray([photos.index(s["photo"]) for s in samples])
    source = np.asarray([s["source"] for s in samples])
    sigma = np.asarray([s["level"] if s["task"] == "denoise" else -1 for s in samples])
    results = {}
    for subset, keep in (("demo", source == "demo"), ("demo + synthetic", np.ones(len(samples), bool))):
        noisy = keep & (sigma > 0)
        noise_label = np.searchsorted(np.asarray(STRENGTHS["denoise"]), sigma[noisy])
        rows = {}
        for name, x in feature_sets(feats).items():
            rows[name] = {
                "tasks": cross_validated(x[keep], task[keep], group[keep]),
                "noise levels": cross_validated(x[noisy], noise_label, group[noisy]),
            }
        results[subset] = {"samples": int(keep.sum()), "noisy samples": int(noisy.sum()), "rows": rows}
    return {
        "weights": weights, "photos": len(photos), "seconds": round(time.perf_counter() - t0, 1),
        "machine": f"{platform.machine()}, {jax.devices()[0].platform}", "results": results,
        "command": "python benchmarks/head_input_separability.py " + " ".join(sys.argv[1:]),
    }  # fmt: skip


def markdown(res: dict) -> str:
    lines = [f"Weights of conv1: {res['weights']}. Leave-one-photograph-out over {res['photos']} photographs; "
             f"{res['seconds']} s on {res['machine']}.", ""]  # fmt: skip
    for subset, block in res["results"].items():
        lines += [
            f"**{subset}**: {block['samples']} crops of 128x128 ({block['noisy samples']} with noise).", "",
            "| rate-head input (dims) | tasks (5): nearest centroid | tasks (5): logistic | "
            "noise sigma (3): nearest centroid | noise sigma (3): logistic |",
            "|---|---|---|---|---|",
        ]  # fmt: skip
        for name, row in block["rows"].items():
            cells = [f"{100 * row[p][c]:.0f} %" for p in ("tasks", "noise levels")
                     for c in ("nearest centroid", "logistic regression")]  # fmt: skip
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo-root", default="", help="an existing demo set (default: build one in a temp dir)")
    parser.add_argument("--model", default="", help="model directory whose FreModules' conv1 to use")
    parser.add_argument("--variant", default="base", help="AdaIR variant for random conv1 weights")
    parser.add_argument("--crops-per-photo", type=int, default=4, help="synthetic crops per photograph")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="write the results as JSON here")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    args = parser.parse_args(argv)
    res = run(args)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(markdown(res) if args.markdown else json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
