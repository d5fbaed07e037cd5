"""Cost of G policy rollouts (shared encoder) against G plain AdaIR forwards.

  python benchmarks/policy_rollouts.py --variant small --size 128 --group 4

Reports the median time of a jitted ``IRPOPolicy.sample`` (B images, G rollouts each, the
encoder run once per image) against the plain AdaIR forward (a) on a batch of B*G images and
(b) G times on the B images. Both are JAX-only: the point is the saving of the shared encoder.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from irpo_jax.models import policy


def timed(fn, *args, repeats: int) -> tuple[float, float]:
    """(compile+first-run seconds, median seconds of ``repeats`` further runs)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def run(variant: str, size: int, batch: int, group: int, repeats: int) -> dict:
    pol = policy.IRPOPolicy(variant, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(pol)
    net_graphdef, net_state = nnx.split(pol.net)
    img = jnp.asarray(np.random.default_rng(0).uniform(size=(batch, size, size, 3)).astype(np.float32))
    big = jnp.repeat(img, group, axis=0)
    sample = jax.jit(lambda g, s, x, k: nnx.merge(g, s).sample(x, k, group).restored)
    plain = jax.jit(lambda g, s, x: nnx.merge(g, s)(x))
    key = jax.random.key(0)
    c_sample, t_sample = timed(sample, graphdef, state, img, key, repeats=repeats)
    c_big, t_big = timed(plain, net_graphdef, net_state, big, repeats=repeats)
    c_one, t_one = timed(plain, net_graphdef, net_state, img, repeats=repeats)
    return {
        "variant": variant, "image": [batch, size, size, 3], "group": group,
        "rollouts_s": t_sample, "plain_batch_BG_s": t_big, "plain_batch_B_s": t_one,
        "ratio_vs_batched_plain": t_sample / t_big, "ratio_vs_G_plain_forwards": t_sample / (group * t_one),
        "compile_s": {"rollouts": c_sample, "plain_BG": c_big, "plain_B": c_one},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="small")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    r = run(args.variant, args.size, args.batch, args.group, args.repeats)
    r["machine"] = {"backend": jax.default_backend(), "devices": str(jax.devices()), "cpu": platform.processor()}
    print(json.dumps(r, indent=2))
    print(
        f"| {r['variant']} | {args.batch}x{args.size}x{args.size}, G={args.group} | {r['rollouts_s'] * 1e3:.0f} ms | "
        f"{r['plain_batch_BG_s'] * 1e3:.0f} ms | {args.group} x {r['plain_batch_B_s'] * 1e3:.0f} ms | "
        f"{r['ratio_vs_batched_plain']:.2f} | {r['ratio_vs_G_plain_forwards']:.2f} |"
    )


if __name__ == "__main__":
    main()
