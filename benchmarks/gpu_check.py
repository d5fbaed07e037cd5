"""One-card check of the whole system: parity, speed against PyTorch, GRPO step, reward process.

    python benchmarks/gpu_check.py --out gpu_check_out          # one GPU (the serial run took ~11 min on an H200)
    python benchmarks/gpu_check.py --cpu --out /tmp/gpu_check   # the same on CPU, tiny sizes (CI)

Sections (each writes into ``OUT/gpu_check.json`` as soon as it is done, so
an interrupted run keeps what it measured; ``OUT/gpu_check.md`` is the summary, printed last):

``env``      card, driver, CUDA/cuDNN and library versions, date.
``parity``   the Flax AdaIR and the IRPO policy's deterministic mode against the PyTorch reference
             (``torch_bridge.reference_adair``) on the same random weights (``para1`` made
             non-zero so the FreModules' attention paths count) and input: float32 with TF32 off
             on both sides (``jax.default_matmul_precision('highest')``; torch
             ``allow_tf32=False`` for matmuls and cuDNN), and each framework's default precision
             reported separately.
``grpo``     one GRPO step at the paper's setting (base model, G=4, 128x128, 1 image) with the
             trainer's own step functions, split into rollout, JAX rewards and update; rollouts/s;
             XLA's memory analysis of each program and the device's peak memory; and the ratio
             to a supervised step on one image (target < 2.5). ``--compute-dtype bfloat16`` runs
             both steps with bfloat16 activations; ``--kl-coef 0`` drops the KL term and with it
             the reference policy's pass. With ``--profile`` (default) both steps are
             traced with ``jax.profiler`` (``OUT/profile``, for TensorBoard/XProf) and the op time
             per step is summarised by category (convolutions, matmuls, FFTs, fusions).
``grpo_bf16``, ``grpo_nokl``, ``grpo_refpass``  the same with bfloat16 activations, without the
             KL term, and with the reference policy's decoder passes (the trainer leaves them out
             while the reference's heads ignore their inputs, as at step 0: the default
             ``grpo`` section's update has none); not in the default run, asked for by name.
``train``    the supervised train step (base, batch 8x128x128: forward, L1, backward, AdamW) in
             Flax (jitted, donated state) against PyTorch eager on the same card, interleaved;
             images/s and the ratio (target >= 1.3).
``train_bf16``  the same step with bfloat16 activations (``model.compute_dtype``, float32
             parameters) against the float32 one (compiled once for both sections) and PyTorch.
``matmul``   the card's measured matmul rates (bf16, and float32 at default and highest
             precision), the ceilings for the roofline.
``roofline`` the train step's achieved FLOP/s against those rates; FLOPs from
             :mod:`irpo_jax.models.flops` (convolutions and attention products of the model
             config, x3 for forward+backward), XLA's own count beside it.
``rewards``  the reward process on the same card with small stand-in models (transport overhead;
             ``benchmarks/reward_bridge.py``), and with the real LPIPS/CLIP/aesthetic/judge when
             ``--reward-models FILE.json`` gives their ``reward.models`` settings.
``torch_compile``  ``torch.compile`` of the same train step in a child process started with the
             run: inductor compiles while the JAX programs compile; at its turn the child times
             its steps (compiled and eager, interleaved) while this process waits.

The run has two phases. First every selected section lowers its XLA programs (from the shapes
of its inputs; nothing is held on the card) and :class:`Compiler` compiles them all,
``--compile-workers`` at a time (XLA's GPU compile of one base-model program took 40-90 s on an
H200); ``compile`` in the JSON has each program's lower and compile times. Then the sections
run in the order ``--sections`` gives (``roofline`` moved after the others), each building its
inputs, timing programs that are already compiled and freeing its buffers when it ends, so no
compile runs beside a timing and each section's memory is its own. Every section catches its
own failure (reported, the run goes on), and ``--deadline`` seconds after the start the
remaining sections are skipped and said so.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import functools
import json
import pathlib
import platform
import statistics
import subprocess
import sys
import time
import traceback

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Default run order (of the timed phase; every program is compiled before it): the headline
# targets first; grpo before train, so that the allocator's peak is the GRPO step's own (the
# 8-image train step needs ~26 GB of XLA temporaries on the GPU, and the peak cannot be reset).
SECTIONS = ("env", "grpo", "train", "parity", "matmul", "roofline", "rewards", "torch_compile", "train_bf16",
            "grpo_bf16", "grpo_nokl", "grpo_refpass")  # fmt: skip
# The GRPO sections: the paper's setting (as --compute-dtype / --kl-coef give it), the same step
# with bfloat16 activations, without the KL term, and with the reference policy's decoder passes
# (which the trainer skips while the reference's heads ignore their inputs, as at step 0).
GRPO_VARIANTS = {"grpo": {}, "grpo_bf16": {"compute_dtype": "bfloat16"}, "grpo_nokl": {"kl_coef": 0.0},
                 "grpo_refpass": {"reference_pass": True}}  # fmt: skip
# The default run; the GRPO variants are asked for by name (each adds its own rollout and update).
DEFAULT_SECTIONS = tuple(name for name in SECTIONS if name not in ("grpo_bf16", "grpo_nokl", "grpo_refpass"))
RESULT_MARKER = "GPU_CHECK_RESULT "

# Sizes per mode. GPU: the settings. CPU: the same code on sizes that run in seconds.
SIZES = {
    "gpu": dict(
        variant="base",
        size=128,
        train_batch=8,
        group=4,
        images=1,
        reps=10,
        warmup=2,
        matmul=8192,
        compute_dtype="float32",
    ),
    "cpu": dict(
        variant="tiny", size=32, train_batch=2, group=2, images=1, reps=2, warmup=1, matmul=512, compute_dtype="float32"
    ),
}


# ----------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _median_time(fn, reps: int) -> dict:
    """Median and min wall time of ``reps`` calls of ``fn`` (which must block on its result)."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "min_s": min(times), "n": reps}


def _interleaved(fns: dict, reps: int) -> dict:
    """One call of each function per round, so that all see the same conditions."""
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "n": reps} for k, v in times.items()}


def _compile(lowered) -> tuple:
    """``lowered.compile()``, its wall time and XLA's memory analysis of the program."""
    t = time.perf_counter()
    compiled = lowered.compile()
    info = {"compile_s": time.perf_counter() - t}
    try:
        m = compiled.memory_analysis()
        info["xla_memory_gb"] = {
            "arguments": m.argument_size_in_bytes / 1e9,
            "outputs": m.output_size_in_bytes / 1e9,
            "temporaries": m.temp_size_in_bytes / 1e9,
        }
    except Exception:  # noqa: BLE001 - not every backend reports it
        pass
    return compiled, info


def _aot(fn, *args, donate=None):
    """``jax.jit(fn).lower(*args).compile()`` now, its compile time and memory analysis."""
    import jax

    return _compile(jax.jit(fn, donate_argnums=donate or ()).lower(*args))


class Program:
    """A lowered program, compiling in :class:`Compiler`'s pool; :meth:`get` waits for it."""

    def __init__(self, lowered, future: concurrent.futures.Future, lower_s: float):
        self.lowered = lowered
        self.out_info = lowered.out_info  # the outputs' shapes, to lower a consumer before this compiles
        self._future = future
        self.lower_s = lower_s

    def get(self) -> tuple:
        """``(compiled, info)``: info holds ``lower_s``, ``compile_s`` and XLA's memory analysis."""
        compiled, info = self._future.result()
        return compiled, {"lower_s": self.lower_s, **info}


class Compiler:
    """Lowers each program in the calling thread and compiles it in ``workers`` threads.

    XLA's compile releases the GIL, so independent programs can compile side by side (the JAX
    maintainers' way to warm many programs, jax-ml/jax#11788). On the H200 the base-model
    programs took 40-90 s each one after another, on a box with 16 cores. Tracing and lowering
    are Python and stay serial. The run waits for every compile (:meth:`wait`) before it times
    anything, so no compile thread, nor the autotuner's kernels on the card, runs beside a
    measurement. ``workers=1`` compiles each program as it is submitted.

    Not known before a GPU run: the gain (XLA may autotune a kernel shape twice when two
    programs that contain it compile at once, openxla/xla#41620), and whether concurrent
    autotuning changes the kernels XLA picks: the step times are compared with the serial run's.
    On the 2-core development CPU there is no gain (the gpu_check --cpu run took 211 s with two
    workers, 210 s with one: one XLA:CPU compile already keeps both cores busy).
    """

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self._pool = None
        if self.workers > 1:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, "xla-compile")
        self.programs: dict[str, Program] = {}

    def submit(self, name: str, fn, *args, donate=()) -> Program:
        """Lower ``jax.jit(fn)`` on ``args`` (arrays or ``jax.ShapeDtypeStruct``) and compile it."""
        import jax

        t = time.perf_counter()
        lowered = jax.jit(fn, donate_argnums=donate).lower(*args)
        lower_s = time.perf_counter() - t
        if self._pool is not None:
            future = self._pool.submit(_compile, lowered)
        else:
            future = concurrent.futures.Future()
            try:
                future.set_result(_compile(lowered))
            except Exception as e:  # noqa: BLE001 - raised again by Program.get
                future.set_exception(e)
        self.programs[name] = Program(lowered, future, lower_s)
        return self.programs[name]

    def wait(self) -> dict:
        """Block until every submitted program is compiled; their times (failures by name)."""
        concurrent.futures.wait([p._future for p in self.programs.values()])
        out = {}
        for name, prog in self.programs.items():
            try:
                out[name] = prog.get()[1]
            except Exception as e:  # noqa: BLE001 - the section that needs it reports it
                out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _abstract(tree):
    """The shapes and dtypes of a pytree of arrays (what :meth:`Compiler.submit` needs to lower)."""
    import jax

    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def _xla_flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"])
    except Exception:  # noqa: BLE001
        return None


# Op categories of a profile, by the first match in the op's (HLO instruction) name.
_OP_CATEGORIES = (
    ("convolution", ("conv",)),
    ("matmul", ("gemm", "dot", "cublas", "matmul")),
    ("fft", ("fft",)),
    ("reduction fusion", ("reduce",)),
    ("copy/transpose", ("copy", "transpose")),
    ("other fusion", ("fusion",)),
)


_CONTAINER_OPS = {"while", "call", "conditional"}


def _op_category(name: str) -> str:
    low = name.lower()
    return next((cat for cat, keys in _OP_CATEGORIES if any(k in low for k in keys)), "other")


def profile_summary(trace_dir: pathlib.Path, steps: int) -> dict:
    """Device time per step by op category and the top ops, from a ``jax.profiler`` trace.

    On a GPU the ops are the events of the device planes' "XLA Ops" line; on the CPU, the host
    events that carry an ``hlo_op`` statistic (the XLA:CPU thunks). Times are summed over the
    trace and divided by ``steps``.
    """
    from jax.profiler import ProfileData

    files = sorted(trace_dir.glob("**/*.xplane.pb"))
    if not files:
        return {"error": f"no .xplane.pb under {trace_dir}"}
    data = ProfileData.from_file(str(files[-1]))
    device_planes = [plane for plane in data.planes if plane.name.startswith("/device:")]
    device_lines = [line for plane in device_planes for line in plane.lines if line.name == "XLA Ops"]
    events = []
    if device_lines:
        events = [(e.name, e.duration_ns) for line in device_lines for e in line.events]
    else:
        for plane in data.planes:
            for line in plane.lines:
                for e in line.events:
                    op = dict(e.stats).get("hlo_op")
                    if op:
                        events.append((str(op), e.duration_ns))
    per_op: dict[str, float] = {}
    for name, ns in events:
        if name.split(".")[0] in _CONTAINER_OPS:
            continue  # its body's ops are counted themselves
        per_op[name] = per_op.get(name, 0.0) + ns / 1e6 / steps
    total = sum(per_op.values())
    per_cat: dict[str, float] = {}
    for name, ms in per_op.items():
        per_cat[_op_category(name)] = per_cat.get(_op_category(name), 0.0) + ms
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:12]
    return {
        "source": "device XLA Ops" if device_lines else "host hlo_op events",
        "op_ms_per_step": total, "ops": len(per_op),
        "categories_ms": dict(sorted(per_cat.items(), key=lambda kv: -kv[1])),
        "top_ops_ms": dict(top),
    }  # fmt: skip


def _profiled(fn, steps: int, trace_dir: pathlib.Path) -> dict:
    """``steps`` calls of ``fn`` under ``jax.profiler.trace`` and :func:`profile_summary` of them."""
    import jax

    trace_dir.mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(trace_dir)):
        for _ in range(steps):
            fn()
    summary = profile_summary(trace_dir, steps)
    summary["trace_dir"] = str(trace_dir)
    return summary


def _memory_stat_gb(key: str) -> float | None:
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats[key] / 1e9 if key in stats else None


def _peak_memory_gb() -> float | None:
    return _memory_stat_gb("peak_bytes_in_use")


def _bytes_in_use_gb() -> float | None:
    return _memory_stat_gb("bytes_in_use")


def _torch_device(opts) -> str:
    return "cpu" if opts.cpu else "cuda"


def _torch_sync(dev: str) -> None:
    import torch

    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def _torch_kwargs(variant: str) -> dict:
    from irpo_jax.models import adair

    cfg = adair.get_config(variant).to_dict()
    cfg.pop("mask_rule")  # not an official constructor argument
    return cfg


def _images(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def _max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ----------------------------------------------------------------------------- sections


def section_env(opts, sizes) -> dict:
    import flax
    import jax
    import jaxlib
    import optax

    out = {
        "date": _now(), "mode": "cpu" if opts.cpu else "gpu", "python": platform.python_version(),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__,
        "backend": jax.default_backend(), "devices": [f"{d.device_kind} ({d.platform})" for d in jax.devices()],
        "sizes": sizes,
    }  # fmt: skip
    try:
        import torch

        out.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            out["cudnn"] = torch.backends.cudnn.version()
    except ImportError:
        out["torch"] = None
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        out["nvidia_smi"] = f"unavailable ({type(e).__name__})"
    return out


def _weights(variant: str, seed: int = 0) -> dict:
    """Random official-layout weights with ``para1`` non-zero (it starts at 0, which would switch
    the FreModules' attention output off and leave it out of the comparison)."""
    from flax import nnx

    from irpo_jax.models import adair, convert

    weights = convert.state_dict(adair.AdaIR(variant, rngs=nnx.Rngs(seed)))
    rng = np.random.default_rng(seed)
    for k in weights:
        if k.endswith("para1"):
            weights[k] = rng.normal(0.0, 0.5, weights[k].shape).astype(np.float32)
    return weights


def prepare_parity(opts, sizes, compiler: Compiler):
    """Lower the three Flax forwards (AdaIR at highest and default precision, the policy's
    deterministic mode); the returned measure compares them with the PyTorch reference."""
    import jax
    from flax import nnx

    from irpo_jax.models import adair, convert, policy

    variant, size = sizes["variant"], sizes["size"]
    x = _images((1, size, size, 3), seed=1)
    from irpo_jax.training import host_device

    with jax.default_device(host_device()):  # the lowering below targets the default device
        weights = _weights(variant)
        model = adair.AdaIR(variant, rngs=nnx.Rngs(0))
        convert.load_state_dict(model, weights)
        pol = policy.IRPOPolicy(variant, rngs=nnx.Rngs(1))
        convert.load_state_dict(pol.net, weights)
    programs = {}
    for name, module, mean, precision in (
        ("adair_highest", model, False, "highest"),
        ("adair_default", model, False, None),
        ("policy_mean_highest", pol, True, "highest"),
    ):
        graphdef, state = nnx.split(module)

        def forward(state, img, graphdef=graphdef, mean=mean):
            m = nnx.merge(graphdef, state)
            return m.mean(img).restored if mean else m(img)

        with jax.default_matmul_precision(precision):  # read at trace time
            prog = compiler.submit(f"parity/{name}", forward, _abstract(state), _abstract(x))
        programs[name] = (prog, jax.device_get(state))  # host copies: nothing stays on the card
    return lambda: _measure_parity(opts, sizes, weights, x, programs)


def _measure_parity(opts, sizes, weights, x, programs) -> dict:
    import jax
    import torch

    from torch_bridge.reference_adair import AdaIR as TorchAdaIR

    variant, dev = sizes["variant"], _torch_device(opts)
    tmodel = TorchAdaIR(**_torch_kwargs(variant))
    tmodel.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()}, strict=True)
    tmodel = tmodel.to(dev).eval()
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dev)

    def torch_forward(tf32: bool) -> np.ndarray:
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        try:
            with torch.no_grad():
                y = tmodel(tx)
            _torch_sync(dev)
            return y.cpu().numpy().transpose(0, 2, 3, 1)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old

    torch_strict = torch_forward(False)
    # torch's own defaults: TF32 off for matmuls, on for cuDNN convolutions.
    torch_default = torch_forward(torch.backends.cudnn.allow_tf32)

    flax, compile_s = {}, 0.0
    for name, (prog, state) in programs.items():
        compiled, info = prog.get()
        flax[name] = np.asarray(jax.block_until_ready(compiled(jax.device_put(state), jax.device_put(x))))
        compile_s += info["compile_s"]
    return {
        "input": list(x.shape), "variant": variant,
        "adair_max_abs_err_fp32_strict": _max_err(flax["adair_highest"], torch_strict),
        "policy_mean_max_abs_err_fp32_strict": _max_err(flax["policy_mean_highest"], torch_strict),
        "adair_max_abs_err_flax_default_vs_torch_strict": _max_err(flax["adair_default"], torch_strict),
        "torch_default_vs_torch_strict": _max_err(torch_default, torch_strict),
        "output_abs_mean": float(np.mean(np.abs(torch_strict))),
        "tolerance_strict": 1e-4,
        "compile_s": compile_s,
    }  # fmt: skip


def _grpo_config(sizes):
    from irpo_jax import cli

    cfg = cli.load_config(str(ROOT / "configs" / "allinone5.py"))
    cfg.model.variant = sizes["variant"]
    cfg.model.init_from = ""
    cfg.grpo.group_size = sizes["group"]
    cfg.train.batch_size = sizes["images"]
    cfg.reward.bridge.mode = "off"  # the reward process is timed in its own section
    cfg.model.compute_dtype = sizes["compute_dtype"]
    if sizes.get("kl_coef") is not None:  # 0 drops the reference policy's pass from the update
        cfg.grpo.kl_coef = sizes["kl_coef"]
    return cfg


def _batch(n: int, size: int, seed: int) -> dict:
    """A noisy/clean batch as host arrays (put on the card when a section is measured)."""
    clean = _images((n, size, size, 3), seed)
    noise = np.random.default_rng(seed + 1).normal(0, 25 / 255, clean.shape).astype(np.float32)
    return {"degraded": np.clip(clean + noise, 0, 1), "clean": clean, "task_id": np.zeros((n,), np.int32)}


class StepZero:
    """The step-0 :class:`~irpo_jax.training.TrainState` of ``make_model()``: its shapes now (to
    lower the programs that take it), the arrays when :meth:`build` is called (as the section is
    measured, so that nothing is held on the card between sections)."""

    def __init__(self, make_model, cfg, *, with_ref: bool):
        import jax

        self._make_model, self._cfg, self._with_ref = make_model, cfg, with_ref
        self.abstract = jax.eval_shape(self._init)

    def build(self):
        """The state on the first device, initialised on the host."""
        import jax

        from irpo_jax.training import host_device

        with jax.default_device(host_device()):
            state = self._init()
        return jax.device_put(state, jax.local_devices()[0])

    def _init(self):
        from flax import nnx

        from irpo_jax import training

        self.graphdef, params = nnx.split(self._make_model(), nnx.Param)
        params = nnx.to_pure_dict(params)
        self.tx = training.build_optimizer(self._cfg, params, 1000)
        return training.TrainState.initial(params, self.tx, 0, with_ref=self._with_ref)


def prepare_grpo(opts, sizes, compiler: Compiler, name: str = "grpo"):
    """Lower the trainer's own GRPO programs (rollout, update) at the paper's setting (changed
    as ``GRPO_VARIANTS[name]`` says), the JAX rewards alone, and the one-image supervised step
    the 2.5x target refers to (in the same compute dtype; shared by the variants)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from irpo_jax import training
    from irpo_jax.models import adair
    from irpo_jax.models.policy import IRPOPolicy, PolicyConfig
    from irpo_jax.rewards import compose as compose_lib

    sizes = {**sizes, **GRPO_VARIANTS[name]}
    cfg = _grpo_config(sizes)
    group, n, size = sizes["group"], sizes["images"], sizes["size"]
    pcfg = PolicyConfig.from_dict(cfg.model.policy.to_dict())
    variant = cfg.model.variant
    init = StepZero(lambda: IRPOPolicy(variant, pcfg, rngs=nnx.Rngs(0)), cfg, with_ref=True)
    graphdef, tx = init.graphdef, init.tx
    batch = _batch(n, size, seed=2)
    key = jax.random.key(3)
    jax_names = tuple(k for k in compose_lib.active_components(cfg.reward) if compose_lib.REWARDS[k].backend == "jax")
    state_abs, batch_abs = init.abstract, _abstract(batch)
    p = {"init": init}
    rollout = training.make_rollout_step(graphdef, cfg, jax_names)
    p["rollout"] = compiler.submit(f"{name}/rollout", rollout, state_abs.params, batch_abs, _abstract(key))

    def rewards(restored, batch):
        rep = lambda t: jnp.repeat(t, group, axis=0)  # noqa: E731
        flat = jnp.clip(restored, 0, 1).reshape(n * group, *restored.shape[2:])
        return compose_lib.jax_reward_scores(rep(batch["degraded"]), flat, rep(batch["clean"]),
                                             rep(batch["task_id"]), names=jax_names)  # fmt: skip

    rollout_abs = p["rollout"].out_info
    p["jax_rewards_only"] = compiler.submit(f"{name}/jax_rewards", rewards, rollout_abs["restored"], batch_abs)
    # As the trainer at step 0: the reference policy's heads ignore their inputs, so its log-probs
    # need no decoder pass ("grpo_refpass" measures the update with the pass).
    constant_ref = not sizes.get("reference_pass", False)
    update = training.make_grpo_update(graphdef, tx, cfg, 1000, constant_ref=constant_ref)
    p["update"] = compiler.submit(f"{name}/update", update, state_abs, batch_abs, rollout_abs, {}, donate=(0,))
    if opts.compare_update:
        # The same update in its direct form: L_sup/L_cons backpropagated through all G rollouts and
        # the log-probs from their teacher-forced decoder passes (no grpo.reuse_head_inputs).
        cfg_all = _grpo_config(sizes)
        cfg_all.grpo.supervise_best_only = False
        update_all = training.make_grpo_update(graphdef, tx, cfg_all, 1000, constant_ref=constant_ref)
        p["update_through_all_G"] = compiler.submit(
            f"{name}/update_through_all_G", update_all, state_abs, batch_abs, rollout_abs, {}
        )

    # The reference for the 2.5x target: a supervised step of the plain AdaIR on one image.
    dtype = cfg.model.compute_dtype
    if dtype not in _SUPERVISED_1_IMAGE:
        sup_init = StepZero(lambda: adair.AdaIR(variant, rngs=nnx.Rngs(0)), cfg, with_ref=False)
        sup_batch = {k: batch[k] for k in ("degraded", "clean")}
        _SUPERVISED_1_IMAGE[dtype] = sup_init, compiler.submit(
            f"supervised_1_image/{dtype}", training.make_supervised_step(sup_init.graphdef, sup_init.tx, dtype),
            sup_init.abstract, _abstract(sup_batch), donate=(0,),
        )  # fmt: skip
    p["supervised_init"], p["supervised_1_image"] = _SUPERVISED_1_IMAGE[dtype]
    return lambda: _measure_grpo(opts, sizes, cfg, p, batch, key, jax_names, name)


# The one-image supervised steps by compute dtype, built once per run (the GRPO sections share them).
_SUPERVISED_1_IMAGE: dict = {}


def _measure_grpo(opts, sizes, cfg, p, batch, key, jax_names, name: str) -> dict:
    import jax

    group, n, reps = sizes["group"], sizes["images"], sizes["reps"]
    out: dict = {"variant": cfg.model.variant, "group": group, "images": n, "size": sizes["size"],
                 "jax_rewards": list(jax_names), "compute_dtype": cfg.model.compute_dtype,
                 "kl_coef": cfg.grpo.kl_coef}  # fmt: skip
    # The allocator's high-water mark cannot be reset: it is this step's only if the step raises it.
    peak_before = _peak_memory_gb()
    fns = {}
    for program in ("rollout", "jax_rewards_only", "update", "update_through_all_G"):
        if program in p:
            fns[program], out[program] = p[program].get()
    batch = jax.device_put(batch)
    t = time.perf_counter()
    state = jax.block_until_ready(p["init"].build())
    out["init_s"] = time.perf_counter() - t  # the policy's init on the host and its transfer
    rollout_fn, update_fn = fns["rollout"], fns["update"]
    rollout = jax.block_until_ready(rollout_fn(state.params, batch, key))
    rewards_fn = fns["jax_rewards_only"]
    update_all_fn = fns.get("update_through_all_G")
    if update_all_fn is not None:
        _, metrics_all = update_all_fn(state, batch, rollout, {})
    in_use_before_update = _bytes_in_use_gb()
    state, metrics = update_fn(state, batch, rollout, {})
    jax.block_until_ready(metrics)
    if update_all_fn is not None:
        out["update_variants_loss_diff"] = float(abs(metrics["loss/total"] - metrics_all["loss/total"]))

    for _ in range(sizes["warmup"]):
        jax.block_until_ready(rollout_fn(state.params, batch, key))
    holder = {"state": state}

    def step_update():
        holder["state"], m = update_fn(holder["state"], batch, rollout, {})
        jax.block_until_ready(m)

    times = {
        "rollout_with_rewards": _median_time(
            lambda: jax.block_until_ready(rollout_fn(holder["state"].params, batch, key)), reps
        ),
        "jax_rewards": _median_time(lambda: jax.block_until_ready(rewards_fn(rollout["restored"], batch)), reps),
        "update": _median_time(step_update, reps),
    }  # fmt: skip
    if update_all_fn is not None:
        times["update_through_all_G"] = _median_time(
            lambda: jax.block_until_ready(update_all_fn(holder["state"], batch, rollout, {})[1]), reps
        )
    out["times"] = times
    step = times["rollout_with_rewards"]["median_s"] + times["update"]["median_s"]
    out["step_s"] = step
    out["rollouts_per_s"] = n * group / step
    out.update(_memory_report(peak_before, in_use_before_update, out["update"]))
    if opts.profile:
        out["profile"] = {"grpo_step": _profiled(
            lambda: (jax.block_until_ready(rollout_fn(holder["state"].params, batch, key)), step_update()),
            min(reps, 3), pathlib.Path(opts.out) / "profile" / f"{name}_step",
        )}  # fmt: skip
    # Free the GRPO programs and buffers before the next section (rebinding, not `del`: the
    # closures above read these names, and a linter cannot tell they are no longer called).
    holder = state = rollout = update_fn = update_all_fn = fns = None

    sup_fn, out["supervised_1_image"] = p["supervised_1_image"].get()
    sup_batch = {k: batch[k] for k in ("degraded", "clean")}
    holder = {"state": p["supervised_init"].build()}

    def sup_step():
        holder["state"], m = sup_fn(holder["state"], sup_batch)
        jax.block_until_ready(m)

    for _ in range(sizes["warmup"]):
        sup_step()
    out["times"]["supervised_1_image"] = _median_time(sup_step, reps)
    out["grpo_over_supervised_1_image"] = step / out["times"]["supervised_1_image"]["median_s"]
    if opts.profile:
        trace_dir = pathlib.Path(opts.out) / "profile" / f"{name}_supervised_1_image"
        out["profile"]["supervised_1_image"] = _profiled(sup_step, min(reps, 3), trace_dir)
    return out


def _memory_report(peak_before, in_use_before_update, update_info) -> dict:
    """The GRPO step's device memory: the allocator's peak when this step set it, and the live
    buffers at the update's call plus the update program's XLA temporaries."""
    peak = _peak_memory_gb()
    raised = peak is not None and (peak_before is None or peak > peak_before)
    out = {"peak_device_memory_gb": peak if raised else None}
    if peak is not None and out["peak_device_memory_gb"] is None:
        out["peak_device_memory_note"] = f"the allocator's peak ({peak:.2f} GB) was set before this section"
    temporaries = update_info.get("xla_memory_gb", {}).get("temporaries")
    if in_use_before_update is not None and temporaries is not None:
        out["update_live_plus_temporaries_gb"] = in_use_before_update + temporaries
    return out


def _supervised_config():
    """AdaIR's supervised recipe, at a constant learning rate: the torch step's AdamW has no
    schedule (and the recipe's per-epoch schedule needs a data set's epoch size)."""
    from irpo_jax import cli

    cfg = cli.load_config(str(ROOT / "configs" / "allinone5.py") + ":supervised")
    cfg.optim.schedule = "constant"
    return cfg


# The Flax train steps' programs by compute dtype, built once per run (``train`` and
# ``train_bf16`` share the float32 one).
_TRAIN_PROGRAMS: dict = {}


def _train_programs(sizes, compiler: Compiler, compute_dtype: str) -> dict:
    """The trainer's supervised step (AdamW, donated state) on the plain AdaIR at the train
    batch, activations in ``compute_dtype``: its state and step programs and the batch."""
    from flax import nnx

    from irpo_jax import training
    from irpo_jax.models import adair

    if compute_dtype not in _TRAIN_PROGRAMS:
        cfg = _supervised_config()
        init = StepZero(lambda: adair.AdaIR(sizes["variant"], rngs=nnx.Rngs(0)), cfg, with_ref=False)
        b = _batch(sizes["train_batch"], sizes["size"], seed=4)
        batch = {"degraded": b["degraded"], "clean": b["clean"]}
        step_fn = training.make_supervised_step(init.graphdef, init.tx, compute_dtype)
        step = compiler.submit(f"train/{compute_dtype}", step_fn, init.abstract, _abstract(batch), donate=(0,))
        optimizer = f"{cfg.optim.name} lr={cfg.optim.lr} wd={cfg.optim.weight_decay}"
        _TRAIN_PROGRAMS[compute_dtype] = {"init": init, "step": step, "batch": batch, "optimizer": optimizer}
    return _TRAIN_PROGRAMS[compute_dtype]


def _flax_train_call(programs: dict):
    """``(call, compiled, info)``: one train step per call on a fresh step-0 state."""
    import jax

    compiled, info = programs["step"].get()
    info["optimizer"] = programs["optimizer"]
    batch = jax.device_put(programs["batch"])
    holder = {"state": programs["init"].build()}

    def call():
        holder["state"], m = compiled(holder["state"], batch)
        jax.block_until_ready(m)

    return call, compiled, info


def _torch_train_step(sizes, batch_size: int, dev: str, compile_backend: str | None = None):
    import torch

    from torch_bridge.reference_adair import AdaIR as TorchAdaIR

    torch.manual_seed(0)
    model = TorchAdaIR(**_torch_kwargs(sizes["variant"])).to(dev)
    if compile_backend:
        model = torch.compile(model, dynamic=False, backend=compile_backend)
    o = _supervised_config().optim  # the Flax step's optimizer settings
    assert o.name == "adamw" and not o.grad_clip, "the torch step mirrors AdamW without clipping"
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(batch_size, 3, sizes["size"], sizes["size"], generator=gen).to(dev)
    y = torch.rand(batch_size, 3, sizes["size"], sizes["size"], generator=gen).to(dev)

    def call():
        opt.zero_grad(set_to_none=True)
        loss = (model(x) - y).abs().mean()
        loss.backward()
        opt.step()
        _torch_sync(dev)

    return call


def prepare_train(opts, sizes, compiler: Compiler):
    programs = _train_programs(sizes, compiler, "float32")
    return lambda: _measure_train(opts, sizes, programs)


def _measure_train(opts, sizes, programs) -> dict:
    from irpo_jax.models import flops

    bs = sizes["train_batch"]
    flax_call, compiled, info = _flax_train_call(programs)
    torch_call = _torch_train_step(sizes, bs, _torch_device(opts))
    for _ in range(sizes["warmup"]):
        flax_call()
        torch_call()
    times = _interleaved({"flax": flax_call, "torch_eager": torch_call}, sizes["reps"])
    fl = flops.train_step_flops(sizes["variant"], sizes["size"], sizes["size"], bs)
    out = {
        "variant": sizes["variant"], "batch": bs, "size": sizes["size"], "flax": info, "times": times,
        "flax_images_per_s": bs / times["flax"]["median_s"],
        "torch_eager_images_per_s": bs / times["torch_eager"]["median_s"],
        "ratio_torch_eager_over_flax": times["torch_eager"]["median_s"] / times["flax"]["median_s"],
        "train_step_flops_formula": fl, "train_step_flops_xla": _xla_flops(compiled),
    }  # fmt: skip
    return out


def prepare_train_bf16(opts, sizes, compiler: Compiler):
    """The same train step with ``model.compute_dtype="bfloat16"`` against float32 and PyTorch eager."""
    programs = {dtype: _train_programs(sizes, compiler, dtype) for dtype in ("float32", "bfloat16")}
    return lambda: _measure_train_bf16(opts, sizes, programs)


def _measure_train_bf16(opts, sizes, programs) -> dict:
    bs = sizes["train_batch"]
    calls = {"flax_float32": _flax_train_call(programs["float32"])[0]}
    calls["flax_bfloat16"], _, info = _flax_train_call(programs["bfloat16"])
    calls["torch_eager"] = _torch_train_step(sizes, bs, _torch_device(opts))
    for _ in range(sizes["warmup"]):
        for call in calls.values():
            call()
    times = _interleaved(calls, sizes["reps"])
    return {
        "variant": sizes["variant"], "batch": bs, "size": sizes["size"], "flax_bfloat16": info, "times": times,
        "speedup_over_float32": times["flax_float32"]["median_s"] / times["flax_bfloat16"]["median_s"],
        "ratio_torch_eager_over_flax_bfloat16": times["torch_eager"]["median_s"] / times["flax_bfloat16"]["median_s"],
    }  # fmt: skip


def section_matmul(opts, sizes) -> dict:
    import jax
    import jax.numpy as jnp

    n = sizes["matmul"]
    out = {"n": n}
    cases = [
        ("bf16", jnp.bfloat16, None),
        ("fp32_default", jnp.float32, None),
        ("fp32_highest", jnp.float32, "highest"),
    ]
    for name, dtype, precision in cases:
        a = jax.random.normal(jax.random.key(0), (n, n), dtype)
        b = jax.random.normal(jax.random.key(1), (n, n), dtype)
        with jax.default_matmul_precision(precision):
            f, _ = _aot(jnp.dot, a, b)
        jax.block_until_ready(f(a, b))
        t = _median_time(lambda: jax.block_until_ready(f(a, b)), max(sizes["reps"], 3))  # noqa: B023 - called in this iteration
        out[f"{name}_tflops"] = 2 * n**3 / t["median_s"] / 1e12
    return out


def section_roofline(results: dict) -> dict:
    train, mm = results.get("train", {}), results.get("matmul", {})
    if "flax_images_per_s" not in train or "fp32_default_tflops" not in mm:
        return {"skipped": "needs the train and matmul sections"}
    fl = train["train_step_flops_formula"]
    out = {"train_step_gflop": fl / 1e9}
    for who in ("flax", "torch_eager"):
        achieved = fl / train["times"][who]["median_s"] / 1e12
        out[f"{who}_tflops"] = achieved
        for ceiling in ("fp32_default", "fp32_highest", "bf16"):
            out[f"{who}_fraction_of_{ceiling}"] = achieved / mm[f"{ceiling}_tflops"]
    return out


def section_rewards(opts, sizes) -> dict:
    from benchmarks import reward_bridge

    dev = "cpu" if opts.cpu else "cuda:0"
    args = argparse.Namespace(
        device=dev, images=sizes["images"], group=sizes["group"], size=sizes["size"], models=opts.reward_bench_models,
        reps=sizes["reps"] + 3, warmup=sizes["warmup"], threads=1,
    )  # fmt: skip
    out = {"device": dev, "standins": reward_bridge.run(args)}
    if opts.reward_models:
        out["real"] = _real_rewards(opts, sizes, dev)
    else:
        out["real"] = {"skipped": "no --reward-models FILE.json (reward.models settings of the real weights)"}
    return out


def _real_rewards(opts, sizes, dev: str) -> dict:
    """Time one GRPO step's scoring by the configured components in the reward process."""
    from irpo_jax.rewards.remote import RewardProcess

    config = json.loads(pathlib.Path(opts.reward_models).read_text())
    n = sizes["images"] * sizes["group"]
    deg, restored, clean = (_images((n, sizes["size"], sizes["size"], 3), s) for s in (5, 6, 7))
    out = {"components": sorted(config)}
    t = time.perf_counter()
    with RewardProcess.start(config, device=dev, registry=opts.reward_registry, transport="shm",
                             start_timeout_s=600, request_timeout_s=600) as proc:  # fmt: skip
        out["start_s"] = time.perf_counter() - t
        out["live"] = sorted(proc.live_components)
        ids = np.zeros((n,), np.int32)
        proc.score(deg, restored, clean, task_ids=ids, sample_ids=np.arange(n))  # warm-up
        out["score_step"] = _median_time(
            lambda: proc.score(deg, restored, clean, task_ids=ids, sample_ids=np.arange(n)), sizes["reps"]
        )
    return out


class TorchCompileChild:
    """``torch.compile`` of the train step in a child process, started with the run.

    Inductor's compile (minutes, mostly CPU) then overlaps the JAX sections; the child waits
    for :meth:`result` (a go-file) before it times anything, so its timings do not overlap
    the parent's.
    """

    def __init__(self, opts):
        self.go_file = pathlib.Path(opts.out) / ".torch_compile_go"
        self.go_file.unlink(missing_ok=True)
        args = [sys.executable, str(pathlib.Path(__file__).resolve()), "--_worker", "torch_compile",
                "--out", opts.out, "--go-file", str(self.go_file), "--torch-compile-backend",
                opts.torch_compile_backend] + (["--cpu"] if opts.cpu else [])  # fmt: skip
        args += [f"--{k.replace('_', '-')}={getattr(opts, k)}" for k in SIZES["gpu"] if getattr(opts, k) is not None]
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self, timeout: float) -> dict:
        """Let the child time its steps; wait at most ``timeout`` seconds for its result."""
        self.go_file.touch()
        try:
            stdout, stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return {"error": f"no result {timeout:.0f} s after the go signal (killed; compiling since "
                             f"{time.perf_counter() - self.start:.0f} s)"}  # fmt: skip
        for line in reversed(stdout.splitlines()):
            if line.startswith(RESULT_MARKER):
                res = json.loads(line[len(RESULT_MARKER) :])
                res["wall_s"] = time.perf_counter() - self.start
                return res
        tail = (stderr or stdout).strip().splitlines()[-3:]
        return {"error": f"child exited {self.proc.returncode}: {' | '.join(tail)[:500]}"}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        self.go_file.unlink(missing_ok=True)


def torch_compile_worker(opts, sizes) -> None:
    import logging
    import warnings

    import torch

    torch._logging.set_logs(dynamo=logging.ERROR, inductor=logging.ERROR)
    warnings.filterwarnings("ignore")
    bs, dev = sizes["train_batch"], _torch_device(opts)
    out = {"batch": bs}
    out["backend"] = opts.torch_compile_backend
    call = _torch_train_step(sizes, bs, dev, compile_backend=opts.torch_compile_backend)
    t = time.perf_counter()
    call()
    out["compile_s"] = time.perf_counter() - t  # includes the first step
    eager = _torch_train_step(sizes, bs, dev)
    for _ in range(sizes["warmup"]):
        call()
        eager()
    t = time.perf_counter()
    while opts.go_file and not pathlib.Path(opts.go_file).exists():
        time.sleep(0.2)
    out["waited_for_parent_s"] = time.perf_counter() - t
    times = _interleaved({"compiled": call, "eager": eager}, sizes["reps"])
    out["times"] = times
    out["images_per_s"] = bs / times["compiled"]["median_s"]
    out["ratio_eager_over_compiled"] = times["eager"]["median_s"] / times["compiled"]["median_s"]
    print(RESULT_MARKER + json.dumps(out), flush=True)


# ----------------------------------------------------------------------------- report


def _f(v, fmt: str = ".3g") -> str:
    return "n/a" if v is None else format(v, fmt)


def _grpo_rows(g: dict, section: str) -> list[str]:
    """The summary rows of one GRPO section."""
    lines: list[str] = []
    label = "" if section == "grpo" else f" ({section})"
    if "step_s" in g:
        tm = g["times"]
        lines += [
            f"| GRPO step {g['variant']} G={g['group']} {g['size']}x{g['size']} x{g['images']} image, "
            f"{g.get('compute_dtype', 'float32')}, KL coefficient {_f(g.get('kl_coef'))} | "
            f"{g['step_s'] * 1e3:.1f} ms = rollout with JAX rewards {tm['rollout_with_rewards']['median_s'] * 1e3:.1f} "
            f"(the rewards alone: {tm['jax_rewards']['median_s'] * 1e3:.1f}) + update "
            f"{tm['update']['median_s'] * 1e3:.1f} ms; "
            f"{g['rollouts_per_s']:.1f} rollouts/s | |",
            *([f"| same update without its shortcuts (all G rollouts re-decoded and backpropagated) | "
               f"{tm['update_through_all_G']['median_s'] * 1e3:.1f} ms | |"] if "update_through_all_G" in tm else []),
            f"| GRPO step / supervised step on 1 image | **{g['grpo_over_supervised_1_image']:.2f}x** | < 2.5x |",
            f"| peak device memory (GRPO step) | {_f(g.get('peak_device_memory_gb'))} GB"
            f"{' (' + g['peak_device_memory_note'] + ')' if 'peak_device_memory_note' in g else ''}; live buffers "
            f"at the update + its XLA temporaries {_f(g.get('update_live_plus_temporaries_gb'))} GB; XLA "
            f"temporaries: rollout {_f(g['rollout'].get('xla_memory_gb', {}).get('temporaries'))} GB, update "
            f"{_f(g['update'].get('xla_memory_gb', {}).get('temporaries'))} GB | < 24 GB |",
        ]  # fmt: skip
    for name, prof in g.get("profile", {}).items():
        if "categories_ms" in prof:
            cats = ", ".join(f"{k} {v:.1f}" for k, v in list(prof["categories_ms"].items())[:5])
            lines.append(f"| profile, {name.replace('_', ' ')}{label}: op time per step by category (ms) | "
                         f"{prof['op_ms_per_step']:.1f} ms in {prof['ops']} ops: {cats} | |")  # fmt: skip
    return lines


def markdown(results: dict) -> str:
    env = results.get("env", {})
    lines = [
        f"### gpu_check ({env.get('mode', '?')} mode), {env.get('date', '?')}",
        "",
        f"Devices: {', '.join(env.get('devices', []))}; nvidia-smi: {env.get('nvidia_smi', 'n/a')}; "
        f"jax {env.get('jax')}, jaxlib {env.get('jaxlib')}, flax {env.get('flax')}, torch {env.get('torch')} "
        f"(CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn', 'n/a')}), Python {env.get('python')}.",
        "",
        "| check | result | target |",
        "|---|---|---|",
    ]
    p = results.get("parity", {})
    if "adair_max_abs_err_fp32_strict" in p:
        lines += [
            f"| parity AdaIR fp32 (TF32 off), {p['variant']} {p['input']} | "
            f"max abs err {p['adair_max_abs_err_fp32_strict']:.2e} | <= 1e-4 |",
            f"| parity policy deterministic mode fp32 | {p['policy_mean_max_abs_err_fp32_strict']:.2e} | <= 1e-4 |",
            "| Flax default precision vs torch fp32 | "
            f"{p['adair_max_abs_err_flax_default_vs_torch_strict']:.2e} | reported |",
            f"| torch default (cuDNN TF32) vs torch fp32 | {p['torch_default_vs_torch_strict']:.2e} | reported |",
        ]  # fmt: skip
    t = results.get("train", {})
    if "ratio_torch_eager_over_flax" in t:
        lines += [
            f"| supervised train step {t['variant']} {t['batch']}x{t['size']}x{t['size']}: Flax | "
            f"{t['times']['flax']['median_s'] * 1e3:.1f} ms, {t['flax_images_per_s']:.1f} img/s | |",
            f"| same, PyTorch eager | {t['times']['torch_eager']['median_s'] * 1e3:.1f} ms, "
            f"{t['torch_eager_images_per_s']:.1f} img/s | |",
            f"| Flax speed-up over PyTorch eager | **{t['ratio_torch_eager_over_flax']:.2f}x** | >= 1.3x |",
        ]
    b = results.get("train_bf16", {})
    if "speedup_over_float32" in b:
        lines.append(
            f"| same, Flax with bfloat16 activations (float32 params) | "
            f"{b['times']['flax_bfloat16']['median_s'] * 1e3:.1f} ms: {b['speedup_over_float32']:.2f}x the float32 "
            f"step ({b['times']['flax_float32']['median_s'] * 1e3:.1f} ms here), "
            f"{b['ratio_torch_eager_over_flax_bfloat16']:.2f}x PyTorch eager | reported |"
        )
    tc = results.get("torch_compile", {})
    if "images_per_s" in tc:
        lines.append(
            f"| same, torch.compile ({tc['backend']}) | {tc['times']['compiled']['median_s'] * 1e3:.1f} ms, "
            f"{tc['images_per_s']:.1f} img/s (compile {tc['compile_s']:.0f} s; eager in the same child "
            f"{tc['times']['eager']['median_s'] * 1e3:.1f} ms) | reported |"
        )
        if "ratio_torch_eager_over_flax" in t:
            ratio = tc["times"]["compiled"]["median_s"] / t["times"]["flax"]["median_s"]
            lines.append(f"| Flax speed-up over torch.compile | **{ratio:.2f}x** | reported |")
    elif tc:
        lines.append(f"| torch.compile | {tc.get('error') or tc.get('skipped')} | reported |")
    for name in GRPO_VARIANTS:
        lines += _grpo_rows(results.get(name, {}), name)
    r = results.get("roofline", {})
    m = results.get("matmul", {})
    if "flax_tflops" in r:
        lines += [
            f"| matmul ceilings ({m['n']}^3) | bf16 {m['bf16_tflops']:.1f}, "
            f"fp32 default {m['fp32_default_tflops']:.1f}, fp32 highest {m['fp32_highest_tflops']:.1f} TFLOP/s | |",
            f"| train step FLOPs: formula (XLA's count) | {r['train_step_gflop']:.0f} GFLOP "
            f"({_f((t.get('train_step_flops_xla') or 0) / 1e9 or None, '.0f')} GFLOP: on GPU it misses the cuDNN "
            f"convolutions, which are custom calls) | |",
            f"| achieved: Flax / PyTorch eager | {r['flax_tflops']:.1f} / {r['torch_eager_tflops']:.1f} TFLOP/s = "
            f"{100 * r['flax_fraction_of_fp32_default']:.0f} % / "
            f"{100 * r['torch_eager_fraction_of_fp32_default']:.0f} % "
            f"of fp32-default matmul, {100 * r['flax_fraction_of_bf16']:.1f} % of bf16 | |",
        ]  # fmt: skip
    rw = results.get("rewards", {})
    for row in rw.get("standins", []):
        lines.append(
            f"| reward process, {row['model']} ({rw['device']}) | model {row['model_all'] * 1e3:.2f} ms; bridge cost "
            f"socket {row['bridge_socket'] * 1e3:.2f} / shm {row['bridge_shm'] * 1e3:.2f} / in-process "
            f"{row['bridge_inprocess'] * 1e3:.2f} ms | |"
        )
    real = rw.get("real", {})
    if "score_step" in real:
        lines.append(
            f"| real reward models {real['live']} | {real['score_step']['median_s'] * 1e3:.1f} ms per step | |"
        )
    elif real:
        lines.append(f"| real reward models | {real.get('skipped') or real.get('error')} | |")
    c = results.get("compile", {})
    if "phase_s" in c:
        slowest = sorted(((v.get("compile_s", 0.0), k) for k, v in c["programs"].items()), reverse=True)[:3]
        lines.append(
            f"| building {len(c['programs'])} XLA programs, {c['workers']} compiling at a time | {c['phase_s']:.0f} s "
            f"(lowering {c['lower_s_sum']:.0f} s; the compiles add up to {c['compile_s_sum']:.0f} s; slowest: "
            f"{', '.join(f'{k} {v:.0f} s' for v, k in slowest)}) | |"
        )
        failed = [k for k, v in c["programs"].items() if "error" in v]
        if failed:
            lines.append(f"| programs that failed to compile | {', '.join(failed)} | |")
    for name in SECTIONS:
        sec = results.get(name, {})
        if "error" in sec or "skipped" in sec:
            if name in ("torch_compile",) or (name == "roofline" and "skipped" in sec):
                continue
            lines.append(f"| section {name} | {sec.get('error') or sec.get('skipped')} | |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (the suite's check)")
    p.add_argument(
        "--sections",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma-separated, from {SECTIONS} (default: all but the GRPO variants)",
    )
    p.add_argument("--deadline", type=float, default=420.0, help="seconds after which remaining sections are skipped")
    p.add_argument(
        "--compile-timeout",
        type=float,
        default=240.0,
        help="seconds to wait for the torch.compile child after the JAX sections (it compiles from the start)",
    )
    p.add_argument(
        "--compile-workers",
        type=int,
        default=None,
        help="XLA programs compiled at a time, all before any timing (default 4 on a GPU; 1 with "
        "--cpu, where one XLA:CPU compile already keeps two cores busy)",
    )
    p.add_argument(
        "--kl-coef",
        type=float,
        default=None,
        help="the GRPO section's grpo.kl_coef (default: the config's; 0 drops the reference pass)",
    )
    p.add_argument(
        "--compare-update",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also time the GRPO update in its direct form (no supervise_best_only/reuse_head_inputs; "
        "one more compile)",
    )
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="trace the GRPO and supervised steps with jax.profiler (OUT/profile) and summarise the ops",
    )
    p.add_argument("--reward-models", default="", help="JSON file: {component: settings} of real reward models")
    p.add_argument("--reward-registry", default="torch_bridge.reward_models:COMPONENTS")
    p.add_argument("--reward-bench-models", default="light,conv,lpips", help="stand-ins for the transport timing")
    for key in SIZES["gpu"]:
        p.add_argument(f"--{key.replace('_', '-')}", type=type(SIZES["gpu"][key]), default=None)
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--go-file", default="", help=argparse.SUPPRESS)
    p.add_argument("--torch-compile-backend", default="inductor", help="torch.compile backend (tests: eager)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    opts = parse_args(argv)
    sizes = dict(SIZES["cpu" if opts.cpu else "gpu"])
    sizes.update({k: getattr(opts, k) for k in sizes if getattr(opts, k) is not None})
    sizes["kl_coef"] = opts.kl_coef
    if opts.compile_workers is None:
        opts.compile_workers = 1 if opts.cpu else 4
    if opts._worker == "torch_compile":
        torch_compile_worker(opts, sizes)
        return {}
    out_dir = pathlib.Path(opts.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = list(dict.fromkeys(s for s in opts.sections.split(",") if s))
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown --sections {unknown}; choose from {SECTIONS}")
    # In the given order, except that the roofline needs train and matmul.
    wanted.sort(key=lambda name: name == "roofline")
    results: dict = {}
    _TRAIN_PROGRAMS.clear()
    _SUPERVISED_1_IMAGE.clear()
    start = time.perf_counter()
    child = TorchCompileChild(opts) if "torch_compile" in wanted else None
    try:
        _run_sections(opts, sizes, wanted, results, start, child, out_dir)
    finally:
        if child is not None:
            child.kill()
    results["total_s"] = time.perf_counter() - start
    _save(out_dir, results)
    print(markdown(results))
    return results


def _save(out_dir: pathlib.Path, results: dict) -> None:
    (out_dir / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out_dir / "gpu_check.md").write_text(markdown(results) + "\n")


# Sections whose XLA programs are lowered and compiled before anything is timed.
PREPARE = {
    "parity": prepare_parity, "train": prepare_train, "train_bf16": prepare_train_bf16,
    **{name: functools.partial(prepare_grpo, name=name) for name in GRPO_VARIANTS},
}  # fmt: skip


def _error(e: Exception) -> dict:
    return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:400] if str(e) else ''}",
            "traceback": traceback.format_exc()[-3000:]}  # fmt: skip


def _log(start: float, what: str) -> None:
    print(f"[gpu_check {time.perf_counter() - start:6.1f} s] {what}", file=sys.stderr, flush=True)


def _run_sections(opts, sizes, wanted, results, start, child, out_dir) -> None:
    """Phase 1 lowers every section's programs and compiles them (``--compile-workers`` at a
    time); phase 2 runs the sections in order, each timing programs that are already built."""
    measures = {}
    compiler = Compiler(opts.compile_workers)
    phase = time.perf_counter()
    try:
        for name in wanted:
            if name in PREPARE:
                _log(start, f"lowering {name} ...")
                t = time.perf_counter()
                try:
                    measures[name] = PREPARE[name](opts, sizes, compiler)
                except Exception as e:  # noqa: BLE001 - reported as the section's result
                    results[name] = _error(e)
                    results[name]["section_s"] = time.perf_counter() - t
        _log(start, f"compiling {len(compiler.programs)} programs, {compiler.workers} at a time ...")
        programs = compiler.wait()
        results["compile"] = {
            "workers": compiler.workers, "phase_s": time.perf_counter() - phase,
            "lower_s_sum": sum(prog.lower_s for prog in compiler.programs.values()),
            "compile_s_sum": sum(info.get("compile_s", 0.0) for info in programs.values()),
            "programs": programs,
        }  # fmt: skip
        _save(out_dir, results)
    finally:
        compiler.close()
    for name in wanted:
        if name in results:  # failed while lowering
            continue
        elapsed = time.perf_counter() - start
        if elapsed > opts.deadline and name != "roofline":  # the roofline is arithmetic on results
            results[name] = {"skipped": f"deadline: {elapsed:.0f} s > --deadline {opts.deadline:.0f} s"}
            continue
        _log(start, f"{name} ...")
        t = time.perf_counter()
        try:
            if name == "env":
                results[name] = section_env(opts, sizes)
            elif name == "roofline":
                results[name] = section_roofline(results)
            elif name == "torch_compile":
                left = max(30.0, opts.deadline + 60 - elapsed)
                results[name] = child.result(min(opts.compile_timeout, left))
            elif name in measures:
                results[name] = measures.pop(name)()  # the section's buffers go with its closure
            else:
                results[name] = globals()[f"section_{name}"](opts, sizes)
        except Exception as e:  # noqa: BLE001 - a failed section is a result; the others still run
            results[name] = _error(e)
        results[name]["section_s"] = time.perf_counter() - t
        _save(out_dir, results)


if __name__ == "__main__":
    main()
