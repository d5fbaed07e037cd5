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
    sections = list(gpu_check.DEFAULT_SECTIONS)
    results = gpu_check.main([
        "--cpu", "--out", str(tmp_path / "out"), "--sections", ",".join(sections), "--size", "16",
        "--torch-compile-backend", "eager",  # the child's protocol; inductor takes minutes on CPU
        "--reps", "1", "--warmup", "0", "--matmul", "64", "--reward-bench-models", "light",
        # Every section must run however loaded the machine is (the 420 s default deadline once
        # skipped sections under load); the child's limit only guards against a hang.
        "--deadline", "1e9", "--compile-timeout", "1800",
        "--reward-models", str(models), "--reward-registry", "benchmarks.reward_bridge:BENCH_COMPONENTS",
    ])  # fmt: skip
    for name in sections:
        assert "error" not in results[name] and "skipped" not in results[name], (name, results[name])
    built = results["compile"]
    assert built["workers"] == 1 and built["compile_s_sum"] > 0  # the pool: test_compiler_...
    assert {"grpo/rollout", "grpo/update", "supervised_1_image/float32", "train/float32", "train/bfloat16",
            "parity/adair_highest"} <= set(built["programs"])  # fmt: skip
    assert all("error" not in v for v in built["programs"].values()), built["programs"]
    p = results["parity"]
    assert p["adair_max_abs_err_fp32_strict"] < 1e-4 and p["policy_mean_max_abs_err_fp32_strict"] < 1e-4
    assert p["output_abs_mean"] > 0.1  # a real output was compared
    g = results["grpo"]
    assert set(g["times"]) >= {"rollout_with_rewards", "jax_rewards", "update", "supervised_1_image"}
    assert g["rollouts_per_s"] > 0
    for name in ("grpo_step", "supervised_1_image"):  # jax.profiler traces, summarised by op category
        prof = g["profile"][name]
        assert prof["trace_dir"].endswith(f"grpo_{name.removeprefix('grpo_')}"), prof["trace_dir"]
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
                "Flax with bfloat16 activations", "profile, grpo step", "XLA programs, 1 compiling"):  # fmt: skip
        assert row in md, row


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown --sections"):
        gpu_check.main(["--cpu", "--out", str(tmp_path), "--sections", "parity,warp"])


@pytest.mark.parametrize("workers", [1, 2])
def test_compiler_builds_programs_before_their_inputs_exist(workers, monkeypatch):
    import jax
    import jax.numpy as jnp
    import numpy as np

    compiler = gpu_check.Compiler(workers)
    x = jax.ShapeDtypeStruct((4, 3), jnp.float32)
    produce = compiler.submit("produce", lambda a: {"y": jnp.tanh(a) @ a.T, "s": a.sum()}, x)
    # A consumer lowered from the producer's output shapes, before either has run.
    compiler.submit("consume", lambda out: out["y"] * out["s"], produce.out_info)
    real_compile = gpu_check._compile

    def failing(lowered):
        if "boom" in lowered.as_text():
            raise RuntimeError("no kernel for boom")
        return real_compile(lowered)

    def boom(a):  # its module is named jit_boom
        return a + 1

    monkeypatch.setattr(gpu_check, "_compile", failing)
    compiler.submit("boom", boom, x)
    try:
        report = compiler.wait()
    finally:
        compiler.close()
    assert report["boom"] == {"error": "RuntimeError: no kernel for boom"}
    assert report["produce"]["compile_s"] > 0 and report["produce"]["lower_s"] > 0
    a = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    got = compiler.programs["consume"].get()[0](compiler.programs["produce"].get()[0](a))
    np.testing.assert_allclose(got, (np.tanh(a) @ a.T) * a.sum(), rtol=1e-5)
    with pytest.raises(RuntimeError, match="no kernel"):
        compiler.programs["boom"].get()


def test_grpo_memory_is_only_the_steps_own(monkeypatch):
    """The allocator's peak cannot be reset: it is reported only when the GRPO step raised it."""
    update = {"xla_memory_gb": {"temporaries": 5.5}}
    monkeypatch.setattr(gpu_check, "_peak_memory_gb", lambda: 7.6)
    assert gpu_check._memory_report(2.0, 1.2, update) == {
        "peak_device_memory_gb": 7.6, "update_live_plus_temporaries_gb": pytest.approx(6.7)}  # fmt: skip
    earlier = gpu_check._memory_report(26.4, 1.2, update)  # e.g. the 8-image train step ran first
    assert earlier["peak_device_memory_gb"] is None and "set before this section" in earlier["peak_device_memory_note"]
    monkeypatch.setattr(gpu_check, "_peak_memory_gb", lambda: None)  # XLA:CPU keeps no statistics
    assert gpu_check._memory_report(None, None, update) == {"peak_device_memory_gb": None}


def test_grpo_variants_build_what_they_say(tmp_path, monkeypatch):
    """grpo_refpass's update has the reference policy's decoder passes (more convolutions than
    the others, which have none: the trainer's step-0 update and grpo_nokl's), grpo_bf16's
    convolutions are bfloat16, and each compute dtype gets its own supervised baseline (checked
    on the lowered programs, nothing compiled)."""
    monkeypatch.setattr(gpu_check, "_compile", lambda lowered: (None, {"compile_s": 0.0}))
    opts = gpu_check.parse_args(["--cpu", "--out", str(tmp_path)])
    sizes = dict(gpu_check.SIZES["cpu"], size=16, kl_coef=None)
    gpu_check._SUPERVISED_1_IMAGE.clear()
    compiler = gpu_check.Compiler(1)
    for name in ("grpo_bf16", "grpo_nokl", "grpo_refpass"):
        gpu_check.PREPARE[name](opts, sizes, compiler)
    text = {name: prog.lowered.as_text() for name, prog in compiler.programs.items()}
    convs = {name: t.count("stablehlo.convolution") for name, t in text.items()}
    assert 0 < convs["grpo_nokl/update"] == convs["grpo_bf16/update"] < convs["grpo_refpass/update"], convs
    assert convs["grpo_nokl/rollout"] == convs["grpo_bf16/rollout"] == convs["grpo_refpass/rollout"]
    bf16_convs = lambda t: sum("stablehlo.convolution" in line and "bf16" in line for line in t.splitlines())  # noqa: E731
    assert bf16_convs(text["grpo_bf16/update"]) > 0 and bf16_convs(text["grpo_nokl/update"]) == 0
    assert set(n for n in compiler.programs if n.startswith("supervised_1_image/")) == {
        "supervised_1_image/float32", "supervised_1_image/bfloat16"}  # fmt: skip
