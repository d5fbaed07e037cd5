"""Tests of the grain training pipeline (irpo_jax.data.pipeline) on the built-in demo set.

Every sample is recomputed independently here -- PIL decoding, the official crop_img, crop
window, flips or the official 8-orientation modes, and the official noise -- from the same
per-sample generator, and must match bit for bit.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from irpo_jax.data import demo
from irpo_jax.data import pipeline as P
from irpo_jax.data import readers as R

SEED = 7


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "set"
    demo.build_demo_set(root, seed=0)
    return root


def _it(root, batch_size=4, seed=SEED, **kw):
    cfg = {"root": str(root), **kw.pop("cfg", {})}
    kw.setdefault("shard_index", 0)
    kw.setdefault("shard_count", 1)
    kw.setdefault("worker_count", 0)
    return P.make_train_iterator(cfg, batch_size=batch_size, seed=seed, **kw)


def _reference(
    rec: R.Record, seed: int, position: int, patch: int = 128, augment: str = "flips"
) -> tuple[np.ndarray, np.ndarray]:
    """Independent numpy version of one training sample (adair-spec.md 10.3 + IRPO flips)."""
    rng = np.random.default_rng([seed, position, 0])

    def read(p):
        a = np.array(Image.open(p).convert("RGB"))
        h, w = a.shape[:2]  # official crop_img(base=16)
        top, left = (h % 16) // 2, (w % 16) // 2
        return a[top : top + h - h % 16, left : left + w - w % 16]

    clean = read(rec.clean)
    deg = read(rec.degraded) if rec.degraded else None
    h, w = clean.shape[:2]
    top, left = rng.integers(0, h - patch + 1), rng.integers(0, w - patch + 1)
    imgs = [x[top : top + patch, left : left + patch] for x in (clean, deg) if x is not None]
    if augment == "flips":
        lr, ud = rng.random() < 0.5, rng.random() < 0.5
        imgs = [x[:, ::-1] if lr else x for x in imgs]
        imgs = [x[::-1] if ud else x for x in imgs]
    elif augment == "official":
        mode = rng.integers(1, 8)
        assert 1 <= mode <= 7
        k = {1: 0, 2: 1, 3: 1, 4: 2, 5: 2, 6: 3, 7: 3}[int(mode)]
        imgs = [np.rot90(x, k) for x in imgs]
        imgs = [np.flipud(x) if mode in (1, 3, 5, 7) else x for x in imgs]
    clean = imgs[0]
    if deg is None:
        n = rng.standard_normal((patch, patch, 3))
        deg = np.clip(clean.astype(np.float64) + rec.sigma * n, 0, 255).astype(np.uint8)
    else:
        deg = imgs[1]
    return deg.astype(np.float32) / np.float32(255), clean.astype(np.float32) / np.float32(255)


def _check_batch(it, batch, seed=SEED, augment="flips"):
    for k in range(batch["index"].shape[0]):
        rec = it.records[int(batch["index"][k])]
        deg, clean = _reference(rec, seed, int(batch["position"][k]), augment=augment)
        np.testing.assert_array_equal(batch["degraded"][k], deg, err_msg=rec.id)
        np.testing.assert_array_equal(batch["clean"][k], clean, err_msg=rec.id)
        assert batch["task_id"][k] == rec.task_id and batch["sigma"][k] == rec.sigma


def test_batches_are_paired_cropped_and_degraded_as_specified(demo_root):
    # Only denoise + one paired task, repeats 1: every batch mixes synthesised noise and pairs.
    it = _it(demo_root, cfg={"tasks": ("denoise", "dehaze"), "repeats": {"denoise": 1}})
    batches = [next(it) for _ in range(3)]
    b = batches[0]
    assert b["degraded"].shape == b["clean"].shape == (4, 128, 128, 3)
    assert b["degraded"].dtype == np.float32 and b["task_id"].dtype == np.int32
    assert b["sigma"].dtype == np.float32
    assert 0.0 <= b["degraded"].min() and b["degraded"].max() <= 1.0
    seen = set()
    for batch in batches:
        _check_batch(it, batch)
        seen |= {it.records[i].task for i in batch["index"]}
        assert (batch["skipped"] == 0).all()
    assert seen == {"denoise", "dehaze"}
    assert [int(p) for b in batches for p in b["position"]] == list(range(12))


def test_official_augmentation_option(demo_root):
    it = _it(demo_root, cfg={"tasks": ("deblur",), "augment": "official"})
    _check_batch(it, next(it), augment="official")


def test_same_seed_same_batches_other_seed_different(demo_root):
    a = [next(_it(demo_root, seed=3)) for _ in range(1)][0]
    b = next(_it(demo_root, seed=3))
    c = next(_it(demo_root, seed=4))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["degraded"], c["degraded"])


def test_iterator_state_round_trip(demo_root):
    it = _it(demo_root)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # survives a JSON checkpoint
    after = [next(it) for _ in range(2)]
    fresh = _it(demo_root)
    fresh.set_state(state)
    for want in after:
        got = next(fresh)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    # A different stream (batch size, seed, data) refuses the state unless told otherwise.
    other = _it(demo_root, batch_size=2)
    with pytest.raises(R.DataError, match="different data stream"):
        other.set_state(state)
    other.set_state(state, strict=False)
    with pytest.raises(R.DataError, match="not a data-iterator state"):
        other.set_state({"next_index": 3})


def test_worker_processes_give_the_same_batches_and_state(demo_root):
    ref = _it(demo_root, cfg={"tasks": ("lowlight",)})
    want = [next(ref) for _ in range(4)]
    with _it(demo_root, cfg={"tasks": ("lowlight",)}, worker_count=1) as it:
        got = [next(it) for _ in range(2)]
        state = it.get_state()
    with _it(demo_root, cfg={"tasks": ("lowlight",)}, worker_count=1) as it:
        it.set_state(state)
        got += [next(it) for _ in range(2)]
    for w, g in zip(want, got):
        for k in w:
            np.testing.assert_array_equal(g[k], w[k])
        assert type(g["degraded"]) is np.ndarray  # copied out of shared memory


def test_process_shards_are_disjoint_and_cover_an_epoch(demo_root):
    cfg = {
        "repeats": {t: 1 for t in ("denoise", "derain", "dehaze", "deblur", "lowlight")},
        "tasks": ("derain", "deblur", "lowlight"),
    }
    shards = [_it(demo_root, batch_size=2, cfg=cfg, shard_index=i, shard_count=2) for i in (0, 1)]
    epoch = shards[0].epoch_size
    assert epoch == 15 and shards[0].steps_per_epoch == 7
    got = {}
    for i, it in enumerate(shards):
        for _ in range(8):
            b = next(it)
            assert b["degraded"].shape[0] == 1
            got[int(b["position"][0])] = (i, int(b["index"][0]))
    assert all(pos % 2 == shard for pos, (shard, _) in got.items())
    epoch_positions = [p for p in got if p < epoch]
    assert sorted(epoch_positions) == list(range(epoch))  # disjoint and covering
    assert sorted(got[p][1] for p in epoch_positions) == list(range(15))  # each record once
    with pytest.raises(ValueError, match="multiple of the 2 shards"):
        _it(demo_root, batch_size=3, shard_index=0, shard_count=2)


def test_runtime_decode_failure_is_replaced_counted_and_named(tmp_path, caplog):
    root = tmp_path / "p"
    for sub in ("input", "target"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        for sub in ("input", "target"):
            img = rng.integers(0, 256, (144, 144, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / sub / name)
    data = (root / "target/b.png").read_bytes()
    (root / "target/b.png").write_bytes(data[: len(data) // 2])  # header fine, pixels truncated
    cfg = {"tasks": (), "paired_train": [{"name": "p", "path": "p", "task": "derain"}]}
    it = _it(tmp_path, batch_size=3, cfg=cfg)
    assert len(it.records) == 3  # the header scan cannot see the truncation
    with caplog.at_level(logging.WARNING):
        batches = [next(it) for _ in range(4)]
    names = {Path(it.records[i].clean).name for b in batches for i in b["index"]}
    assert names == {"a.png", "c.png"}
    assert sum(int(b["skipped"].sum()) for b in batches) >= 1
    assert "target/b.png" in caplog.text and caplog.text.count("target/b.png") == 1


def test_mixed_formats_are_converted(tmp_path):
    root = tmp_path / "p"
    for sub in ("input", "target"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(1)
    g16 = rng.integers(0, 65536, (144, 144), dtype=np.uint16)
    rgb = rng.integers(0, 256, (144, 144, 3), dtype=np.uint8)
    Image.fromarray(g16).save(root / "input/x.png")  # 16-bit grayscale input
    Image.fromarray(np.concatenate([rgb, np.zeros((144, 144, 1), np.uint8)], -1)).save(
        root / "target/x.png"
    )  # RGBA target, alpha 0 everywhere
    cfg = {"tasks": (), "paired_train": [{"name": "p", "path": "p", "task": "derain"}], "augment": "none"}
    b = next(_it(tmp_path, batch_size=1, cfg=cfg))
    rng = P.sample_rng(SEED, 0)  # position 0 holds the only record
    top, left = rng.integers(0, 144 - 128 + 1), rng.integers(0, 144 - 128 + 1)
    win = (slice(top, top + 128), slice(left, left + 128))
    np.testing.assert_allclose(b["degraded"][0, ..., 2], g16[win] / 65535.0, atol=1e-7)
    np.testing.assert_array_equal(b["clean"][0], rgb[win].astype(np.float32) / np.float32(255))


def test_bad_setup_fails_before_training(demo_root, tmp_path):
    with pytest.raises(R.DataError, match="does not exist"):
        _it(tmp_path / "missing")
    with pytest.raises(R.DataError, match="fewer than one batch"):
        _it(demo_root, batch_size=8, cfg={"tasks": ("deblur",), "repeats": {"deblur": 1}})
    with pytest.raises(R.DataError, match="manifest .* does not exist"):
        _it(demo_root, cfg={"manifest": str(tmp_path / "none.jsonl")})


def test_eval_sets_as_grain_datasets(demo_root):
    sets = P.make_eval_sets({"root": str(demo_root)}, names=["lol", "bsd68"])
    assert list(sets) == ["lol", "bsd68_s15", "bsd68_s25", "bsd68_s50"]
    raw = R.eval_sets({"root": str(demo_root)}, names=["bsd68"])["bsd68_s25"]
    x = sets["bsd68_s25"][1]
    want = raw[1]["degraded"].astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(x["degraded"], want)
    assert x["task_id"] == 0 and x["sigma"] == 25
    y = sets["lol"][0]
    assert y["degraded"].shape == y["clean"].shape and y["degraded"].shape[0] % 16 == 0
    assert y["task_id"] == 4
