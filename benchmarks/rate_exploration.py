"""How often the initial policy's sampled rate actions open a low-pass mask (issues 16 and 23).

  python benchmarks/rate_exploration.py [--markdown] [--samples 2048]

At 128x128 training crops AdaIR's own masks are empty at every level (its rule needs feature
maps of 128 pixels or more), so exploration of the frequency actions means opening masks. The
first default (``mask_rule="fraction"``, rates Beta(1, 35)) opens one when ``floor(r * N) >= 1``;
the former default (``"anchored"``, Beta(50, 50)) when ``floor(N * (2r - 1)) >= 1``; the default
now (``"widen"``, Beta(50, 50)) when ``floor((N + 1) * (2r - 1)) >= 1``, N = H_f // 2
(``adair.mask_half_sizes``). For each FreModule (fre1 16x16, fre2 32x32, fre3 64x64 at a 128
crop) this reports, exactly from the Beta tails (scipy) and by sampling the actual tiny policy
(``IRPOPolicy.sample``, its ``mask_half_sizes``): the probability that one axis opens, that
both do (a non-empty mask; the two rates are independent), and the mean half-size of an open
axis, with its 99th percentile. At 128 crops the half-sizes depend on the rate actions only
(not on the model size or weights), so the tiny model stands for any.

A second table (``--markdown``) looks at test sizes where AdaIR's own mask is open (a
``rate_conv`` that saturates, ``t = 1``: half-size ``H_f // 128``): per rule, the probability
(exact, per axis) that a sampled rate changes AdaIR's mask there, and that it *narrows* it: a
change no 128-pixel training crop can make (where AdaIR's mask is empty), so no reward ever
scored it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from flax import nnx

from irpo_jax.models import adair, policy

SIDE = 128
SETTINGS = {
    "first (fraction, Beta(1, 35))": "fraction",
    "former (anchored, Beta(50, 50))": "anchored",
    "now (widen, Beta(50, 50))": "widen",
}
# Test-size feature maps where a saturated rate_conv opens AdaIR's mask: (label, H_f, W_f).
TEST_FEATURES = (("fre3 of 512x768", 256, 384), ("fre2 of 720x1280", 180, 320), ("fre3 of 720x1280", 360, 640))


def exact(rule: str, n: int) -> dict[str, float]:
    """From the Beta tails: P(h >= k) = P(r >= threshold_k); E[h | h >= 1] = sum_k P(h >= k) / P(h >= 1)."""
    dist = scipy.stats.beta(*policy.RATE_INIT[rule])
    k = np.arange(1, n + 1)
    # P(h >= k): the rate at which the rule's half-size reaches k (AdaIR's own is 0 at 128 crops)
    threshold = {"fraction": k / n, "anchored": 0.5 + k / (2 * n), "widen": 0.5 + k / (2 * (n + 1))}[rule]
    at_least = dist.sf(threshold)
    axis = float(at_least[0])
    tail = np.append(at_least[1:], 0.0) / axis  # P(h >= m + 1 | h >= 1) for m = 1..n
    p99 = int(k[np.argmax(1 - tail >= 0.99)])  # the smallest m with P(h <= m | open) >= 0.99
    return {"axis": axis, "both": axis**2, "mean": float(at_least.sum() / axis), "p99": p99}


def at_test_size(rule: str, n: int, official: int) -> dict[str, float]:
    """Per axis, where AdaIR's own half-size is ``official`` > 0 and N = ``n``: P(the sampled
    half-size differs from it) and P(it is smaller), exactly (the rule's thresholds on r)."""
    dist = scipy.stats.beta(*policy.RATE_INIT[rule])
    if rule == "fraction":  # floor(r N) == official on [official / N, (official + 1) / N)
        same = dist.cdf((official + 1) / n) - dist.cdf(official / n)
        narrower = dist.cdf(official / n)
    elif (
        rule == "anchored"
    ):  # r < 0.5: floor(official * 2r) < official; above: changes from r >= 0.5 + 1/(2(N - official))
        narrower = dist.cdf(0.5)
        same = dist.cdf(0.5 + 1 / (2 * (n - official))) - dist.cdf(0.5)
    else:  # widen: AdaIR's mask up to r = 0.5 + (official + 1) / (2 (N + 1)), never narrower
        narrower = 0.0
        same = dist.cdf(0.5 + (official + 1) / (2 * (n + 1)))
    return {"changes": float(1 - same), "narrows": float(narrower)}


def sampled(rule: str, samples: int, seed: int) -> list[dict[str, float]]:
    """Draws from the actual policy at 128x128: the half-sizes its FreModules used."""
    pol = policy.IRPOPolicy("tiny", {"mask_rule": rule}, rngs=nnx.Rngs(seed))
    group = 256
    draw = jax.jit(lambda g, s, x, k: nnx.merge(g, s).sample(x, k, group).mask_half_sizes)
    img = jnp.asarray(np.random.default_rng(seed).uniform(size=(1, SIDE, SIDE, 3)).astype(np.float32))
    graphdef, state = nnx.split(pol)
    sizes = np.concatenate([
        np.asarray(draw(graphdef, state, img, jax.random.key(seed * 1000 + i)))[0]
        for i in range(max(1, samples // group))
    ])  # (samples, 3, 2)  # fmt: skip
    out = []
    for level in range(len(adair.FRE_NAMES)):
        h = sizes[:, level]
        open_axes = h[h > 0]
        out.append({
            "axis": float(np.mean(h > 0)), "both": float(np.mean(np.all(h > 0, axis=1))),
            "mean": float(open_axes.mean()) if open_axes.size else float("nan"),
            "p99": int(np.percentile(open_axes, 99, method="inverted_cdf")) if open_axes.size else 0,
        })  # fmt: skip
    return out


def run(samples: int, seed: int) -> dict:
    t0 = time.perf_counter()
    rows = {}
    for label, rule in SETTINGS.items():
        draws = sampled(rule, samples, seed)
        for level, name in enumerate(adair.FRE_NAMES):
            side = SIDE // 2 ** (3 - level)
            rows.setdefault(name, {})[label] = {"exact": exact(rule, side // 2), "sampled": draws[level]}
    test = {}
    for label, h, w in TEST_FEATURES:
        for setting, rule in SETTINGS.items():
            test.setdefault(label, {})[setting] = [at_test_size(rule, side // 2, side // 128) for side in (h, w)]
    return {"samples": samples, "seconds": round(time.perf_counter() - t0, 1), "levels": rows, "test_sizes": test,
            "command": "python benchmarks/rate_exploration.py " + " ".join(sys.argv[1:])}  # fmt: skip


def markdown(res: dict) -> str:
    lines = [
        f"128x128 crops; exact (scipy Beta tails) and sampled ({res['samples']} draws of the tiny policy, "
        f"{res['seconds']} s). Half-sizes count frequency bins on either side of DC "
        "(N = H_f // 2 is the whole spectrum).",
        "",
        "| level (feature, N) | setting | P(axis open) exact / sampled | P(mask open, both axes) exact / sampled "
        "| mean half-size of an open axis exact / sampled | its 99th percentile |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for level, (name, settings) in enumerate(res["levels"].items()):
        side = SIDE // 2 ** (3 - level)
        for label, r in settings.items():
            e, s = r["exact"], r["sampled"]
            lines.append(
                f"| {name} ({side}x{side}, N={side // 2}) | {label} | {e['axis']:.4f} / {s['axis']:.4f} "
                f"| {e['both']:.2e} / {s['both']:.2e} | {e['mean']:.2f} / {s['mean']:.2f} | {e['p99']} |"
            )
    lines += [
        "",
        "At test sizes where AdaIR's own mask is open (saturated rate_conv, half-sizes H_f // 128, W_f // 128); "
        "exact, per axis (rows | columns):",
        "",
        "| feature map (AdaIR's half-sizes) | setting | P(a sampled rate changes AdaIR's mask) | "
        "P(it narrows it: never seen on a 128 crop) |",
        "|---|---|---|---|",
    ]
    for label, h, w in TEST_FEATURES:
        for setting, (rows, cols) in res["test_sizes"][label].items():
            lines.append(
                f"| {label} ({h // 128}, {w // 128}) | {setting} | {rows['changes']:.3f} \\| {cols['changes']:.3f} "
                f"| {rows['narrows']:.3f} \\| {cols['narrows']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2048, help="sampled rollouts per setting (multiple of 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    res = run(args.samples, args.seed)
    print(markdown(res) if args.markdown else json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
