"""irpo_jax.demo_report's reward lines on a metrics file written the way the trainer writes it
(its evaluation tables are evaluate.format_table, tested with evaluate)."""

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
