"""The mini-IRPO study (issue 24): does this implementation's IRPO improve a restorer, and more than
supervised fine-tuning on the same hard images with the same budget? One command, resumable.

    nice -n 19 python benchmarks/mini_irpo.py                 # the study (runs/mini_irpo/)
    nice -n 19 python benchmarks/mini_irpo.py --pilot         # the pilot on the validation split
    python benchmarks/mini_irpo.py --quick --out /tmp/mq      # the pipeline test's setting (minutes)
    python benchmarks/mini_irpo.py --report_only              # tables and plots from what has run
    python benchmarks/mini_irpo.py --pilot --only a --set model.policy.rate_init=5,5 --out runs/mp
                                          # a pilot of other settings, every arm's config changed alike

Stages, each skipped when its output exists (so a stopped study continues where it ended; a
training arm resumes from its last checkpoint, as ``python -m irpo_jax.train`` does):

1. ``OUT/data``: the benchmark (:mod:`irpo_jax.data.minibench`; README.md there has the split table);
2. ``OUT/start``: the starting model, a small AdaIR trained supervised until its validation PSNR
   stops improving (``benchmarks/mini_irpo_pretrain.py``: the PyTorch reference, converted);
3. ``OUT/hard.jsonl`` (the starting model's worst 30 % per degradation, IRPO's hard set) and
   ``OUT/random30.jsonl`` (a random 30 % per degradation), mined once for every arm;
4. ``OUT/arms/<arm>_s<seed>``: one training workdir per arm and seed (:data:`ARMS`), all from the
   starting model with the same optimizer steps, batch size and learning rate;
5. ``OUT/evals/<arm>_s<seed>``: every model (the starting model too) on the test, validation and
   out-of-domain rows, by ``python -m irpo_jax.evaluate``'s own code;
6. ``OUT/report``: ``mini_irpo.md`` (tables with the paper's rows beside them, mean +- std over
   seeds, wall times, diagnostics from the runs' ``metrics.jsonl``), the PNG curves (the Fig. 6
   analogue) and the comparison page of IRPO against the supervised control
   (``python -m irpo_jax.compare``, ``compare_a_vs_b/index.html``). ``--publish`` copies the
   report into ``benchmarks/RESULTS.md`` (between its mini-IRPO markers) and the plots into
   ``benchmarks/mini_irpo/``.

The settings every arm shares are ``configs/mini_irpo.py`` (it lists each difference from
``configs/allinone5.py`` with its reason); the pilot (``--pilot``) trains IRPO and the control at
several learning rates with the validation rows evaluated along the way, and prints what it
would choose: settings are chosen on validation, never on the test images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

CONFIG = "configs/mini_irpo.py"
TASK_COLUMNS = ("dehaze", "derain", "denoise", "deblur", "lowlight")  # IRPO Tables 2-3's column order
TEST_COLUMNS = {
    "dehaze": "sots",
    "derain": "rain100l",
    "denoise": "bsd68_s25",
    "deblur": "gopro",
    "lowlight": "lol",
}  # the five-task table's rows (denoising at sigma 25, as Table 2)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm of the study: how it trains, and the paper's result it is the analogue of."""

    key: str
    label: str
    stage: str  # "grpo" or "supervised"
    data: str  # "hard" (the mined hard set), "random" (a random 30 %) or "all" (every pair)
    overrides: tuple[tuple[str, str], ...] = ()
    seeds: int = 1  # seeds in the full study (the quick setting runs one)
    paper: str = ""


ARMS: tuple[Arm, ...] = (
    Arm(
        "a",
        "IRPO (hard 30 %, G=4, L_RL + L_sup + L_cons)",
        "grpo",
        "hard",
        seeds=3,
        paper="Table 2: AdaIR 30.20 -> IRPO 31.03 dB (+0.83); Table 3 (OOD): 20.30 -> 23.73 dB (+3.43)",
    ),
    Arm("b", "control: supervised L1 on the same hard set", "supervised", "hard", seeds=3, paper="not in the paper"),
    Arm(
        "g",
        "IRPO without L_RL (heads frozen: L_sup + L_cons)",
        "grpo",
        "hard",
        (("optim.head_lr_mult", "0.0"),),
        seeds=3,
        paper="not in the paper",
    ),
    Arm("c", "supervised L1 on every pair", "supervised", "all", paper="not in the paper"),
    Arm(
        "h",
        "IRPO on every pair (the hard set's cost; (c) is its supervised control)",
        "grpo",
        "all",
        paper='Fig. 5: 100 % of the data, "comparable" to the hard 30 % (31.4 dB) at three times the cost',
    ),
    Arm(
        "d",
        "IRPO on a random 30 %",
        "grpo",
        "random",
        paper="Fig. 5: the hard 30 % (31.4 dB) above a random 30 % (read off the figure)",
    ),
    Arm("e2", "IRPO, G=2", "grpo", "hard", (("grpo.group_size", "2"),), paper="Table 5: no G=2 row"),
    Arm("e3", "IRPO, G=3", "grpo", "hard", (("grpo.group_size", "3"),), paper="Table 5: G=3 30.82 dB"),
    Arm(
        "e8",
        "IRPO, G=8",
        "grpo",
        "hard",
        (("grpo.group_size", "8"),),
        paper="Table 5: G=4 31.04, G=5 31.03 dB (no G=8 row)",
    ),
    Arm(
        "f_gen",
        "IRPO, reward R_gen only (PSNR + SSIM)",
        "grpo",
        "hard",
        (("reward.groups.task.weight", "0.0"),),
        paper="Table 4: + R_gen 30.78 dB (R_gen there also has LPIPS, CLIP, aesthetic)",
    ),
    Arm(
        "f_task",
        "IRPO, reward R_task only",
        "grpo",
        "hard",
        (("reward.groups.gen.weight", "0.0"),),
        paper="Table 4: + R_task 30.66 dB",
    ),
)
ARM_BY_KEY = {a.key: a for a in ARMS}
# The paper's ablation rows (five-task average PSNR, dB), beside ours in the report.
PAPER_ROWS = {
    "Table 4 (reward components)": {
        "Baseline (AdaIR)": 30.2,
        "+ R_gen": 30.78,
        "+ R_qwen": 30.46,
        "+ R_task": 30.66,
        "IRPO (all)": 31.04,
    },
    "Table 5 (group size)": {"G=3": 30.82, "G=4": 31.04, "G=5": 31.03},
}
PILOT_LRS = (3e-5, 1e-4, 3e-4)


@dataclasses.dataclass
class Settings:
    out: Path
    quick: bool = False
    steps: int | None = None  # None: the config's train.steps
    lr: float | None = None  # None: the config's optim.lr
    seeds: int | None = None  # None: each arm's own number
    only: tuple[str, ...] = ()
    progress: bool = True
    overrides: tuple[tuple[str, str], ...] = ()  # --set KEY=VALUE: config overrides of every arm

    @property
    def variant(self) -> str:
        return ",quick" if self.quick else ""


# --------------------------------------------------------------------------- small helpers


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(_REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _run(cmd: list[str], log: Path) -> float:
    """Runs ``cmd`` in the repository root, output appended to ``log``; returns its wall seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=_REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise SystemExit(f"{cmd[2] if len(cmd) > 2 else cmd[0]} failed (exit {rc}); the last lines of {log}:\n{tail}")
    return time.time() - t0


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _write_json(path: Path, value: Any) -> None:
    from irpo_jax import safe_files

    path.parent.mkdir(parents=True, exist_ok=True)
    safe_files.atomic_write_json(path, value, indent=1, sort_keys=True)


def _check_override(cfg, key: str, value: str) -> None:
    """A ``--set`` key must name an existing config value (a typo would otherwise fail in every
    arm's training process, after the data and the starting model were built)."""
    node = cfg
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            raise SystemExit(f"--set {key}={value}: {key!r} is not a key of {CONFIG} (see its fields)")
        node = node[part]


def _record_overrides(out: Path, overrides: tuple[tuple[str, str], ...]) -> None:
    """``OUT/overrides.json`` keeps the ``--set`` values the folder's runs were trained with; a
    rerun with other values is refused (its arms would resume, or mix with, runs of other settings)."""
    path = out / "overrides.json"
    wanted = [list(kv) for kv in overrides]
    found = _read_json(path)
    if found is None and any((out / d).exists() for d in ("arms", "pilot")):
        found = []  # runs from before any --set: trained without one
    if found is None:
        if wanted:
            _write_json(path, wanted)
        return
    if found != wanted:
        have = " ".join(f"--set {k}={v}" for k, v in found) or "no --set"
        raise SystemExit(
            f"{path}: the runs in {out} were trained with {have}; rerun with the same, or pass another --out"
        )


def _config(s: Settings, stage: str = "grpo", extra: str = ""):
    from irpo_jax import cli

    arg = ",".join(p for p in (("supervised" if stage == "supervised" else ""), s.variant.strip(","), extra) if p)
    return cli.load_config(str(_REPO / CONFIG) + (f":{arg}" if arg else ""))


def metrics_of(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


# --------------------------------------------------------------------------- the study


class Study:
    def __init__(self, s: Settings):
        self.s = s
        self.out = s.out.absolute()
        self.data = self.out / "data"
        self.start = self.out / "start"
        self.manifests = {"hard": self.out / "hard.jsonl", "random": self.out / "random30.jsonl", "all": None}
        base = _config(s)
        for key, value in s.overrides:
            _check_override(base, key, value)
        self.steps = int(s.steps or base.train.steps)
        self.lr = float(s.lr or base.optim.lr)
        self.variant = base.model.variant

    # ---- stages 1-3

    def build_data(self) -> None:
        from irpo_jax.data import minibench

        summary = minibench.build(self.data, seed=0, quick=self.s.quick)
        print(("built " if summary["built"] else "data: ") + str(self.data))

    def starting_model(self) -> dict:
        if (self.start / "summary.json").exists() and (self.start / "model" / "manifest.json").exists():
            return _read_json(self.start / "summary.json")
        print(f"training the starting model into {self.start} (log: {self.start}.log)")
        args = (
            [
                "--variant",
                "tiny",
                "--patch",
                "32",
                "--batch",
                "4",
                "--eval_every",
                "2",
                "--patience",
                "1",
                "--max_steps",
                "4",
            ]
            if self.s.quick
            else []
        )
        wall = _run(
            [
                sys.executable,
                "benchmarks/mini_irpo_pretrain.py",
                "--data",
                str(self.data),
                "--out",
                str(self.start),
                "--threads",
                "1",
                *args,
            ],
            self.out / "start.log",
        )
        summary = _read_json(self.start / "summary.json")
        summary["wall_s_last_invocation"] = round(wall, 1)
        return summary

    def mine(self) -> None:
        from irpo_jax.data import readers
        from irpo_jax.evaluation import mining

        cfg = _config(self.s)
        data = readers.resolve_config(cfg.data) | {"root": str(self.data), "manifest": ""}
        for name, selection in (("hard", "per_task"), ("random", "random")):
            path = self.manifests[name]
            if path.exists():
                continue
            print(f"mining {path.name} ({selection}) with {self.start / 'model'}")
            mining.mine(
                data,
                self.start / "model",
                path,
                fraction=cfg.mining.fraction,
                selection=selection,
                crop=int(cfg.mining.crop),
                batch_size=int(cfg.mining.batch_size),
                seed=0,
                progress=self.s.progress,
            )

    # ---- stage 4

    def runs(self) -> list[tuple[Arm, int]]:
        out = []
        for arm in ARMS:
            if self.s.only and arm.key not in self.s.only:
                continue
            n = 1 if self.s.quick else (self.s.seeds or arm.seeds)
            out += [(arm, seed) for seed in range(n)]
        return out

    def workdir(self, arm: Arm, seed: int, root: str = "arms") -> Path:
        return self.out / root / f"{arm.key}_s{seed}"

    def train_command(self, arm: Arm, seed: int, workdir: Path, *, lr: float, steps: int, extra: str = "") -> list[str]:
        arg = ",".join(
            p for p in (("supervised" if arm.stage == "supervised" else ""), self.s.variant.strip(","), extra) if p
        )
        manifest = self.manifests[arm.data]
        cmd = [
            sys.executable,
            "-m",
            "irpo_jax.train",
            f"--config={CONFIG}" + (f":{arg}" if arg else ""),
            f"--workdir={workdir}",
            f"--config.seed={seed}",
            f"--config.data.root={self.data}",
            f"--config.model.init_from={self.start / 'model'}",
            f"--config.data.manifest={manifest if manifest else 'all'}",
            f"--config.train.steps={steps}",
            f"--config.optim.lr={lr}",
            "--progress=false",
        ]
        # --set first: an arm's own overrides (e.g. (g)'s frozen heads) are what make it that arm
        return cmd + [f"--config.{k}={v}" for k, v in (*self.s.overrides, *arm.overrides)]

    @staticmethod
    def finished(workdir: Path) -> bool:
        summary = _read_json(workdir / "summary.json")
        return bool(summary) and summary.get("steps") == summary.get("total_steps") and (workdir / "model").is_dir()

    def train(self, arm: Arm, seed: int, workdir: Path, **kw) -> None:
        if self.finished(workdir):
            return
        print(f"training {workdir.name}: {arm.label}", flush=True)
        wall = _run(self.train_command(arm, seed, workdir, **kw), workdir.with_suffix(".log"))
        record = _read_json(workdir / "wall.json") or {"seconds": 0.0, "invocations": 0}
        record = {"seconds": record["seconds"] + wall, "invocations": record["invocations"] + 1}
        _write_json(workdir / "wall.json", record)

    # ---- stage 5

    def evaluate(self, name: str, model: Path, *, save_images: bool, oracle_k: int = 0) -> dict:
        """``results.json`` of ``model`` on every row (test, val, ood), computed once (and with
        ``oracle_k``, a best-of-K oracle on the validation rows into ``oracle/``)."""
        from irpo_jax import evaluate
        from irpo_jax.data import minibench

        out = self.out / "evals" / name
        config = CONFIG + (f":{self.s.variant.strip(',')}" if self.s.quick else "")
        # --overwrite: these folders are the runner's own; what an interrupted evaluation left is replaced.
        common = ["--checkpoint", str(model), "--config", config, "--data_root", str(self.data), "--overwrite"]
        rows = [*minibench.rows("test"), *minibench.rows("val"), *minibench.rows("ood")]
        t0 = time.time()
        if not sorted(out.glob("eval/*/results.json")):
            args = common + ["--sets", ",".join(rows), "--out", str(out)] + (["--save_images"] if save_images else [])
            if evaluate.main(args):
                raise SystemExit(f"evaluating {model} failed (see above)")
        if oracle_k and not sorted((out / "oracle").glob("eval/*/results.json")):
            # Best-of-K sampled restorations on the validation rows: how far the actions can move PSNR.
            args = common + [
                "--sets",
                ",".join(minibench.rows("val")),
                "--out",
                str(out / "oracle"),
                "--oracle_k",
                str(oracle_k),
            ]
            if evaluate.main(args):
                raise SystemExit(f"the oracle evaluation of {model} failed (see above)")
        if not (out / "seconds.json").exists():
            _write_json(out / "seconds.json", {"seconds": round(time.time() - t0, 1)})
        return json.loads(sorted(out.glob("eval/*/results.json"))[0].read_text())

    # ---- everything

    def run(self) -> None:
        self.build_data()
        self.starting_model()
        self.mine()
        runs = self.runs()
        for arm, seed in runs:
            self.train(arm, seed, self.workdir(arm, seed), lr=self.lr, steps=self.steps)
        self.evaluate("start", self.start / "model", save_images=True)
        for arm, seed in runs:
            first = seed == 0 and arm.key in ("a", "b")
            self.evaluate(
                f"{arm.key}_s{seed}",
                self.workdir(arm, seed) / "model",
                save_images=first,
                oracle_k=4 if (seed == 0 and arm.key in ("a", "g")) else 0,
            )
        self.compare()
        report(self)

    def compare(self) -> None:
        from irpo_jax import compare

        for a, b, name in (("b_s0", "a_s0", "compare_a_vs_b"), ("start", "a_s0", "compare_start_vs_a")):
            page = self.out / "report" / name
            ra, rb = self.out / "evals" / a, self.out / "evals" / b
            if (page / "index.html").exists() or not (ra.exists() and rb.exists()):
                continue
            if compare.main([str(sorted(ra.glob("eval/*"))[0]), str(sorted(rb.glob("eval/*"))[0]), "--out", str(page)]):
                raise SystemExit(f"the comparison page {page} failed (see above)")

    # ---- the pilot

    def pilot(self, lrs: tuple[float, ...] = PILOT_LRS) -> dict:
        """IRPO (a) and the control (b), seed 0, at each learning rate, with the validation rows
        evaluated every 100 steps (configs/mini_irpo.py:pilot; ``--only`` picks other arms, e.g.
        ``a`` alone or ``h,c``); the choice: the learning rate and step count with the best
        validation average of an IRPO arm (the control then gets the same, as the study requires;
        its curves show whether that choice favours IRPO)."""
        self.build_data()
        self.starting_model()
        self.mine()
        table = {}
        for lr in lrs:
            for key in self.s.only or ("a", "b"):
                arm = ARM_BY_KEY[key]
                workdir = self.out / "pilot" / f"{key}_lr{lr:g}"
                self.train(arm, 0, workdir, lr=lr, steps=self.steps, extra="pilot")
                curve = {r["step"]: r["eval/average/psnr"] for r in metrics_of(workdir) if "eval/average/psnr" in r}
                table[f"{key} lr={lr:g}"] = curve
        start = self.evaluate("start", self.start / "model", save_images=True)
        from irpo_jax.data import minibench

        val0 = float(np.mean([start["rows"][r]["psnr"] for r in minibench.rows("val")]))
        best = max(
            (
                (name, step, v)
                for name, c in table.items()
                if ARM_BY_KEY[name.split()[0]].stage == "grpo"
                for step, v in c.items()
            ),
            key=lambda t: t[2],
            default=None,
        )
        result = {"start_val_psnr": val0, "curves": table, "choice": best, "steps": self.steps}
        _write_json(self.out / "pilot" / "pilot.json", result)
        lines = [
            f"pilot (validation average PSNR, dB; the starting model: {val0:.3f})",
            "| run | " + " | ".join(f"step {k}" for k in sorted({k for c in table.values() for k in c})) + " |",
        ]
        steps = sorted({k for c in table.values() for k in c})
        lines.append("|:--|" + "--:|" * len(steps))
        for name, c in table.items():
            lines.append(f"| {name} | " + " | ".join(f"{c[k]:.3f}" if k in c else "" for k in steps) + " |")
        if best:
            lines.append(f"choice (best IRPO validation average): {best[0]} at step {best[1]}: {best[2]:.3f} dB")
        text = "\n".join(lines)
        (self.out / "pilot" / "pilot.md").write_text(text + "\n")
        print(text)
        return result


# --------------------------------------------------------------------------- step times


def _program(arm: Arm) -> tuple[str, int]:
    """What decides an arm's step cost: its stage and G."""
    g = dict(arm.overrides).get("grpo.group_size", "4")
    return (arm.stage, int(g) if arm.stage == "grpo" else 0)


def timing(study: Study, steps: int = 8, budget_h: float = 6.0) -> dict:
    """Measures each distinct step program of the study (supervised; GRPO at every G) in this
    process, with a random model and random 64-pixel batches (the cost does not depend on the
    weights), and projects the study's training time: ``steps`` timed steps after two untimed
    ones (the compile), wall and process CPU seconds per step, and the load average.

    The projection counts optimizer steps x runs per program; the measured compile once per
    distinct program (runs that differ only in their seed or data share theirs through the
    persistent compilation cache); 60 s per run for the process start and data scan; 1 minute per
    evaluated model; and the largest step count that fits ``budget_h`` hours.
    On a quiet 2-core machine the wall time of a step is between CPU/2 and CPU (XLA:CPU's
    parallelism on a small model); the CPU column is what a loaded machine cannot inflate.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from irpo_jax import training
    from irpo_jax.mesh import make_mesh, on_mesh
    from irpo_jax.models import adair
    from irpo_jax.models.policy import IRPOPolicy, PolicyConfig
    from irpo_jax.rewards import compose

    cfg = _config(study.s)
    mesh = make_mesh(jax.devices()[:1])
    rng = np.random.default_rng(0)
    p = int(cfg.data.patch_size)
    b = int(cfg.train.batch_size)
    clean = rng.uniform(size=(b, p, p, 3)).astype(np.float32)
    batch = {
        "clean": jnp.asarray(clean),
        "task_id": jnp.asarray(np.arange(b) % 5, jnp.int32),
        "degraded": jnp.asarray(np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)),
    }
    names = tuple(n for n in compose.active_components(cfg.reward) if compose.REWARDS[n].backend == "jax")
    programs = sorted({_program(a) for a, _ in study.runs()})
    result = {"load_before": os.getloadavg(), "variant": cfg.model.variant, "patch": p, "batch": b, "programs": {}}
    for stage, group in programs:
        c = cfg.copy_and_resolve_references()
        c.grpo.group_size = max(group, 1)
        net = adair.AdaIR(c.model.variant, rngs=nnx.Rngs(0))
        model = (
            net
            if stage == "supervised"
            else IRPOPolicy(net.config, PolicyConfig.from_dict(c.model.policy.to_dict()), rngs=nnx.Rngs(0))
        )
        graphdef, params = nnx.split(model, nnx.Param)
        params = nnx.to_pure_dict(params)
        tx = training.build_optimizer(c, params, study.steps)
        state = training.TrainState.initial(params, tx, 0, with_ref=stage == "grpo")
        if stage == "supervised":
            step_fn = on_mesh(mesh, jax.jit(training.make_supervised_step(graphdef, tx), donate_argnums=0))

            def one(state, i):
                return step_fn(state, batch)[0]  # noqa: B023 - called in this iteration
        else:
            rollout_fn = on_mesh(mesh, jax.jit(training.make_rollout_step(graphdef, c, names)))
            update_fn = on_mesh(
                mesh,
                jax.jit(training.make_grpo_update(graphdef, tx, c, study.steps, constant_ref=True), donate_argnums=0),
            )

            def one(state, i):
                rollout = rollout_fn(state.params, batch, jax.random.key(i))  # noqa: B023 - called in this iteration
                return update_fn(state, batch, rollout, {})[0]  # noqa: B023 - called in this iteration

        t0 = time.time()
        for i in range(2):
            state = jax.block_until_ready(one(state, i))
        compile_s = time.time() - t0
        w0, c0 = time.time(), time.process_time()
        for i in range(steps):
            state = jax.block_until_ready(one(state, 2 + i))
        wall, cpu = (time.time() - w0) / steps, (time.process_time() - c0) / steps
        key = f"{stage} G={group}" if group else stage
        result["programs"][key] = {"wall_s": wall, "cpu_s": cpu, "compile_and_2_steps_s": compile_s}
        print(f"{key}: {wall:.3f} s/step wall, {cpu:.3f} s/step CPU (compile + 2 steps {compile_s:.0f} s)", flush=True)
    result["load_after"] = os.getloadavg()
    runs = study.runs()
    per_study_step = overhead = 0.0
    compiled = set()
    for arm, _ in runs:
        stage, group = _program(arm)
        r = result["programs"][f"{stage} G={group}" if group else stage]
        per_study_step += r["cpu_s"]
        program = (stage, tuple(sorted(arm.overrides)))  # what is baked into the compiled step
        overhead += 60.0 + (r["compile_and_2_steps_s"] if program not in compiled else 0.0)
        compiled.add(program)
    overhead += 60.0 * (len(runs) + 1)  # evaluations
    fits = max(0, int((budget_h * 3600 - overhead) / per_study_step))
    result["projection"] = {
        "runs": len(runs),
        "steps": study.steps,
        "cpu_s_per_study_step": per_study_step,
        "overhead_s": overhead,
        "compiled_programs": len(compiled),
        "hours_if_one_core": (study.steps * per_study_step + overhead) / 3600,
        "hours_if_two_cores": (study.steps * per_study_step / 2 + overhead) / 3600,
        f"steps_that_fit_{budget_h:g}h_one_core": fits,
    }
    _write_json(study.out / "timing.json", result)
    pr = result["projection"]
    print(
        f"projection: {pr['runs']} runs x {pr['steps']} steps, {per_study_step:.1f} CPU-s per step of every run "
        f"together, {overhead / 3600:.2f} h of starts, {len(compiled)} compiles and evaluations -> "
        f"{pr['hours_if_two_cores']:.2f} h (steps on both cores) to {pr['hours_if_one_core']:.2f} h "
        f"(one core); {fits} steps per arm fit {budget_h:g} h on one core; load {result['load_before']} -> "
        f"{result['load_after']}"
    )
    return result


# --------------------------------------------------------------------------- the report


def _scores(study: Study, name: str) -> dict | None:
    found = sorted((study.out / "evals" / name).glob("eval/*/results.json"))
    return json.loads(found[0].read_text()) if found else None


def _row_psnr(results: dict, row: str) -> float:
    return float(results["rows"][row]["psnr"])


def split_columns(split: str) -> dict[str, str]:
    """Task -> row of a split, in the paper's column order."""
    if split == "test":
        return dict(TEST_COLUMNS)
    return {t: f"{split}_{t}" for t in TASK_COLUMNS}


def arm_table(
    study: Study, split: str, names: list[tuple[str, list[str]]], metric: str = "psnr", paper=None
) -> tuple[str, dict]:
    """A markdown table of ``split`` (test/val/ood): per task and the average, mean +- std over
    each entry's seeds, and the difference of the average from the starting model; with
    ``paper`` (a :class:`irpo_jax.evaluation.published.Table`), its AdaIR and IRPO rows at the bottom, in
    italics, with IRPO's difference from AdaIR (the shape to compare, not the values)."""
    cols = split_columns(split)
    start = _scores(study, "start")
    base = float(np.mean([start["rows"][r][metric] for r in cols.values()])) if start else math.nan
    fmt = "{:.2f}" if metric == "psnr" else "{:.3f}"
    lines = [
        "| model | seeds | " + " | ".join(cols) + " | average | vs start |",
        "|:--|:-:|" + "--:|" * (len(cols) + 2),
    ]
    numbers = {}
    for label, runs in names:
        results = [r for r in (_scores(study, n) for n in runs) if r is not None]
        if not results:
            continue
        cells, per_seed_avg = [], [float(np.mean([r["rows"][row][metric] for row in cols.values()])) for r in results]
        for row in cols.values():
            m, sd = _mean_std([r["rows"][row][metric] for r in results])
            cells.append(fmt.format(m) + (f" ± {fmt.format(sd)}" if len(results) > 1 else ""))
        m, sd = _mean_std(per_seed_avg)
        avg = fmt.format(m) + (f" ± {fmt.format(sd)}" if len(results) > 1 else "")
        delta = f"{m - base:+.2f}" if metric == "psnr" else f"{m - base:+.3f}"
        lines.append(f"| {label} | {len(results)} | " + " | ".join(cells) + f" | {avg} | {delta} |")
        numbers[label] = per_seed_avg
    if paper is not None:
        k = 0 if metric == "psnr" else 1
        for method, name in (("adair", "AdaIR"), ("irpo", "IRPO")):
            cells = [fmt.format(paper.values[method][r][k]) for r in paper.rows]
            avg = paper.average[method][k]
            delta = avg - paper.average["adair"][k]
            delta = f"{delta:+.2f}" if metric == "psnr" else f"{delta:+.3f}"
            lines.append(
                f"| *paper: {name} (base model, real data)* | | "
                + " | ".join(f"*{c}*" for c in cells)
                + f" | *{fmt.format(avg)}* | *{delta}* |"
            )
    return "\n".join(lines), numbers


def welch(x: list[float], y: list[float]) -> str:
    """``mean(x) - mean(y)`` with its standard error and whether it exceeds twice that."""
    mx, sx = _mean_std(x)
    my, sy = _mean_std(y)
    d = mx - my
    if len(x) < 2 or len(y) < 2:
        return f"{d:+.3f} dB (one seed: no spread)"
    se = math.sqrt(sx**2 / len(x) + sy**2 / len(y))
    verdict = "beyond" if abs(d) > 2 * se else "within"
    return f"{d:+.3f} dB, standard error {se:.3f} dB: {verdict} twice the seeds' standard error"


def _smooth(xs: np.ndarray, ys: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    if len(ys) < window or window < 2:
        return xs, ys
    kernel = np.ones(window) / window
    return xs[window - 1 :], np.convolve(ys, kernel, mode="valid")


def plot_lines(
    path: Path,
    title: str,
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    xlabel: str,
    ylabel: str,
    size: tuple[int, int] = (720, 420),
) -> None:
    """A line plot drawn with PIL (no plotting library in the environment): axes, ticks, legend."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 70, 190, 40, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    series = {k: (np.asarray(x, float), np.asarray(y, float)) for k, (x, y) in series.items() if len(x)}
    d.text((left, 8), title, fill="black")
    if not series:
        d.text((left, h // 2), "no data", fill="black")
        img.save(path)
        return
    xs = np.concatenate([x for x, _ in series.values()])
    ys = np.concatenate([y[np.isfinite(y)] for _, y in series.values()])
    x0, x1 = float(xs.min()), float(xs.max()) or 1.0
    y0, y1 = float(ys.min()), float(ys.max())
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad
    px = lambda x: left + (x - x0) / max(x1 - x0, 1e-12) * (w - left - right)  # noqa: E731
    py = lambda y: h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)  # noqa: E731
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(6):
        yv = y0 + (y1 - y0) * i / 5
        d.line([left - 4, py(yv), left, py(yv)], fill="black")
        d.text((4, py(yv) - 6), f"{yv:.4g}", fill="black")
        xv = x0 + (x1 - x0) * i / 5
        d.line([px(xv), h - bottom, px(xv), h - bottom + 4], fill="black")
        d.text((px(xv) - 12, h - bottom + 8), f"{xv:.4g}", fill="black")
    d.text(((left + w - right) // 2 - 20, h - 18), xlabel, fill="black")
    d.text((left, 22), ylabel, fill="#555555")
    palette = [
        "#1f77b4",
        "#d62728",
        "#2ca02c",
        "#ff7f0e",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#7f7f7f",
        "#17becf",
        "#bcbd22",
    ]
    for i, (name, (x, y)) in enumerate(series.items()):
        color = palette[i % len(palette)]
        ok = np.isfinite(y)
        pts = [(px(a), py(b)) for a, b in zip(x[ok], y[ok])]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2)
        elif pts:
            d.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=color)
        d.line([w - right + 10, top + 10 + 16 * i, w - right + 30, top + 10 + 16 * i], fill=color, width=3)
        d.text((w - right + 34, top + 4 + 16 * i), name[:24], fill="black")
    img.save(path)


DIAGNOSTIC_KEYS = (
    "reward/total/mean",
    "reward/psnr/mean",
    "reward/ssim/mean",
    "reward/task/mean",
    "reward/frac_zero_std",
    "reward/total/std",
    "loss/total",
    "loss/rl",
    "loss/sup",
    "loss/cons",
    "loss/l1",
    "grpo/entropy",
    "grpo/kl_ref",
    "grpo/clipfrac",
    "opt/grad_norm",
    "probe/reward/total/mean",
    "reward/corr_psnr",
)
ACTION_PREFIX = "actions/"  # issue 23: actions/{fre}/{action}/mean|concentration, actions/{fre}/mask_changed


def diagnostics(records: list[dict]) -> dict[str, tuple[float, float]]:
    """``{key: (mean over the first 10 % of the logged records, over the last 10 %)}`` of the
    diagnostic keys and every ``actions/...`` key present; absent keys are left out."""
    keys = [k for k in DIAGNOSTIC_KEYS if any(k in r for r in records)]
    keys += sorted({k for r in records for k in r if k.startswith(ACTION_PREFIX)})
    out = {}
    for k in keys:
        values = [(r["step"], r[k]) for r in records if k in r and r[k] is not None and np.isfinite(r[k])]
        if not values:
            continue
        n = max(1, len(values) // 10)
        out[k] = (float(np.mean([v for _, v in values[:n]])), float(np.mean([v for _, v in values[-n:]])))
    return out


FRES = ("fre1", "fre2", "fre3")
ACTIONS = ("r_h", "r_l", "g_f", "g_o")


def diagnostics_section(metrics: dict[str, list[dict]], rep: Path | None = None) -> list[str]:
    """The report's diagnostics from each run's metrics records: the losses, rewards and policy
    statistics (first 10 % -> last 10 % of the logged steps); the action statistics and the
    reward's within-group correlation with PSNR where the trainer logs them (issue 23), as a table
    per frequency module and as curves (``rep/action_curves.png``, ``rep/corr_psnr.png``); a line
    naming what this trainer does not log."""
    md = ["### Diagnostics (from each run's metrics.jsonl: first 10 % -> last 10 % of the logged steps)", ""]
    diag = {name: d for name, recs in metrics.items() if (d := diagnostics(recs))}
    keys = []
    for d in diag.values():
        keys += [k for k in d if k not in keys and not k.startswith(ACTION_PREFIX)]
    for chunk in range(0, len(keys), 6):
        ks = keys[chunk : chunk + 6]
        md += ["| run | " + " | ".join(ks) + " |", "|:--|" + "--:|" * len(ks)]
        md += [
            f"| {name} | " + " | ".join(f"{d[k][0]:.4g} -> {d[k][1]:.4g}" if k in d else "" for k in ks) + " |"
            for name, d in diag.items()
        ]
        md.append("")
    acted = {name: d for name, d in diag.items() if any(k.startswith(ACTION_PREFIX) for k in d)}
    if acted:
        md += [
            "Action statistics per frequency module (Beta means of the sampled actions, their mean "
            "concentration alpha + beta over the four actions, and the share of rollouts whose mask differs "
            "from AdaIR's; first 10 % -> last 10 %):",
            "",
            "| run | module | " + " | ".join(ACTIONS) + " | concentration | mask changed |",
            "|:--|:--|" + "--:|" * (len(ACTIONS) + 2),
        ]
        for name, d in acted.items():
            for fre in FRES:
                cells = []
                for a in ACTIONS:
                    v = d.get(f"actions/{fre}/{a}/mean")
                    cells.append(f"{v[0]:.3f} -> {v[1]:.3f}" if v else "")
                conc = [d[k] for a in ACTIONS if (k := f"actions/{fre}/{a}/concentration") in d]
                cells.append(
                    f"{np.mean([c[0] for c in conc]):.3g} -> {np.mean([c[1] for c in conc]):.3g}" if conc else ""
                )
                v = d.get(f"actions/{fre}/mask_changed")
                cells.append(f"{v[0]:.3f} -> {v[1]:.3f}" if v else "")
                if any(cells):
                    md.append(f"| {name} | {fre} | " + " | ".join(cells) + " |")
        md.append("")
        if rep is not None:
            first = next(iter(acted))
            recs = metrics[first]
            series = {}
            for fre in FRES:
                key = f"actions/{fre}/mask_changed"
                pts = [(r["step"], r[key]) for r in recs if key in r]
                if pts:
                    series[f"{fre} mask changed"] = tuple(np.array(v, float) for v in zip(*pts))
                for a in ACTIONS:
                    pts = [(r["step"], r[f"actions/{fre}/{a}/mean"]) for r in recs if f"actions/{fre}/{a}/mean" in r]
                    if pts:
                        series[f"{fre} {a}"] = tuple(np.array(v, float) for v in zip(*pts))
            plot_lines(rep / "action_curves.png", f"{first}: action means and mask changes", series, "step", "")
            md += [f"![{first}'s action statistics](action_curves.png)", ""]
    if rep is not None and any("reward/corr_psnr" in d for d in diag.values()):
        series = {}
        for name, recs in metrics.items():
            pts = [(r["step"], r["reward/corr_psnr"]) for r in recs if "reward/corr_psnr" in r]
            if pts:
                series[name] = _smooth(*(np.array(v, float) for v in zip(*pts)), 5)
        plot_lines(
            rep / "corr_psnr.png",
            "within-group correlation of the reward with PSNR (moving average of 5)",
            series,
            "step",
            "corr",
        )
        md += ["![the reward's within-group correlation with PSNR](corr_psnr.png)", ""]
    absent = [k for k in ("reward/corr_psnr",) if not any(k in d for d in diag.values())]
    if not acted:
        absent.append("actions/*")
    if absent and diag:
        md += [f"Not logged by this version of the trainer: {', '.join(absent)} (issue 23 adds them).", ""]
    return md


def _flat_params(module) -> dict[str, np.ndarray]:
    """A module's parameters as ``{"dotted.path": array}``."""
    from flax import nnx

    flat = {}

    def walk(prefix, tree):
        for k, v in tree.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                flat[f"{prefix}{k}"] = np.asarray(v)

    walk("", nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    return flat


def _params(model_dir: Path) -> dict[str, np.ndarray]:
    from irpo_jax import checkpointing

    module, _ = checkpointing.restore_model(model_dir)
    return _flat_params(module)


def para1_of(model_dir: Path) -> dict[str, float]:
    """Mean |para1| per FreModule (``fre1..3``) of a model directory (AdaIR or a policy's backbone)."""
    out = {}
    for k, v in _params(model_dir).items():
        if k.endswith("para1"):
            module = next(p for p in k.split(".") if p.startswith("fre"))
            out[module] = float(np.abs(v).mean())
    return dict(sorted(out.items()))


def heads_change(start_policy: dict[str, np.ndarray] | None, model_dir: Path) -> float | None:
    """||heads - heads at step 0|| / ||heads at step 0|| of a trained policy (None for AdaIR)."""
    p = _params(model_dir)
    heads = {k: v for k, v in p.items() if k.startswith("heads.")}
    if not heads or start_policy is None:
        return None
    num = math.sqrt(sum(float(((heads[k] - start_policy[k]) ** 2).sum()) for k in heads))
    den = math.sqrt(sum(float((start_policy[k] ** 2).sum()) for k in heads))
    return num / max(den, 1e-12)


def step0_heads(study: Study, seed: int) -> dict[str, np.ndarray]:
    """The policy heads a GRPO run of ``seed`` starts with (built as the trainer builds them)."""
    from flax import nnx

    from irpo_jax import checkpointing
    from irpo_jax.models.policy import IRPOPolicy, PolicyConfig

    base, _ = checkpointing.restore_model(study.start / "model")
    cfg = _config(study.s)
    policy = IRPOPolicy(base.config, PolicyConfig.from_dict(cfg.model.policy.to_dict()), rngs=nnx.Rngs(seed))
    return {k: v for k, v in _flat_params(policy).items() if k.startswith("heads.")}


def report(study: Study) -> Path:
    """Writes ``OUT/report/mini_irpo.md`` and the plots from whatever has run; returns the file."""
    from irpo_jax.evaluation.published import TABLES

    rep = study.out / "report"
    rep.mkdir(parents=True, exist_ok=True)
    runs = study.runs()
    by_arm: dict[str, list[str]] = {}
    for arm, seed in runs:
        by_arm.setdefault(arm.key, []).append(f"{arm.key}_s{seed}")
    entries = [("starting model", ["start"])] + [(f"({k}) {ARM_BY_KEY[k].label}", v) for k, v in by_arm.items()]

    md = [
        "## Mini-IRPO: IRPO against a matched supervised control (issue 24)",
        "",
        f"`python benchmarks/mini_irpo.py{' --quick' if study.s.quick else ''}`: every arm starts from the same "
        f"starting model and trains {study.steps} optimizer steps at batch 2, learning rate {study.lr:g} "
        "(configs/mini_irpo.py lists what differs from configs/allinone5.py and why)"
        + ("".join(f", with {k}={v}" for k, v in study.s.overrides) + " in every arm" if study.s.overrides else "")
        + ". PSNR in dB, mean ± std over seeds (sample std) where an arm has several.",
        "",
    ]
    start = _read_json(study.start / "summary.json")
    if start:
        curve = _read_json(study.start / "curve.json") or []
        md += [
            "### The starting model",
            "",
            f"`{study.variant}` AdaIR, PyTorch reference trained supervised (L1, AdamW, batch "
            f"{start['recipe']['batch']} of {start['recipe']['patch']}-px crops, lr {start['recipe']['lr']:g} "
            f"halved on validation plateaus) for {start['steps']} steps ({start['stopped']}); best validation "
            f"average {start['best_val_psnr']:.3f} dB at step {start['best_step']}; converted with "
            "`torch_bridge.convert_adair --verify`. Mean |para1| (the FreModules' injection weights, 0 at "
            "initialisation): "
            + ", ".join(f"{k} {v['mean_abs']:.3g} (max {v['max_abs']:.3g})" for k, v in start["para1"].items())
            + ".",
            "",
        ]
        if curve:
            plot_lines(
                rep / "start_val_curve.png",
                "starting model: validation PSNR (dB)",
                {"val average": (np.array([c["step"] for c in curve]), np.array([c["val/average"] for c in curve]))},
                "step",
                "PSNR",
            )
            md += ["![starting model's validation curve](start_val_curve.png)", ""]

    for split, title, paper in (
        ("test", "In domain (the five-task table; IRPO Table 2)", TABLES["allinone5"][0]),
        ("ood", "Out of domain (IRPO Table 3)", TABLES["allinone5"][1]),
        ("val", "Validation (settings were chosen on these)", None),
    ):
        table, numbers = arm_table(study, split, entries, paper=paper)
        md += [f"### {title}", "", table, ""]
        if paper is not None:
            md += [
                f"The italic rows: {paper.title}; their columns are the real sets in the same task order "
                f'({", ".join(paper.rows)}); "vs start" there is IRPO\'s gain over AdaIR.',
                "",
            ]
        a, b, g = (numbers.get(f"({k}) {ARM_BY_KEY[k].label}") for k in ("a", "b", "g"))
        if a and b:
            md.append(f"(a) - (b), {split}: {welch(a, b)}.")
        if a and g:
            md.append(f"(a) - (g), {split}: {welch(a, g)} (what L_RL adds).")
        h, c = (numbers.get(f"({k}) {ARM_BY_KEY[k].label}") for k in ("h", "c"))
        if h and c:
            md.append(f"(h) - (c), {split}: {welch(h, c)} (IRPO against supervised fine-tuning, both on every pair).")
        md.append("")
        if split == "test":
            ssim_table, _ = arm_table(study, split, entries, metric="ssim", paper=paper)
            md += ["SSIM:", "", ssim_table, ""]

    md += ["### The paper's ablation rows (five-task average PSNR, real data, base model)", ""]
    for name, rows in PAPER_ROWS.items():
        md.append(f"* {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in rows.items()))
    md += [
        "* Fig. 5: the hardest 30 % gives 31.4 dB (+1.2 over AdaIR's 30.2), above random subsets of the same "
        "size (read off the figure; the values are not printed)",
        "",
    ]

    # Wall times and per-step times.
    md += [
        "### Wall time per arm",
        "",
        "| run | wall (min) | invocations | steps | s/step | evaluation (s) |",
        "|:--|--:|--:|--:|--:|--:|",
    ]
    for arm, seed in runs:
        wd = study.workdir(arm, seed)
        wall = _read_json(wd / "wall.json")
        summ = _read_json(wd / "summary.json") or {}
        ev = _read_json(study.out / "evals" / f"{arm.key}_s{seed}" / "seconds.json") or {}
        if wall:
            steps = summ.get("steps") or 0
            md.append(
                f"| {arm.key}_s{seed} | {wall['seconds'] / 60:.1f} | {wall['invocations']} | {steps} | "
                f"{wall['seconds'] / max(steps, 1):.2f} | {ev.get('seconds', '')} |"
            )
    md += ["", "Wall time includes the process start, the compilation and the data scan; s/step is wall / steps.", ""]

    # Diagnostics.
    md += diagnostics_section({f"{a.key}_s{sd}": metrics_of(study.workdir(a, sd)) for a, sd in runs}, rep)
    policy_runs = [(a, s) for a, s in runs if a.stage == "grpo" and (study.workdir(a, s) / "model").is_dir()]
    para = {"start": para1_of(study.start / "model")} if (study.start / "model").is_dir() else {}
    changes = {}
    for arm, seed in runs:
        wd = study.workdir(arm, seed)
        if (wd / "model").is_dir() and seed == 0:
            para[f"{arm.key}_s0"] = para1_of(wd / "model")
    for arm, seed in policy_runs:
        changes[f"{arm.key}_s{seed}"] = heads_change(step0_heads(study, seed), study.workdir(arm, seed) / "model")
    if para:
        md += [
            "Mean |para1| per FreModule (how much the frequency modules feed the decoder):",
            "",
            "| model | " + " | ".join(FRES) + " |",
            "|:--|" + "--:|" * len(FRES),
        ]
        md += [f"| {k} | " + " | ".join(f"{p[f]:.4g}" if f in p else "" for f in FRES) + " |" for k, p in para.items()]
        md.append("")
    if changes:
        md += [
            "Relative change of the policy heads' parameters from step 0 (||Δθ|| / ||θ_0||): "
            + ", ".join(f"{k} {v:.3g}" for k, v in changes.items() if v is not None),
            "",
        ]
    oracle = []
    for name in ("a_s0", "g_s0"):
        found = sorted((study.out / "evals" / name / "oracle").glob("eval/*/results.json"))
        if found:
            r = json.loads(found[0].read_text())
            det = r["average"]["psnr"]
            orc = r["oracle"]["average"]["psnr"]
            oracle.append(
                f"{name}: deterministic {det:.3f}, best of {r['oracle']['k']} sampled {orc:.3f} ({orc - det:+.3f})"
            )
    if oracle:
        md += [
            "Best-of-K oracle on the validation rows (how far the sampled actions can move PSNR; it uses the "
            "ground truth, an upper bound, never a result): " + "; ".join(oracle) + ".",
            "",
        ]

    # Curves (the Fig. 6 analogue).
    def curve(name: str, key: str, window: int = 1):
        recs = [(r["step"], r[key]) for r in metrics_of(study.out / "arms" / name) if key in r]
        if not recs:
            return np.array([]), np.array([])
        x, y = (np.array(v, float) for v in zip(*recs))
        return _smooth(x, y, window)

    grpo_names = [f"{a.key}_s{s}" for a, s in runs if a.stage == "grpo"]
    plots = {
        "reward_curves.png": ("mean reward per step (moving average of 5 logs)", "reward/total/mean", 5),
        "probe_reward_curves.png": ("reward on 4 fixed training batches (probe)", "probe/reward/total/mean", 1),
        "loss_curves.png": ("IRPO total loss (moving average of 5 logs)", "loss/total", 5),
    }
    for fname, (title, key, window) in plots.items():
        names = grpo_names
        if key == "loss/total":
            names = [n for n in grpo_names if n.startswith("a_")]
        plot_lines(rep / fname, title, {n: curve(n, key, window) for n in names}, "step", key)
        md += [f"![{title}]({fname})", ""]
    sup = [f"{a.key}_s{s}" for a, s in runs if a.stage == "supervised"]
    plot_lines(
        rep / "supervised_loss_curves.png",
        "supervised arms: L1 (moving average of 5 logs)",
        {n: curve(n, "loss/l1", 5) for n in sup},
        "step",
        "L1",
    )
    md += ["![supervised arms' L1](supervised_loss_curves.png)", ""]
    if (rep / "compare_a_vs_b" / "index.html").exists():
        md += [
            "Comparison page of (a) IRPO against (b) the supervised control, seed 0, every row: "
            "`compare_a_vs_b/index.html` (and `compare_start_vs_a/index.html`).",
            "",
        ]
    path = rep / "mini_irpo.md"
    path.write_text("\n".join(md) + "\n")
    print(f"wrote {path}")
    return path


BEGIN, END = "<!-- mini_irpo:begin -->", "<!-- mini_irpo:end -->"


def publish(
    study: Study,
    results_md: Path = _REPO / "benchmarks" / "RESULTS.md",
    plots_dir: Path = _REPO / "benchmarks" / "mini_irpo",
) -> None:
    """Copies the report into RESULTS.md (between the markers; appended the first time) and its
    plots into ``benchmarks/mini_irpo/`` (image links rewritten)."""
    rep = study.out / "report"
    plots_dir.mkdir(parents=True, exist_ok=True)
    text = (rep / "mini_irpo.md").read_text()
    for png in rep.glob("*.png"):
        shutil.copy2(png, plots_dir / png.name)
        text = text.replace(f"]({png.name})", f"](mini_irpo/{png.name})")
    block = f"{BEGIN}\n{text}{END}\n"
    current = results_md.read_text()
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        current = head + block + ("\n" + after if after else "")  # the text after keeps its blank line
    else:
        current = current.rstrip("\n") + "\n\n" + block
    results_md.write_text(current)
    print(f"updated {results_md} and {plots_dir}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/mini_irpo[_quick])")
    p.add_argument("--quick", action="store_true", help="the pipeline test's setting: tiny model, 2 steps, one seed")
    p.add_argument("--pilot", action="store_true", help="the pilot on the validation split instead of the study")
    p.add_argument("--pilot_lrs", default=",".join(f"{v:g}" for v in PILOT_LRS), help="learning rates of the pilot")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per arm (default: the config's)")
    p.add_argument("--lr", type=float, default=None, help="learning rate of every arm (default: the config's)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: 3 for a, b, g, else 1)")
    p.add_argument("--only", default="", help="comma-separated arm keys (default: all): " + ",".join(ARM_BY_KEY))
    p.add_argument("--report_only", action="store_true", help="only write the report from what has run")
    p.add_argument(
        "--timing",
        action="store_true",
        help="measure each step program's time here and project the study's (OUT/timing.json)",
    )
    p.add_argument("--publish", action="store_true", help="copy the report into benchmarks/RESULTS.md")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every arm, as --config.KEY=VALUE of irpo_jax.train (repeatable; "
        "recorded in OUT/overrides.json, and a rerun in OUT must repeat it)",
    )
    a = p.parse_args(argv)
    overrides = []
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            p.error(f"--set {item!r}: write KEY=VALUE, e.g. --set optim.head_lr_mult=60")
        overrides.append((key.strip().removeprefix("config."), value))
    only = tuple(k for k in a.only.split(",") if k)
    unknown = [k for k in only if k not in ARM_BY_KEY]
    if unknown:
        p.error(f"unknown arm(s) {unknown}; valid: {', '.join(ARM_BY_KEY)}")
    out = a.out or Path("runs/mini_irpo" + ("_quick" if a.quick else ""))
    study = Study(
        Settings(
            out=out,
            quick=a.quick,
            steps=a.steps,
            lr=a.lr,
            seeds=a.seeds,
            only=only,
            progress=not a.no_progress,
            overrides=tuple(overrides),
        )
    )
    if a.report_only and not overrides:  # the report of a folder trained with --set names them
        recorded = _read_json(out.absolute() / "overrides.json") or []
        study.s.overrides = tuple((k, v) for k, v in recorded)
    elif not a.report_only:
        _record_overrides(study.out, study.s.overrides)
    t0 = time.time()
    if a.pilot:
        study.pilot(tuple(float(v) for v in a.pilot_lrs.split(",")))
    elif a.report_only:
        report(study)
    elif a.timing:
        timing(study)
    else:
        study.run()
    if a.publish:
        publish(study)
    print(f"done in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
