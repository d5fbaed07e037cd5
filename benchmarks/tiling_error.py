"""How far tiled restoration is from whole-image restoration, and what memory tiling saves.

AdaIR is not a local network (channel attention over all tokens, FFTs of whole feature maps,
global pooling; see :mod:`irpo_jax.evaluation.tiling`), so ``restore --tile`` gives different outputs than
whole-image inference everywhere. This script measures the difference on a trained model:

    python benchmarks/tiling_error.py --markdown                         # the demo's supervised model
    python benchmarks/tiling_error.py --model checkpoints/adair5d --tiles 512:64,256:32 --markdown

Inputs: full-size scikit-image photographs (a few hundred pixels per side, 300x451 to
512x512 here), each degraded as the demo degrades its training pairs (:mod:`irpo_jax.data
.degradations`): Gaussian noise sigma 25, rain streaks, haze, motion blur, low light, seeded.
Each image is reflect-padded to a multiple of 8 and restored whole and in ``tile:overlap``
windows exactly as ``python -m irpo_jax.restore`` does (:func:`irpo_jax.evaluation.tiling.tiled_apply`,
batch 1, float32 at ``highest`` matmul precision), both cropped back and clipped to [0, 1].

Reported per image and tiling: PSNR of the tiled output against the whole-image output (data
range 1; higher is closer), the mean and max absolute difference in 8-bit levels, and PSNR
against the clean image for both (what tiling costs the restoration). Memory: XLA's memory
analysis of the compiled whole-image program and of the compiled one-tile program
(``jax.jit(f).lower(x).compile().memory_analysis()``: arguments + outputs + temporaries, i.e. the
buffers live at the program's peak as the compiler assigned them, parameters included), on the
backend the script runs on. Tiling also keeps the blended float64 image on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import numpy as np  # noqa: E402

DEFAULT_MODELS = ("runs/demo_supervised/model", "runs/tile_model/model")
# name -> (scikit-image loader, degradation); full-size photographs.
PHOTOS = {
    "astronaut": ("astronaut", "noise25"),
    "coffee": ("coffee", "rain"),
    "chelsea": ("chelsea", "haze"),
    "rocket": ("rocket", "blur"),
}


def _degrade(clean_u8: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """float32 [0, 1] degraded image (the demo's degradation models, seeded)."""
    from irpo_jax.data import degradations as d

    rng = np.random.default_rng(seed)
    clean = d.to_float32(clean_u8)
    if kind == "noise25":
        return d.to_float32(d.add_gaussian_noise_uint8(clean_u8, 25.0, rng))
    if kind == "rain":
        return d.add_rain(clean, rng)
    if kind == "haze":
        depth = d.synthetic_depth(clean.shape[:2], rng)
        return d.add_haze(clean, depth, A=0.9, beta=0.12)
    if kind == "blur":
        return d.motion_blur(clean, rng)
    if kind == "lowlight":
        return d.low_light(clean, rng)
    raise ValueError(f"unknown degradation {kind!r}")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def _peak_bytes(compiled) -> int | None:
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return int(
        stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    )


def measure(model_dir: str, tiles: list[tuple[int, int]], photos: list[str], seed: int = 0) -> dict:
    import jax
    import skimage.data
    from flax import nnx

    from irpo_jax import checkpointing
    from irpo_jax.evaluation import tiling

    restorer = checkpointing.load_model(model_dir)
    graphdef, state = nnx.split(restorer.module)
    compiled: dict[tuple, tuple] = {}  # input shape -> (executable, peak bytes, compile s)

    def program(shape: tuple[int, ...]):
        if shape not in compiled:
            t0 = time.perf_counter()
            with jax.default_matmul_precision("highest"):
                exe = (
                    jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
                    .lower(state, jax.ShapeDtypeStruct(shape, np.float32))
                    .compile()
                )
            compiled[shape] = (exe, _peak_bytes(exe), time.perf_counter() - t0)
        return compiled[shape]

    def apply(x: np.ndarray) -> np.ndarray:
        exe = program(tuple(x.shape))[0]
        return np.asarray(exe(state, x))

    rows = []
    for name in photos:
        loader, kind = PHOTOS[name]
        clean_u8 = getattr(skimage.data, loader)()
        clean_u8 = clean_u8[0] if isinstance(clean_u8, tuple) else clean_u8
        degraded = _degrade(clean_u8, kind, seed)
        h, w = degraded.shape[:2]
        padded = tiling.pad_to_multiple(degraded, 8)
        t0 = time.perf_counter()
        whole = np.clip(apply(padded[None])[0, :h, :w], 0, 1)
        whole_s = time.perf_counter() - t0
        clean = clean_u8.astype(np.float32) / 255
        _, whole_peak, _ = program((1, *padded.shape))
        for tile, overlap in tiles:
            t0 = time.perf_counter()
            tiled = np.clip(tiling.tiled_apply(apply, padded, tile=tile, overlap=overlap)[:h, :w], 0, 1)
            tiled_s = time.perf_counter() - t0
            tile_shape = (1, min(tile, padded.shape[0]), min(tile, padded.shape[1]), 3)
            diff = np.abs(tiled - whole) * 255
            rows.append(
                {
                    "image": name,
                    "degradation": kind,
                    "size": f"{h}x{w}",
                    "tile": tile,
                    "overlap": overlap,
                    "windows": len(tiling.tile_starts(padded.shape[0], tile, overlap))
                    * len(tiling.tile_starts(padded.shape[1], tile, overlap)),
                    "psnr_tiled_vs_whole": _psnr(tiled, whole),
                    "mean_abs_diff_8bit": float(diff.mean()),
                    "max_abs_diff_8bit": float(diff.max()),
                    "psnr_whole_vs_clean": _psnr(whole, clean),
                    "psnr_tiled_vs_clean": _psnr(tiled, clean),
                    "psnr_degraded_vs_clean": _psnr(degraded, clean),
                    "whole_peak_mb": whole_peak / 2**20 if whole_peak else None,
                    "tile_peak_mb": program(tile_shape)[1] / 2**20 if program(tile_shape)[1] else None,
                    "whole_s": whole_s,
                    "tiled_s": tiled_s,
                }
            )
            print(
                f"{name} {h}x{w} tile {tile}/{overlap}: {rows[-1]['psnr_tiled_vs_whole']:.2f} dB vs whole",
                file=sys.stderr,
            )
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    manifest = Path(model_dir) / "manifest.json"
    return {
        "model": model_dir,
        "config": meta["config"],
        "trained_steps": json.loads(manifest.read_text()).get("trained_steps") if manifest.exists() else None,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
        "rows": rows,
    }


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        f"Model `{result['model']}` (dim {cfg['dim']}, blocks {cfg['num_blocks']}"
        + (f", {result['trained_steps']} training steps" if result["trained_steps"] else "")
        + f"); backend {result['backend']}.",
        "",
        (
            "| image (degradation) | tile / overlap | windows | PSNR tiled vs whole | mean / max abs diff (8-bit) "
            "| PSNR vs clean: input / whole / tiled | peak memory: whole / one tile |"
        ),
        "|:--|:-:|:-:|:-:|:-:|:-:|:-:|",
    ]
    for r in result["rows"]:
        mem = f"{r['whole_peak_mb']:.0f} / {r['tile_peak_mb']:.0f} MB" if r["whole_peak_mb"] else "n/a"
        lines.append(
            f"| {r['image']} {r['size']} ({r['degradation']}) | {r['tile']} / {r['overlap']} | {r['windows']} "
            f"| {r['psnr_tiled_vs_whole']:.2f} dB | {r['mean_abs_diff_8bit']:.2f} / {r['max_abs_diff_8bit']:.0f} "
            f"| {r['psnr_degraded_vs_clean']:.2f} / {r['psnr_whole_vs_clean']:.2f} / {r['psnr_tiled_vs_clean']:.2f} dB "
            f"| {mem} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=f"model directory (default: the first of {', '.join(DEFAULT_MODELS)})")
    parser.add_argument("--tiles", default="128:32,256:32,256:64", help="tile:overlap pairs")
    parser.add_argument("--photos", default=",".join(PHOTOS), help=f"any of {', '.join(PHOTOS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the results as JSON")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args(argv)
    model = args.model or next((m for m in DEFAULT_MODELS if (Path(m) / "model.json").is_file()), None)
    if model is None:
        parser.error(
            "no --model and no demo model; train one: python -m irpo_jax.data.demo --out demo_data && "
            "python -m irpo_jax.train --config configs/allinone5.py:supervised,demo --workdir runs/tile_model"
        )
    tiles = [tuple(int(v) for v in pair.split(":")) for pair in args.tiles.split(",")]
    result = measure(model, tiles, args.photos.split(","), seed=args.seed)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result) if args.markdown else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
