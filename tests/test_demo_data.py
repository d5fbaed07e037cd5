"""Tests of the synthetic degradations and the demo set builder (irpo_jax.data).

The layout checks follow the official readers' path rules (adair-spec.md section 10): the rainy
-> gt and hazy -> original name derivations below mirror ``dataset_utils.py`` so that a reader
written to the spec finds every pair. Degradations are checked against independent numpy
computations or against the property their model guarantees.
"""

from __future__ import annotations

import json
import pathlib
import re
import time
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from irpo_jax.data import degradations as deg
from irpo_jax.data import demo

# --------------------------------------------------------------------------- helpers


def _read(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def _natural(h: int = 128, w: int = 128) -> np.ndarray:
    """A textured float32 test image in [0, 1]."""
    return deg.to_float32(skimage.data.astronaut()[100 : 100 + h, 150 : 150 + w])


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _official_rain_gt(rainy_rel: str) -> str:
    # dataset_utils._get_gt_name
    return rainy_rel.split("rainy")[0] + "gt/norain-" + rainy_rel.split("rain-")[-1]


def _official_nonhazy(hazy_rel: str) -> str:
    # dataset_utils._get_nonhazy_name: original/<id>.<extension of the hazy file>
    dir_name = hazy_rel.split("synthetic")[0] + "original/"
    return dir_name + hazy_rel.split("/")[-1].split("_")[0] + "." + hazy_rel.split(".")[-1]


def _official_sots_target(input_rel: str) -> str:
    # DerainDehazeDataset._get_gt_path for dehaze
    return input_rel.split("input")[0] + "target/" + input_rel.split("/")[-1].split("_")[0] + ".png"


# (degraded folder, clean folder, degraded name -> clean name) for every paired set.
PAIRED = [
    ("Train/Derain/rainy", "Train/Derain/gt", lambda n: "norain-" + n.split("rain-")[-1]),
    ("Train/Dehaze/synthetic/part1", "Train/Dehaze/original", lambda n: n.split("_")[0] + "." + n.split(".")[-1]),
    ("Train/Deblur/blur", "Train/Deblur/sharp", lambda n: n),
    ("Train/Enhance/low", "Train/Enhance/gt", lambda n: n),
    ("test/derain/Rain100L/input", "test/derain/Rain100L/target", lambda n: n),
    ("test/dehaze/input", "test/dehaze/target", lambda n: n.split("_")[0] + ".png"),
    ("test/deblur/gopro/input", "test/deblur/gopro/target", lambda n: n),
    ("test/enhance/lol/input", "test/enhance/lol/target", lambda n: n),
]
CLEAN_ONLY = ["Train/Denoise", "test/denoise/bsd68"]
TRAIN_CLEAN = ["Train/Denoise", "Train/Derain/gt", "Train/Dehaze/original", "Train/Deblur/sharp", "Train/Enhance/gt"]
TEST_CLEAN = [
    "test/denoise/bsd68",
    "test/derain/Rain100L/target",
    "test/dehaze/target",
    "test/deblur/gopro/target",
    "test/enhance/lol/target",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict, float]:
    out = tmp_path_factory.mktemp("demo") / "set"
    start = time.perf_counter()
    summary = demo.build_demo_set(out, seed=0)
    return out, summary, time.perf_counter() - start


# --------------------------------------------------------------------------- degradations


def test_noise_is_the_official_truncating_protocol():
    clean = np.full((256, 256, 3), 128, np.uint8)  # mid-grey: clipping is negligible at sigma 25
    sigma = 25.0
    noisy = deg.add_gaussian_noise_uint8(clean, sigma, np.random.default_rng(7))
    # Independent computation with the same stream: float64 randn, add, clip, floor.
    n = np.random.default_rng(7).standard_normal(clean.shape)
    before_cast = np.clip(128.0 + sigma * n, 0.0, 255.0)
    assert noisy.dtype == np.uint8
    np.testing.assert_array_equal(noisy, np.floor(before_cast).astype(np.uint8))
    # Truncated, not rounded: they differ wherever the fractional part is >= 0.5.
    assert np.mean(noisy != np.rint(before_cast).astype(np.uint8)) > 0.3
    diff = (noisy.astype(np.float64) - clean) / 255.0
    assert abs(diff.std() - sigma / 255.0) < 0.02 * sigma / 255.0
    # Truncation biases the noisy image by about -0.5 DN (spec section 14).
    assert -0.7 < (noisy.astype(np.float64) - clean).mean() < -0.3
    with pytest.raises(TypeError):
        deg.add_gaussian_noise_uint8(clean.astype(np.float32), sigma, np.random.default_rng(0))


def test_haze_matches_the_scattering_model_on_constant_depth():
    img = _natural()
    a, beta, d = 0.9, 0.12, 5.0
    hazy = deg.add_haze(img, d, a, beta)
    t = np.exp(-beta * d)
    np.testing.assert_allclose(hazy, img * t + a * (1 - t), atol=1e-6)
    assert hazy.dtype == np.float32
    assert hazy.mean() > img.mean() + 0.05  # brighter
    assert hazy.std() < 0.7 * img.std()  # lower contrast (std scales by t = 0.55)
    # With a depth map, far pixels are hazier (closer to A).
    depth = deg.synthetic_depth(img.shape[:2], np.random.default_rng(0))
    assert depth.min() == pytest.approx(1.0) and depth.max() == pytest.approx(10.0)
    hazy_map = deg.add_haze(img, depth, a, beta)
    far, near = depth > 8, depth < 3
    assert np.abs(hazy_map - a)[far].mean() < np.abs(hazy_map - a)[near].mean()


def test_motion_blur_lowers_gradients_and_keeps_the_mean():
    img = _natural()
    rng = np.random.default_rng(0)
    blurred = deg.motion_blur(img, rng, length=11, angle=30)
    assert blurred.shape == img.shape and blurred.dtype == np.float32

    def grad_energy(x: np.ndarray) -> float:
        return float((np.diff(x, axis=0) ** 2).mean() + (np.diff(x, axis=1) ** 2).mean())

    assert grad_energy(blurred) < 0.5 * grad_energy(img)
    m = 12  # interior, away from the reflected border
    assert abs(blurred[m:-m, m:-m].mean() - img[m:-m, m:-m].mean()) < 5e-3
    k = deg.line_kernel(11, 30)
    assert k.sum() == pytest.approx(1.0) and np.allclose(k, k[::-1, ::-1])
    # A constant image stays constant (kernel sums to 1, reflect borders).
    flat = np.full((40, 50, 3), 0.4, np.float32)
    np.testing.assert_allclose(deg.motion_blur(flat, rng, 15, 70), flat, atol=1e-6)


def test_low_light_darkens():
    img = _natural()
    low = deg.low_light(img, np.random.default_rng(0))
    assert low.dtype == np.float32 and 0.0 <= low.min() and low.max() <= 1.0
    assert low.mean() < 0.35 * img.mean()
    # Brighter clean pixels stay brighter on average (monotone response plus small noise).
    assert np.corrcoef(low.ravel(), img.ravel())[0, 1] > 0.9


def test_low_light_is_its_formula():
    """``clip(scale * J ** gamma + sigma * n, 0, 1)``: given parameters, the generator's first draws
    are the noise; drawn ones come uniformly from LOW_LIGHT_RANGES in the order gamma, scale,
    sigma, before the noise."""
    img = _natural(48, 64)
    gamma, scale, sigma = 1.7, 0.2, 0.01
    got = deg.low_light(img, np.random.default_rng(5), gamma=gamma, scale=scale, noise_sigma=sigma)
    noise = np.random.default_rng(5).standard_normal(img.shape)
    want = np.clip(scale * img.astype(np.float64) ** gamma + sigma * noise, 0, 1)
    np.testing.assert_allclose(got, want, atol=2e-6)
    # Without noise the darkening is exact and a gamma > 1 crushes mid-tones: 0.5 -> 0.2 * 0.5 ** 1.7.
    grey = deg.low_light(np.full((4, 4, 3), 0.5, np.float32), np.random.default_rng(0), gamma=gamma, scale=scale,
                         noise_sigma=0.0)  # fmt: skip
    np.testing.assert_allclose(grey, 0.2 * 0.5**1.7, rtol=1e-6)
    rng = np.random.default_rng(9)
    drawn = [rng.uniform(*deg.LOW_LIGHT_RANGES[k]) for k in ("gamma", "scale", "noise_sigma")]
    want = np.clip(drawn[1] * img.astype(np.float64) ** drawn[0] + drawn[2] * rng.standard_normal(img.shape), 0, 1)
    np.testing.assert_allclose(deg.low_light(img, np.random.default_rng(9)), want, atol=2e-6)


def test_rain_adds_bright_streaks():
    img = np.full((128, 128, 3), 0.4, np.float32)
    rainy = deg.add_rain(img, np.random.default_rng(0))
    delta = rainy - img
    assert rainy.dtype == np.float32 and rainy.max() <= 1.0
    assert delta.min() >= -1e-6  # additive: never darker
    increased = (delta > 1 / 255).any(axis=-1).mean()
    assert 0.01 < increased < 0.5  # sparse streaks, not a veil
    assert delta.max() > 0.2  # bright
    # Same grey layer on every channel.
    np.testing.assert_allclose(delta[..., 0], delta[..., 2], atol=1e-6)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, r: deg.add_rain(x, r),
        lambda x, r: deg.motion_blur(x, r),
        lambda x, r: deg.low_light(x, r),
        lambda x, r: deg.add_haze(x, deg.synthetic_depth(x.shape[:2], r), 0.85, 0.1),
    ],
    ids=["rain", "blur", "low_light", "haze"],
)
def test_degradations_are_deterministic_and_in_range(fn):
    img = _natural(64, 80)
    a = fn(img, np.random.default_rng(3))
    b = fn(img, np.random.default_rng(3))
    c = fn(img, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == img.shape
    assert 0.0 <= a.min() and a.max() <= 1.0


def test_sample_params_rejects_unknown_names():
    with pytest.raises(ValueError, match="length"):
        deg.sample_params(deg.BLUR_RANGES, np.random.default_rng(0), lenght=3)


# --------------------------------------------------------------------------- demo set


def test_build_is_fast_and_counts(built):
    out, summary, seconds = built
    assert seconds < 30.0
    counts = summary["counts"]
    for split in ("train", "test"):
        assert set(counts[split]) == set(demo.TASKS)
        assert all(n >= 3 for n in counts[split].values())
    manifest = json.loads((out / demo.MANIFEST).read_text())
    assert manifest["seed"] == 0 and manifest["counts"] == counts
    assert (out / demo.README).read_text().count("seed 0") >= 1


def test_layout_folders_exist_and_pairs_match(built):
    out, _, _ = built
    for folder in CLEAN_ONLY:
        assert any((out / folder).glob("*.png")), folder
    for deg_dir, clean_dir, to_clean in PAIRED:
        degraded = sorted(p.name for p in (out / deg_dir).iterdir())
        clean = sorted(p.name for p in (out / clean_dir).iterdir())
        assert degraded, deg_dir
        assert sorted({to_clean(n) for n in degraded}) == clean, (deg_dir, clean_dir)
        for name in degraded:
            a = Image.open(out / deg_dir / name)
            b = Image.open(out / clean_dir / to_clean(name))
            assert a.size == b.size and a.mode == b.mode == "RGB", name


def test_list_files_reference_existing_files(built):
    out, _, _ = built
    names = (out / "data_dir/noisy/denoise.txt").read_text().splitlines()
    assert sorted(names) == sorted(p.name for p in (out / "Train/Denoise").iterdir())
    rainy = (out / "data_dir/rainy/rainTrain.txt").read_text().splitlines()
    assert rainy and all(line.startswith("rainy/rain-") for line in rainy)
    assert len(rainy) == len(list((out / "Train/Derain/rainy").iterdir()))
    for line in rainy:
        assert (out / "Train/Derain" / line).is_file()
        assert (out / "Train/Derain" / _official_rain_gt(line)).is_file()
    hazy = (out / "data_dir/hazy/hazy_outside.txt").read_text().splitlines()
    assert hazy and all(line.startswith("synthetic/part1/") for line in hazy)
    assert len(hazy) == len(list((out / "Train/Dehaze/synthetic/part1").iterdir()))
    for line in hazy:
        stem = line.split("/")[-1].rsplit(".", 1)[0]
        scene, a, beta = stem.split("_")
        assert len(scene) == 4 and float(a) in deg.HAZE_A_VALUES
        assert float(beta) in deg.HAZE_BETA_VALUES
        assert (out / "Train/Dehaze" / line).is_file()
        assert (out / "Train/Dehaze" / _official_nonhazy(line)).is_file()
    for p in (out / "test/dehaze/input").iterdir():
        rel = p.relative_to(out).as_posix()
        assert (out / _official_sots_target(rel)).is_file()


def test_image_sizes(built):
    out, _, _ = built
    for folder in TRAIN_CLEAN:
        for p in (out / folder).iterdir():
            w, h = Image.open(p).size
            assert min(h, w) >= 160 and max(h, w) <= 256, p  # >= 128 after crop-to-16
    for folder in TEST_CLEAN:
        sizes = [Image.open(p).size for p in (out / folder).iterdir()]
        assert all(128 <= min(s) and max(s) <= 256 for s in sizes), folder
        # crop-to-16 must actually cut something somewhere in every task's test set
        assert any(s[0] % 16 or s[1] % 16 for s in sizes), folder


def test_degraded_files_differ_as_their_task_says(built):
    out, _, _ = built
    rain = _read(out / "Train/Derain/rainy/rain-1.png").astype(int)
    gt = _read(out / "Train/Derain/gt/norain-1.png").astype(int)
    assert (rain >= gt).mean() > 0.99 and (rain > gt).any()
    low = _read(out / "Train/Enhance/low/1.png")
    assert low.mean() < 0.4 * _read(out / "Train/Enhance/gt/1.png").mean()


def _pack(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint32, so that pixel comparisons are single integer ones."""
    img = img.astype(np.uint32)
    return (img[..., 0] << 16) | (img[..., 1] << 8) | img[..., 2]


def _find_patch(big: np.ndarray, patch: np.ndarray) -> bool:
    """Whether the packed ``patch`` occurs in the packed ``big`` exactly, at any position."""
    p, q = patch.shape
    if big.shape[0] < p or big.shape[1] < q:
        return False
    ys, xs = np.nonzero(big[: big.shape[0] - p + 1, : big.shape[1] - q + 1] == patch[0, 0])
    keep = (big[ys + p - 1, xs + q - 1] == patch[-1, -1]) & (big[ys + p // 2, xs + q // 2] == patch[p // 2, q // 2])
    return any(np.array_equal(big[y : y + p, x : x + q], patch) for y, x in zip(ys[keep], xs[keep]))


def test_no_leakage_between_train_and_test(built):
    out, _, _ = built
    manifest = json.loads((out / demo.MANIFEST).read_text())
    # 1) the documented regions: every test box is disjoint from every train box of its photo.
    boxes = {"train": {}, "test": {}}
    for s in manifest["samples"]:
        boxes[s["split"]].setdefault(s["photo"], []).append(demo.Box(*s["box"]))
    for photo, test_boxes in boxes["test"].items():
        for tb in test_boxes:
            assert tb.overlaps(demo.Box(*manifest["regions"][photo]["test"]))
            assert not any(tb.overlaps(b) for b in boxes["train"].get(photo, []))
    # 2) the pixels: no test clean image equals a training one, nor contains a textured 12x12
    #    patch found (in any orientation) in a training clean image.
    train = [_read(p) for f in TRAIN_CLEAN for p in sorted((out / f).iterdir())]
    train_packed = [_pack(t) for t in train]
    # The detector does find a patch that is there (off the origin).
    assert _find_patch(train_packed[1], train_packed[1][20:32, 30:42].copy())
    for folder in TEST_CLEAN:
        for path in sorted((out / folder).iterdir()):
            img = _read(path)
            assert not any(t.shape == img.shape and np.array_equal(t, img) for t in train)
            ys, xs = range(0, img.shape[0] - 12, 6), range(0, img.shape[1] - 12, 6)
            y, x = max(
                ((y, x) for y in ys for x in xs), key=lambda yx: img[yx[0] : yx[0] + 12, yx[1] : yx[1] + 12].std()
            )
            patch = _pack(img[y : y + 12, x : x + 12])
            for k in range(8):
                oriented = np.rot90(patch, k % 4)
                oriented = np.flipud(oriented) if k >= 4 else oriented
                assert not any(_find_patch(t, oriented) for t in train_packed), (path, k)


def test_same_seed_is_byte_identical_other_seed_differs(built, tmp_path):
    out, _, _ = built
    again = tmp_path / "again"
    demo.build_demo_set(again, seed=0)
    assert _files(again) == _files(out)
    other = tmp_path / "other"
    demo.build_demo_set(other, seed=1)
    a, b = _files(out), _files(other)
    pngs = [rel for rel in a if rel.endswith(".png") and rel in b]
    assert sum(a[rel] != b[rel] for rel in pngs) > 0.9 * len(pngs)


def test_refuses_non_empty_dir_and_overwrite_replaces_only_its_files(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=re.escape(str(foreign))):
        demo.build_demo_set(foreign)
    # No manifest from the builder: --overwrite must refuse too and touch nothing.
    with pytest.raises(FileExistsError, match="manifest.json"):
        demo.build_demo_set(foreign, overwrite=True)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    out = tmp_path / "demo"
    demo.build_demo_set(out, seed=0)
    (out / "Train" / "extra.txt").write_text("user file")
    with pytest.raises(FileExistsError, match="--overwrite"):
        demo.build_demo_set(out, seed=1)
    demo.build_demo_set(out, seed=1, overwrite=True)
    assert (out / "Train" / "extra.txt").read_text() == "user file"
    fresh = tmp_path / "fresh"
    demo.build_demo_set(fresh, seed=1)
    rebuilt = _files(out)
    assert rebuilt.pop("Train/extra.txt") == b"user file"
    assert rebuilt == _files(fresh)
    # A builder file edited by the user is not deleted.
    (out / "Train/Denoise/00001.png").write_bytes(b"edited")
    with pytest.raises(FileExistsError, match="modified"):
        demo.build_demo_set(out, seed=1, overwrite=True)
    assert (out / "Train/Denoise/00001.png").read_bytes() == b"edited"


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert demo.main(["--out", str(out), "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    assert "train:" in printed and "test :" in printed and f"to {out}" in printed
    assert json.loads((out / demo.MANIFEST).read_text())["seed"] == 2
    assert demo.main(["--out", str(out)]) == 1
    assert str(out) in capsys.readouterr().err
    assert demo.main(["--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / demo.MANIFEST).read_text())["seed"] == 0
    # An --out that cannot be created: one line, no traceback.
    (tmp_path / "a_file").write_text("x")
    assert demo.main(["--out", str(tmp_path / "a_file" / "demo")]) == 1
    assert "Not a directory" in capsys.readouterr().err
    if pathlib.Path("/proc/self").is_dir():  # Linux: nothing can be created under /proc
        assert demo.main(["--out", "/proc/irpo_jax_demo"]) == 1
        assert "cannot write the demo set to /proc/irpo_jax_demo" in capsys.readouterr().err
