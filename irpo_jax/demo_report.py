"""The last step of ``make demo``: print what the demo pipeline produced and where it is.

  python -m irpo_jax.demo_report runs

Reads ``runs/demo_eval/{before,after}/eval/*/results.json`` (written by ``irpo_jax.evaluate``)
and ``runs/demo_grpo/metrics.jsonl`` (written by the trainer), prints both tables, the mean
reward at the start and end of post-training (per step, and on the fixed probe batches when
``train.probe_every`` is set), where the policy's actions went (:func:`action_lines`), and the
paths of images, the before/after comparison page
(``runs/demo_eval/compare/index.html``, written by ``irpo_jax.compare``) and TensorBoard logs.
"""

from __future__ import annotations

import json
import pathlib
import sys

from irpo_jax import cli, evaluation
from irpo_jax.metrics_log import read_metrics


def _results(root: pathlib.Path) -> dict | None:
    files = sorted(root.glob("eval/*/results.json"))
    return json.loads(files[-1].read_text()) if files else None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def action_lines(records: list[dict]) -> list[str]:
    """Where the actions went over a GRPO run, from its logged ``actions/*`` statistics: per
    FreModule the Beta means of the four actions (0.5 = AdaIR), the rate heads' concentration and
    the share of rollouts whose mask differs from AdaIR's, at the first and the last log point;
    and the mean within-group correlation of the reward with PSNR. Empty without them."""
    from irpo_jax.models.adair import FRE_NAMES
    from irpo_jax.models.policy import ACTION_NAMES

    logged = [r for r in records if "actions/fre1/r_h/mean" in r]
    if not logged:
        return []
    first, last = logged[0], logged[-1]
    arrow = lambda key, fmt: f"{first[key]:{fmt}} -> {last[key]:{fmt}}"  # noqa: E731
    lines = [
        f"Actions (Beta means over the rollouts, 0.5 = AdaIR; log steps {first['step']} -> {last['step']}):",
        "",
        "| module | " + " | ".join(ACTION_NAMES) + " | rate concentration (r_h) | masks changed |",
        "|:--|" + ":-:|" * (len(ACTION_NAMES) + 2),
    ]
    for name in FRE_NAMES:
        cells = [arrow(f"actions/{name}/{a}/mean", ".3f") for a in ACTION_NAMES]
        cells.append(arrow(f"actions/{name}/r_h/concentration", ".1f"))
        changed = f"actions/{name}/mask_changed"
        cells.append(f"{100 * first[changed]:.1f} % -> {100 * last[changed]:.1f} %")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    corr = [
        r["reward/corr_psnr"]
        for r in records
        if isinstance(r.get("reward/corr_psnr"), float) and r["reward/corr_psnr"] == r["reward/corr_psnr"]
    ]
    if corr:
        lines += ["", f"Reward vs PSNR within groups (Pearson r, mean of {len(corr)} log points): {_mean(corr):+.3f}"]
    return lines


def report(runs: pathlib.Path) -> str:
    lines = []
    before, after = _results(runs / "demo_eval" / "before"), _results(runs / "demo_eval" / "after")
    for title, res in (("Before post-training (supervised AdaIR)", before), ("After IRPO post-training", after)):
        lines += [f"## {title}", evaluation.format_table(res) if res else "(no results found)", ""]
    if before and after:
        b, a = before["average"], after["average"]
        lines.append(
            f"Average PSNR/SSIM: {b['psnr']:.2f}/{b['ssim']:.3f} -> {a['psnr']:.2f}/{a['ssim']:.3f} "
            f"({a['psnr'] - b['psnr']:+.2f} dB)"
        )
    metrics = read_metrics(runs / "demo_grpo")
    probes = [r for r in metrics if "probe/reward/total/mean" in r]
    if len(probes) >= 2:
        curve = ", ".join(f"{r['probe/reward/total/mean']:.3f}" for r in probes)
        lines.append(
            f"Probe reward (G rollouts on {len(probes)} x the same fixed batches, steps "
            f"{probes[0]['step']}..{probes[-1]['step']}): {curve}"
        )
    records = [r for r in metrics if "reward/total/mean" in r]
    if records:
        k = max(1, len(records) // 4)
        first = _mean([r["reward/total/mean"] for r in records[:k]])
        last = _mean([r["reward/total/mean"] for r in records[-k:]])
        lines.append(
            f"Mean GRPO reward: {first:.4f} (first {k} log points) -> {last:.4f} (last {k}), "
            f"over {records[-1]['step']} steps"
        )
    actions = action_lines(metrics)
    if actions:
        lines += [""] + actions
    page = runs / "demo_eval" / "compare" / "index.html"
    lines += [
        "",
        f"Comparison page:  {page}"
        if page.is_file()
        else "Comparison page:  (not written; "
        "python -m irpo_jax.compare runs/demo_eval/before runs/demo_eval/after --out runs/demo_eval/compare)",
        f"Restored images:  {runs / 'demo_eval'}/{{before,after}}/eval/*/images",
        f"TensorBoard:      tensorboard --logdir {runs}",
        f"Models:           {runs / 'demo_supervised' / 'model'}, {runs / 'demo_grpo' / 'model'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m irpo_jax.demo_report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="?", default="runs", help="the demo's runs folder (default runs)")
    print(report(pathlib.Path(p.parse_args(argv).runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
