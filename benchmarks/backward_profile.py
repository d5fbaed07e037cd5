"""Where AdaIR's forward+backward spends its time and memory on XLA:CPU, per op category.

Compiles ``jax.value_and_grad`` of the L1 loss over the parameters (as ``adair_speed.py`` and a
supervised step do; ``--remat``, default the trainer's setting) and reads XLA's own accounts of
the compiled program:

* **time**: a ``jax.profiler`` trace of ``--reps`` calls; every executed HLO op (a thunk: a
  fusion, a library convolution, a dot, an FFT, a copy) is one trace event named after the
  instruction. Ops run on XLA's thread pool, sometimes two at once, so the per-category sums add
  up to more than the wall time; the shares are what to read. Tracing costs some time per op,
  so the traced call is slower than an untraced one (both are printed).
* **memory**: XLA's buffer assignment (``--xla_dump_to``): the temporaries' peak and the buffers
  live at it (``*-live-range.txt``), so each megabyte at the peak is attributed to the op that
  produced it: a forward value kept for the backward, or a backward temporary.
* **arithmetic**: the compiled program's ``cost_analysis()`` and ``memory_analysis()``.

Each HLO op is attributed to a category by the model's ``jax.named_scope`` in its metadata
(``conv1x1``, ``dwconv3x3``, ``layernorm``, ``attention_l2norm``, ``fft_band_split``, ...: see
``layers.Conv2d.scope_name`` and ``adair.py``), split into compute and data movement (an op whose
fused computation only pads, slices, concatenates, copies or transposes) and into forward and
backward (``transpose(...)`` in the op name). Ops without a scope are "other".

Examples::

    python benchmarks/backward_profile.py --variant base --markdown
    python benchmarks/backward_profile.py --variant small --batch 4 --out small4.json --markdown
    python benchmarks/backward_profile.py --from-json small4.json --markdown
    XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false python benchmarks/backward_profile.py

XLA reads ``XLA_FLAGS`` once per process, so this script sets its dump flags before jax is
imported (added to the caller's ``XLA_FLAGS``); run it as a script, not from a process that has
already initialised jax.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

MODULE = "adair_fwd_bwd"  # the jitted function's name, hence XLA's module name jit_<MODULE>

# Named scopes of the model (the innermost one that is listed here wins), in table order.
SCOPES = {
    "conv1x1": "1x1 convolutions (matmuls)",
    "dwconv3x3": "depthwise 3x3 convolutions",
    "conv3x3": "dense 3x3 convolutions (library)",
    "conv7x7": "7x7 convolution (spatial gate)",
    "layernorm": "LayerNorm",
    "attention_l2norm": "attention: q/k L2 normalisation",
    "attention_matmul": "attention: matmuls",
    "attention_softmax": "attention: temperature + softmax",
    "gdfn_gelu_gate": "GDFN: GELU gate",
    "fft_band_split": "FFT band split",
    "frequency_refine_gates": "FreRefine gates",
    "pixel_shuffle": "pixel (un)shuffle",
}
OTHER = "other (residual adds, fusion, resize, loss)"
MOVEMENT_OPS = {
    "parameter",
    "constant",
    "pad",
    "slice",
    "dynamic-slice",
    "dynamic-update-slice",
    "concatenate",
    "copy",
    "transpose",
    "bitcast",
    "broadcast",
    "reshape",
    "tuple",
    "get-tuple-element",
    "reverse",
    "iota",
}


# ----------------------------------------------------------------------------- HLO parsing


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\((.*)$")
_COMP = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")


def parse_hlo(text: str) -> dict:
    """Instructions of an optimised HLO module: name -> {opcode, op_name, calls, computation}.

    ``ops`` of a fusion are the opcodes of its fused computation (recursively)."""
    comps: dict[str, list[dict]] = {}
    current = None
    for line in text.splitlines():
        m = _COMP.match(line)
        if m and not line.startswith(" "):
            current = m.group(1)
            comps[current] = []
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _INSTR.match(line)
        if m and current is not None:
            name, _shape, opcode, rest = m.groups()
            op_name = re.search(r'op_name="([^"]*)"', rest)
            calls = re.search(r"calls=%([\w.\-]+)", rest)
            operands = re.findall(r"%([\w.\-]+)", rest.split("), ")[0])
            comps[current].append(
                {
                    "name": name,
                    "opcode": opcode,
                    "comp": current,
                    "op_name": op_name.group(1) if op_name else "",
                    "calls": calls.group(1) if calls else None,
                    "operands": operands,
                }
            )
    by_name = {i["name"]: i for instrs in comps.values() for i in instrs}

    def opcodes(comp: str, seen=()) -> set[str]:
        out = set()
        for i in comps.get(comp, []):
            out.add(i["opcode"])
            if i["calls"] and i["calls"] not in seen:
                out |= opcodes(i["calls"], seen + (comp,))
        return out

    def scopes(comp: str) -> collections.Counter:
        c = collections.Counter()
        for i in comps.get(comp, []):
            if i["opcode"] not in MOVEMENT_OPS or i["opcode"] in ("pad", "slice", "concatenate", "transpose", "copy"):
                c[scope_of(i["op_name"])] += 1
        return c

    def inherited_op_name(i: dict, depth: int = 4) -> str:
        # Ops XLA adds (layout copies, a convolution's weight gradient) carry no metadata: they take
        # their operands' names, backward if any operand is backward.
        names = [i["op_name"]] if i["op_name"] else []
        if not names and depth:
            names = [inherited_op_name(by_name[o], depth - 1) for o in i["operands"] if o in by_name]
            names = [n for n in names if n]
        if not names:
            return ""
        bwd = [n for n in names if "transpose(" in n]
        return (bwd or names)[0]

    for i in by_name.values():
        ops = opcodes(i["calls"]) if i["calls"] else {i["opcode"]}
        i["ops"] = sorted(ops)
        if not i["op_name"] and i["opcode"] != "parameter":
            i["op_name"], i["inherited"] = inherited_op_name(i), True
        if i["calls"] and not scope_known(i["op_name"]):
            # A fusion's metadata is its root's; when the root has no scope, take the scope most
            # of its fused instructions carry.
            c = scopes(i["calls"])
            known = [(n, s) for s, n in c.items() if s != OTHER]
            if known:
                i["op_name_scope"] = max(known)[1]
    return by_name


def scope_of(op_name: str) -> str:
    """The category of an op from the named scopes in its ``op_name`` metadata."""
    for part in reversed(re.split(r"[/()]", op_name)):
        if part in SCOPES:
            return SCOPES[part]
    return OTHER


def scope_known(op_name: str) -> bool:
    return scope_of(op_name) != OTHER


def classify(instr: dict | None) -> tuple[str, str, str]:
    """(category, fwd|bwd, compute|data movement) of one HLO instruction."""
    if instr is None:
        return OTHER, "?", "compute"
    cat = instr.get("op_name_scope") or scope_of(instr["op_name"])
    if "convolution" in instr["ops"] and (cat == OTHER or instr.get("inherited")):
        cat = SCOPES["conv3x3"]  # the library convolutions' weight gradients carry no metadata
    direction = "bwd" if "transpose(" in instr["op_name"] else "fwd"
    ops = set(instr["ops"]) - {"parameter", "constant", "bitcast", "broadcast", "reshape", "tuple", "get-tuple-element"}
    kind = "data movement" if ops and ops <= MOVEMENT_OPS else "compute"
    return cat, direction, kind


# ----------------------------------------------------------------------------- measurements


def trace_op_times(trace_dir: str, instrs: dict, reps: int) -> dict:
    """Per category: summed op time (ms per call) by direction and kind, from the trace events."""
    path = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz")))[-1]
    events = json.load(gzip.open(path))["traceEvents"]
    table: dict = collections.defaultdict(lambda: collections.defaultdict(float))
    ops: dict = collections.defaultdict(float)
    for e in events:
        if e.get("ph") != "X" or e["name"] not in instrs:
            continue
        i = instrs[e["name"]]
        if i["opcode"] in ("while", "conditional", "call"):
            continue  # their bodies' ops are traced themselves
        cat, direction, kind = classify(i)
        ms = e["dur"] / 1e3 / reps
        table[cat][f"{direction} {kind}"] += ms
        ops[e["name"]] += ms
    top = sorted(ops.items(), key=lambda kv: -kv[1])
    return {
        "by_category": {k: dict(v) for k, v in table.items()},
        "top_ops": [
            {
                "name": n,
                "ms": round(t, 2),
                "category": classify(instrs[n])[0],
                "direction": classify(instrs[n])[1],
                "ops": instrs[n]["ops"],
                "op_name": instrs[n]["op_name"],
            }
            for n, t in top
        ],
    }


def peak_memory(dump_dir: str, instrs: dict) -> dict:
    """XLA's live buffers at the temporaries' peak, in MB per category and direction."""
    files = glob.glob(os.path.join(dump_dir, f"*jit_{MODULE}*after_optimizations-live-range.txt"))
    if not files:
        return {}
    text = Path(sorted(files)[-1]).read_text()
    m = re.search(r"Live ranges at (\d+) \(peak\):\n(.*?)(?:\n\S|\n  \S|\Z)", text, re.S)
    if not m:
        return {}
    table: dict = collections.defaultdict(lambda: collections.defaultdict(float))
    total = 0
    for line in m.group(2).splitlines():
        mm = re.match(r"\s*([\w.\-]+)\{[^}]*\}: (\d+) bytes", line)
        if not mm:
            continue
        name, size = mm.group(1), int(mm.group(2))
        i = instrs.get(name)
        if i is not None and i["opcode"] == "parameter":
            continue  # the arguments (parameters, inputs) are not temporaries
        cat, direction, kind = classify(i)
        label = "bwd" if direction == "bwd" else "fwd (kept for bwd)"
        table[cat][label] += size / 1e6
        total += size
    return {"peak_mb": total / 1e6, "by_category": {k: dict(v) for k, v in table.items()}}


def run(opts) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from irpo_jax.models import adair, layers

    model = adair.AdaIR(opts.variant, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    kx, kt = jax.random.split(jax.random.key(1))
    x = jax.random.uniform(kx, (opts.batch, opts.size, opts.size, 3), jnp.float32)
    target = jax.random.uniform(kt, (opts.batch, opts.size, opts.size, 3), jnp.float32)

    def forward(p, r, img):
        return nnx.merge(graphdef, p, r)(img)

    def adair_fwd_bwd(p, r, img, tgt):
        return jax.value_and_grad(lambda q: jnp.mean(jnp.abs(forward(q, r, img) - tgt)))(p)

    out = {
        "variant": opts.variant,
        "batch": opts.batch,
        "size": opts.size,
        "conv_impl": opts.conv_impl,
        "remat": opts.remat,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_version": jax.__version__,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
    with layers.conv_implementation(opts.conv_impl), layers.rematerialize(opts.remat):
        fwd = jax.jit(forward).lower(params, rest, x).compile()
        t = time.perf_counter()
        vg = jax.jit(adair_fwd_bwd).lower(params, rest, x, target).compile()
        out["compile_fwd_bwd_s"] = round(time.perf_counter() - t, 1)
    for name, comp in (("fwd", fwd), ("fwd_bwd", vg)):
        mem, cost = comp.memory_analysis(), comp.cost_analysis()
        out[f"temp_gb_{name}"] = round(mem.temp_size_in_bytes / 1e9, 3)
        out[f"gflop_{name}"] = round(cost.get("flops", 0) / 1e9, 2)
        out[f"gbytes_accessed_{name}"] = round(cost.get("bytes accessed", 0) / 1e9, 2)
    instrs = parse_hlo(vg.as_text())
    out["hlo_ops"] = len(instrs)

    def timed(fn, n):
        """Medians of the wall time and of this process's CPU time (the latter is less
        sensitive to other processes on a shared machine)."""
        ts, cs = [], []
        for _ in range(n):
            t, c = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn())
            ts.append(time.perf_counter() - t)
            cs.append(time.process_time() - c)
        return sorted(ts)[len(ts) // 2], sorted(cs)[len(cs) // 2]

    call_fwd = lambda: fwd(params, rest, x)  # noqa: E731
    call_vg = lambda: vg(params, rest, x, target)  # noqa: E731
    call_vg()
    out["fwd_s"], out["fwd_cpu_s"] = (round(v, 4) for v in timed(call_fwd, max(opts.reps, 3)))
    out["fwd_bwd_s"], out["fwd_bwd_cpu_s"] = (round(v, 4) for v in timed(call_vg, opts.reps))
    for key, call, ops in (("time", call_vg, instrs), ("time_fwd_only", call_fwd, parse_hlo(fwd.as_text()))):
        with tempfile.TemporaryDirectory(prefix="adair_trace_") as trace_dir:
            jax.profiler.start_trace(trace_dir)
            t = time.perf_counter()
            for _ in range(opts.reps):
                jax.block_until_ready(call())
            out[f"{key}_traced_s"] = round((time.perf_counter() - t) / opts.reps, 4)
            jax.profiler.stop_trace()
            out[key] = trace_op_times(trace_dir, ops, opts.reps)
    out["fwd_bwd_traced_s"] = out.pop("time_traced_s")
    out["memory"] = peak_memory(opts.dump_dir, instrs)
    out["load_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return out


# ----------------------------------------------------------------------------- Markdown


def markdown(res: dict, top: int = 12) -> str:
    t = res["time"]["by_category"]
    fo = res.get("time_fwd_only", {}).get("by_category", {})
    mem = res.get("memory", {}).get("by_category", {})
    cols = ("fwd compute", "fwd data movement", "bwd compute", "bwd data movement")
    total = {c: sum(v.get(c, 0.0) for v in t.values()) for c in cols}
    grand = sum(total.values())
    lines = [
        f"{res['variant']}, {res['batch']}x{res['size']}x{res['size']}, conv `{res['conv_impl']}`, "
        f"remat `{res.get('remat', 'off')}`, jax "
        f"{res['jax_version']}, {res['date']}; XLA_FLAGS `{res['xla_flags'] or '(none)'}`; load average "
        f"{res['load_start']} -> {res['load_end']}.",
        f"Forward {res['fwd_s']:.3f} s, forward+backward {res['fwd_bwd_s']:.3f} s "
        f"({res['fwd_bwd_s'] / res['fwd_s']:.1f}x the forward"
        + (
            f"; CPU time {res['fwd_cpu_s']:.3f} / {res['fwd_bwd_cpu_s']:.3f} s, "
            f"{res['fwd_bwd_cpu_s'] / res['fwd_cpu_s']:.1f}x"
            if "fwd_cpu_s" in res
            else ""
        )
        + f"; traced: {res['fwd_bwd_traced_s']:.3f} s); "
        f"XLA temporaries {res['temp_gb_fwd']:.2f} GB forward, **{res['temp_gb_fwd_bwd']:.2f} GB** forward+backward; "
        f"{res['gflop_fwd_bwd']:.0f} GFLOP and {res['gbytes_accessed_fwd_bwd']:.0f} GB accessed by XLA's cost "
        f"analysis; {res['hlo_ops']} HLO instructions; compile {res['compile_fwd_bwd_s']:.0f} s.",
        "",
        "| category | forward program ms | fwd ms | fwd of which data movement | bwd ms | bwd of which data movement "
        "| share of op time | MB at the peak: fwd values kept / bwd temporaries |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    order = sorted(t, key=lambda c: -sum(t[c].values()))
    for cat in order:
        v = t[cat]
        fwd = v.get("fwd compute", 0) + v.get("fwd data movement", 0)
        bwd = v.get("bwd compute", 0) + v.get("bwd data movement", 0)
        m = mem.get(cat, {})
        lines.append(
            f"| {cat} | {sum(fo.get(cat, {}).values()):.0f} | {fwd:.0f} | {v.get('fwd data movement', 0):.0f} | "
            f"{bwd:.0f} | "
            f"{v.get('bwd data movement', 0):.0f} | {100 * (fwd + bwd) / grand:.1f} % | "
            f"{m.get('fwd (kept for bwd)', 0):.0f} / {m.get('bwd', 0):.0f} |"
        )
    fwd_t = total["fwd compute"] + total["fwd data movement"]
    bwd_t = total["bwd compute"] + total["bwd data movement"]
    mk = sum(v.get("fwd (kept for bwd)", 0) for v in mem.values())
    mb = sum(v.get("bwd", 0) for v in mem.values())
    fo_t = sum(sum(v.values()) for v in fo.values())
    lines.append(
        f"| **all** | {fo_t:.0f} | {fwd_t:.0f} | {total['fwd data movement']:.0f} | {bwd_t:.0f} | "
        f"{total['bwd data movement']:.0f} | 100 % | {mk:.0f} / {mb:.0f} |"
    )
    lines += [
        "",
        f"Top {top} ops (ms per call):",
        "",
        "| op | category | direction | ms | fused ops |",
        "|---|---|---|---:|---|",
    ]
    for o in res["time"]["top_ops"][:top]:
        ops = ", ".join(x for x in o["ops"] if x not in ("parameter", "constant", "bitcast"))
        lines.append(f"| `{o['name']}` | {o['category']} | {o['direction']} | {o['ms']:.1f} | {ops} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="base")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--reps", type=int, default=3, help="timed and traced calls")
    p.add_argument("--conv-impl", default="auto", help="layers.conv_implementation: auto, rewrite, xla")
    p.add_argument(
        "--remat",
        default="auto",
        help="layers.rematerialize: auto (the trainer's setting: on where the CPU rewrites are on), on, off",
    )
    p.add_argument("--top", type=int, default=12, help="ops listed individually in the Markdown")
    p.add_argument("--dump-dir", default=None, help="keep XLA's dump here (default: a temporary directory)")
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--from-json", default=None, help="only render --markdown from an earlier --out file")
    return p.parse_args(argv)


def main(argv=None) -> None:
    opts = parse_args(argv)
    if opts.from_json:
        print(markdown(json.loads(Path(opts.from_json).read_text()), opts.top))
        return
    if "jax" in sys.modules:
        raise SystemExit("backward_profile.py sets XLA_FLAGS before jax starts: run it as a script")
    with tempfile.TemporaryDirectory(prefix="adair_dump_") as tmp:
        opts.dump_dir = opts.dump_dir or tmp
        flags = [f"--xla_dump_to={opts.dump_dir}", f"--xla_dump_hlo_module_re=jit_{MODULE}", "--xla_dump_hlo_as_text"]
        os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", "")] + flags).strip()
        user_flags = " ".join(
            f for f in os.environ["XLA_FLAGS"].split() if f not in flags and not f.startswith("--xla_dump")
        )
        res = run(opts)
        res["xla_flags"] = user_flags
    if opts.out:
        Path(opts.out).write_text(json.dumps(res, indent=1))
    if opts.markdown:
        print(markdown(res, opts.top))


if __name__ == "__main__":
    main()
