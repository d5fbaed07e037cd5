"""AdaIR speed: the Flax NNX port against the PyTorch reference, forward and forward+backward.

For each (variant, batch) configuration it measures, as the median of ``--repeats`` timed calls
after a warm-up call:

* Flax forward (``jax.jit`` of ``nnx.merge(graphdef, params, rest)(x)``, ``block_until_ready``)
  and Flax forward+backward (``jax.jit(jax.value_and_grad(l1_loss))`` over the ``nnx.Param``
  state), with the depthwise/1x1 convolutions lowered as chosen by ``--conv-impls``
  (``layers.conv_implementation``; "auto" = the rewrites on CPU) and the TransformerBlocks
  rematerialised as chosen by ``--remat`` (``layers.rematerialize``; "auto", the trainer's
  setting = on where the CPU rewrites are on);
* optionally the same with an extra ``XLA_FLAGS`` value (``--xla-flags``; run in a child process
  because XLA reads its flags once per process);
* PyTorch eager forward (``torch.no_grad``) and forward+backward (L1 loss, ``.backward()``), on
  ``torch_bridge.reference_adair.AdaIR`` built with the same constructor arguments (NCHW);
* ``torch.compile`` forward and forward+backward where it works (``--torch-compile``), in a child
  process with a timeout and a fresh inductor cache, so compile times are cold.

Flax and PyTorch eager are timed in interleaved rounds (one call of each per round), so that both
see the same background load. Compile times are reported separately (Flax: \
``jit(...).lower(...).compile()``; torch.compile: the
wall time of the first call, which includes one execution).
Ratios are ``torch_time / flax_time``: > 1 means Flax is faster. PyTorch's intra-op threads are
set to the number of usable cores (XLA:CPU uses all of them by default).

The Markdown starts with a summary table (per configuration: forward and forward+backward,
Flax / PyTorch eager, Flax's forward+backward over its own forward, XLA's temporaries). Issue
25's whole table, in one command (about 10 minutes on a quiet 2-core machine)::

    python benchmarks/adair_speed.py --configs small:1,small:4,base:1 --torch-compile none \
--xla-flags-configs none --markdown

Examples::

    python benchmarks/adair_speed.py --quick --markdown                 # smoke run, < 1 minute
    python benchmarks/adair_speed.py --out results.json --markdown      # the default full run
    python benchmarks/adair_speed.py --configs base:8 --size 128 --torch-compile none
    python benchmarks/adair_speed.py --blocks --out blocks.json --markdown   # per-block timing
    python benchmarks/adair_speed.py --from-json results.json --markdown    # re-render a table
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

RESULT_MARKER = "ADAIR_SPEED_RESULT_JSON: "

DEFAULT_CONFIGS = "small:1,small:4,base:1,base:2"
QUICK_CONFIGS = "tiny:1"


# ----------------------------------------------------------------------------- helpers


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_available_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1e6  # kB -> GB
    except OSError:
        pass
    return None


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _cpu_ticks() -> tuple[int, int]:
    """(busy ticks of the whole machine, ticks of this process), both in USER_HZ."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return user + nice + system + irq + softirq, int(fields[11]) + int(fields[12])  # utime, stime


class ForeignLoad:
    """CPU cores used by *other* processes between ``start()`` and ``stop()`` (Linux only)."""

    def start(self):
        try:
            self._t, self._ticks = time.perf_counter(), _cpu_ticks()
        except (OSError, ValueError):
            self._ticks = None
        return self

    def stop(self) -> float | None:
        if self._ticks is None:
            return None
        busy, own = _cpu_ticks()
        hz = os.sysconf("SC_CLK_TCK")
        dt = time.perf_counter() - self._t
        return max(0.0, ((busy - self._ticks[0]) - (own - self._ticks[1])) / hz / max(dt, 1e-9))


def wait_quiet(threshold: float, max_wait_s: float, log=None) -> dict:
    """Waits (up to ``max_wait_s``) until other processes use fewer than ``threshold`` cores over
    a 3 s window. On a 2-core machine a concurrent test run slows PyTorch's OpenMP threads
    several-fold (their barriers spin against the other process), far more than XLA's pool."""
    t0 = time.perf_counter()
    while True:
        fl = ForeignLoad().start()
        time.sleep(3.0)
        busy = fl.stop()
        waited = time.perf_counter() - t0
        if busy is None or busy < threshold or waited >= max_wait_s:
            return {"waited_s": round(waited, 1), "foreign_cores_before": None if busy is None else round(busy, 2)}
        if log:
            log(f"waiting for a quiet machine: other processes use {busy:.2f} cores")
        time.sleep(7.0)


def time_calls(fn, repeats: int, min_repeats: int, budget_s: float) -> dict:
    """One warm-up call, then up to ``repeats`` timed calls (fewer, but >= ``min_repeats``, once
    ``budget_s`` seconds have been spent). ``fn`` must block until its result is ready."""
    return time_interleaved({"f": fn}, repeats, min_repeats, budget_s)["f"]


def time_interleaved(fns: dict, repeats: int, min_repeats: int, budget_s: float) -> dict:
    """Like :func:`time_calls` for several functions at once, called in rounds (a, b, c, a, b, c,
    ...) so that they all see the same background load: a shared machine's load drifts over
    minutes, and a ratio of two measurements taken minutes apart would carry that drift.
    Stops after ``repeats`` rounds, or after ``min_repeats`` once ``budget_s`` per function is spent."""
    stats = {}
    for name, fn in fns.items():
        t = time.perf_counter()
        fn()
        stats[name] = {"times_s": [], "warmup_s": time.perf_counter() - t}
    foreign = ForeignLoad().start()
    spent = 0.0
    for rnd in range(repeats):
        t_round = time.perf_counter()
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            stats[name]["times_s"].append(time.perf_counter() - t)
        dt = time.perf_counter() - t_round
        spent += dt
        if rnd + 1 >= min_repeats and spent + dt > budget_s * len(fns):
            break
    busy = foreign.stop()
    for st in stats.values():
        st["median_s"] = statistics.median(st["times_s"])
        st["n"] = len(st["times_s"])
        st["foreign_cores"] = None if busy is None else round(busy, 2)
    return stats


def selected(spec: str, variant: str, batch: int) -> bool:
    """Whether ``variant:batch`` is named by ``spec``: 'all', 'none', or a list of variants and
    variant:batch items."""
    items = {i.strip() for i in spec.split(",")}
    return "all" in items or variant in items or f"{variant}:{batch}" in items


def parse_configs(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        variant, _, batch = item.partition(":")
        out.append((variant, int(batch or 1)))
    return out


def torch_kwargs(variant: str) -> dict:
    from irpo_jax.models import adair

    cfg = adair.get_config(variant).to_dict()
    cfg.pop("mask_rule")  # not an official constructor argument
    return cfg


# ----------------------------------------------------------------------------- Flax


def prepare_flax(variant: str, batch: int, size: int, impl: str, opts, remat: str = "auto"):
    """Builds and compiles; returns (info with compile times, {"fwd": fn, "fwdbwd": fn})."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from irpo_jax.models import adair, layers

    model = adair.AdaIR(variant, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    del model
    kx, kt = jax.random.split(jax.random.key(1))
    x = jax.random.uniform(kx, (batch, size, size, 3), jnp.float32)
    target = jax.random.uniform(kt, (batch, size, size, 3), jnp.float32)

    def forward(p, r, img):
        return nnx.merge(graphdef, p, r)(img)

    def loss(p, r, img, tgt):
        return jnp.mean(jnp.abs(forward(p, r, img) - tgt))

    out: dict = {"conv_impl": impl, "remat": remat, "params": int(sum(v.size for v in jax.tree.leaves(params)))}
    # Both are read at trace time, so lower inside the contexts.
    with layers.conv_implementation(impl), layers.rematerialize(remat):
        t = time.perf_counter()
        fwd = jax.jit(forward).lower(params, rest, x).compile()
        out["compile_fwd_s"] = time.perf_counter() - t
        if not opts.skip_backward:
            t = time.perf_counter()
            vg = jax.jit(jax.value_and_grad(loss)).lower(params, rest, x, target).compile()
            out["compile_fwdbwd_s"] = time.perf_counter() - t

    # XLA's buffer assignment: the scratch memory one call needs (activations kept for the
    # backward live here). Skip a function that cannot fit, rather than be OOM-killed.
    compiled = {"fwd": fwd} if opts.skip_backward else {"fwd": fwd, "fwdbwd": vg}
    fits = {}
    for name, comp in compiled.items():
        try:
            temp = comp.memory_analysis().temp_size_in_bytes
        except Exception:  # noqa: BLE001 - not every backend reports it
            temp = None
        out[f"temp_gb_{name}"] = None if temp is None else round(temp / 1e9, 2)
        avail = mem_available_gb()
        fits[name] = temp is None or avail is None or temp / 1e9 < 0.85 * avail
        if not fits[name]:
            out[f"error_{name}"] = f"skipped: XLA needs {temp / 1e9:.1f} GB of temporaries, {avail:.1f} GB available"
    fns = {}
    if fits["fwd"]:
        fns["fwd"] = lambda: jax.block_until_ready(fwd(params, rest, x))
    if not opts.skip_backward and fits["fwdbwd"]:
        fns["fwdbwd"] = lambda: jax.block_until_ready(vg(params, rest, x, target))
    return out, fns


def _stderr_log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bench_flax(variant: str, batch: int, size: int, impl: str, opts, remat: str = "auto") -> dict:
    out, fns = prepare_flax(variant, batch, size, impl, opts, remat)
    out["quiet_wait"] = wait_quiet(opts.quiet_threshold, opts.max_wait, _stderr_log)
    out.update(time_interleaved(fns, opts.repeats, opts.min_repeats, opts.budget))
    return out


# ----------------------------------------------------------------------------- PyTorch


TORCH_DEVICE = "cpu"


def _torch_sync() -> None:
    import torch

    if TORCH_DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def _torch_setup(variant: str, batch: int, size: int):
    import torch

    from torch_bridge.reference_adair import AdaIR

    torch.manual_seed(0)
    model = AdaIR(**torch_kwargs(variant)).to(TORCH_DEVICE)
    x = torch.rand(batch, 3, size, size, device=TORCH_DEVICE)
    target = torch.rand(batch, 3, size, size, device=TORCH_DEVICE)
    return model, x, target


def _torch_fns(model, x, target):
    import torch

    def fwd():
        with torch.no_grad():
            model(x)
        _torch_sync()

    def fwdbwd():
        model.zero_grad(set_to_none=True)
        loss = (model(x) - target).abs().mean()
        loss.backward()
        _torch_sync()

    return fwd, fwdbwd


def prepare_torch_eager(variant: str, batch: int, size: int, opts) -> dict:
    model, x, target = _torch_setup(variant, batch, size)
    fwd, fwdbwd = _torch_fns(model, x, target)
    return {"fwd": fwd} if opts.skip_backward else {"fwd": fwd, "fwdbwd": fwdbwd}


def bench_torch_compile(variant: str, batch: int, size: int, opts) -> dict:
    """Runs in a child process (see ``run_child``). Forward and forward+backward each get a fresh
    ``torch.compile`` (``dynamic=False``) after ``torch._dynamo.reset()``."""
    import logging

    import torch

    torch._logging.set_logs(dynamo=logging.ERROR, inductor=logging.ERROR)
    warnings.filterwarnings("ignore")
    model, x, target = _torch_setup(variant, batch, size)
    out: dict = {}
    parts = [("fwd", True)] + ([] if opts.skip_backward else [("fwdbwd", False)])
    for name, no_grad in parts:
        torch._dynamo.reset()
        compiled = torch.compile(model, dynamic=False)
        fwd, fwdbwd = _torch_fns(compiled, x, target)
        fn = fwd if no_grad else fwdbwd
        t = time.perf_counter()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - report whatever inductor raises
            out[f"error_{name}"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            continue
        out[f"compile_{name}_s"] = time.perf_counter() - t  # includes the first run
        out[f"quiet_wait_{name}"] = wait_quiet(opts.quiet_threshold, opts.max_wait, _stderr_log)
        out[name] = time_calls(fn, opts.repeats, opts.min_repeats, opts.budget)
    return out


# ----------------------------------------------------------------------------- child processes


def _child_args(opts, kind: str, variant: str, batch: int, extra: list[str] | None = None) -> list[str]:
    args = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_worker",
        kind,
        "--configs",
        f"{variant}:{batch}",
        "--size",
        str(opts.size),
        "--repeats",
        str(opts.repeats),
        "--min-repeats",
        str(opts.min_repeats),
        "--budget",
        str(opts.budget),
        "--torch-device",
        opts.torch_device,
        "--quiet-threshold",
        str(opts.quiet_threshold),
        "--max-wait",
        str(opts.max_wait),
    ]
    if opts.skip_backward:
        args.append("--skip-backward")
    return args + (extra or [])


def run_child(args: list[str], env: dict, timeout: float) -> dict:
    t = time.perf_counter()
    try:
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s (killed)", "wall_s": time.perf_counter() - t}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            res = json.loads(line[len(RESULT_MARKER) :])
            res["wall_s"] = time.perf_counter() - t
            return res
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"child exited {proc.returncode}: {' | '.join(tail)[:500]}", "wall_s": time.perf_counter() - t}


def worker_main(opts) -> None:
    ((variant, batch),) = parse_configs(opts.configs)
    if opts._worker == "flax":
        res = bench_flax(variant, batch, opts.size, opts.conv_impls.split(",")[0], opts, opts.remat.split(",")[0])
        res["xla_flags"] = os.environ.get("XLA_FLAGS", "")
        res["load_end"] = loadavg()
    elif opts._worker == "torch_compile":
        import torch

        torch.set_num_threads(usable_cores())
        res = bench_torch_compile(variant, batch, opts.size, opts)
        res["load_end"] = loadavg()
    else:
        raise SystemExit(f"unknown worker {opts._worker}")
    print(RESULT_MARKER + json.dumps(res), flush=True)


# ----------------------------------------------------------------------------- per-block timing


def bench_blocks(opts) -> list[dict]:
    """Fwd and fwd+bwd (grads w.r.t. parameters and inputs) of the pieces of the base model that
    could dominate its backward, Flax (rewrites) against PyTorch eager, batch 1, 128x128 input."""
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from irpo_jax.models import adair, layers
    from torch_bridge import reference_adair as ref

    s = opts.size
    rows = []

    def one(name, count, flax_mod, torch_mod, shapes, fn=None, tfn=None):
        """shapes: NHWC input shapes. count: how often the piece occurs in one base forward."""
        keys = jax.random.split(jax.random.key(0), len(shapes))
        xs = [jax.random.normal(k, sh, jnp.float32) for k, sh in zip(keys, shapes)]
        txs = [torch.randn(sh[0], sh[3], sh[1], sh[2], device=TORCH_DEVICE) for sh in shapes]
        if torch_mod is not None:
            torch_mod.to(TORCH_DEVICE)
        if flax_mod is not None:
            g, p, r = nnx.split(flax_mod, nnx.Param, ...)

            def f(p, r, *a):
                return nnx.merge(g, p, r)(*a)
        else:
            p, r = {}, {}

            def f(p, r, *a):
                return fn(*a)

        def lossf(p, r, *a):
            return jnp.sum(f(p, r, *a))

        with layers.conv_implementation("rewrite"):
            fj = jax.jit(f).lower(p, r, *xs).compile()
            argnums = (0, *range(2, 2 + len(xs)))  # parameters and every input
            gj = jax.jit(jax.value_and_grad(lossf, argnums=argnums)).lower(p, r, *xs).compile()
        row = {"block": name, "count_in_base": count, "shapes": [list(sh) for sh in shapes]}
        call = torch_mod if torch_mod is not None else tfn

        def tf():
            with torch.no_grad():
                call(*txs)
            _torch_sync()

        txg = [t.clone().requires_grad_(True) for t in txs]

        def tb():
            if torch_mod is not None:
                torch_mod.zero_grad(set_to_none=True)
            for t in txg:
                t.grad = None
            call(*txg).sum().backward()
            _torch_sync()

        row["quiet_wait"] = wait_quiet(opts.quiet_threshold, opts.max_wait, _stderr_log)
        row.update(
            time_interleaved(
                {
                    "flax_fwd": lambda: jax.block_until_ready(fj(p, r, *xs)),
                    "flax_fwdbwd": lambda: jax.block_until_ready(gj(p, r, *xs)),
                    "torch_fwd": tf,
                    "torch_fwdbwd": tb,
                },
                opts.repeats,
                3,
                20,
            )
        )
        rows.append(row)
        print(
            f"  block {name}: flax fwd {row['flax_fwd']['median_s'] * 1e3:.1f} ms, "
            f"fwd+bwd {row['flax_fwdbwd']['median_s'] * 1e3:.1f} ms; torch fwd "
            f"{row['torch_fwd']['median_s'] * 1e3:.1f} ms, fwd+bwd "
            f"{row['torch_fwdbwd']['median_s'] * 1e3:.1f} ms",
            file=sys.stderr,
            flush=True,
        )

    cfg = adair.VARIANTS["base"]
    rng = nnx.Rngs(0)
    torch.manual_seed(0)
    ffe, lnt = cfg.ffn_expansion_factor, cfg.LayerNorm_type
    h1 = s
    # Level 1 of the encoder: 4 blocks at dim 48; decoder level 1 + refinement: 8 blocks at 96.
    for dim, count in ((48, 4), (96, 8)):
        one(
            f"TransformerBlock dim {dim} @{h1}x{h1}",
            count,
            adair.TransformerBlock(dim, 1, ffe, False, lnt, rngs=rng),
            ref.TransformerBlock(dim, 1, ffe, False, lnt),
            [(1, h1, h1, dim)],
        )
    one(
        f"- MDTA (Attention) dim 96 @{h1}x{h1}",
        8,
        adair.Attention(96, 1, False, rngs=rng),
        ref.Attention(96, 1, False),
        [(1, h1, h1, 96)],
    )
    one(
        f"- GDFN (FeedForward) dim 96 @{h1}x{h1}",
        8,
        adair.FeedForward(96, ffe, False, rngs=rng),
        ref.FeedForward(96, ffe, False),
        [(1, h1, h1, 96)],
    )
    hidden2 = 2 * int(96 * ffe)
    one(
        f"- depthwise 3x3, {hidden2} ch @{h1}x{h1}",
        8,
        layers.Conv2d(hidden2, hidden2, 3, groups=hidden2, rngs=rng),
        torch.nn.Conv2d(hidden2, hidden2, 3, padding=1, groups=hidden2, bias=False),
        [(1, h1, h1, hidden2)],
    )
    # fre3 works at level 2 (dim 96, H/2); the FFT split of its conv1 features.
    h2 = s // 2
    one(
        f"FreModule fre3 dim 96 @{h2}x{h2}",
        1,
        adair.FreModule(96, 4, False, "adair", rngs=rng),
        ref.FreModule(96, 4, False),
        [(1, s, s, 3), (1, h2, h2, 96)],
    )

    mask = adair.low_pass_mask(jnp.asarray([[h2 // 4, h2 // 4]], jnp.int32), h2, h2)

    def split_sum(f):
        low, high = adair.frequency_split(f, mask)
        return low + high

    tmask = torch.zeros(1, 96, h2, h2, device=TORCH_DEVICE)
    tmask[:, :, h2 // 2 - h2 // 4 : h2 // 2 + h2 // 4, h2 // 2 - h2 // 4 : h2 // 2 + h2 // 4] = 1

    def tsplit(x):
        spec = torch.fft.fftshift(torch.fft.fft2(x, norm="forward"), dim=(-2, -1))
        high = torch.fft.ifft2(torch.fft.ifftshift(spec * (1 - tmask), dim=(-2, -1)), norm="forward")
        low = torch.fft.ifft2(torch.fft.ifftshift(spec * tmask, dim=(-2, -1)), norm="forward")
        return high.abs() + low.abs()

    one(
        f"- FFT band split (fft2 + 2 ifft2 + abs), 96 ch @{h2}x{h2}",
        1,
        None,
        None,
        [(1, h2, h2, 96)],
        fn=split_sum,
        tfn=tsplit,
    )
    return rows


# ----------------------------------------------------------------------------- Markdown


def _ms(entry: dict | None, key: str) -> str:
    if not entry or key not in entry:
        return "—"
    v = entry[key]["median_s"] if isinstance(entry[key], dict) else entry[key]
    return f"{v:.3f}"


def _ratio(num: dict | None, den: dict | None, key: str) -> str:
    try:
        return f"{num[key]['median_s'] / den[key]['median_s']:.2f}x"
    except (KeyError, TypeError, ZeroDivisionError):
        return "—"


def summary_table(results: dict) -> list[str]:
    """One row per configuration and Flax variant: the issue-25 table."""
    s = results["size"]
    lines = [
        "| configuration | Flax variant | forward, Flax / PyTorch | fwd+bwd, Flax / PyTorch "
        "| Flax fwd+bwd / its forward | XLA temporaries fwd+bwd | load average during the timing |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in results["configs"]:
        t = c.get("torch_eager") or {}
        for label, e in c["flax"].items():
            if "error" in e or "XLA_FLAGS" in label:
                continue

            def pair(key):
                if key not in e or key not in t:  # noqa: B023 - called in this iteration
                    return "—"
                f, p = e[key]["median_s"], t[key]["median_s"]  # noqa: B023 - called in this iteration
                return f"{f:.3f} s / {p:.3f} s ({p / f:.2f}x)"

            own = f"{e['fwdbwd']['median_s'] / e['fwd']['median_s']:.1f}x" if "fwd" in e and "fwdbwd" in e else "—"
            temp = e.get("temp_gb_fwdbwd")
            lines.append(
                f"| {c['variant']} {c['batch']}x{s}x{s} | {label} | {pair('fwd')} | {pair('fwdbwd')} | {own} | "
                f"{'—' if temp is None else f'{temp:.2f} GB'} | {c.get('load_timing_start', '?')} -> "
                f"{c.get('load_timing_end', '?')} |"
            )
    lines.append("")
    lines.append("Ratios in brackets are PyTorch / Flax (> 1: Flax is faster); timed interleaved in one process.")
    return lines


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu_model']}, {m['usable_cores']} usable cores, {m['platform']}; "
        f"torch {m['torch_version']} (torch.get_num_threads() = {m['torch_num_threads']}), "
        f"jax {m['jax_version']} / flax {m['flax_version']} on {m['jax_backend']}; "
        f"PyTorch on {m.get('torch_device', 'cpu')}{' (' + m['cuda_device'] + ')' if m.get('cuda_device') else ''}; "
        f"{m['date']}.",
        f"Command: `{results['command']}`. Input {results['size']}x{results['size']}, float32; "
        f"median of up to {results['repeats']} timed calls after one warm-up call "
        "(`n` below = calls actually timed; fewer when one call is slow). Flax and PyTorch eager rows are "
        "timed in interleaved rounds; rows with XLA_FLAGS and torch.compile run in child processes, after.",
        "",
    ]
    if results["configs"]:
        lines += summary_table(results) + [""]
    for c in results["configs"]:
        v, b, s = c["variant"], c["batch"], results["size"]
        params = next((e["params"] for e in c["flax"].values() if "params" in e), None)
        lines.append(f"### {v}, batch {b} ({b}x{s}x{s}x3{f', {params / 1e6:.2f}M params' if params else ''})")
        lines.append(
            f"Load average (1/5/15 min) at start / during the interleaved timing / end: "
            f"{c['load_before']} / {c.get('load_timing_start', '?')} -> "
            f"{c.get('load_timing_end', '?')} / {c.get('load_after', '?')}."
            + (
                f" Waited {c['quiet_wait']['waited_s']} s for a quiet machine before timing."
                if c.get("quiet_wait", {}).get("waited_s", 0) > 5
                else ""
            )
        )
        lines.append("")
        lines.append(
            "| implementation | forward (s) | fwd+bwd (s) | n (fwd/fwd+bwd) | compile fwd (s) "
            "| compile fwd+bwd (s) | XLA temp memory fwd/fwd+bwd (GB) "
            "| other processes' CPU use while timing (cores) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")

        def row(label, e):
            if e is None:
                return
            if "error" in e:
                lines.append(f"| {label} | failed: {e['error']} | | | | | | |")
                return
            n = f"{e['fwd']['n'] if 'fwd' in e else '—'}/{e['fwdbwd']['n'] if 'fwdbwd' in e else '—'}"
            err = "; ".join(f"{k}: {v}" for k, v in e.items() if k.startswith("error_"))
            foreign = "/".join(str(e[k].get("foreign_cores")) for k in ("fwd", "fwdbwd") if k in e)
            if "load_end" in e:
                foreign += " (child process)"
            mem = "/".join(str(e.get(f"temp_gb_{k}", "—")) for k in ("fwd", "fwdbwd"))
            lines.append(
                f"| {label} | {_ms(e, 'fwd')} | {_ms(e, 'fwdbwd')} | {n} | "
                f"{_ms(e, 'compile_fwd_s')} | {_ms(e, 'compile_fwdbwd_s')}{' — ' + err if err else ''} "
                f"| {mem if 'temp_gb_fwd' in e else '—'} | {foreign} |"
            )

        for label, e in c["flax"].items():
            row(f"Flax ({label})", e)
        row("PyTorch eager", c.get("torch_eager"))
        row("torch.compile (inductor)", c.get("torch_compile"))
        lines.append("")
        ref_label = next(iter(c["flax"]))
        flax_ref = c["flax"][ref_label]
        lines.append(f"| ratio torch / Flax ({ref_label}) | forward | fwd+bwd |")
        lines.append("|---|---|---|")
        for label, e in (("PyTorch eager", c.get("torch_eager")), ("torch.compile", c.get("torch_compile"))):
            if e and "error" not in e:
                lines.append(f"| {label} / Flax | {_ratio(e, flax_ref, 'fwd')} | {_ratio(e, flax_ref, 'fwdbwd')} |")
        for label, e in list(c["flax"].items())[1:]:
            if "error" not in e:
                lines.append(
                    f"| Flax ({label}) / Flax ({ref_label}) | {_ratio(e, flax_ref, 'fwd')} | "
                    f"{_ratio(e, flax_ref, 'fwdbwd')} |"
                )
        lines.append("")
    if results.get("blocks"):
        lines.append("### Per-block timing (batch 1; Flax with the conv rewrites; grads w.r.t. params and inputs)")
        lines.append("")
        lines.append(
            "| piece | x in base | Flax fwd (ms) | Flax fwd+bwd (ms) | torch fwd (ms) | torch fwd+bwd (ms) "
            "| torch/Flax fwd | torch/Flax fwd+bwd | others' cores |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for r in results["blocks"]:
            f = lambda k: f"{r[k]['median_s'] * 1e3:.1f}"  # noqa: E731, B023
            lines.append(
                f"| {r['block']} | {r['count_in_base']} | {f('flax_fwd')} | {f('flax_fwdbwd')} | "
                f"{f('torch_fwd')} | {f('torch_fwdbwd')} | "
                f"{r['torch_fwd']['median_s'] / r['flax_fwd']['median_s']:.2f}x | "
                f"{r['torch_fwdbwd']['median_s'] / r['flax_fwdbwd']['median_s']:.2f}x | "
                f"{r['flax_fwd'].get('foreign_cores')} |"
            )
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def machine_info() -> dict:
    import flax
    import jax
    import torch

    return {
        "cpu_model": cpu_model(),
        "usable_cores": usable_cores(),
        "os_cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "jax_version": jax.__version__,
        "flax_version": flax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "torch_device": TORCH_DEVICE,
        "cuda_device": torch.cuda.get_device_name() if TORCH_DEVICE.startswith("cuda") else None,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=None, help=f"comma-separated variant:batch list (default {DEFAULT_CONFIGS!r})")
    p.add_argument("--variants", default=None, help="with --batches: the cross product replaces --configs")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes, with --variants")
    p.add_argument("--size", type=int, default=None, help="square image size (default 128; --quick 32)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 5)")
    p.add_argument("--min-repeats", type=int, default=3, help="never fewer timed calls than this")
    p.add_argument(
        "--budget",
        type=float,
        default=40.0,
        help="stop repeating (after --min-repeats) once a measurement has spent this many s",
    )
    p.add_argument(
        "--conv-impls",
        default=None,
        help="Flax conv lowerings to measure, first one is the ratio reference "
        "(default 'auto,xla'); 'auto' = rewrites on CPU",
    )
    p.add_argument(
        "--conv-compare",
        default="small:1,tiny",
        help="variants / variant:batch items for which the 2nd+ --conv-impls are measured "
        "('all', 'none'; base with 'xla' costs minutes on a CPU)",
    )
    p.add_argument(
        "--remat",
        default="auto,off",
        help="TransformerBlock rematerialisation to measure (layers.rematerialize: auto, on, off), "
        "the first is the ratio reference (default 'auto,off'; auto = the trainer's setting)",
    )
    p.add_argument(
        "--remat-compare",
        default="small:1,base:1",
        help="variants / variant:batch items for which the 2nd+ --remat modes are measured",
    )
    p.add_argument(
        "--xla-flags",
        action="append",
        default=None,
        help="extra XLA_FLAGS setting to measure for Flax (child process); repeatable",
    )
    p.add_argument(
        "--xla-flags-configs",
        default="small:1",
        help="variants / variant:batch items for which the --xla-flags runs are made",
    )
    p.add_argument(
        "--torch-compile",
        default=None,
        help="variants / variant:batch items to torch.compile ('none', 'all'; default 'small:1')",
    )
    p.add_argument("--compile-timeout", type=float, default=600.0, help="s per torch.compile child process")
    p.add_argument(
        "--torch-device",
        default="cpu",
        help="device of the PyTorch reference: cpu (default), cuda, or auto (cuda if available)",
    )
    p.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.3,
        help="before each timing phase, wait until other processes use fewer cores than this",
    )
    p.add_argument(
        "--max-wait",
        type=float,
        default=None,
        help="give up waiting for a quiet machine after this many s (default 1800; --quick 0)",
    )
    p.add_argument("--skip-backward", action="store_true", help="forward only")
    p.add_argument("--blocks", action="store_true", help="per-block timing of base pieces (batch 1)")
    p.add_argument("--no-models", action="store_true", help="with --blocks: only the per-block timing")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny at 1x32x32, no torch.compile, XLA at optimisation level 0 "
        "(compile dominates; its times are not representative)",
    )
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables to stdout")
    p.add_argument("--from-json", default=None, help="only render --markdown from an earlier --out file")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    quick = opts.quick
    if opts.variants or opts.batches:
        vs = (opts.variants or "small").split(",")
        bs = (opts.batches or "1").split(",")
        opts.configs = ",".join(f"{v}:{b}" for v in vs for b in bs)
    opts.configs = opts.configs or (QUICK_CONFIGS if quick else DEFAULT_CONFIGS)
    opts.size = opts.size or (32 if quick else 128)
    opts.repeats = opts.repeats or (3 if quick else 5)
    if quick:
        opts.min_repeats = min(opts.min_repeats, opts.repeats)
    opts.max_wait = opts.max_wait if opts.max_wait is not None else (0.0 if quick else 1800.0)
    opts.conv_impls = opts.conv_impls or ("auto" if quick else "auto,xla")
    opts.torch_compile = opts.torch_compile or ("none" if quick else "small:1")
    if opts.xla_flags is None:
        opts.xla_flags = [] if quick else ["--xla_cpu_use_onednn=true"]
    return opts


def main(argv=None) -> None:
    global TORCH_DEVICE
    opts = parse_args(argv)
    if opts.torch_device == "auto":
        import torch

        opts.torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    TORCH_DEVICE = opts.torch_device
    if opts.quick and not opts._worker and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        # A smoke run: XLA's LLVM optimisation dominates its wall time (tiny's fwd+bwd takes ~2x
        # longer to compile at the default level); the times it prints are not representative.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    if opts._worker:
        return worker_main(opts)
    if opts.from_json:
        print(markdown(json.loads(Path(opts.from_json).read_text())))
        return

    import torch

    torch.set_num_threads(usable_cores())
    results = {
        "command": "python " + " ".join([os.path.relpath(__file__, _REPO)] + sys.argv[1:]),
        "machine": machine_info(),
        "size": opts.size,
        "repeats": opts.repeats,
        "min_repeats": opts.min_repeats,
        "budget_s": opts.budget,
        "configs": [],
        "load_start": loadavg(),
    }
    impls = opts.conv_impls.split(",")
    remats = opts.remat.split(",")
    tc = opts.torch_compile

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')} load {loadavg()}] {msg}", file=sys.stderr, flush=True)

    def save():
        results["load_end"] = loadavg()
        if opts.out:
            Path(opts.out).write_text(json.dumps(results, indent=1))

    t_start = time.perf_counter()
    for variant, batch in [] if opts.no_models else parse_configs(opts.configs):
        c = {"variant": variant, "batch": batch, "load_before": loadavg(), "flax": {}}
        results["configs"].append(c)
        # Flax (each conv lowering) and PyTorch eager are timed together, interleaved.
        fns = {}
        flax_variants = [(impls[0], remats[0])]
        if selected(opts.remat_compare, variant, batch):
            flax_variants += [(impls[0], m) for m in remats[1:]]
        if selected(opts.conv_compare, variant, batch):
            flax_variants += [(impl, remats[0]) for impl in impls[1:]]
        for impl, remat in flax_variants:
            label = f"conv {impl}, remat {remat}"
            log(f"{variant}:{batch} Flax {label}: build and compile")
            c["flax"][label], f = prepare_flax(variant, batch, opts.size, impl, opts, remat)
            fns.update({(label, k): v for k, v in f.items()})
        fns.update({("torch_eager", k): v for k, v in prepare_torch_eager(variant, batch, opts.size, opts).items()})
        c["quiet_wait"] = wait_quiet(opts.quiet_threshold, opts.max_wait, log)
        log(f"{variant}:{batch} timing {len(fns)} functions interleaved")
        c["load_timing_start"] = loadavg()
        stats = time_interleaved(fns, opts.repeats, opts.min_repeats, opts.budget)
        c["load_timing_end"] = loadavg()
        c["torch_eager"] = {}
        for (label, k), st in stats.items():
            (c["torch_eager"] if label == "torch_eager" else c["flax"][label])[k] = st
        save()
        if selected(opts.xla_flags_configs, variant, batch):
            for flags in opts.xla_flags:
                label = f"conv {impls[0]}, remat {remats[0]}, XLA_FLAGS={flags}"
                log(f"{variant}:{batch} Flax {label} (child process)")
                env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip())
                c["flax"][label] = run_child(
                    _child_args(opts, "flax", variant, batch, ["--conv-impls", impls[0], "--remat", remats[0]]),
                    env,
                    1200,
                )
                save()
        if selected(tc, variant, batch):
            log(f"{variant}:{batch} torch.compile (child process, cold cache)")
            with tempfile.TemporaryDirectory(prefix="inductor_cache_") as cache:
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
                c["torch_compile"] = run_child(
                    _child_args(opts, "torch_compile", variant, batch), env, opts.compile_timeout
                )
            save()
        c["load_after"] = loadavg()
        del fns, stats
        gc.collect()  # drop the previous configuration's buffers before compiling the next
        save()
    if opts.blocks:
        log("per-block timing")
        results["blocks"] = bench_blocks(opts)
    results["total_wall_s"] = time.perf_counter() - t_start
    save()
    log(f"done in {results['total_wall_s']:.0f} s")
    if opts.markdown:
        print(markdown(results))


if __name__ == "__main__":
    main()
