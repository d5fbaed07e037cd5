"""Input-pipeline throughput against what a training step consumes (issue 5).

Measures, on the built-in demo set (built into a temporary folder unless ``--data_root`` is
given), the samples/s that :func:`irpo_jax.data.pipeline.make_train_iterator` delivers with the
default worker count (``data.worker_count = -1``: ``min(8, cpu_count - 1)``) and with the
others asked for, at the official 128x128 crops; and, for comparison, the samples/s one
supervised AdaIR training step consumes on this machine (jitted L1 forward+backward over the
``nnx.Param`` state, no optimiser update -- a lower bound on the cost of an IRPO step, which
adds G = 4 rollouts and rewards), as ``batch / step time``.

    python benchmarks/data_pipeline.py --markdown                      # demo set, small model
    python benchmarks/data_pipeline.py --workers default,0,2 --step_variant base --markdown
    python benchmarks/data_pipeline.py --data_root data --batches 200  # your real data

Pipeline numbers: the first batch (worker start-up, header scan already done) is timed
separately; then ``--batches`` batches are timed. The demo images are small (160-256 px PNGs),
so per-sample decoding is cheaper than on RESIDE/GoPro-sized files; rerun with ``--data_root``
on the real data for those.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def pipeline_throughput(root: str, workers: int | None, batch_size: int, batches: int, seed: int = 0) -> dict:
    """Samples/s of the training iterator (``workers=None``: the config default)."""
    from irpo_jax.data import pipeline

    t0 = time.perf_counter()
    it = pipeline.make_train_iterator(
        {"root": root}, batch_size=batch_size, seed=seed, shard_index=0, shard_count=1, worker_count=workers
    )
    t_build = time.perf_counter() - t0
    with it:
        t0 = time.perf_counter()
        next(it)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        dt = time.perf_counter() - t0
    return {
        "workers": it.worker_count,
        "batch_size": batch_size,
        "batches": batches,
        "build_s": t_build,
        "first_batch_s": t_first,
        "seconds": dt,
        "samples_per_s": batches * batch_size / dt,
    }


def step_consumption(variant: str, batch: int, size: int = 128, repeats: int = 3) -> dict:
    """Samples/s consumed by one supervised AdaIR step (L1 forward+backward), CPU or GPU."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from irpo_jax.models import adair

    # Abstract init + random fill: eager init of the base model takes minutes on 2 cores, and
    # the values do not change the timing.
    model = nnx.eval_shape(lambda: adair.AdaIR(variant, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)

    def fill(s: jax.ShapeDtypeStruct) -> jax.Array:
        return jnp.asarray((rng.standard_normal(s.shape) * 0.02).astype(s.dtype))

    params = jax.tree.map(fill, params)
    rest = jax.tree.map(fill, rest)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))

    def loss(p, x, y):
        return jnp.mean(jnp.abs(nnx.merge(graphdef, p, rest)(x) - y))

    step = jax.jit(jax.value_and_grad(loss))
    x = jnp.asarray(rng.random((batch, size, size, 3), dtype=np.float32))
    y = jnp.asarray(rng.random((batch, size, size, 3), dtype=np.float32))
    t0 = time.perf_counter()
    compiled = step.lower(params, x, y).compile()
    t_compile = time.perf_counter() - t0
    jax.block_until_ready(compiled(params, x, y))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, x, y))
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {
        "variant": variant,
        "params": n_params,
        "batch": batch,
        "size": size,
        "device": str(jax.devices()[0].platform),
        "compile_s": t_compile,
        "step_s": t,
        "samples_per_s": batch / t,
    }


def markdown(res: dict) -> str:
    lines = [
        "## Data pipeline throughput (issue 5)",
        "",
        f"Measured {res['date']} with `python benchmarks/data_pipeline.py {res['argv']}` on "
        f"{res['machine']} ({res['cores']} usable cores, load average before the run "
        f"{res['load_before']}, after {res['load_after']}). Data: {res['data']}.",
        "",
        "| pipeline | workers | batch | first batch (s) | samples/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in res["pipeline"]:
        label = "default (auto)" if p["default"] else "explicit"
        lines.append(
            f"| {label} | {p['workers']} | {p['batch_size']} | {p['first_batch_s']:.2f} | {p['samples_per_s']:.0f} |"
        )
    s = res.get("step")
    if s:
        lines += [
            "",
            "| training step (supervised L1 fwd+bwd, no optimiser) | params | batch | device | "
            "compile (s) | step (s) | samples/s consumed |",
            "|---|---:|---:|---|---:|---:|---:|",
            f"| AdaIR `{s['variant']}` {s['size']}x{s['size']} | {s['params'] / 1e6:.2f} M | "
            f"{s['batch']} | {s['device']} | {s['compile_s']:.1f} | {s['step_s']:.3f} | "
            f"{s['samples_per_s']:.1f} |",
        ]
        default = next(p for p in res["pipeline"] if p["default"])
        lines += [
            "",
            f"Ratio pipeline (default workers) / step consumption: "
            f"{default['samples_per_s'] / s['samples_per_s']:.0f}x.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_root", help="AdaIR data root (default: a fresh demo set)")
    parser.add_argument(
        "--workers", default="default", help="comma-separated worker counts; 'default' = the config default"
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per setting")
    parser.add_argument(
        "--step_variant", default="small", help="AdaIR variant for the step comparison (tiny|small|base|none)"
    )
    parser.add_argument("--step_batch", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--markdown", action="store_true", help="print a RESULTS.md section")
    args = parser.parse_args(argv)

    from irpo_jax.data import demo, pipeline

    load_before = _loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root
        data = f"`{root}`"
        if root is None:
            root = str(Path(tmp) / "demo")
            demo.build_demo_set(Path(root), seed=0)
            data = "the built-in demo set (seed 0; 39 training pairs, 160-256 px PNGs)"
        results = []
        for w in args.workers.split(","):
            default = w.strip() == "default"
            r = pipeline_throughput(root, None if default else int(w), args.batch_size, args.batches)
            r["default"] = default
            results.append(r)
            print(json.dumps(r), file=sys.stderr)
    step = None
    if args.step_variant != "none":
        step = step_consumption(args.step_variant, args.step_batch)
        print(json.dumps(step), file=sys.stderr)
    res = {
        "date": time.strftime("%Y-%m-%d"),
        "argv": " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cores": (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "load_before": load_before,
        "load_after": _loadavg(),
        "data": data,
        "default_workers": pipeline._auto_workers(),
        "pipeline": results,
        "step": step,
    }
    if args.out:
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    if args.markdown:
        print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
