"""The reproduction of IRPO's tables as one command that checks every step: ``make reproduce``.

    python -m irpo_jax.reproduce --downloads ~/Downloads/irpo --checkpoint adair5d.ckpt
    python -m irpo_jax.reproduce --demo [--variant smoke]     # the same steps on the demo data

Steps, each the project's own CLI in a subprocess, each skipped when its output is already there
and valid (so rerunning the command after a failure or an interruption continues where it
stopped; the CLIs themselves resume training and mining):

1. **data**: ``prepare --downloads DIR --out DATA --strict`` (valid: ``prepare --check DATA`` finds
   every set with its published count). ``--demo``: the demo set (``irpo_jax.data.demo``).
2. **checkpoint**: ``torch_bridge.convert_adair CKPT checkpoints/adair5d --verify`` (valid: its
   manifest records a passed verification). ``--demo``: AdaIR's supervised recipe on the demo
   data (``train --config CONFIG:supervised,VARIANT``) stands in for the official checkpoint.
3. **evaluate AdaIR**: ``evaluate --sets SETS --reference adair --save_images``, then its
   five-task average is compared with the published row (IRPO Table 2, ``irpo_jax.evaluation.published``;
   ``--demo``: the demo's own numbers, recorded by its first evaluation in
   ``RUNS/expected_demo.json``; or ``--expected FILE``): more than ``--tolerance`` dB
   (0.05) off stops the recipe, naming the sets that differ.
4. **mine**: ``mine`` the hard 30 % with AdaIR (``config.mining``).
5. **post-train**: ``train --config CONFIG`` from AdaIR on the mined set (valid: ``summary.json``
   says finished).
6. **evaluate IRPO**: the same sets with ``--reference irpo``.
7. **compare**: ``compare`` writes the before/after page.

Everything goes under ``--runs`` (default ``runs/reproduce``); the data under ``--data``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from irpo_jax import cli, safe_files

__all__ = ["ReproductionError", "compare_with_expected", "main"]

FIVE_TASK = ("sots", "rain100l", "bsd68_s25", "gopro", "lol")
DEFAULT_SETS = "sots,rain100l,bsd68,gopro,lol,ood5"


class ReproductionError(RuntimeError):
    """A step failed or its result is not the expected one; the message says which and why."""


def _results(out: Path) -> dict[str, Any] | None:
    found = sorted(out.glob("eval/*/results.json"))
    if len(found) != 1:
        return None
    try:
        return json.loads(found[0].read_text())
    except (OSError, ValueError):
        return None


def published_adair() -> dict[str, Any]:
    """The published AdaIR row of IRPO Table 2: ``{"rows": {row: [psnr, ssim]}, "average": [psnr, ssim]}``."""
    from irpo_jax.evaluation import published

    table = published.TABLES["allinone5"][0]
    return {
        "source": table.title,
        "rows": {r: list(table.values["adair"][r]) for r in table.rows},
        "average": list(table.average["adair"]),
    }


def compare_with_expected(results: Mapping[str, Any], expected: Mapping[str, Any], tolerance: float) -> list[str]:
    """Our five-task average against the expected one.

    Returns:
      The lines to print (ours, expected, difference per set and for the average).

    Raises:
      ReproductionError: the average differs by more than ``tolerance`` dB (the message names the
        sets that differ by more than the tolerance), or a set was not evaluated.
    """
    rows = results["rows"]
    missing = [r for r in expected["rows"] if r not in rows]
    if missing:
        raise ReproductionError(f"the evaluation has no row {', '.join(missing)}: evaluate those sets")
    lines, off = [], []
    for r, (psnr, ssim) in expected["rows"].items():
        d = rows[r]["psnr"] - psnr
        lines.append(
            f"  {r:<10} ours {rows[r]['psnr']:.2f}/{rows[r]['ssim']:.3f}  expected {psnr:.2f}/{ssim:.3f}  {d:+.2f} dB"
        )
        if abs(d) > tolerance:
            off.append(f"{r} {rows[r]['psnr']:.2f} dB vs {psnr:.2f} ({d:+.2f})")
    ours = sum(rows[r]["psnr"] for r in expected["rows"]) / len(expected["rows"])
    d = ours - expected["average"][0]
    lines.append(
        f"  {'average':<10} ours {ours:.2f} dB  expected {expected['average'][0]:.2f} dB  {d:+.2f} dB "
        f"(tolerance {tolerance:g} dB)"
    )
    if abs(d) > tolerance:
        raise ReproductionError(
            f"AdaIR's five-task average is {ours:.2f} dB, {d:+.2f} dB from the expected {expected['average'][0]:.2f} "
            f"dB ({expected.get('source', 'expected row')}), more than {tolerance:g} dB: "
            + ("; ".join(off) if off else "no single set is off by more than the tolerance")
            + ". Check those sets' data (python -m irpo_jax.data.prepare --check DATA) and the checkpoint "
            "before post-training"
        )
    return lines


class _Recipe:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.runs = Path(args.runs)
        self.config = args.config + (f":{args.variant}" if args.variant else "")
        self.sup_config = args.config + ":supervised" + (f",{args.variant}" if args.variant else "")
        self.data = Path(args.data if args.data else (self.runs / "demo_data" if args.demo else "data"))
        self.adair = self.runs / "adair_train" / "model" if args.demo else Path(args.adair)
        self.eval_a, self.eval_b = self.runs / "adair", self.runs / "irpo"
        self.mined = self.runs / "mined.jsonl"
        self.workdir = self.runs / "irpo_train"

    def run(self, step: str, argv: Sequence[str]) -> None:
        cmd = [sys.executable, "-m", *argv]
        print(f"== {step}: {shlex.join(cmd[2:])}", flush=True)
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            raise ReproductionError(
                f"step {step} failed (exit {rc}): python -m {shlex.join(argv)}. Fix what it "
                "says and rerun the same command: finished steps are skipped"
            )

    def skip(self, step: str, why: str) -> None:
        print(f"== {step}: skipped ({why})", flush=True)

    def data_step(self) -> None:
        a = self.args
        if a.demo:
            if (self.data / "manifest.json").is_file():
                return self.skip("data", f"the demo set is in {self.data}")
            return self.run("data", ["irpo_jax.data.demo", "--out", str(self.data)])
        check = [sys.executable, "-m", "irpo_jax.data.prepare", "--check", str(self.data), "--validate", "none"]
        if self.data.is_dir() and subprocess.run(check, capture_output=True).returncode == 0:
            return self.skip("data", f"prepare --check {self.data}: every set complete")
        if not a.downloads:
            raise ReproductionError(
                f"{self.data} is not complete and no --downloads was given: pass the folder "
                "with the downloaded data sets (README 'Preparing the data')"
            )
        self.run("data", ["irpo_jax.data.prepare", "--downloads", a.downloads, "--out", str(self.data), "--strict"])

    def checkpoint_step(self) -> None:
        a = self.args
        if a.demo:
            summary = self.adair.parent / "summary.json"
            if self._finished(summary):
                return self.skip("checkpoint", f"{self.adair} (supervised demo run finished)")
            return self.run(
                "checkpoint",
                [
                    "irpo_jax.train",
                    "--config",
                    self.sup_config,
                    "--workdir",
                    str(self.adair.parent),
                    f"--config.data.root={self.data}",
                ],
            )
        manifest = self.adair / "manifest.json"
        try:
            if json.loads(manifest.read_text())["verification"]["passed"]:
                return self.skip("checkpoint", f"{self.adair} converted and verified")
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if not a.checkpoint:
            raise ReproductionError(
                f"{self.adair} holds no verified conversion and no --checkpoint was given: "
                "pass the official adair5d.ckpt (linked from github.com/c-yn/AdaIR's README)"
            )
        self.run("checkpoint", ["torch_bridge.convert_adair", a.checkpoint, str(self.adair), "--verify"])

    @staticmethod
    def _finished(summary: Path) -> bool:
        try:
            s = json.loads(summary.read_text())
        except (OSError, ValueError):
            return False
        return s.get("stop") in ("finished", "already finished") and (summary.parent / "model").is_dir()

    def evaluate_step(self, step: str, checkpoint: Path, out: Path, reference: str) -> dict[str, Any]:
        got = _results(out)
        if got is not None:
            self.skip(step, f"{out} holds its results")
            return got
        self.run(
            step,
            [
                "irpo_jax.evaluate",
                "--checkpoint",
                str(checkpoint),
                "--config",
                self.config,
                "--data_root",
                str(self.data),
                "--sets",
                self.args.sets,
                "--out",
                str(out),
                "--save_images",
                "--reference",
                reference,
            ],
        )
        got = _results(out)
        if got is None:
            raise ReproductionError(f"step {step}: evaluate wrote no results under {out}/eval/")
        return got

    def check_adair(self, results: Mapping[str, Any]) -> None:
        a = self.args
        if a.expected:
            try:
                expected = json.loads(Path(a.expected).read_text())
            except (OSError, ValueError) as err:
                raise ReproductionError(f"--expected {a.expected}: {err}") from err
        elif a.demo:
            # The demo has no published row: its first evaluation is recorded as the demo's own
            # expected numbers, and every later run is checked against it (a model or data set
            # that changed since is caught as a real one would be).
            record = self.runs / "expected_demo.json"
            if not record.is_file():
                rows = {r: [results["rows"][r]["psnr"], results["rows"][r]["ssim"]] for r in FIVE_TASK}
                avg = [sum(v[i] for v in rows.values()) / len(rows) for i in (0, 1)]
                safe_files.atomic_write_json(
                    record,
                    {"source": f"the demo's first evaluation ({self.eval_a})", "rows": rows, "average": avg},
                    indent=1,
                )
                print(f"== recorded the demo's expected numbers in {record}", flush=True)
            expected = json.loads(record.read_text())
        else:
            expected = published_adair()
        print("== check AdaIR against the expected row:", flush=True)
        for line in compare_with_expected(results, expected, a.tolerance):
            print(line, flush=True)

    def mine_step(self) -> None:
        if self.mined.is_file() and not Path(str(self.mined) + ".partial.jsonl").exists():
            return self.skip("mine", f"{self.mined} holds the hard set")
        m = cli.load_config(self.config).mining
        self.run(
            "mine",
            [
                "irpo_jax.mine",
                "--checkpoint",
                str(self.adair),
                "--config",
                self.config,
                "--data_root",
                str(self.data),
                "--out",
                str(self.mined),
                "--fraction",
                str(m.fraction),
                "--crop",
                str(m.crop),
                "--no_progress",
            ],
        )

    def train_step(self) -> None:
        if self._finished(self.workdir / "summary.json"):
            return self.skip("post-train", f"{self.workdir} finished")
        self.run(
            "post-train",
            [
                "irpo_jax.train",
                "--config",
                self.config,
                "--workdir",
                str(self.workdir),
                f"--config.data.root={self.data}",
                f"--config.model.init_from={self.adair}",
                f"--config.data.manifest={self.mined}",
            ],
        )

    def compare_step(self) -> None:
        page = self.runs / "compare"
        if (page / "index.html").is_file():
            return self.skip("compare", f"{page / 'index.html'}")
        self.run("compare", ["irpo_jax.compare", str(self.eval_a), str(self.eval_b), "--out", str(page)])

    def __call__(self) -> None:
        self.runs.mkdir(parents=True, exist_ok=True)
        self.data_step()
        self.checkpoint_step()
        adair = self.evaluate_step("evaluate AdaIR", self.adair, self.eval_a, "adair")
        self.check_adair(adair)
        self.mine_step()
        self.train_step()
        self.evaluate_step("evaluate IRPO", self.workdir / "model", self.eval_b, "irpo")
        self.compare_step()
        print(
            f"reproduce: done; tables in {self.eval_a}/eval and {self.eval_b}/eval, the page "
            f"{self.runs / 'compare' / 'index.html'}",
            flush=True,
        )


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m irpo_jax.reproduce",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--downloads", help="folder with the downloaded data sets (prepare --downloads)")
    p.add_argument("--checkpoint", help="the official adair5d.ckpt (converted with --verify)")
    p.add_argument("--data", default="", help="data root (default data/, or RUNS/demo_data with --demo)")
    p.add_argument("--adair", default="checkpoints/adair5d", help="the converted AdaIR checkpoint's folder")
    p.add_argument("--runs", default="runs/reproduce", help="folder for every output")
    p.add_argument("--config", default="configs/allinone5.py", help="config file (without :variant)")
    p.add_argument("--variant", default="", help="config variant (demo, smoke); --demo defaults to demo")
    p.add_argument("--sets", default=DEFAULT_SETS, help=f"evaluated sets (default {DEFAULT_SETS})")
    p.add_argument("--demo", action="store_true", help="the steps on the demo data, AdaIR trained there")
    p.add_argument(
        "--expected",
        help='JSON {"rows": {row: [psnr, ssim]}, "average": [psnr, ssim]} to check '
        "AdaIR's evaluation against (default: the published row of IRPO Table 2)",
    )
    p.add_argument("--tolerance", type=float, default=0.05, help="dB the five-task average may differ (0.05)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.demo and not args.variant:
        args.variant = "demo"
    if args.demo and args.sets == DEFAULT_SETS:
        args.sets = "sots,rain100l,bsd68,gopro,lol"  # the demo set has no out-of-domain sets
    return cli.main_errors(
        lambda: _Recipe(args)() or 0,
        (ReproductionError,),
        prefix="reproduce: stopped: ",
        resume="rerun the same command: finished steps are skipped",
    )


if __name__ == "__main__":
    sys.exit(main())
