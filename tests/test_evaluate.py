"""Tests of ``irpo_jax.evaluate``: the published protocol, the tables, the CLI, bad inputs, and the
reproduction check against the PyTorch reference.

The protocol is checked against an independent computation: with the identity as "restorer",
evaluate's per-image numbers must equal skimage's PSNR/SSIM of the (independently cropped and
noised) degraded/clean pairs read from disk. Model tests use the tiny fixture model and few
image shapes (each distinct shape compiles once, and compiled functions are shared through
evaluate's cache).
"""

import dataclasses
import json
import os
import pathlib
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from irpo_jax import checkpointing
from irpo_jax import evaluate as evaluate_cli
from irpo_jax import evaluation as ev
from irpo_jax.data.config import default_data_config
from irpo_jax.data.demo import build_demo_set


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    build_demo_set(root, seed=0)
    return root


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_dir) -> pathlib.Path:
    """The golden tiny weights (numpy copy: no torch needed) as a model directory."""
    from irpo_jax.models.convert import from_state_dict

    model = from_state_dict(dict(np.load(tiny_dir / "state_dict.npz")))
    dst = tmp_path_factory.mktemp("ckpt") / "adair_tiny"
    with checkpointing.atomic_directory(dst) as tmp:
        checkpointing.write_model(tmp, model)
    return dst


def identity(x):
    return x


# ----------------------------------------------------------------------------- the protocol


def _crop16(a: np.ndarray) -> np.ndarray:
    """The official crop_img(base=16), written out again here."""
    h, w = a.shape[:2]
    top, left = (h % 16) // 2, (w % 16) // 2
    return a[top : top + h - h % 16, left : left + w - w % 16]


def _rgb(path: pathlib.Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _independent_pairs(root: pathlib.Path) -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    """Every demo test pair, uint8, cropped, BSD68 noised by the official seeded stream."""
    t = root / "test"
    pairs = {}
    for row, folder in [("rain100l", t / "derain/Rain100L"), ("gopro", t / "deblur/gopro"), ("lol", t / "enhance/lol")]:
        pairs[row] = [
            (p.name, _crop16(_rgb(p)), _crop16(_rgb(folder / "target" / p.name)))
            for p in sorted((folder / "input").iterdir())
        ]
    pairs["sots"] = [
        (p.name, _crop16(_rgb(p)), _crop16(_rgb(t / "dehaze/target" / (p.name.split("_")[0] + ".png"))))
        for p in sorted((t / "dehaze/input").iterdir())
    ]
    np.random.seed(0)  # test.py: seeded once; the stream runs on over files and sigmas
    files = sorted((t / "denoise/bsd68").iterdir())
    for sigma in (15, 25, 50):
        rows = []
        for p in files:
            clean = _crop16(_rgb(p))
            noisy = np.clip(clean + np.random.randn(*clean.shape) * sigma, 0, 255).astype(np.uint8)
            rows.append((p.name, noisy, clean))
        pairs[f"bsd68_s{sigma}"] = rows
    return pairs


@pytest.fixture(scope="module")
def identity_results(demo_root):
    return ev.evaluate(identity, default_data_config(demo_root), progress=False, name="identity")


def test_protocol_matches_skimage_on_independently_prepared_pairs(identity_results, demo_root):
    """Crop to 16, RGB, data range 1, no shave, seeded noise, skimage SSIM: all at once."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    res = identity_results
    got = {(r["set"], r["name"]): r for r in res["per_image"]}
    expected = _independent_pairs(demo_root)
    assert list(res["rows"]) == ["sots", "rain100l", "bsd68_s15", "bsd68_s25", "bsd68_s50", "gopro", "lol"]
    cropped = 0
    for row, pairs in expected.items():
        assert res["rows"][row]["images"] == len(pairs)
        for name, degraded, clean in pairs:
            r = got[(row, name)]
            assert (r["height"], r["width"]) == clean.shape[:2]
            cropped += Image.open(next(demo_root.glob(f"test/**/{name}"))).size != (clean.shape[1], clean.shape[0])
            x, y = degraded / 255.0, clean / 255.0
            assert r["psnr"] == pytest.approx(peak_signal_noise_ratio(y, x, data_range=1), abs=1e-3)
            assert r["ssim"] == pytest.approx(structural_similarity(y, x, data_range=1, channel_axis=-1), abs=1e-4)
        assert res["rows"][row]["psnr"] == pytest.approx(np.mean([got[(row, n)]["psnr"] for n, _, _ in pairs]))
    assert cropped > 0  # the demo set has sizes that are not multiples of 16


def test_grayscale_and_palette_files_are_scored_as_rgb(tmp_path):
    from skimage.metrics import peak_signal_noise_ratio

    folder = tmp_path / "mixed"
    (folder / "input").mkdir(parents=True)
    (folder / "target").mkdir()
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    target = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(grey).save(folder / "input" / "a.png")  # mode L
    Image.fromarray(target).convert("P").save(folder / "target" / "a.png")  # palette
    cfg = default_data_config(tmp_path)
    cfg.eval_paired = {"mixed": {"path": str(folder), "task": "derain"}}
    res = ev.evaluate(identity, cfg, ["mixed"], progress=False)
    x = np.repeat(_crop16(grey)[..., None], 3, -1) / 255.0
    y = _crop16(np.asarray(Image.open(folder / "target" / "a.png").convert("RGB"))) / 255.0
    assert res["per_image"][0]["psnr"] == pytest.approx(peak_signal_noise_ratio(y, x, data_range=1), abs=1e-3)
    assert (res["per_image"][0]["height"], res["per_image"][0]["width"]) == (32, 32)


def test_tables_follow_the_paper_layouts(identity_results, demo_root, tmp_path):
    res = identity_results
    assert res["table"] == {"layout": "five_task", "columns": list(ev.FIVE_TASK_ROWS)}
    five = [res["rows"][r] for r in ev.FIVE_TASK_ROWS]
    assert res["average"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in five]))
    table = ev.format_table(res)
    assert (
        "| Method | Dehazing on SOTS | Deraining on Rain100L | Denoising on BSD68 σ=25 | "
        "Deblurring on GoPro | Low-Light on LOL | Average |"
    ) in table
    assert f"| identity | {res['rows']['sots']['psnr']:.2f}/{res['rows']['sots']['ssim']:.3f} |" in table
    assert "| bsd68_s50 | denoise | 50 | 3 |" in table  # every row is listed
    paths = ev.write_results(res, tmp_path / "eval" / "x")
    assert json.loads(paths["json"].read_text())["average"] == res["average"]
    lines = paths["csv"].read_text().splitlines()
    assert lines[0].split(",") == list(ev.CSV_COLUMNS) and len(lines) == 1 + len(res["per_image"])
    assert paths["table"].read_text() == table
    scal = ev.scalars(res)
    assert scal["eval/average/psnr"] == res["average"]["psnr"] and "eval/bsd68_s15/ssim" in scal

    three = ev.evaluate(
        identity, default_data_config(demo_root), ["sots", "rain100l", "bsd68"], max_images=1, progress=False
    )
    assert three["table"]["layout"] == "three_task"
    assert "Note: first 1 image(s) per row only" in ev.format_table(three)
    two = ev.evaluate(identity, default_data_config(demo_root), ["lol", "bsd68_s25"], max_images=1, progress=False)
    assert list(two["rows"]) == ["lol", "bsd68_s25"] and two["table"]["layout"] == "all_rows"
    # A single sigma is drawn from the same stream as when all three are evaluated.
    assert two["rows"]["bsd68_s25"]["psnr"] == pytest.approx(three["rows"]["bsd68_s25"]["psnr"], abs=1e-9)


def test_self_ensemble_is_dihedral_equivariant_and_labelled(demo_root):
    import jax.numpy as jnp

    def skewed(x):  # not equivariant: depends on the column index
        return x + 0.01 * jnp.cumsum(x, axis=2)

    x = np.random.default_rng(0).uniform(size=(1, 16, 24, 3)).astype(np.float32)
    ens = ev.geometric_self_ensemble(skewed)
    np.testing.assert_allclose(np.asarray(ev.geometric_self_ensemble(identity)(x)), x, atol=1e-6)  # transforms undone
    np.testing.assert_allclose(
        np.asarray(ens(np.rot90(x, 1, axes=(1, 2)))), np.rot90(np.asarray(ens(x)), 1, axes=(1, 2)), atol=1e-6
    )
    np.testing.assert_allclose(np.asarray(ens(x[:, :, ::-1])), np.asarray(ens(x))[:, :, ::-1], atol=1e-6)
    assert not np.allclose(np.asarray(ens(x)), np.asarray(skewed(x)), atol=1e-4)
    res = ev.evaluate(
        identity, default_data_config(demo_root), ["lol"], max_images=1, self_ensemble=True, progress=False, name="m"
    )
    assert res["model"]["name"] == "m (x8 self-ensemble)" and res["protocol"]["self_ensemble"]
    assert "x8 geometric self-ensemble" in ev.format_table(res)
    assert ev.output_dir(pathlib.Path("o"), "m", 100, self_ensemble=True) == pathlib.Path("o/eval/100_x8")


def test_tiled_evaluation_is_flagged(demo_root):
    """Tiling is recorded per row and noted in the table (it deviates from the protocol)."""
    cfg = default_data_config(demo_root)
    plain = ev.evaluate(identity, cfg, ["lol"], max_images=1, progress=False)
    tiled = ev.evaluate(identity, cfg, ["lol"], max_images=1, tile=64, tile_overlap=16, progress=False)
    assert tiled["rows"]["lol"]["tiled"] == 1 and not tiled["protocol"]["whole_images"]
    assert tiled["rows"]["lol"]["psnr"] == pytest.approx(plain["rows"]["lol"]["psnr"], abs=1e-4)
    assert "tiles" in ev.format_table(tiled)
    with pytest.raises(ev.EvalError, match="multiples of 8"):
        ev.evaluate(identity, cfg, ["lol"], tile=60, progress=False)


# ----------------------------------------------------------------------------- the CLI


def test_cli_end_to_end_with_a_converted_checkpoint(tiny_model_dir, demo_root, tmp_path, capsys):
    out = tmp_path / "out"
    rc = evaluate_cli.main(
        [
            "--checkpoint",
            str(tiny_model_dir),
            "--config",
            "configs/allinone5.py:smoke",
            "--data_root",
            str(demo_root),
            "--sets",
            "lol",
            "--max_images",
            "1",
            "--out",
            str(out),
            "--save_images",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    folder = out / "eval" / "adair_tiny_first1"
    res = json.loads((folder / "results.json").read_text())
    assert res["format"] == "irpo-jax-eval" and res["model"]["kind"] == "adair"
    assert res["model"]["checkpoint"] == str(tiny_model_dir.absolute())
    assert res["rows"]["lol"]["images"] == 1 and np.isfinite(res["rows"]["lol"]["psnr"])
    assert (folder / "images" / "lol" / "1.png").is_file()
    assert "| adair_tiny |" in (folder / "table.md").read_text()
    assert "Low-Light on LOL" in capsys.readouterr().out
    # The saved image is the scored restoration (rounded to 8 bits: PSNR moves by << 0.01 dB).
    from skimage.metrics import peak_signal_noise_ratio

    saved = np.asarray(Image.open(folder / "images" / "lol" / "1.png")) / 255.0
    clean = np.asarray(Image.open(demo_root / "test/enhance/lol/target/1.png")) / 255.0
    assert peak_signal_noise_ratio(clean, saved, data_range=1) == pytest.approx(res["rows"]["lol"]["psnr"], abs=0.01)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, tiny_dir) -> pathlib.Path:
    """A tiny IRPO policy (heads at their initialisation) over the golden tiny backbone."""
    from flax import nnx

    from irpo_jax.models.convert import load_state_dict
    from irpo_jax.models.policy import IRPOPolicy

    policy = IRPOPolicy("tiny", {"mask_rule": "adair"}, rngs=nnx.Rngs(0))
    load_state_dict(policy.net, dict(np.load(tiny_dir / "state_dict.npz")))
    dst = tmp_path_factory.mktemp("policy") / "model"
    with checkpointing.atomic_directory(dst) as tmp:
        checkpointing.write_model(tmp, policy, {"manifest.json": {"trained_steps": 7}})
    return dst


def test_policy_checkpoint_with_best_of_k_oracle(policy_dir, tiny_model_dir, demo_root, tmp_path, capsys):
    out = tmp_path / "o"
    rc = evaluate_cli.main(
        [
            "--checkpoint",
            str(policy_dir),
            "--config",
            "configs/allinone5.py:smoke",
            "--data_root",
            str(demo_root),
            "--sets",
            "lol",
            "--max_images",
            "1",
            "--oracle_k",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    folder = out / "eval" / "7_oracle2_first1"  # a trainer's model dir: named by its step
    res = json.loads((folder / "results.json").read_text())
    assert res["model"]["step"] == 7 and res["model"]["kind"] == "adair_policy"
    assert res["model"]["name"] == policy_dir.parent.name
    assert res["oracle"]["k"] == 2 and "oracle" in res["oracle"]["label"]
    img = res["per_image"][0]
    assert img["oracle_psnr"] >= img["oracle_mean_psnr"] - 1e-6 and img["oracle_index"] in (0, 1)
    assert "oracle_best_of_k_psnr" in (folder / "per_image.csv").read_text().splitlines()[0]
    table = (folder / "table.md").read_text()
    assert "## Oracle (not a result)" in table and "oracle best-of-2" in table
    # The scored restoration is the deterministic policy, which at initialisation is AdaIR itself.
    plain = ev.evaluate(
        checkpointing.load_model(tiny_model_dir), default_data_config(demo_root), ["lol"], max_images=1, progress=False
    )
    assert res["rows"]["lol"]["psnr"] == pytest.approx(plain["rows"]["lol"]["psnr"], abs=1e-4)
    with pytest.raises(ev.EvalError, match="policy"):
        ev.evaluate(identity, default_data_config(demo_root), ["lol"], oracle_k=2, progress=False)


def _step2_model(parent: pathlib.Path, tiny_dir: pathlib.Path, shift: float) -> pathlib.Path:
    """A trainer-style ``<run>/model`` at step 2: the tiny weights, one tensor moved by ``shift``."""
    from irpo_jax.models.convert import from_state_dict

    weights = dict(np.load(tiny_dir / "state_dict.npz"))
    key = sorted(weights)[0]
    weights[key] = weights[key] + np.float32(shift)
    dst = parent / "model"
    with checkpointing.atomic_directory(dst) as tmp:
        checkpointing.write_model(tmp, from_state_dict(weights), {"manifest.json": {"trained_steps": 2}})
    return dst


def test_cli_never_replaces_results_of_another_checkpoint_or_settings(tiny_dir, demo_root, tmp_path, capsys):
    """Two models at step 2 (or one model on other data) share ``<out>/eval/2_first1``: the second
    evaluation is refused unless it is the same checkpoint under the same settings, or --overwrite."""
    a = _step2_model(tmp_path / "run_a", tiny_dir, 0.0)
    b = _step2_model(tmp_path / "run_b", tiny_dir, 0.05)
    out = tmp_path / "ev"
    folder = out / "eval" / "2_first1"

    def run(model, *extra, root=demo_root):
        return _cli(
            "--checkpoint",
            model,
            "--config",
            "configs/allinone5.py:smoke",
            "--data_root",
            root,
            "--sets",
            "lol",
            "--max_images",
            "1",
            "--out",
            out,
            *extra,
        )

    def recorded():
        return json.loads((folder / "results.json").read_text())

    assert run(a) == 0, capsys.readouterr().err
    first = recorded()
    assert first["model"]["checkpoint"] == str(a) and len(first["model"]["params_sha256"]) == 64
    assert first["settings"]["rows"] == ["lol"] and first["settings"]["data"]["root"] == str(demo_root)
    assert run(a) == 0, capsys.readouterr().err  # the same checkpoint and settings: the same numbers
    assert recorded()["model"]["params_sha256"] == first["model"]["params_sha256"]
    first = recorded()
    capsys.readouterr()

    assert run(b) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "different checkpoint" in err and "--out" in err and "--overwrite" in err
    assert recorded() == first  # nothing written

    other_root = tmp_path / "data2"
    shutil.copytree(demo_root / "test" / "enhance", other_root / "test" / "enhance")
    assert run(a, root=other_root) == 2
    assert "different data" in capsys.readouterr().err and recorded() == first

    assert run(b, "--overwrite", "--save_images") == 0, capsys.readouterr().err
    second = recorded()
    assert second["model"]["checkpoint"] == str(b)
    assert second["model"]["params_sha256"] != first["model"]["params_sha256"]
    assert second["rows"]["lol"]["psnr"] != first["rows"]["lol"]["psnr"]
    assert (folder / "images" / "lol" / "1.png").is_file()

    # The trainer's path (library functions) still writes its run's folder as before ...
    mine = ev.evaluate(identity, default_data_config(demo_root), ["lol"], max_images=1, step=2, progress=False)
    ev.write_results(mine, ev.output_dir(out, "run", 2, max_images=1))
    # ... and results that do not say which checkpoint made them are never replaced by the CLI.
    assert run(b) == 2
    assert "do not record which checkpoint" in capsys.readouterr().err
    assert recorded()["model"]["kind"] == "function"


def test_cli_default_config_is_found_from_another_directory(tiny_model_dir, demo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = _cli(
        "--checkpoint",
        tiny_model_dir,
        "--data_root",
        demo_root,
        "--sets",
        "lol",
        "--max_images",
        "1",
        "--out",
        tmp_path / "o",
    )
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "o" / "eval" / "adair_tiny_first1" / "results.json").is_file()
    assert _cli("--checkpoint", tiny_model_dir, "--config", "configs/nope.py", "--data_root", demo_root) == 2
    assert "--config configs/nope.py: config file configs/nope.py does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad inputs


def _cli(*args):
    return evaluate_cli.main([str(a) for a in args])


def test_missing_checkpoint(tmp_path, capsys):
    assert _cli("--checkpoint", tmp_path / "nope", "--config", "configs/allinone5.py:smoke") == 2
    err = capsys.readouterr().err
    assert "nope" in err and "does not exist" in err


def test_wrong_set_name_lists_the_valid_ones(tiny_model_dir, demo_root, capsys):
    rc = _cli(
        "--checkpoint",
        tiny_model_dir,
        "--config",
        "configs/allinone5.py:smoke",
        "--data_root",
        demo_root,
        "--sets",
        "sots,rain100",
        "--out",
        "/tmp",
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown test set 'rain100'" in err and "rain100l" in err and "bsd68_s25" in err


def test_corrupt_test_image_names_the_file(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root / "test" / "enhance", root / "test" / "enhance")
    bad = root / "test/enhance/lol/input/2.png"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    with pytest.raises(ev.EvalError, match=r"lol: .*2\.png"):
        ev.evaluate(identity, default_data_config(root), ["lol"], progress=False)


def test_unwritable_output_directory(tiny_model_dir, demo_root, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = _cli(
        "--checkpoint",
        tiny_model_dir,
        "--config",
        "configs/allinone5.py:smoke",
        "--data_root",
        demo_root,
        "--sets",
        "lol",
        "--out",
        blocker / "sub",
    )
    assert rc == 2
    assert "cannot write to --out" in capsys.readouterr().err


# ----------------------------------------------------------------------------- reproduction check


@pytest.mark.torch
def test_pytorch_reference_and_converted_model_give_the_same_table(demo_root, tiny_dir, tmp_path):
    """The official-architecture PyTorch model, evaluated in torch with skimage's metrics, and
    the converted Flax model under ``evaluate`` give the same five-task table (every demo test
    image of SOTS, Rain100L, BSD68 sigma=25, GoPro, LOL) to 0.01 dB."""
    torch = pytest.importorskip("torch")

    from irpo_jax.data import readers
    from torch_bridge import convert_adair
    from torch_bridge.reference_adair import AdaIR as TorchAdaIR

    dst = tmp_path / "converted"
    assert convert_adair.main([str(tiny_dir / "state_dict.pth"), str(dst)]) == 0
    cfg = default_data_config(demo_root)
    flax = ev.evaluate(checkpointing.load_model(dst), cfg, ev.FIVE_TASK_ROWS, progress=False)

    config = json.loads((dst / "model.json").read_text())["config"]
    config.pop("mask_rule")
    net = TorchAdaIR(**config).eval()
    net.load_state_dict(torch.load(tiny_dir / "state_dict.pth", weights_only=True))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # OpenMP threads on a shared 2-core machine run ~20x slower
    try:
        sets = readers.eval_sets(cfg)
        torch_rows = _torch_table(net, {r: sets[r] for r in ev.FIVE_TASK_ROWS})
    finally:
        torch.set_num_threads(threads)
    assert list(torch_rows) == list(flax["rows"])
    for row, (n, psnr, ssim) in torch_rows.items():
        assert flax["rows"][row]["images"] == n
        assert flax["rows"][row]["psnr"] == pytest.approx(psnr, abs=0.01), row
        assert flax["rows"][row]["ssim"] == pytest.approx(ssim, abs=1e-3), row
    assert flax["table"]["layout"] == "five_task"
    assert flax["average"]["psnr"] == pytest.approx(np.mean([r[1] for r in torch_rows.values()]), abs=0.01)
    assert flax["average"]["ssim"] == pytest.approx(np.mean([r[2] for r in torch_rows.values()]), abs=1e-3)


def _torch_table(net, sets) -> dict[str, tuple[int, float, float]]:
    """The official test.py loop (batch size 1, clamp, skimage metrics): row -> (n, PSNR, SSIM)."""
    import torch
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    out = {}
    for row, es in sets.items():
        psnrs, ssims = [], []
        for i in range(len(es)):
            item = es[i]
            x = torch.from_numpy(item["degraded"].astype(np.float32) / 255).permute(2, 0, 1)[None]
            with torch.no_grad():
                y = net(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()
            clean = item["clean"].astype(np.float32) / 255
            psnrs.append(peak_signal_noise_ratio(clean, y, data_range=1))
            ssims.append(structural_similarity(clean, y, data_range=1, channel_axis=-1))
        out[row] = (len(es), float(np.mean(psnrs)), float(np.mean(ssims)))
    return out


# ----------------------------------------------------------------------------- whole sets, partial rows


def _lol_copy(demo_root: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "data"
    shutil.copytree(demo_root / "test" / "enhance", root / "test" / "enhance")
    return root


def test_missing_target_refuses_the_set_and_allow_partial_marks_the_row(tiny_model_dir, demo_root, tmp_path, capsys):
    """One rule: a missing (here misnamed) target refuses the set like an unreadable image; with
    --allow_partial the rest is scored and the row says partial in the tables and results.json."""
    root = _lol_copy(demo_root, tmp_path)
    lol = root / "test/enhance/lol"
    (lol / "target/2.png").rename(lol / "target/2_gt.png")

    def run(*extra):
        return _cli(
            "--checkpoint",
            tiny_model_dir,
            "--config",
            "configs/allinone5.py:smoke",
            "--data_root",
            root,
            "--sets",
            "lol",
            "--out",
            tmp_path / "o",
            *extra,
        )

    assert run() == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "test set lol: 1 of its 3 input(s) have no matching target: 2.png" in err
    assert "--allow_partial" in err
    assert run("--allow_partial") == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    res = json.loads((tmp_path / "o/eval/adair_tiny/results.json").read_text())
    row = res["rows"]["lol"]
    assert row["partial"] is True and row["images"] == 2
    assert row["left_out"] == [{"name": "2.png", "reason": "no matching target"}]
    assert res["settings"]["allow_partial"] is True and res["protocol"]["allow_partial"] is True
    assert "| Low-Light on LOL (partial) |" in table and "PARTIAL rows" in table and "2 (partial: 1 left out)" in table
    # An unreadable image follows the same rule.
    bad = lol / "input/3.png"
    bad.write_bytes(bad.read_bytes()[:100])
    res = ev.evaluate(identity, default_data_config(root), ["lol"], allow_partial=True, progress=False)
    assert [e["name"] for e in res["rows"]["lol"]["left_out"]] == ["2.png", "3.png"]
    assert "cannot decode image" in res["rows"]["lol"]["left_out"][1]["reason"] and res["rows"]["lol"]["images"] == 1
    (lol / "target/2_gt.png").rename(lol / "target/2.png")  # every target back: the bad file alone refuses
    with pytest.raises(ev.EvalError, match=r"test set lol: cannot decode image .*3\.png.*--allow_partial"):
        ev.evaluate(identity, default_data_config(root), ["lol"], progress=False)


def test_results_files_follow_the_umask(identity_results, tmp_path):
    """mkstemp makes 0600 files; results are ordinary files (0644 under the usual umask 022)."""
    for mask, mode in ((0o022, 0o644), (0o027, 0o640)):
        old = os.umask(mask)
        try:
            paths = ev.write_results(identity_results, tmp_path / f"m{mask:o}")
        finally:
            os.umask(old)
        assert {p.name: p.stat().st_mode & 0o777 for p in paths.values()} == {
            "results.json": mode,
            "per_image.csv": mode,
            "table.md": mode,
        }


# ----------------------------------------------------------------------------- --reference


def test_reference_prints_the_published_row_and_our_difference(identity_results):
    """A base-AdaIR allinone5 evaluation gets Table 2's AdaIR row under ours, differences by hand."""
    from irpo_jax.evaluation import published
    from irpo_jax.models import adair

    base = dataclasses.asdict(adair.VARIANTS["base"])
    res = dict(identity_results)
    res["reference"] = published.reference("adair", published.setting_of("allinone5_supervised"), res["rows"], base)
    ref = res["reference"]
    assert ref["printed"] and list(ref["rows"]) == list(ev.FIVE_TASK_ROWS)  # bsd68_s15/s50: not in Table 2
    sots = res["rows"]["sots"]
    assert ref["rows"]["sots"]["delta_psnr"] == pytest.approx(sots["psnr"] - 30.53)
    column_mean = (30.53 + 38.02 + 31.35 + 28.12 + 23.00) / 5  # 30.204, printed as 30.20
    assert ref["tables"][0]["delta_average"]["psnr"] == pytest.approx(res["average"]["psnr"] - column_mean)
    assert ref["tables"][0]["printed_differs"] == []
    table = ev.format_table(res)
    assert (
        "| AdaIR, published (IRPO Table 2 (five-task all-in-one, denoising at σ=25)) | 30.53/0.978 | "
        "38.02/0.981 | 31.35/0.889 | 28.12/0.858 | 23.00/0.845 | 30.20/0.910 |"
    ) in table
    assert f"| ours − published | {sots['psnr'] - 30.53:+.2f}/{sots['ssim'] - 0.978:+.3f} |" in table
    assert "| bsd68_s50 | denoise | 50 | 3 |" in table and "| – | – |" in table  # no published σ=50 in Table 2
    irpo = published.reference("irpo", "allinone5", {"rrshid": {"psnr": 20.0, "ssim": 0.7}}, base)
    assert irpo["rows"]["rrshid"]["delta_psnr"] == pytest.approx(20.0 - 19.94) and irpo["tables"][0]["average"] is None
    tiny = published.reference("adair", "allinone5", res["rows"], dataclasses.asdict(adair.VARIANTS["tiny"]))
    assert not tiny["printed"] and "dim=8 (paper: 48)" in tiny["why"]
    assert (
        "no published numbers for the setting 'allinone5_demo'"
        in published.reference("adair", "allinone5_demo", res["rows"], base)["why"]
    )
    # The configs' docstrings list the same numbers, each setting in its config.
    for setting, tables in published.TABLES.items():
        doc = (pathlib.Path(evaluate_cli.PROJECT_ROOT) / "configs" / f"{setting}.py").read_text().split('"""')[1]
        for table_ in tables:
            for method in ("adair", "irpo"):
                row = " ".join(f"{p:.2f}/{s:.3f}" for p, s in (table_.values[method][r] for r in table_.rows))
                assert row in doc, (setting, method)


def test_reference_compares_averages_with_the_column_mean_and_shows_the_printed_one(identity_results):
    """IRPO's Table 3 prints an SSIM Average of 0.809 where its columns' mean is 0.789: a model
    equal to IRPO's columns on ood5 is zero off the column mean in every cell and the Average,
    and the printed Average stands beside it with a note. Every other published Average is its
    columns' mean up to rounding."""
    from irpo_jax.evaluation import published
    from irpo_jax.models import adair

    base = dataclasses.asdict(adair.VARIANTS["base"])
    columns = published.TABLES["allinone5"][1].values["irpo"]  # Table 3, IRPO
    rows = {
        r: {"title": r, "task": "x", "sigma": None, "images": 1, "psnr": p, "ssim": s, "tiled": 0}
        for r, (p, s) in columns.items()
    }
    res = dict(
        identity_results,
        rows=rows,
        table=dict(identity_results["table"], layout="ood_five", columns=list(published.OOD_FIVE)),
    )
    res["average"] = {
        "psnr": float(np.mean([p for p, _ in columns.values()])),
        "ssim": float(np.mean([s for _, s in columns.values()])),
    }
    ref = published.reference("irpo", "allinone5", rows, base)
    res["reference"] = ref
    t3 = next(t for t in ref["tables"] if "Table 3" in t["title"])
    assert t3["printed_differs"] == ["ssim"] and t3["printed_average"] == {"psnr": 23.73, "ssim": 0.809}
    assert t3["average"]["ssim"] == pytest.approx(0.7892) and t3["delta_average"]["ssim"] == pytest.approx(
        0.0, abs=1e-12
    )
    assert t3["delta_average"]["psnr"] == pytest.approx(0.0, abs=1e-12)
    assert all(r["delta_psnr"] == 0 and r["delta_ssim"] == 0 for r in ref["rows"].values())
    table = ev.format_table(res)
    assert "| 23.73/0.789 (printed: 23.73/0.809) |" in table
    assert (
        "| ours − published | +0.00/+0.000 | +0.00/+0.000 | +0.00/+0.000 | +0.00/+0.000 | +0.00/+0.000 | +0.00/+0.000 |"
        in table
    )
    assert "printed SSIM Average" in table and "compared with the column mean" in table
    # Everywhere else the printed Average is its columns' mean (no note).
    differs = []
    for setting, tables in published.TABLES.items():
        for t in tables:
            for method in ("adair", "irpo"):
                equal = {r: {"psnr": p, "ssim": q} for r, (p, q) in t.values[method].items()}
                (entry,) = published.reference(method, setting, equal, base)["tables"]
                if entry["printed_differs"]:
                    differs.append((setting, t.title, method))
    assert differs == [("allinone5", t3["title"], "irpo")]


# ----------------------------------------------------------------------------- one clear line


def test_cli_failures_are_one_line(tiny_model_dir, demo_root, tmp_path, capsys, monkeypatch):
    def one_line(*args, rc=2) -> str:
        assert _cli("--checkpoint", tiny_model_dir, "--data_root", demo_root, *args) == rc
        err = capsys.readouterr().err
        lines = [
            ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not re.search(r"\d+%\|", ln)
        ]  # tqdm's progress bars share stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
        return lines[0]

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert f"{blocker} is a file, not a folder" in one_line("--sets", "lol", "--out", blocker / "a" / "b")
    bad_cfg = tmp_path / "bad.py"
    bad_cfg.write_text("def get_config(arg=None):\n    return {\n")
    assert f"--config {bad_cfg}: not a valid Python config file" in one_line("--config", str(bad_cfg))
    assert "--max_images -3: give a positive count, or 0 for every image" in one_line("--max_images", "-3")
    assert "--test_dir 'sidd': expected SET=DIR" in one_line("--test_dir", "sidd")
    assert "unknown set 'sid'" in one_line("--test_dir", "sid=/x")
    msg = one_line("--sets", "ood6")
    assert "unknown test set 'ood6'; valid names:" in msg and "ood5" in msg

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "o" / "results.json"))

    monkeypatch.setattr(ev, "write_results", disk_full)
    msg = one_line("--sets", "lol", "--max_images", "1", "--out", tmp_path / "o")
    assert "cannot write" in msg and "No space left on device" in msg


def test_tile_warns_in_one_line(tiny_model_dir, capsys):
    assert _cli("--checkpoint", tiny_model_dir, "--tile", "64", "--sets", "nope") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warning: --tile 64: ") and "differ from whole-image inference" in err[0]
    assert err[1].startswith("error: unknown test set 'nope'") and len(err) == 2


def test_out_of_memory_names_the_image(demo_root, monkeypatch):
    def exhausted(self, *a, **k):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12.5GiB.\nmore")

    monkeypatch.setattr(ev.Runner, "run_batch", exhausted)
    with pytest.raises(
        ev.EvalError,
        match=r"test set lol: out of device memory restoring 1.png \(\d+x\d+, "
        r"\d image\(s\) per step\) whole: RESOURCE_EXHAUSTED.*--tile SIZE",
    ):
        ev.evaluate(identity, default_data_config(demo_root), ["lol"], progress=False)
