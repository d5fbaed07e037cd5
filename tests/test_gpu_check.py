"""benchmarks/gpu_check.py in --cpu mode: every section runs and reports what it measured."""

import json
import pathlib
import sys

import pytest

pytestmark = pytest.mark.torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from benchmarks import gpu_check  # noqa: E402


def test_cpu_mode_runs_every_section(tmp_path):
    # The real-weights path of the reward section, with the benchmark's stand-in registry.
    models = tmp_path / "reward_models.json"
    models.write_text(json.dumps({"light": {}}))
    sections = list(gpu_check.SECTIONS)
    results = gpu_check.main([
        "--cpu", "--out", str(tmp_path / "out"), "--sections", ",".join(sections), "--size", "16",
        "--torch-compile-backend", "eager",  # the child's protocol; inductor takes minutes on CPU
        "--reps", "1", "--warmup", "0", "--matmul", "64", "--reward-bench-models", "light",
        "--reward-models", str(models), "--reward-registry", "benchmarks.reward_bridge:BENCH_COMPONENTS",
    ])  # fmt: skip
    for name in sections:
        assert "error" not in results[name] and "skipped" not in results[name], (name, results[name])
    p = results["parity"]
    assert p["adair_max_abs_err_fp32_strict"] < 1e-4 and p["policy_mean_max_abs_err_fp32_strict"] < 1e-4
    assert p["output_abs_mean"] > 0.1  # a real output was compared
    g = results["grpo"]
    assert set(g["times"]) >= {"rollout_with_rewards", "jax_rewards", "update", "supervised_1_image"}
    assert g["rollouts_per_s"] > 0
    for name in ("grpo_step", "supervised_1_image"):  # jax.profiler traces, summarised by op category
        prof = g["profile"][name]
        assert prof["op_ms_per_step"] > 0 and prof["categories_ms"]["convolution"] > 0, prof
        assert sum(prof["categories_ms"].values()) == pytest.approx(prof["op_ms_per_step"])
    t = results["train"]
    assert t["train_step_flops_formula"] > 0 and t["flax_images_per_s"] > 0 and t["torch_eager_images_per_s"] > 0
    assert results["train_bf16"]["speedup_over_float32"] > 0  # model.compute_dtype="bfloat16"
    assert results["roofline"]["flax_tflops"] > 0
    assert results["rewards"]["real"]["live"] == ["light"]
    tc = results["torch_compile"]  # compiled while the JAX sections ran, timed after them
    assert tc["backend"] == "eager" and tc["images_per_s"] > 0 and tc["waited_for_parent_s"] >= 0
    assert not (tmp_path / "out" / ".torch_compile_go").exists()
    saved = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert saved["parity"]["adair_max_abs_err_fp32_strict"] == p["adair_max_abs_err_fp32_strict"]
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    for row in ("parity AdaIR fp32", "Flax speed-up over PyTorch eager", "GRPO step / supervised step",
                "achieved: Flax", "reward process, light", "real reward models ['light']",
                "same, torch.compile (eager)", "Flax speed-up over torch.compile",
                "Flax with bfloat16 activations", "profile, grpo step"):  # fmt: skip
        assert row in md, row


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown --sections"):
        gpu_check.main(["--cpu", "--out", str(tmp_path), "--sections", "parity,warp"])
