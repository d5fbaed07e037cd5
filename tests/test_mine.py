"""Tests of hard-sample mining (irpo_jax.evaluation.mining and the irpo_jax.mine CLI) with a tiny
random AdaIR on the demo set.

The selection is checked against an independent sort of the recorded PSNRs, the whole-image
protocol against skimage's PSNR, resumability by interrupting through the ``stop_after`` hook,
and the pipeline's manifest-subset mode against the manifest's selected ids. Mining runs on
64x64 centre crops (one compiled shape) to keep the CPU cost small.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from irpo_jax import checkpointing, mine
from irpo_jax.data import demo
from irpo_jax.data import pipeline as P
from irpo_jax.data import readers as R
from irpo_jax.evaluation import mining
from irpo_jax.models import convert

CROP = 64


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "set"
    demo.build_demo_set(root, seed=0)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_dir) -> Path:
    # The randomly initialised tiny AdaIR of the golden fixtures (dim 8, one block per level),
    # loaded abstractly: ~10x faster on CPU than initialising AdaIR("tiny") eagerly.
    with np.load(tiny_dir / "state_dict.npz") as z:
        model = convert.from_state_dict({k: z[k] for k in z.files})
    path = tmp_path_factory.mktemp("model") / "tiny"
    with checkpointing.atomic_directory(path) as tmp:
        checkpointing.write_model(tmp, model)
    return path


@pytest.fixture(scope="module")
def restorer(model_dir):
    return checkpointing.load_model(model_dir)


@pytest.fixture(scope="module")
def mined(demo_root, model_dir, restorer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mined") / "hard.jsonl"
    mining.mine({"root": str(demo_root)}, model_dir, out, crop=CROP, batch_size=8, restorer=restorer, progress=False)
    return out


def test_manifest_records_every_pair_and_the_model(mined, demo_root, model_dir):
    header, entries = R.read_manifest(mined)
    records, _ = R.train_records({"root": str(demo_root)})
    assert [e["id"] for e in entries] == [r.id for r in records]
    assert header["data_root"] == str(demo_root) and header["records"] == len(records) == 39
    assert header["model"]["id"] == mining.checkpoint_id(model_dir)
    assert len(header["model"]["id"]) == 16
    assert header["measure"]["crop"] == CROP
    for e, r in zip(entries, records):
        assert e["task"] == r.task and e["sigma"] == r.sigma
        assert (demo_root / e["clean"]).resolve() == Path(r.clean).resolve()
        assert math.isfinite(e["psnr"]) and -1 <= e["ssim"] <= 1
    summary = mined.with_suffix(".summary.md").read_text()
    for group in ("denoise", "denoise s50", "derain", "dehaze", "deblur", "lowlight", "all"):
        assert f"| {group} |" in summary


def test_per_task_worst_30_percent_matches_an_independent_sort(mined):
    _, entries = R.read_manifest(mined)
    # Ranking groups: the tasks, each denoising sigma on its own.
    groups = [("denoise", s) for s in (15, 25, 50)] + [(t, None) for t in ("derain", "dehaze", "deblur", "lowlight")]
    for task, sigma in groups:
        es = [e for e in entries if e["task"] == task and (sigma is None or e["sigma"] == sigma)]
        k = math.ceil(0.3 * len(es))
        worst = sorted(es, key=lambda e: e["psnr"])[:k]
        assert {e["id"] for e in es if e["selected"]} == {e["id"] for e in worst}, (task, sigma)
        assert sorted(e["rank"] for e in es) == list(range(len(es)))
    assert sum(e["selected"] for e in entries) == 3 * 2 + 2 + 2 + 2 + 2  # ceil(0.3 n) per group


def test_global_and_random_selection():
    entries = [
        {"id": f"{t}{i}", "task": t, "psnr": float(p), "ssim": 0.5}
        for t, ps in (("derain", [30, 31, 32, 33]), ("dehaze", [10, 11, 12, 13]))
        for i, p in enumerate(ps)
    ]
    glob = mining.select(entries, mode="global", fraction=0.5)
    assert {i for i, (s, _) in glob.items() if s} == {"dehaze0", "dehaze1", "dehaze2", "dehaze3"}
    per = mining.select(entries, mode="per_task", fraction=0.5)
    assert {i for i, (s, _) in per.items() if s} == {"dehaze0", "dehaze1", "derain0", "derain1"}
    rnd = mining.select(entries, mode="random", fraction=0.5, seed=1)
    assert sum(s for i, (s, _) in rnd.items() if i.startswith("derain")) == 2
    assert rnd == mining.select(entries, mode="random", fraction=0.5, seed=1)
    with pytest.raises(ValueError, match="unknown selection"):
        mining.select(entries, mode="best")


def test_interrupted_mining_resumes_to_the_same_manifest(mined, demo_root, model_dir, restorer, tmp_path):
    out = tmp_path / "hard.jsonl"
    kw = dict(crop=CROP, batch_size=8, restorer=restorer, progress=False)
    with pytest.raises(mining.MiningInterrupted):
        mining.mine({"root": str(demo_root)}, model_dir, out, stop_after=10, **kw)
    partial = tmp_path / "hard.jsonl.partial.jsonl"
    assert not out.exists()
    assert len(partial.read_text().splitlines()) == 1 + 16  # header + two batches of 8
    with open(partial, "a") as fh:
        fh.write('{"id": "half a line')  # a write cut off by the interruption
    mining.mine({"root": str(demo_root)}, model_dir, out, **kw)
    assert out.read_text() == mined.read_text()
    assert not partial.exists()
    # The finished manifest is another run's result: replaced only with overwrite=True.
    with pytest.raises(R.DataError, match=f"{out} already holds a mining manifest.*--overwrite"):
        mining.mine({"root": str(demo_root)}, model_dir, out, **kw)
    assert out.read_text() == mined.read_text()
    with pytest.raises(mining.MiningInterrupted):
        mining.mine({"root": str(demo_root)}, model_dir, out, stop_after=1, overwrite=True, **kw)
    # A partial file from other settings is refused, not silently mixed in.
    with pytest.raises(R.DataError, match="different settings.*measure"):
        mining.mine({"root": str(demo_root)}, model_dir, out, **{**kw, "crop": 32})
    # Resuming it needs no overwrite: the run that started it was allowed to replace the manifest.
    mining.mine({"root": str(demo_root)}, model_dir, out, **kw)
    assert out.read_text() == mined.read_text() and not partial.exists()


def test_whole_images_are_bucketed_by_shape_and_scored_like_skimage(demo_root, model_dir, tmp_path):
    # An identity "model" scores the degraded image itself: an independent check of the
    # crop_img(base=16) whole-image protocol and of the per-shape batching.
    calls = []

    def identity(x):
        calls.append(x.shape)
        return jnp.asarray(x)

    cfg = {"root": str(demo_root), "tasks": ("lowlight",)}
    mining.mine(cfg, model_dir, tmp_path / "m.jsonl", crop=0, batch_size=2, restorer=identity, progress=False)
    _, entries = R.read_manifest(tmp_path / "m.jsonl")
    records, _ = R.train_records(cfg)
    shapes = {R.cropped_size(r.size) for r in records}
    assert {s[1:3] for s in calls} == shapes and all(s[0] == 2 for s in calls)
    for e, r in zip(entries, records):

        def read(p):
            a = np.array(Image.open(p).convert("RGB")).astype(np.float32) / 255
            h, w = a.shape[:2]
            return a[(h % 16) // 2 : h - h % 16 + (h % 16) // 2, (w % 16) // 2 : w - w % 16 + (w % 16) // 2]

        want = peak_signal_noise_ratio(read(r.clean), read(r.degraded), data_range=1)
        assert e["psnr"] == pytest.approx(want, abs=1e-3)


def _crop_img(path) -> np.ndarray:
    """The official crop_img(base=16) of an image file, uint8, written out here."""
    a = np.array(Image.open(path).convert("RGB"))
    h, w = a.shape[:2]
    return a[(h % 16) // 2 : h - h % 16 + (h % 16) // 2, (w % 16) // 2 : w - w % 16 + (w % 16) // 2]


def _documented_noisy(record, clean_u8: np.ndarray, seed: int) -> np.ndarray:
    """The module docstring's denoise input: uint8-truncated Gaussian noise of the record's sigma
    from ``default_rng([seed, hash(record id)])``, the hash being the first 8 bytes of the id's
    sha256 (little endian), drawn in the shape of the (cropped) clean image."""
    import hashlib

    rng = np.random.default_rng([seed, int.from_bytes(hashlib.sha256(record.id.encode()).digest()[:8], "little")])
    return np.clip(clean_u8 + rng.standard_normal(clean_u8.shape) * record.sigma, 0, 255).astype(np.uint8)


def test_a_crop_is_the_image_centre_and_denoise_inputs_are_the_documented_noise(demo_root, model_dir, tmp_path):
    """``--crop N`` scores the centre N x N of the crop_img-ed pair, and a denoise record's input is
    the documented noise stream (pinned: mining a hard set must not depend on the code version).
    An identity "model" scores the degraded input itself."""
    crop, seed = 48, 5
    cfg = {"root": str(demo_root), "tasks": ("lowlight", "denoise")}
    mining.mine(cfg, model_dir, tmp_path / "m.jsonl", crop=crop, batch_size=4, seed=seed, restorer=jnp.asarray,
              progress=False)  # fmt: skip
    _, entries = R.read_manifest(tmp_path / "m.jsonl")
    records, _ = R.train_records(cfg)
    assert {r.task for r in records} == {"lowlight", "denoise"}

    def centre(a):
        top, left = (a.shape[0] - crop) // 2, (a.shape[1] - crop) // 2
        assert top > 0 and left > 0  # the centre is not the corner: a crop from (0, 0) would differ
        return a[top : top + crop, left : left + crop]

    noisy_inputs = {}
    for e, r in zip(entries, records, strict=True):
        clean = centre(_crop_img(r.clean))
        degraded = _documented_noisy(r, clean, seed) if r.degraded is None else centre(_crop_img(r.degraded))
        if r.degraded is None:
            noisy_inputs[r.id] = degraded
        want = peak_signal_noise_ratio(clean.astype(np.float32) / 255, degraded.astype(np.float32) / 255, data_range=1)
        assert e["psnr"] == pytest.approx(want, abs=1e-3), r.id
    # The input itself, bit for bit, and another seed draws other noise.
    record = next(r for r in records if r.degraded is None)
    got, _ = mining.mining_input(record, crop=crop, seed=seed)
    np.testing.assert_array_equal(got, noisy_inputs[record.id].astype(np.float32) / np.float32(255))
    assert not np.array_equal(mining.mining_input(record, crop=crop, seed=seed + 1)[0], got)


def test_manifest_subset_mode_trains_on_exactly_the_selected_pairs(mined, demo_root):
    _, entries = R.read_manifest(mined)
    selected = {e["id"] for e in entries if e["selected"]}
    it = P.make_train_iterator(
        {"root": str(demo_root), "manifest": str(mined)},
        batch_size=4,
        seed=0,
        shard_index=0,
        shard_count=1,
        worker_count=0,
    )
    assert {r.id for r in it.records} == selected
    seen = {it.records[i].id for _ in range(5) for i in next(it)["index"]}
    assert seen <= selected


def test_manifest_for_moved_or_damaged_data_is_refused(mined, demo_root, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(demo_root, moved)
    cfg = {"root": str(moved), "manifest": str(mined)}
    with pytest.raises(R.DataError, match="was mined on the data under"):
        P.make_train_iterator(cfg, batch_size=4, seed=0, shard_index=0, shard_count=1)
    cfg["manifest_allow_other_root"] = True
    it = P.make_train_iterator(cfg, batch_size=4, seed=0, shard_index=0, shard_count=1)
    assert len(it.records) == 14
    _, entries = R.read_manifest(mined)
    gone = next(e for e in entries if e["selected"] and e["degraded"])
    (moved / gone["degraded"]).unlink()
    with pytest.raises(R.DataError, match="1 of its 14 selected pairs"):
        P.make_train_iterator(cfg, batch_size=4, seed=0, shard_index=0, shard_count=1)


def test_cli(demo_root, model_dir, tmp_path, capsys):
    # --config supplies the data section; --data_root overrides its root.
    cfg_file = tmp_path / "cfg.py"
    cfg_file.write_text(
        "from irpo_jax.data.config import default_data_config\n"
        "import ml_collections\n"
        "def get_config(arg=None):\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.data = default_data_config('not/here')\n"
        "    c.data.tasks = ('denoise',)\n"
        "    return c\n"
    )
    out = tmp_path / "cli.jsonl"
    rc = mine.main(
        [
            "--config",
            str(cfg_file),
            "--data_root",
            str(demo_root),
            "--checkpoint",
            str(model_dir),
            "--out",
            str(out),
            "--crop",
            str(CROP),
            "--no_progress",
            "--selection",
            "random",
        ]
    )
    assert rc == 0
    header, entries = R.read_manifest(out)
    assert header["records"] == 18 and header["data_root"] == str(demo_root)
    assert header["selection"]["mode"] == "random" and header["selection"]["selected"] == 6
    printed = capsys.readouterr().out
    assert "| denoise s25 |" in printed and "6 of 18 pairs selected" in printed
    # Errors are one line naming the problem, exit status 1.
    assert (
        mine.main(
            [
                "--data_root",
                str(tmp_path / "none"),
                "--checkpoint",
                str(model_dir),
                "--out",
                str(tmp_path / "x.jsonl"),
                "--no_progress",
            ]
        )
        == 1
    )
    assert "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- arguments, no model


REACHED = "reached the data or the model"


@pytest.fixture
def no_model(monkeypatch):
    """Mining that gets as far as reading the data or loading a model fails with ``REACHED``."""

    def refuse(*args, **kwargs):
        raise R.DataError(REACHED)

    monkeypatch.setattr(R, "train_records", refuse)
    monkeypatch.setattr(checkpointing, "load_model", refuse)


def _cli(tmp_path, *flags):
    # A data root and checkpoint that do not exist: any error about them means the arguments
    # were checked too late.
    return mine.main(
        ["--data_root", str(tmp_path / "no_data"), "--checkpoint", str(tmp_path / "no_model"), "--no_progress", *flags]
    )


@pytest.mark.parametrize("fraction", ["1.5", "-0.1", "nan", "inf"])
def test_cli_bad_fraction_fails_before_data_or_model(tmp_path, capsys, no_model, fraction):
    out = tmp_path / "m" / "hard.jsonl"
    assert _cli(tmp_path, "--out", str(out), "--fraction", fraction) == 1
    err = capsys.readouterr().err
    assert "--fraction must be a number in [0, 1]" in err and REACHED not in err
    assert not (tmp_path / "m").exists()  # no partial file, no folder


def test_cli_out_directory_or_under_a_file_fails_before_data_or_model(tmp_path, capsys, no_model):
    folder = tmp_path / "runs"
    folder.mkdir()
    assert _cli(tmp_path, "--out", str(folder)) == 1
    err = capsys.readouterr().err
    assert f"--out {folder} is a directory" in err and REACHED not in err
    assert list(folder.iterdir()) == []  # no temp or partial files left
    (tmp_path / "afile").write_text("x")
    assert _cli(tmp_path, "--out", str(tmp_path / "afile" / "sub" / "m.jsonl")) == 1
    err = capsys.readouterr().err
    assert "cannot be created because" in err and REACHED not in err
    with pytest.raises(ValueError, match="unknown --selection 'best'"):
        mining.check_arguments(tmp_path / "m.jsonl", selection="best")
    with pytest.raises(ValueError, match="unknown --rank_by 'lpips'"):
        mining.check_arguments(tmp_path / "m.jsonl", rank_by="lpips")


def test_cli_never_replaces_a_file_it_did_not_write(tmp_path, capsys, no_model):
    notes = tmp_path / "m" / "hard.jsonl"
    notes.parent.mkdir()
    notes.write_text("my notes\n")
    assert _cli(tmp_path, "--out", str(notes)) == 1
    err = capsys.readouterr().err
    assert f"--out {notes} exists and is not a mining manifest" in err and "--overwrite" in err
    assert REACHED not in err and notes.read_text() == "my notes\n"
    assert not (tmp_path / "m" / "hard.jsonl.partial.jsonl").exists()
    # With --overwrite the check passes and mining goes on to the data.
    assert _cli(tmp_path, "--out", str(notes), "--overwrite") == 1
    assert REACHED in capsys.readouterr().err


def test_existing_outputs_are_replaced_only_with_overwrite_or_when_resuming(tmp_path):
    out = tmp_path / "hard.jsonl"
    partial = tmp_path / "hard.jsonl.partial.jsonl"
    summary = tmp_path / "hard.summary.md"
    check = mining.check_arguments
    # A user's file at the summary or the partial path is protected too.
    summary.write_text("my table\n")
    with pytest.raises(R.DataError, match=f"{summary} exists and is not a mining summary"):
        check(out)
    summary.write_text(f"{mining.SUMMARY_TITLE} 39 pairs\n")
    assert check(out) == out
    partial.write_text("my log\n")
    with pytest.raises(R.DataError, match=f"{partial} exists and was not written by mining"):
        check(out)
    assert check(out, overwrite=True) == out
    partial.unlink()
    # An earlier mining manifest: only with overwrite, or when resuming a partial file.
    out.write_text(json.dumps({"kind": R.MANIFEST_KIND, "version": 1}) + "\n")
    with pytest.raises(R.DataError, match=f"{out} already holds a mining manifest.*--overwrite"):
        check(out)
    assert check(out, overwrite=True) == out
    partial.write_text(json.dumps({"kind": mining.PARTIAL_KIND}) + "\n")
    assert check(out) == out
    with pytest.raises(R.DataError, match="already holds a mining manifest"):
        check(out, resume=False)  # --no_resume would start over and replace it
    # Per-process partial files of a multi-process run count as well.
    partial.unlink()
    (tmp_path / "hard.jsonl.partial.1.jsonl").write_text(json.dumps({"kind": mining.PARTIAL_KIND}))
    assert check(out) == out


def test_cli_negative_seed_is_refused_before_data_or_model(tmp_path, capsys, no_model):
    assert _cli(tmp_path, "--out", str(tmp_path / "m" / "hard.jsonl"), "--seed", "-1") == 1
    err = capsys.readouterr().err
    assert "--seed must be a non-negative integer (numpy seeds are), got -1" in err and REACHED not in err


@pytest.mark.parametrize("batch_size", ["8", 2.5, True, 0])
def test_the_library_refuses_a_batch_size_that_is_not_a_positive_int(tmp_path, batch_size):
    """What the CLI's int flag cannot send, a caller of ``mining.mine`` can: a str, a float or a
    bool is a ValueError naming the argument (not a TypeError from the arithmetic later)."""
    with pytest.raises(ValueError, match=f"--batch_size must be a positive number .*got {batch_size!r}"):
        mining.check_arguments(tmp_path / "m.jsonl", batch_size=batch_size)


@pytest.mark.parametrize("batch_size", ["0", "-3"])
def test_cli_non_positive_batch_size_is_refused_before_data_or_model(tmp_path, capsys, no_model, batch_size):
    assert _cli(tmp_path, "--out", str(tmp_path / "m" / "hard.jsonl"), "--batch_size", batch_size) == 1
    err = capsys.readouterr().err
    assert f"--batch_size must be a positive number of images per forward pass, got {batch_size}" in err
    assert REACHED not in err and not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "out", ["/proc/irpo_test_mine/hard.jsonl", "/proc/irpo_test_hard.jsonl", "/sys/irpo_test_hard.jsonl"]
)
def test_cli_unwritable_out_is_one_line_before_data_or_model(tmp_path, capsys, no_model, out):
    assert _cli(tmp_path, "--out", out) == 1
    err = capsys.readouterr().err.strip()
    folder = "/sys" if out.startswith("/sys") else "/proc"
    assert err.startswith(f"error: --out {out}: cannot write in {folder} (") and "\n" not in err
    assert REACHED not in err


@pytest.mark.parametrize(
    "text, needle",
    [
        ("def get_config(:\n", "not a valid Python config file (invalid syntax, line 1)"),
        ("def get_config():\n    return 1 / 0\n", "loading it failed: ZeroDivisionError: division by zero"),
        ("import no_such_module_here\n", "ModuleNotFoundError: No module named 'no_such_module_here'"),
    ],
)
def test_cli_a_config_file_that_fails_is_one_line(tmp_path, capsys, no_model, text, needle):
    cfg = tmp_path / "my_config.py"
    cfg.write_text(text)
    assert (
        mine.main(
            ["--config", str(cfg), "--checkpoint", str(tmp_path / "no_model"), "--out", str(tmp_path / "m.jsonl")]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --config {cfg}: ") and needle in err and "\n" not in err


def test_cli_a_write_that_fails_during_mining_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "m.jsonl.partial.jsonl"))

    monkeypatch.setattr(mining, "mine", full)
    assert _cli(tmp_path, "--out", str(tmp_path / "m.jsonl")) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'm.jsonl.partial.jsonl'}: No space left on device"
