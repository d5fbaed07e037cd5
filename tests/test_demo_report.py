"""irpo_jax.demo_report's reward lines on a metrics file written the way the trainer writes it
(its evaluation tables are irpo_jax.evaluation.format_table, tested with evaluate)."""

import json

from irpo_jax import demo_report


def test_report_shows_reward_trends_and_paths(tmp_path):
    grpo = tmp_path / "demo_grpo"
    grpo.mkdir()
    records = [{"step": 0, "probe/reward/total/mean": 0.2}]
    records += [{"step": i, "reward/total/mean": 0.1 * i} for i in (5, 10, 15, 20)]
    records += [{"step": 20, "probe/reward/total/mean": 0.3}]
    (grpo / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = demo_report.report(tmp_path)
    assert text.count("(no results found)") == 2  # no evaluation folders: said, not an error
    assert "Probe reward (G rollouts on 2 x the same fixed batches, steps 0..20): 0.200, 0.300" in text
    assert "Mean GRPO reward: 0.5000 (first 1 log points) -> 2.0000 (last 1), over 20 steps" in text
    assert f"tensorboard --logdir {tmp_path}" in text
    assert "Comparison page:  (not written; python -m irpo_jax.compare" in text
    page = tmp_path / "demo_eval" / "compare" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text("<!doctype html>")
    assert f"Comparison page:  {page}\n" in demo_report.report(tmp_path)


def test_report_shows_where_the_actions_went(tmp_path):
    """The actions table from the logged statistics (first and last log point), and the mean
    reward-PSNR correlation over the finite log points."""
    grpo = tmp_path / "demo_grpo"
    grpo.mkdir()
    records = []
    for step, shift in ((5, 0.0), (10, 0.02)):
        r = {"step": step, "reward/total/mean": 0.2, "reward/corr_psnr": 0.5 if step == 5 else "nan"}
        for name in ("fre1", "fre2", "fre3"):
            for action in ("r_h", "r_l", "g_f", "g_o"):
                r[f"actions/{name}/{action}/mean"] = 0.5 + shift
                r[f"actions/{name}/{action}/concentration"] = 100.0 - 100 * shift
            r[f"actions/{name}/mask_changed"] = 0.25 + shift
        records.append(r)
    (grpo / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = demo_report.report(tmp_path)
    assert "Actions (Beta means over the rollouts, 0.5 = AdaIR; log steps 5 -> 10):" in text
    assert (
        "| fre2 | 0.500 -> 0.520 | 0.500 -> 0.520 | 0.500 -> 0.520 | 0.500 -> 0.520 | 100.0 -> 98.0 "
        "| 25.0 % -> 27.0 % |"
    ) in text
    assert "Reward vs PSNR within groups (Pearson r, mean of 1 log points): +0.500" in text
    empty = tmp_path / "none"
    (empty / "demo_grpo").mkdir(parents=True)
    (empty / "demo_grpo" / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/total/mean": 0.1}) + "\n")
    assert "Actions" not in demo_report.report(empty)
