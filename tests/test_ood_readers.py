"""The out-of-domain readers (irpo_jax/data/ood_sets.py) on synthetic miniatures of each release's
folder structure (tests/ood_miniatures.py), their quirks, and ``evaluate(..., ["ood5"])`` end to
end with the identity as restorer, checked against skimage on pairs read independently here.
"""

import pathlib
import shutil

import numpy as np
import ood_miniatures
import pytest
import scipy.io
from PIL import Image

from irpo_jax import evaluation as ev
from irpo_jax.data import readers as R


@pytest.fixture(scope="module")
def ood_root(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    root = tmp_path_factory.mktemp("ood") / "data"
    return root, ood_miniatures.build(root)


def _crop16(a: np.ndarray) -> np.ndarray:
    """The official crop_img(base=16), written out again here."""
    h, w = a.shape[:2]
    top, left = (h % 16) // 2, (w % 16) // 2
    return a[top : top + h - h % 16, left : left + w - w % 16]


def _pixels(src) -> np.ndarray:
    a = src if isinstance(src, np.ndarray) else np.asarray(Image.open(src).convert("RGB"))
    return _crop16(a)


def test_each_reader_pairs_its_release_layout(ood_root):
    """Names, order, scene groups and pixels, for all five; the training splits, the masks tree,
    the unpaired real test images and SIDD's benchmark file are not read."""
    root, expected = ood_root
    sets = R.eval_sets({"root": str(root)}, ["ood5"])
    assert list(sets) == ["rrshid", "gtrain", "sidd", "reloblur", "lolistreet"]
    for name, es in sets.items():
        want = expected[name]
        assert [es.item_name(i) for i in range(len(es))] == [w["name"] for w in want], name
        assert es.task == R.TEST_SETS[name][0] and es.missing == []
        for i, w in enumerate(want):
            item = es[i]
            np.testing.assert_array_equal(item["degraded"], _pixels(w["degraded"]), err_msg=w["name"])
            np.testing.assert_array_equal(item["clean"], _pixels(w["clean"]), err_msg=w["name"])
            assert item.get("group") == w.get("group")
    assert len({r.id for es in sets.values() for r in es.records}) == sum(len(es) for es in sets.values())


def _copy(root: pathlib.Path, name: str, dst: pathlib.Path) -> pathlib.Path:
    shutil.copytree(root / "test/ood" / name, dst / "test/ood" / name)
    return dst / "test/ood" / name


def test_inputs_without_targets_refuse_the_set_or_are_listed_when_partial(ood_root, tmp_path):
    root, _ = ood_root
    rr = _copy(root, "rrshid", tmp_path)
    (rr / "RRSHID/thin/test/GT/10.png").rename(rr / "RRSHID/thin/test/GT/11.png")  # misnamed
    gt = _copy(root, "gtrain", tmp_path)
    (gt / "GT-RAIN_test/M1135_0-0/M1135_0-0_ref-C-000.png").unlink()  # a scene without its clean frame
    bl = _copy(root, "reloblur", tmp_path)
    (bl / "test/scene2/03/00_sharp.png").unlink()
    lo = _copy(root, "lolistreet", tmp_path)
    (lo / "LoLI-Street Dataset/Val/high/a.png").rename(lo / "LoLI-Street Dataset/Val/high/a2.png")
    cfg = {"root": str(tmp_path)}
    for name, file in [
        ("rrshid", "thin/test/hazy/10.png"),
        ("gtrain", "M1135_0-0/M1135_0-0-R-000.png"),
        ("reloblur", "scene2/03/00_blur.png"),
        ("lolistreet", "a.png"),
    ]:
        with pytest.raises(
            R.DataError,
            match=rf"test set {name}: 1 of its \d+ input\(s\) have no matching "
            rf"target: {file}.*--allow_partial.*data.test_dirs.{name}",
        ):
            R.eval_sets(cfg, [name])
        es = R.eval_sets(cfg, [name], allow_partial=True)[name]
        assert es.missing == [file] and file not in [es.item_name(i) for i in range(len(es))]


def test_gtrain_pairs_by_prefix_then_by_the_scenes_clean_frame(tmp_path):
    scene = tmp_path / "test/ood/gtrain/Park_0-0"
    for f in [
        "Park_0-0-R-000.png",
        "Park_0-0-Webcam-R-000.png",
        "Park_0-0-C-000.png",
        "Park_0-0-Webcam-C-000.png",
        "Park_0-0-C-001.png",
    ]:
        ood_miniatures._save(scene / f, np.full((32, 32, 3), len(f), np.uint8))
    es = R.eval_sets({"root": str(tmp_path)}, ["gtrain"])["gtrain"]
    pairs = {pathlib.Path(r.degraded).name: pathlib.Path(r.clean).name for r in es.records}
    assert pairs == {
        "Park_0-0-R-000.png": "Park_0-0-C-000.png",
        "Park_0-0-Webcam-R-000.png": "Park_0-0-Webcam-C-000.png",
    }
    assert es.groups == ["Park_0-0", "Park_0-0"]


def test_sidd_png_releases_and_16_bit_files(tmp_path):
    """SIDD-Medium (NNNN_NOISY_SRGB_010.PNG, two pairs per instance) and SIDD-Small
    (NOISY_SRGB_010.PNG) naming; a 16-bit grey pair is read at full range."""
    rng = np.random.default_rng(1)
    medium = tmp_path / "test/ood/sidd/SIDD_Medium_Srgb/Data/0001_001_S6_00100_00060_3200_L"
    for n in ("010", "011"):
        ood_miniatures._pair(rng, medium / f"0001_NOISY_SRGB_{n}.PNG", medium / f"0001_GT_SRGB_{n}.PNG", 0)
    small = tmp_path / "test/ood/sidd/SIDD_Small_sRGB_Only/Data/0002_001_GP_00100_00100_5500_N"
    ood_miniatures._pair(rng, small / "NOISY_SRGB_010.PNG", small / "GT_SRGB_010.PNG", 1)
    deep = tmp_path / "test/ood/sidd/SIDD_Small_sRGB_Only/Data/0003_002_IP_00400_00400_3200_L"
    grey16 = rng.integers(0, 65536, (32, 32), dtype=np.uint16)
    for f in ("NOISY_SRGB_010.PNG", "GT_SRGB_010.PNG"):
        deep.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grey16).save(deep / f)
    es = R.eval_sets({"root": str(tmp_path)}, ["sidd"])["sidd"]
    names = [es.item_name(i) for i in range(len(es))]
    assert names == [
        "SIDD_Medium_Srgb/Data/0001_001_S6_00100_00060_3200_L/0001_NOISY_SRGB_010.PNG",
        "SIDD_Medium_Srgb/Data/0001_001_S6_00100_00060_3200_L/0001_NOISY_SRGB_011.PNG",
        "SIDD_Small_sRGB_Only/Data/0002_001_GP_00100_00100_5500_N/NOISY_SRGB_010.PNG",
        "SIDD_Small_sRGB_Only/Data/0003_002_IP_00400_00400_3200_L/NOISY_SRGB_010.PNG",
    ]
    assert [pathlib.Path(r.clean).name for r in es.records] == [
        "0001_GT_SRGB_010.PNG",
        "0001_GT_SRGB_011.PNG",
        "GT_SRGB_010.PNG",
        "GT_SRGB_010.PNG",
    ]
    item = es[3]
    assert item["clean"].dtype == np.uint16
    np.testing.assert_array_equal(item["clean"], np.repeat(grey16[..., None], 3, -1))


def test_sidd_mat_files_that_cannot_be_the_benchmark(tmp_path):
    folder = tmp_path / "test/ood/sidd"
    folder.mkdir(parents=True)
    blocks = np.zeros((1, 2, 16, 16, 3), np.uint8)
    cfg = {"root": str(tmp_path)}
    scipy.io.savemat(folder / "BenchmarkNoisyBlocksSrgb.mat", {"BenchmarkNoisyBlocksSrgb": blocks})
    with pytest.raises(R.DataError, match="ground truth is not public.*ValidationNoisyBlocksSrgb.mat"):
        R.eval_sets(cfg, ["sidd"])
    scipy.io.savemat(folder / "ValidationNoisyBlocksSrgb.mat", {"ValidationNoisyBlocksSrgb": blocks})
    with pytest.raises(R.DataError, match="not ValidationGtBlocksSrgb.mat"):
        R.eval_sets(cfg, ["sidd"])
    scipy.io.savemat(folder / "ValidationGtBlocksSrgb.mat", {"ValidationGtBlocksSrgb": blocks[:, :1]})
    with pytest.raises(R.DataError, match=r"holds \(1, 2, 16, 16, 3\) blocks but .* holds \(1, 1, 16, 16, 3\)"):
        R.eval_sets(cfg, ["sidd"])
    # MATLAB v7.3 files are HDF5 (the 128-byte header says version 0x0200): named, with what to do.
    header = b"MATLAB 7.3 MAT-file".ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM"
    (folder / "ValidationGtBlocksSrgb.mat").write_bytes(header + b"\0" * 512)
    with pytest.raises(R.DataError, match=r"ValidationGtBlocksSrgb.mat is a MATLAB v7.3 \(HDF5\) file"):
        R.eval_sets(cfg, ["sidd"])
    scipy.io.savemat(folder / "ValidationGtBlocksSrgb.mat", {"ValidationGtBlocksSrgb": blocks.astype(np.float32)})
    es = R.eval_sets(cfg, ["sidd"])["sidd"]  # the header is fine; the pixels are checked when read
    with pytest.raises(R.DataError, match="is float32; expected the uint8 sRGB blocks"):
        es[0]


def test_layouts_that_are_not_the_release_are_named(ood_root, tmp_path):
    cfg = {"root": str(tmp_path)}
    with pytest.raises(
        R.DataError,
        match=r"test set rrshid: .*test/ood/rrshid does not exist.*"
        r"data.test_dirs.rrshid.*--test_dir rrshid=DIR",
    ):
        R.eval_sets(cfg, ["rrshid"])
    rr = tmp_path / "test/ood/rrshid/RRSHID"
    ood_miniatures._pair(np.random.default_rng(0), rr / "train/hazy/1.png", rr / "train/GT/1.png", 0)
    with pytest.raises(R.DataError, match="only a training split was found"):
        R.eval_sets(cfg, ["rrshid"])
    (tmp_path / "test/ood/lolistreet/Test/low").mkdir(parents=True)
    with pytest.raises(R.DataError, match="no low/ folder with a high/ sibling.*no ground truth"):
        R.eval_sets(cfg, ["lolistreet"])
    # Another place for one set, by data.test_dirs (what evaluate --test_dir sets).
    moved = tmp_path / "elsewhere" / "ReLoBlur"
    shutil.copytree(ood_root[0] / "test/ood/reloblur", moved)
    es = R.eval_sets({"root": str(tmp_path), "test_dirs": {"reloblur": str(moved)}}, ["reloblur"])["reloblur"]
    assert len(es) == 3


def test_loose_names_match_only_when_unique(tmp_path):
    rr = tmp_path / "test/ood/rrshid/test"
    rng = np.random.default_rng(0)
    ood_miniatures._pair(rng, rr / "hazy/0005_hazy.png", rr / "GT/5.png", 0)
    ood_miniatures._pair(rng, rr / "hazy/0006_hazy.png", rr / "GT/6.png", 0)
    ood_miniatures._save(rr / "GT/006_clear.png", np.zeros((32, 32, 3), np.uint8))  # 6 twice: ambiguous
    es = R.eval_sets({"root": str(tmp_path)}, ["rrshid"], allow_partial=True)["rrshid"]
    assert [pathlib.Path(r.clean).name for r in es.records] == ["5.png"] and es.missing == ["0006_hazy.png"]


# ----------------------------------------------------------------------------- evaluate on ood5


def identity(x):
    return x


def test_ood5_scores_match_skimage_and_gtrain_averages_per_scene(ood_root):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    root, expected = ood_root
    res = ev.evaluate(identity, R.default_data_config(root), ["ood5"], progress=False, name="identity")
    assert list(res["rows"]) == list(R.OOD_SETS)
    assert res["table"] == {"layout": "ood_five", "columns": list(R.OOD_SETS)}
    got = {(r["set"], r["name"]): r for r in res["per_image"]}
    for name, want in expected.items():
        psnrs = {}
        for w in want:
            x, y = _pixels(w["degraded"]) / 255.0, _pixels(w["clean"]) / 255.0
            r = got[(name, w["name"])]
            assert r["psnr"] == pytest.approx(peak_signal_noise_ratio(y, x, data_range=1), abs=1e-3)
            assert r["ssim"] == pytest.approx(structural_similarity(y, x, data_range=1, channel_axis=-1), abs=1e-4)
            psnrs.setdefault(w.get("group"), []).append(r["psnr"])
        row = res["rows"][name]
        assert row["images"] == len(want) and row["partial"] is False
        if name == "gtrain":  # GT-Rain's notebook: the mean of the scenes' means
            assert row["psnr"] == pytest.approx(np.mean([np.mean(v) for v in psnrs.values()]))
            assert abs(row["psnr"] - np.mean([r for v in psnrs.values() for r in v])) > 1e-3  # unequal scenes
            assert "groups" in row["average"] and "scene" in row["protocol"]
        else:
            assert row["psnr"] == pytest.approx(np.mean(psnrs[None])) and row["average"] == "mean over images"
    assert res["average"]["psnr"] == pytest.approx(np.mean([res["rows"][r]["psnr"] for r in R.OOD_SETS]))
    table = ev.format_table(res)
    assert (
        "| Method | Dehazing on RRSHID | Deraining on GT-Rain | Denoising on SIDD | Deblurring on "
        "ReLoBlur | Low-Light on LoLI-Street | Average |"
    ) in table
    assert "gtrain: set score = mean over groups of each group's mean" in table
