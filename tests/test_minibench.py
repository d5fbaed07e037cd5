"""The mini-IRPO benchmark (irpo_jax.data.minibench): deterministic from its seed, splits disjoint
by region, read unchanged by the project's readers, out-of-domain degradations outside training's."""

import json
import types

import numpy as np
import pytest

from irpo_jax.data import degradations as deg
from irpo_jax.data import minibench, readers
from irpo_jax.data.demo import Box


@pytest.fixture(scope="module")
def quick_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("mb") / "data"
    summary = minibench.build(out, seed=3, quick=True)
    assert summary["built"]
    return out


def test_same_seed_same_bytes_and_a_rebuild_is_found_not_redone(quick_set, tmp_path):
    again = minibench.build(tmp_path / "again", seed=3, quick=True)
    a = json.loads((quick_set / minibench.MANIFEST).read_text())["files"]
    b = json.loads((tmp_path / "again" / minibench.MANIFEST).read_text())["files"]
    assert a == b and again["counts"] == minibench.build(quick_set, seed=3, quick=True)["counts"]
    assert not minibench.build(quick_set, seed=3, quick=True)["built"]
    other = minibench.build(tmp_path / "other", seed=4, quick=True)
    assert json.loads((tmp_path / "other" / minibench.MANIFEST).read_text())["files"] != a and other["built"]
    with pytest.raises(FileExistsError, match="other settings"):
        minibench.build(quick_set, seed=4, quick=True)


def test_a_failed_build_leaves_nothing_and_the_cli_says_why_in_one_line(tmp_path, monkeypatch, capsys):
    """Written whole (safe_files.atomic_directory): a build that fails while writing leaves neither
    the folder nor a temporary sibling; a folder that is not this benchmark is one line, exit 1."""

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(minibench, "json", types.SimpleNamespace(dumps=full_disk, loads=json.loads))
    with pytest.raises(OSError, match="No space left"):
        minibench.build(tmp_path / "out", seed=3, quick=True)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "taken").mkdir()
    assert minibench.main(["--out", str(tmp_path / "taken")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'taken'} exists but holds no manifest.json") and err.count("\n") == 1


def test_splits_are_disjoint_by_region(quick_set):
    samples = json.loads((quick_set / minibench.MANIFEST).read_text())["samples"]
    strips = {"train": "train", "val": "val", "test": "test", "ood": "test"}
    for s in samples:
        box, region = Box(*s["box"]), getattr(minibench.PHOTOS[s["photo"]], strips[s["split"]])
        inside = (
            region.top <= box.top
            and box.top + box.height <= region.top + region.height
            and region.left <= box.left
            and box.left + box.width <= region.left + region.width
        )
        assert inside, s
    for s in samples:
        for t in samples:
            if s["photo"] == t["photo"] and strips[s["split"]] != strips[t["split"]]:
                assert not Box(*s["box"]).overlaps(Box(*t["box"])), (s, t)


def test_the_readers_read_every_split(quick_set):
    cfg = {"root": str(quick_set), "eval_paired": minibench.eval_paired(), "patch_size": 32}
    records, report = readers.train_records(cfg)
    assert not report.skipped
    counts = {t: sum(r.task == t for r in records) for t in minibench.TASKS}
    sizes = minibench.QUICK
    assert counts == {"denoise": 3 * sizes.train["denoise"], "derain": sizes.train["derain"],
                      "dehaze": minibench.HAZY_PER_SCENE * sizes.train["dehaze"], "deblur": sizes.train["deblur"],
                      "lowlight": sizes.train["lowlight"]}  # fmt: skip
    rows = [*minibench.rows("test"), *minibench.rows("val"), *minibench.rows("ood")]
    sets = readers.eval_sets(cfg, rows)
    assert set(sets) == {"sots", "rain100l", "bsd68_s15", "bsd68_s25", "bsd68_s50", "gopro", "lol",
                         *minibench.rows("val"), *minibench.rows("ood")}  # fmt: skip
    for name, es in sets.items():
        item = es[0]
        assert len(es) == {"val": sizes.val, "ood": sizes.ood}.get(name.split("_")[0], sizes.test), name
        assert item["degraded"].shape == item["clean"].shape == (sizes.eval_side, sizes.eval_side, 3)
        assert not np.array_equal(item["degraded"], item["clean"]), name


def test_out_of_domain_models_are_not_trainings():
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.2, 0.8, size=(64, 64, 3)).astype(np.float32)
    flat = np.full((64, 64, 3), 0.5, np.float32)
    # Denoise: signal-dependent noise (brighter = noisier), training's is not.
    dark, bright = (minibench.ood_noise(np.full((64, 64, 3), v, np.float32), np.random.default_rng(1))[0] - v
                    for v in (0.1, 0.9))  # fmt: skip
    assert bright.std() > 1.5 * dark.std()
    # Deblur: a defocus disk is isotropic and flat inside, a motion kernel is a line.
    k = minibench.disk_kernel(3.0)
    np.testing.assert_allclose(k, k.T, atol=1e-12)
    np.testing.assert_allclose(k.sum(), 1.0)
    assert k[3, 3] == pytest.approx(k[3, 4]) and k.shape == (7, 7)
    # Dehaze: a coloured airlight tints a flat grey image, training's grey airlight does not.
    hazy, _ = minibench.ood_haze(flat, np.random.default_rng(2))
    assert np.ptp(hazy.mean(axis=(0, 1))) > 0.02
    assert np.ptp(deg.add_haze(flat, 5.0, 0.9, 0.1).mean(axis=(0, 1))) < 1e-6
    # Low light: linear (no gamma) with a colour cast; derain: screen blending over a light veil
    # brightens a mid-grey image everywhere.
    low, p = minibench.ood_lowlight(clean, np.random.default_rng(3))
    assert low.mean() < 0.2 * clean.mean() and p["cast_r"] != p["cast_b"]
    rainy, _ = minibench.ood_rain(clean, np.random.default_rng(4))
    assert (rainy >= clean - 1e-6).all() and rainy.mean() > clean.mean()
