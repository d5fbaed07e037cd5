"""Two measurements behind decisions of the GRPO update (README "Decisions worth knowing").

``--section reference``: the update's time with the frozen reference policy's decoder passes
(``constant_ref=False``) and without them (``True``: a step-0 reference, whose heads ignore their
inputs, needs none; :func:`irpo_jax.training.steps.reference_is_constant`), the same jitted
programs the trainer runs, timed alternately (median of ``--reps``), with the FLOP formula's
parts (:func:`irpo_jax.models.flops.grpo_step_flops`) beside them.

``--section lambda``: what IRPO's annealing of lambda_sup (0.35 -> 0.1) and lambda_cons
(0.2 -> 0.05) does to the backbone's updates. L_sup and L_cons alone train the backbone, and Adam
normalises each parameter's step by its running gradient scale, so multiplying both weights by
one factor changes the backbone's step only through Adam's eps; what the schedule really changes
is their ratio (1.75 -> 2). Measured: ``--steps`` updates on the same batches and rollouts from the
same state, with the weights held at the schedule's start, at its end, and at the start scaled
to the end's size (same ratio); the backbone's displacement norms and their cosines.

    python benchmarks/grpo_update_choices.py                       # both, small model, 64x64 demo crops
    python benchmarks/grpo_update_choices.py --section lambda --variant tiny --size 32

Needs the demo data (``python -m irpo_jax.data.demo --out demo_data``); uses
``runs/demo_supervised/model`` as the starting AdaIR when it exists (``--init``), else a randomly
initialised one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from flax import nnx

from irpo_jax import checkpointing, cli, training
from irpo_jax.models import adair, flops
from irpo_jax.models.policy import IRPOPolicy, PolicyConfig
from irpo_jax.rewards import compose

ROOT = pathlib.Path(__file__).resolve().parent.parent


def setup(args):
    cfg = cli.load_config(str(ROOT / "configs" / "allinone5.py") + ":demo")
    cfg.data.root, cfg.data.patch_size, cfg.data.manifest = args.data, args.size, "all"
    cfg.model.variant = args.variant
    cfg.train.batch_size = args.images
    cfg.grpo.group_size = args.group
    init = pathlib.Path(args.init)
    if init.is_dir():
        start, _ = checkpointing.restore_model(init)
        start = getattr(start, "net", start)
        print(f"starting AdaIR: {init} ({start.config.dim} channels)")
    else:
        start = adair.AdaIR(args.variant, rngs=nnx.Rngs(0))
        print(f"starting AdaIR: random init of {args.variant!r} ({init} does not exist)")
    policy = IRPOPolicy(start.config, PolicyConfig.from_dict(cfg.model.policy.to_dict()), rngs=nnx.Rngs(0))
    nnx.update(policy.net, nnx.state(start, nnx.Param))
    graphdef, params = nnx.split(policy, nnx.Param)
    params = nnx.to_pure_dict(params)
    from irpo_jax.data.pipeline import make_train_iterator

    data = make_train_iterator(cfg.data, batch_size=args.images, seed=0, worker_count=0)
    batches = [
        {k: jnp.asarray(b[k]) for k in ("degraded", "clean", "task_id")}
        for b in (next(data) for _ in range(args.steps))
    ]
    names = tuple(n for n in compose.active_components(cfg.reward) if compose.REWARDS[n].backend == "jax")
    return cfg, graphdef, params, batches, names


def section_reference(args) -> dict:
    cfg, graphdef, params, batches, names = setup(args)
    total = 1000
    tx = training.build_optimizer(cfg, params, total)
    state = training.TrainState.initial(params, tx, 0, with_ref=True)
    assert training.reference_is_constant(state.ref_params)
    rollout = jax.jit(training.make_rollout_step(graphdef, cfg, names))(params, batches[0], jax.random.key(0))
    fns, compile_s = {}, {}
    for constant in (False, True):
        t0 = time.perf_counter()
        fn = jax.jit(training.make_grpo_update(graphdef, tx, cfg, total, constant_ref=constant))
        fns[constant] = fn.lower(state, batches[0], rollout, {}).compile()
        compile_s[constant] = time.perf_counter() - t0
    times = {False: [], True: []}
    for _ in range(args.reps + 1):  # alternating, the first pair a warm-up
        for constant in (False, True):
            t0 = time.perf_counter()
            jax.block_until_ready(fns[constant](state, batches[0], rollout, {}))
            times[constant].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    h = w = args.size
    f_with = flops.grpo_step_flops(args.variant, h, w, group=args.group, images=args.images)
    f_without = flops.grpo_step_flops(args.variant, h, w, group=args.group, images=args.images, reference_pass=False)
    sup = flops.train_step_flops(args.variant, h, w, args.images)
    base = {k: flops.grpo_step_flops("base", 128, 128, group=4, images=1, reference_pass=k) for k in (True, False)}
    base_sup = flops.train_step_flops("base", 128, 128, 1)
    return {
        "update_median_s": {"with_reference_pass": med[False], "without": med[True]},
        "update_time_ratio": med[True] / med[False],
        "compile_s": {"with_reference_pass": compile_s[False], "without": compile_s[True]},
        "update_gflop_formula": {"with_reference_pass": (f_with["reference"] + f_with["backbone"]) / 1e9,
                                 "without": f_without["backbone"] / 1e9},
        "step_gflop_formula_this_size": {"with": f_with["total"] / 1e9, "without": f_without["total"] / 1e9,
                                         "supervised_same_images": sup / 1e9},
        "paper_setting_base_128_G4_1image": {"with": base[True], "without": base[False], "supervised": base_sup,
                                             "ratio_with": base[True]["total"] / base_sup,
                                             "ratio_without": base[False]["total"] / base_sup},
    }  # fmt: skip


def section_lambda(args) -> dict:
    cfg, graphdef, params, batches, names = setup(args)
    cfg.optim.update(schedule="constant", warmup_steps=0, lr=args.lr)
    rollout_fn = jax.jit(training.make_rollout_step(graphdef, cfg, names))
    rollouts = [rollout_fn(params, b, jax.random.key(i)) for i, b in enumerate(batches)]
    settings = {"start (0.35, 0.2)": ((0.35, 0.35), (0.2, 0.2)), "end (0.1, 0.05)": ((0.1, 0.1), (0.05, 0.05)),
                "start x 2/7 (0.1, 0.057)": ((0.1, 0.1), (0.2 * 2 / 7, 0.2 * 2 / 7))}  # fmt: skip
    flat0 = jax.flatten_util.ravel_pytree(params)[0]
    n_heads = training.head_count(params)
    moves, first_moves = {}, {}
    for name, (lam_sup, lam_cons) in settings.items():
        c = cfg.copy_and_resolve_references()
        c.grpo.lambda_sup, c.grpo.lambda_cons = lam_sup, lam_cons
        tx = training.build_optimizer(c, params, 1000)
        state = training.TrainState.initial(params, tx, 0, with_ref=True)
        update = jax.jit(training.make_grpo_update(graphdef, tx, c, 1000, constant_ref=True))
        for i, (b, r) in enumerate(zip(batches, rollouts)):
            state, _ = jax.block_until_ready(update(state, b, r, {}))
            if i == 0:
                first_moves[name] = np.asarray(jax.flatten_util.ravel_pytree(state.params)[0] - flat0)[n_heads:]
        moves[name] = np.asarray(jax.flatten_util.ravel_pytree(state.params)[0] - flat0)[n_heads:]
    cos = lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))  # noqa: E731
    ref = "start (0.35, 0.2)"
    return {
        "steps": len(batches), "lr": args.lr, "backbone_parameters": int(moves[ref].size),
        "backbone_displacement_norm": {k: float(np.linalg.norm(v)) for k, v in moves.items()},
        "first_step_norm": {k: float(np.linalg.norm(v)) for k, v in first_moves.items()},
        "cosine_to_start": {k: cos(v, moves[ref]) for k, v in moves.items()},
        "norm_ratio_end_to_start": float(np.linalg.norm(moves["end (0.1, 0.05)"]) / np.linalg.norm(moves[ref])),
    }  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--section", choices=("reference", "lambda", "all"), default="all")
    p.add_argument("--variant", default="small")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--images", type=int, default=1)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="lambda: updates per setting")
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--data", default=str(ROOT / "demo_data"))
    p.add_argument("--init", default=str(ROOT / "runs" / "demo_supervised" / "model"))
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args()
    out = {"date": time.strftime("%Y-%m-%d"), "jax": jax.__version__, "device": str(jax.devices()[0]),
           "loadavg_start": os.getloadavg(), "args": vars(args)}  # fmt: skip
    if args.section in ("reference", "all"):
        out["reference"] = section_reference(args)
    if args.section in ("lambda", "all"):
        out["lambda"] = section_lambda(args)
    out["loadavg_end"] = os.getloadavg()
    text = json.dumps(out, indent=1, default=lambda o: dataclasses.asdict(o) if dataclasses.is_dataclass(o) else str(o))
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
