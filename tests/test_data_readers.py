"""Tests of the dataset readers (irpo_jax.data.readers) on the built-in demo set and on small
hand-made folders.

Pairing is checked against the demo builder's own record of what it wrote (its manifest.json) and
against direct PIL decoding; the test-set noise against an independent numpy implementation of
the official protocol; every bad-input case against its documented handling.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from irpo_jax.data import demo
from irpo_jax.data import readers as R
from irpo_jax.tasks import TASKS

DEMO_TASK = {"denoise": "denoise", "derain": "derain", "dehaze": "dehaze", "deblur": "deblur", "enhance": "lowlight"}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "set"
    demo.build_demo_set(root, seed=0)
    return root


def _pil(path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def _crop16(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[:2]
    return a[(h % 16) // 2 : h - h % 16 + (h % 16) // 2, (w % 16) // 2 : w - w % 16 + (w % 16) // 2]


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _paired(root: Path, names_sizes: dict[str, tuple[int, int]], seed: int = 0) -> Path:
    """A paired folder root/input + root/target of random RGB PNGs."""
    for sub in ("input", "target"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for k, (name, (h, w)) in enumerate(names_sizes.items()):
        Image.fromarray(_rgb(h, w, seed + k)).save(root / "input" / name)
        Image.fromarray(_rgb(h, w, seed + 100 + k)).save(root / "target" / name)
    return root


def _png16_rgb(path: Path, arr: np.ndarray) -> None:
    """Writes a 16-bit RGB PNG by hand (PIL cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16-bit, colour type 2 (RGB)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- the AdaIR layout


def test_train_records_pair_exactly_what_the_demo_builder_wrote(demo_root):
    records, report = R.train_records({"root": str(demo_root)})
    assert report.skipped == []
    written = json.loads((demo_root / "manifest.json").read_text())["samples"]
    expected = {(DEMO_TASK[s["task"]], s["degraded"], s["clean"]) for s in written if s["split"] == "train"}
    rel = lambda p: None if p is None else Path(p).relative_to(demo_root).as_posix()  # noqa: E731
    got = {(r.task, rel(r.degraded), rel(r.clean)) for r in records}
    assert got == expected
    # One record per denoise image and sigma; sizes from the headers.
    counts = {t: sum(r.task == t for r in records) for t in TASKS}
    assert counts == {"denoise": 18, "derain": 5, "dehaze": 6, "deblur": 5, "lowlight": 5}
    assert sorted({r.sigma for r in records if r.task == "denoise"}) == [15, 25, 50]
    assert all(r.sigma == 0 for r in records if r.task != "denoise")
    assert len({r.id for r in records}) == len(records)
    for r in records[::7]:
        assert r.size == _pil(r.clean).shape[:2]
        assert r.task_id == TASKS.index(r.task)
        if r.degraded is not None:
            np.testing.assert_array_equal(R.load_image(r.degraded), _pil(r.degraded))


def test_mixture_uses_the_official_repeats_and_is_configurable(demo_root):
    cfg = {"root": str(demo_root)}
    records, _ = R.train_records(cfg)
    mix = R.mixture_indices(records, cfg)
    per_task = {t: sum(records[i].task == t for i in mix) for t in TASKS}
    assert per_task == {"denoise": 18 * 3, "derain": 5 * 120, "dehaze": 6 * 1, "deblur": 5 * 5, "lowlight": 5 * 20}
    mix = R.mixture_indices(records, {**cfg, "repeats": {"derain": 2}})
    assert sum(records[i].task == "derain" for i in mix) == 10
    assert sum(records[i].task == "lowlight" for i in mix) == 100  # others unchanged
    cfg = R.default_data_config(str(demo_root))
    cfg.tasks = ("derain", "lowlight")
    assert {r.task for r in R.train_records(cfg)[0]} == {"derain", "lowlight"}


def test_config_errors_name_the_key():
    with pytest.raises(R.DataError, match="unknown data config key.*'rot'"):
        R.resolve_config({"rot": "/x"})
    with pytest.raises(R.DataError, match="unknown task 'enhance'"):
        R.resolve_config({"tasks": ("enhance",)})
    with pytest.raises(R.DataError, match="data.root is empty"):
        R.train_records({})


def test_crop_img_is_the_official_one():
    a = np.arange(150 * 190 * 3).reshape(150, 190, 3)
    c = R.crop_img(a, 16)
    assert c.shape == (144, 176, 3)
    # 150 % 16 = 6 -> 3 rows off the top and 3 off the bottom; 190 % 16 = 14 -> 7 + 7 columns
    np.testing.assert_array_equal(c, a[3:147, 7:183])
    b = np.zeros((33, 17, 3))
    assert R.crop_img(b).shape == (32, 16, 3)


def test_eval_sets_pairing_and_official_noise_protocol(demo_root):
    sets = R.eval_sets({"root": str(demo_root)})
    assert list(sets) == ["sots", "rain100l", "bsd68_s15", "bsd68_s25", "bsd68_s50", "gopro", "lol"]
    # SOTS: target found by the id before the first underscore.
    for i, rec in enumerate(sets["sots"].records):
        assert Path(rec.clean).name == Path(rec.degraded).name.split("_")[0] + ".png"
        item = sets["sots"][i]
        np.testing.assert_array_equal(item["degraded"], _crop16(_pil(rec.degraded)))
        np.testing.assert_array_equal(item["clean"], _crop16(_pil(rec.clean)))
    # BSD68: np.random.seed(0) once; sigma 15, 25, 50 in turn; files in sorted order; the stream
    # continues; uint8(clip(clean + sigma * randn(H, W, 3), 0, 255)) truncated.
    files = sorted((demo_root / "test/denoise/bsd68").iterdir())
    rs = np.random.RandomState(0)
    expected = {}
    for sigma in (15, 25, 50):
        for k, f in enumerate(files):
            clean = _crop16(_pil(f))
            n = rs.randn(*clean.shape)
            expected[(sigma, k)] = (np.clip(clean + sigma * n, 0, 255).astype(np.uint8), clean)
    # Random access order (not the stream order) must give the same images.
    for sigma, k in [(50, 2), (15, 1), (25, 0), (15, 0), (50, 0), (25, 2), (15, 2)]:
        item = sets[f"bsd68_s{sigma}"][k]
        np.testing.assert_array_equal(item["degraded"], expected[(sigma, k)][0])
        np.testing.assert_array_equal(item["clean"], expected[(sigma, k)][1])
        assert item["sigma"] == sigma and item["task"] == "denoise"
    # Evaluating fewer levels (data.sigmas is also the training setting) keeps each one's noise.
    only = R.eval_sets({"root": str(demo_root), "sigmas": (50, 25)}, names=["bsd68"])
    assert list(only) == ["bsd68_s50", "bsd68_s25"]
    for sigma, k in [(25, 1), (50, 0)]:
        np.testing.assert_array_equal(only[f"bsd68_s{sigma}"][k]["degraded"], expected[(sigma, k)][0])


def test_eval_sets_missing_folder_and_unknown_name(demo_root):
    with pytest.raises(R.DataError, match="urban100.*out of data.eval_sets"):
        R.eval_sets({"root": str(demo_root)}, names=["urban100"])
    with pytest.raises(R.DataError, match="unknown test set 'bsd100'"):
        R.eval_sets({"root": str(demo_root)}, names=["bsd100"])


def test_paired_folder_matches_names_and_stems(tmp_path, caplog):
    root = _paired(tmp_path / "ood", {"a.png": (40, 48), "b.png": (40, 48)})
    Image.fromarray(_rgb(40, 48)).save(root / "input" / "c.jpg")
    Image.fromarray(_rgb(40, 48)).save(root / "target" / "c.png")  # matched by stem
    Image.fromarray(_rgb(40, 48)).save(root / "input" / "orphan.png")
    with caplog.at_level(logging.WARNING):
        recs = R.paired_folder_records(root, "derain", "ood")
    assert [Path(r.degraded).name for r in recs] == ["a.png", "b.png", "c.jpg"]
    assert Path(recs[2].clean).name == "c.png"
    assert "orphan.png" in caplog.text
    # As a test set, the input without a target refuses the set (a mean over fewer images is
    # another number), unless a partial set is asked for; then it is listed.
    cfg = {"root": str(tmp_path), "eval_paired": {"ood": {"path": "ood", "task": "derain"}}}
    with pytest.raises(
        R.DataError,
        match=r"test set ood: 1 of its 4 input\(s\) have no matching target: "
        r"orphan.png.*--allow_partial.*data.eval_paired.ood",
    ):
        R.eval_sets(cfg, names=["ood"])
    sets = R.eval_sets(cfg, names=["ood"], allow_partial=True)
    assert len(sets["ood"]) == 3 and sets["ood"].task == "derain" and sets["ood"].missing == ["orphan.png"]


def test_sots_input_without_its_clean_image_refuses_the_set(demo_root, tmp_path):
    shutil.copytree(demo_root / "test/dehaze", tmp_path / "test/dehaze")
    gone = sorted((tmp_path / "test/dehaze/target").iterdir())[0]
    gone.unlink()
    hazy = sorted(p.name for p in (tmp_path / "test/dehaze/input").iterdir() if p.name.startswith(gone.stem + "_"))
    with pytest.raises(
        R.DataError,
        match=rf"test set sots: {len(hazy)} of .* no matching target: {hazy[0]} "
        rf"\(no target/{gone.name}\)",
    ):
        R.eval_sets({"root": str(tmp_path)}, names=["sots"])
    es = R.eval_sets({"root": str(tmp_path)}, names=["sots"], allow_partial=True)["sots"]
    assert [m.split(" ")[0] for m in es.missing] == hazy


def test_dehaze_ground_truth_with_another_extension(demo_root, tmp_path):
    # INSTALL.md draws .png ground truth next to .jpg hazy files; the official reader would look
    # for original/IIII.jpg and crash. Here the other extension is found.
    root = tmp_path / "d"
    shutil.copytree(demo_root / "Train/Dehaze", root / "Train/Dehaze")
    shutil.copytree(demo_root / "data_dir", root / "data_dir")
    lst = root / "data_dir/hazy/hazy_outside.txt"
    lines = lst.read_text().splitlines()
    first = root / "Train/Dehaze" / lines[0]
    Image.open(first).save(first.with_suffix(".jpg"))
    lines[0] = lines[0].replace(".png", ".jpg")
    lst.write_text("\n".join(lines) + "\n")
    recs, rep = R.train_records({"root": str(root), "tasks": ("dehaze",)})
    assert rep.skipped == []
    jpg = [r for r in recs if r.degraded.endswith(".jpg")]
    assert len(jpg) == 1 and jpg[0].clean.endswith(".png")


def test_missing_list_file_falls_back_to_the_folder(demo_root, tmp_path, caplog):
    root = tmp_path / "d"
    shutil.copytree(demo_root / "Train/Denoise", root / "Train/Denoise")
    with caplog.at_level(logging.WARNING):
        recs, _ = R.train_records({"root": str(root), "tasks": ("denoise",)})
    assert "denoise.txt not found" in caplog.text
    assert len(recs) == 6 * 3


# --------------------------------------------------------------------------- decoding


def test_load_image_converts_grayscale_rgba_palette_and_16_bit(tmp_path):
    rgb = _rgb(12, 10, 3)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    gray = np.repeat(rgb[..., :1], 3, -1)
    np.testing.assert_array_equal(R.load_image(tmp_path / "gray.png"), gray)
    rgba = np.concatenate([rgb, np.full((12, 10, 1), 7, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(R.load_image(tmp_path / "rgba.png"), rgb)  # alpha dropped
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    assert R.load_image(tmp_path / "pal.png").shape == (12, 10, 3)
    g16 = np.random.default_rng(1).integers(0, 65536, (12, 10), dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    x = R.load_image(tmp_path / "g16.png")
    assert x.dtype == np.uint16 and x.shape == (12, 10, 3)
    np.testing.assert_allclose(R.to_float01(x)[..., 1], g16 / 65535.0, atol=1e-7)
    c16 = np.random.default_rng(2).integers(0, 65536, (12, 10, 3), dtype=np.uint16)
    _png16_rgb(tmp_path / "c16.png", c16)
    y = R.to_float01(R.load_image(tmp_path / "c16.png"))
    assert y.shape == (12, 10, 3) and y.min() >= 0 and y.max() <= 1
    np.testing.assert_allclose(y, c16 / 65535.0, atol=1 / 255 + 1e-6)


def test_load_image_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(R.DataError, match="bad.png"):
        R.load_image(bad)
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(R.DataError, match="trunc.png"):
        R.load_image(tmp_path / "trunc.png")


def test_official_noise_truncates():
    clean = np.array([[[0, 100, 255]]], np.uint8)
    n = np.array([[[-1.0, 0.99, 1.0]]])
    np.testing.assert_array_equal(R.add_official_noise(clean, 10, n), [[[0, 109, 255]]])


# --------------------------------------------------------------------------- bad input


def _cfg(root: Path, **kw) -> dict:
    return {"root": str(root), "tasks": (), "paired_train": [{"name": "p", "path": "p", "task": "deblur"}], **kw}


def test_unreadable_and_truncated_files_are_skipped_and_named(tmp_path, caplog):
    root = _paired(tmp_path / "p", {"a.png": (144, 144), "b.png": (144, 144), "c.png": (144, 144)})
    (root / "input" / "b.png").write_bytes(b"garbage")
    data = (root / "target" / "c.png").read_bytes()
    (root / "target" / "c.png").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        recs, rep = R.train_records(_cfg(tmp_path))  # header scan: b is unreadable
    assert [Path(r.degraded).name for r in recs] == ["a.png", "c.png"]
    assert "input/b.png" in caplog.text and len(rep.skipped) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        recs, rep = R.train_records(_cfg(tmp_path, validate="decode"))  # full decode: c too
    assert [Path(r.degraded).name for r in recs] == ["a.png"]
    assert "target/c.png" in caplog.text and len(rep.skipped) == 2


def test_size_mismatch_and_too_small_are_skipped(tmp_path, caplog):
    sizes = {"a.png": (144, 160), "small.png": (120, 200), "m.png": (144, 160)}
    root = _paired(tmp_path / "p", sizes)
    Image.fromarray(_rgb(144, 150)).save(root / "target" / "m.png")
    with caplog.at_level(logging.WARNING):
        recs, rep = R.train_records(_cfg(tmp_path))
    assert [Path(r.degraded).name for r in recs] == ["a.png"]
    reasons = dict(rep.skipped)
    assert "differs from its ground truth" in reasons[str(root / "input" / "m.png")]
    assert "smaller than the 128x128 training crop" in reasons[str(root / "input" / "small.png")]
    assert "small.png" in caplog.text and "m.png" in caplog.text
    # Smaller crops make the small image usable.
    assert len(R.train_records(_cfg(tmp_path, patch_size=64))[0]) == 2


def test_all_pairs_unusable_is_an_error(tmp_path):
    _paired(tmp_path / "p", {"s.png": (100, 100)})
    with pytest.raises(R.DataError, match="none of its 1 pair"):
        R.train_records(_cfg(tmp_path))


def test_missing_and_empty_folders_raise_before_training(demo_root, tmp_path):
    with pytest.raises(R.DataError, match="does not exist.*demo --out"):
        R.train_records({"root": str(tmp_path / "nowhere")})
    with pytest.raises(R.DataError, match=r"Train/Deblur.*does not exist.*data.train_dirs.deblur"):
        R.train_records({"root": str(tmp_path), "tasks": ("deblur",)})
    (tmp_path / "Train/Deblur/blur").mkdir(parents=True)
    (tmp_path / "Train/Deblur/sharp").mkdir(parents=True)
    with pytest.raises(R.DataError, match="deblur training set: no images found"):
        R.train_records({"root": str(tmp_path), "tasks": ("deblur",)})
    with pytest.raises(R.DataError, match="target does not exist"):
        (tmp_path / "q/input").mkdir(parents=True)
        R.paired_folder_records(tmp_path / "q", "derain", "q")


def test_manifest_with_missing_pairs_or_another_root_is_refused(demo_root, tmp_path):
    records, _ = R.train_records({"root": str(demo_root)})
    man = tmp_path / "m.jsonl"

    def write(root, ids):
        head = {"kind": R.MANIFEST_KIND, "version": 1, "data_root": str(root)}
        lines = [json.dumps(head)] + [json.dumps({"id": i, "selected": True}) for i in ids]
        man.write_text("\n".join(lines) + "\n")

    write(demo_root, [records[0].id, records[20].id])
    assert [r.id for r in R.records_from_manifest(records, man, demo_root)] == [records[0].id, records[20].id]
    write(tmp_path / "elsewhere", [records[0].id])
    with pytest.raises(R.DataError, match="was mined on the data under .*elsewhere.*Re-mine"):
        R.records_from_manifest(records, man, demo_root)
    assert len(R.records_from_manifest(records, man, demo_root, allow_other_root=True)) == 1
    write(demo_root, [records[0].id, "derain:Train/Derain/rainy/rain-99.png"])
    with pytest.raises(R.DataError, match="1 of its 2 selected pairs.*rain-99"):
        R.records_from_manifest(records, man, demo_root)
    man.write_text('{"kind": "something else"}\n')
    with pytest.raises(R.DataError, match="not a mining manifest"):
        R.read_manifest(man)
    with pytest.raises(R.DataError, match="does not exist"):
        R.read_manifest(tmp_path / "none.jsonl")


def test_bad_manifest_lines_name_the_file_and_the_line(tmp_path):
    # data.manifest is read through records_from_manifest; every bad line is a DataError naming
    # the file and its 1-based line in the file (not json's line within the one-line string).
    man = tmp_path / "m.jsonl"
    head = json.dumps({"kind": R.MANIFEST_KIND, "version": 1, "data_root": str(tmp_path)})
    ok = json.dumps({"id": "derain:a.png", "selected": True})

    def refused(lines, match, path=man):
        if lines is not None:
            path.write_text("\n".join(lines) + "\n")
        with pytest.raises(R.DataError, match=match) as err:
            R.records_from_manifest([], path, tmp_path)
        assert err.value.path == str(path)
        return str(err.value)

    refused([head, ok, "[1, 2, 3]"], rf"{man}, line 3: expected a JSON object .*got list")
    refused([head, ok, json.dumps({"task": "derain", "selected": True})], rf'{man}, line 3: the record has no "id"')
    refused([head, ok, json.dumps({"id": "x", "selected": "yes"})], rf'{man}, line 3: "selected" must be true or false')
    msg = refused(
        [head, ok, "", ok, '{"id": "derain:b.png", "selected": tru}'],
        rf"{man}, line 5: not valid JSON \(Expecting value at column 36\)",
    )
    assert "line 1" not in msg
    refused(["[]", ok], rf"{man}, line 1: expected a JSON object \(the header line")
    refused(["{not json", ok], rf"{man}, line 1: not valid JSON")
    refused([], rf"{man} is empty")
    png = tmp_path / "m.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    refused(None, rf"{png}, line 1: not UTF-8 text \(byte 0x89\)", path=png)
    png.write_bytes(head.encode() + b"\n" + ok.encode() + b"\n\xff\xfe\n")
    refused(None, rf"{png}, line 3: not UTF-8 text \(byte 0xff\)", path=png)
    # read_manifest itself gives the same errors.
    man.write_text(head + "\n[1, 2, 3]\n")
    with pytest.raises(R.DataError, match=rf"{man}, line 2: expected a JSON object"):
        R.read_manifest(man)
