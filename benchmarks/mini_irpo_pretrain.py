"""The mini-IRPO study's starting model: a small AdaIR trained supervised until its validation
PSNR stops improving (issue 24, item 2), with the PyTorch reference model, then converted.

    python benchmarks/mini_irpo_pretrain.py --data runs/mini_irpo/data --out runs/mini_irpo/start

Why PyTorch: on this 2-core CPU the reference model's forward+backward is about 2.5x faster than
the Flax port's (benchmarks/RESULTS.md, "AdaIR speed"), and converting a PyTorch AdaIR with
``torch_bridge.convert_adair`` is how the real AdaIR reaches IRPO. The training batches come from
the project's own pipeline (:func:`irpo_jax.data.pipeline.make_train_iterator`: every training
pair once per epoch, random crops, AdaIR's augmentation modes 1-7).

The recipe is AdaIR's (L1, AdamW 2e-4, weight decay 0.01) with a linear warm-up; the cosine over
a fixed number of epochs is replaced by a plateau rule, since "until the validation PSNR stops
improving" fixes no length: every ``eval_every`` steps the model is scored on the validation
split (mean over its five task rows of the per-image PSNR, output clipped, as ``evaluate``); after
``patience`` evaluations without a gain of ``min_delta`` dB the learning rate halves, and after
``reductions`` halvings the next plateau ends the training. The best evaluation's weights are
converted (``--verify``) into ``OUT/model``; ``OUT/curve.json`` holds the validation curve and
``OUT/para1.json`` the FreModules' injection weights ``para1``.

Resumable: ``OUT/state.pt`` (model, optimizer, schedule, data-iterator state, curve) is written
at every evaluation (a temporary file renamed over it); the same command continues from it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))


def _torch_model(variant: str):
    from irpo_jax.models.adair import get_config
    from torch_bridge.reference_adair import AdaIR

    c = get_config(variant)
    return AdaIR(
        dim=c.dim,
        num_blocks=list(c.num_blocks),
        num_refinement_blocks=c.num_refinement_blocks,
        heads=list(c.heads),
        ffn_expansion_factor=c.ffn_expansion_factor,
        bias=c.bias,
        LayerNorm_type=c.LayerNorm_type,
        decoder=c.decoder,
    )


def _validation(data_root: str, rows: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{row: (degraded, clean)}`` float32 NCHW arrays of the validation rows (whole images)."""
    from irpo_jax.data import minibench, readers

    cfg = {"root": data_root, "eval_paired": minibench.eval_paired()}
    out = {}
    for row, es in readers.eval_sets(cfg, rows).items():
        items = [es[i] for i in range(len(es))]
        to = lambda k: np.stack([readers.to_float01(it[k]) for it in items]).transpose(0, 3, 1, 2)  # noqa: E731, B023
        out[row] = (to("degraded"), to("clean"))
    return out


def _val_psnr(model, val: dict) -> dict[str, float]:
    """Per-row mean PSNR (output clipped to [0, 1], data range 1) and their mean ``"average"``."""
    import torch

    model.eval()
    scores = {}
    with torch.no_grad():
        for row, (degraded, clean) in val.items():
            psnrs = []
            for i in range(0, len(degraded), 8):
                y = model(torch.from_numpy(degraded[i : i + 8])).clamp(0, 1).numpy()
                mse = ((y.astype(np.float64) - clean[i : i + 8]) ** 2).mean(axis=(1, 2, 3))
                psnrs += (10 * np.log10(1.0 / np.maximum(mse, 1e-12))).tolist()
            scores[row] = float(np.mean(psnrs))
    model.train()
    scores["average"] = float(np.mean([scores[r] for r in val]))
    return scores


def para1_magnitudes(state_dict) -> dict[str, dict[str, float]]:
    """``{fre1..3: {"mean_abs", "max_abs"}}`` of the FreModules' ``para1`` (their injection weight:
    zero at initialisation, so a model that has not learnt to use a module has ``para1`` ~ 0)."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(".para1"):
            a = np.abs(np.asarray(value, np.float64))
            out[key.split(".")[0]] = {"mean_abs": float(a.mean()), "max_abs": float(a.max())}
    return out


def _save_atomic(obj, path: Path) -> None:
    import torch

    from irpo_jax import safe_files

    with safe_files.atomic_open(path, "wb") as f:
        torch.save(obj, f)


def pretrain(
    data_root: str,
    out: str | os.PathLike,
    *,
    variant: str = "small",
    patch: int = 64,
    batch: int = 4,
    lr: float = 2e-4,
    weight_decay: float = 0.01,
    warmup: int = 200,
    eval_every: int = 250,
    patience: int = 3,
    min_delta: float = 0.02,
    reductions: int = 1,
    max_steps: int = 10000,
    seed: int = 0,
    threads: int = 1,
    progress: bool = True,
) -> dict:
    """Trains (or resumes) the starting model and converts its best weights into ``out/model``.

    Returns:
      ``{"steps", "best_step", "best_val_psnr", "para1", "seconds", "model"}`` (also ``out/summary.json``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "summary.json").exists() and (out / "model" / "manifest.json").exists():
        return json.loads((out / "summary.json").read_text())
    from irpo_jax.training.lock import acquire

    with acquire(out):  # one writer: a second start (the runner while this trains) is refused
        return _pretrain(
            out,
            data_root,
            variant=variant,
            patch=patch,
            batch=batch,
            lr=lr,
            weight_decay=weight_decay,
            warmup=warmup,
            eval_every=eval_every,
            patience=patience,
            min_delta=min_delta,
            reductions=reductions,
            max_steps=max_steps,
            seed=seed,
            threads=threads,
            progress=progress,
        )


def _pretrain(
    out: Path,
    data_root: str,
    *,
    variant,
    patch,
    batch,
    lr,
    weight_decay,
    warmup,
    eval_every,
    patience,
    min_delta,
    reductions,
    max_steps,
    seed,
    threads,
    progress,
) -> dict:
    import torch

    from irpo_jax.data import minibench
    from irpo_jax.data.pipeline import make_train_iterator

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    model = _torch_model(variant)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    data_cfg = {
        "root": data_root,
        "repeats": {t: 1 for t in minibench.TASKS},
        "patch_size": patch,
        "augment": "official",
        "worker_count": 0,
        "validate": "header",
    }
    data = make_train_iterator(data_cfg, batch_size=batch, seed=seed, shard_index=0, shard_count=1, worker_count=0)
    val = _validation(data_root, list(minibench.rows("val")))
    state = {
        "step": 0,
        "lr": lr,
        "reductions": 0,
        "since_best": 0,
        "best": -math.inf,
        "best_step": 0,
        "curve": [],
        "seconds": 0.0,
        "done": False,
    }
    if (out / "state.pt").exists():
        saved = torch.load(out / "state.pt", weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        data.set_state(saved["data"])
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]
        print(f"resuming {out} at step {state['step']} (best {state['best']:.3f} dB at {state['best_step']})")
    t_start = time.time() - state["seconds"]
    while not state["done"] and state["step"] < max_steps:
        b = next(data)
        x = torch.from_numpy(np.asarray(b["degraded"]).transpose(0, 3, 1, 2).copy())
        y = torch.from_numpy(np.asarray(b["clean"]).transpose(0, 3, 1, 2).copy())
        step_lr = state["lr"] * min(1.0, (state["step"] + 1) / warmup) if warmup else state["lr"]
        for group in opt.param_groups:
            group["lr"] = step_lr
        loss = (model(x) - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["step"] += 1
        if state["step"] % eval_every and state["step"] < max_steps:
            continue
        scores = _val_psnr(model, val)
        state["seconds"] = time.time() - t_start
        l1 = float(loss.detach())
        entry = {
            "step": state["step"],
            "lr": step_lr,
            "train_l1": l1,
            "seconds": round(state["seconds"], 1),
            **{f"val/{k}": v for k, v in scores.items()},
        }
        state["curve"].append(entry)
        if scores["average"] > state["best"] + min_delta:
            state.update(best=scores["average"], best_step=state["step"], since_best=0)
            _save_atomic(model.state_dict(), out / "best.pth")
        else:
            state["since_best"] += 1
            if state["since_best"] >= patience:
                if state["reductions"] >= reductions:
                    state["done"] = True
                else:
                    state.update(lr=state["lr"] * 0.5, reductions=state["reductions"] + 1, since_best=0)
        if progress:
            print(
                f"step {state['step']}: val {scores['average']:.3f} dB (best {state['best']:.3f} at "
                f"{state['best_step']}), lr {step_lr:.2e}, l1 {l1:.4f}, {state['seconds'] / 60:.1f} min",
                flush=True,
            )
        _save_atomic(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "data": data.get_state(),
                "torch_rng": torch.get_rng_state(),
                "state": state,
            },
            out / "state.pt",
        )
        (out / "curve.json").write_text(json.dumps(state["curve"], indent=1) + "\n")
    getattr(data, "close", lambda: None)()

    best = torch.load(out / "best.pth", weights_only=True)
    para1 = para1_magnitudes({k: v.numpy() for k, v in best.items()})
    (out / "para1.json").write_text(json.dumps(para1, indent=1) + "\n")
    if not (out / "model" / "manifest.json").exists():
        cmd = [
            sys.executable,
            "-m",
            "torch_bridge.convert_adair",
            str(out / "best.pth"),
            str(out / "model"),
            "--config",
            variant,
            "--verify",
            "--overwrite",
        ]
        subprocess.run(cmd, check=True, cwd=_REPO, env={**os.environ, "PYTHONPATH": str(_REPO)})
    summary = {
        "steps": state["step"],
        "best_step": state["best_step"],
        "best_val_psnr": state["best"],
        "stopped": "plateau" if state["done"] else "max_steps",
        "para1": para1,
        "seconds": round(state["seconds"], 1),
        "model": str(out / "model"),
        "recipe": {
            "variant": variant,
            "patch": patch,
            "batch": batch,
            "lr": lr,
            "weight_decay": weight_decay,
            "warmup": warmup,
            "eval_every": eval_every,
            "patience": patience,
            "min_delta": min_delta,
            "reductions": reductions,
            "max_steps": max_steps,
            "seed": seed,
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the mini benchmark (python -m irpo_jax.data.minibench)")
    p.add_argument("--out", required=True, help="output folder (resumed when it holds state.pt)")
    p.add_argument("--variant", default="small")
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--eval_every", type=int, default=250)
    p.add_argument("--patience", type=int, default=3, help="evaluations without a gain before the lr halves")
    p.add_argument("--reductions", type=int, default=1, help="halvings before the next plateau ends training")
    p.add_argument("--max_steps", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1: on a shared 2-core machine two threads ran 10x slower)",
    )
    a = p.parse_args(argv)
    s = pretrain(
        a.data,
        a.out,
        variant=a.variant,
        patch=a.patch,
        batch=a.batch,
        lr=a.lr,
        eval_every=a.eval_every,
        patience=a.patience,
        reductions=a.reductions,
        max_steps=a.max_steps,
        seed=a.seed,
        threads=a.threads,
    )
    print(json.dumps(s, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
