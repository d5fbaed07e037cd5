"""The reproduction recipe (``python -m irpo_jax.reproduce``, ``make reproduce``): the whole
recipe on the demo data with the smoke variant (demo set -> AdaIR's supervised recipe -> evaluate
and check against the demo's recorded numbers -> mine -> post-train -> evaluate -> page), a rerun
that skips every step, and a check that stops the recipe before mining, naming the set; the
comparison with the published row on made-up evaluations."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from irpo_jax import reproduce

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The CLIs run in subprocesses: one device, the suite's XLA:CPU settings and compile cache.
ENV = {
    "XLA_FLAGS": "--xla_force_host_platform_device_count=1 --xla_cpu_use_fusion_emitters=false",
    "JAX_PLATFORMS": "cpu",
    "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
    "JAX_COMPILATION_CACHE_DIR": str(ROOT / ".cache" / "jax"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
}


def _recipe(runs: pathlib.Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "irpo_jax.reproduce", "--demo", "--variant", "smoke", "--runs", str(runs), *extra],
        cwd=ROOT,
        env=os.environ | ENV,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _rows(results: dict) -> dict:
    return {r: [v["psnr"], v["ssim"]] for r, v in results["rows"].items()}


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("reproduce") / "runs"
    return runs, _recipe(runs)


def test_whole_recipe_on_the_demo_data(recipe_run):
    runs, proc = recipe_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [ln[3:].split(":")[0] for ln in proc.stdout.splitlines() if ln.startswith("== ")]
    assert steps == [
        "data",
        "checkpoint",
        "evaluate AdaIR",
        f"recorded the demo's expected numbers in {runs}/expected_demo.json",
        "check AdaIR against the expected row",
        "mine",
        "post-train",
        "evaluate IRPO",
        "compare",
    ]
    adair = json.loads(next((runs / "adair").glob("eval/*/results.json")).read_text())
    irpo = json.loads(next((runs / "irpo").glob("eval/*/results.json")).read_text())
    assert (
        sorted(adair["rows"])
        == sorted(irpo["rows"])
        == sorted(["sots", "rain100l", "bsd68_s15", "bsd68_s25", "bsd68_s50", "gopro", "lol"])
    )
    # the demo's expected numbers are the first evaluation's five-task rows, as recorded
    expected = json.loads((runs / "expected_demo.json").read_text())
    assert expected["rows"] == {r: _rows(adair)[r] for r in reproduce.FIVE_TASK}
    # the hard set was mined by AdaIR on the demo data and the post-training used it
    header = json.loads((runs / "mined.jsonl").read_text().splitlines()[0])
    assert header["data_root"] == str(runs / "demo_data")
    config = json.loads((runs / "irpo_train" / "config.json").read_text())
    assert config["data"]["manifest"] == str(runs / "mined.jsonl")
    assert json.loads((runs / "irpo_train" / "summary.json").read_text())["stop"] == "finished"
    assert (runs / "compare" / "index.html").is_file()


def test_rerun_skips_every_step_and_a_check_that_fails_stops_before_mining(recipe_run):
    runs, first = recipe_run
    assert first.returncode == 0
    proc = _recipe(runs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ran = [
        ln
        for ln in proc.stdout.splitlines()
        if ln.startswith("== ") and ": skipped (" not in ln and not ln.startswith("== check")
    ]
    assert ran == []
    # A recorded GoPro number 0.3 dB above today's: the average is 0.06 dB off -> stop, naming GoPro.
    record = runs / "expected_demo.json"
    good = record.read_text()
    bad = json.loads(good)
    bad["rows"]["gopro"][0] += 0.3
    bad["average"][0] += 0.3 / 5
    record.write_text(json.dumps(bad))
    (runs / "compare" / "index.html").rename(runs / "compare" / "index.html.bak")
    try:
        proc = _recipe(runs)
    finally:
        record.write_text(good)
    assert proc.returncode == 1
    assert "five-task average" in proc.stderr and "gopro" in proc.stderr and "-0.30" in proc.stderr
    assert "== mine" not in proc.stdout and not (runs / "compare" / "index.html").exists()


def _results(values: dict) -> dict:
    return {"rows": {r: {"psnr": p, "ssim": s} for r, (p, s) in values.items()}}


def test_check_against_the_published_row():
    published = reproduce.published_adair()
    assert published["average"] == [30.20, 0.910]
    ours = dict(published["rows"])
    lines = reproduce.compare_with_expected(_results(ours), published, 0.05)
    assert lines[-1].startswith("  average    ours 30.20 dB  expected 30.20 dB  +0.00 dB")
    ours["sots"] = (30.53 - 0.4, 0.97)  # the average 0.08 dB low: SOTS named
    with pytest.raises(reproduce.ReproductionError, match=r"-0\.08 dB .*more than 0.05 dB: sots 30\.13 dB vs 30\.53"):
        reproduce.compare_with_expected(_results(ours), published, 0.05)
    ours["sots"], ours["lol"] = (30.53 - 0.2, 0.97), (23.00 + 0.2, 0.8)  # within: differences cancel
    reproduce.compare_with_expected(_results(ours), published, 0.05)
    del ours["gopro"]
    with pytest.raises(reproduce.ReproductionError, match="no row gopro"):
        reproduce.compare_with_expected(_results(ours), published, 0.05)
