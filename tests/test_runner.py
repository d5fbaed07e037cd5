"""Tests of the one inference engine, ``irpo_jax.evaluation.runner``: how images are loaded,
grouped by shape, cut into batches and padded (what evaluation, mining and restore share), checked
against hand-written expectations. The end-to-end numbers are tested through its users
(test_evaluate, test_mine, test_restore)."""

import threading

import numpy as np
import pytest

from irpo_jax.evaluation import runner


def test_plan_batches_groups_shapes_in_sorted_order_with_one_padded_size_per_shape():
    shapes = [(16, 16), (8, 8), (16, 16), (16, 16), (8, 16), (16, 16), (16, 16)]
    # one device: batches of 2; the 16x16 group (5 images) ends with a batch of one, padded to 2
    assert runner.plan_batches(shapes, batch_size=2, devices=1) == [
        ([1], 1),
        ([4], 1),
        ([0, 2], 2),
        ([3, 5], 2),
        ([6], 2),
    ]
    # two devices: a batch of 3 becomes 4; a group of one is one batch padded to whole devices
    assert runner.plan_batches(shapes, batch_size=3, devices=2) == [([1], 2), ([4], 2), ([0, 2, 3, 5], 4), ([6], 4)]
    assert runner.plan_batches([], batch_size=8, devices=2) == []


def test_shape_buckets_run_full_batches_bound_what_waits_and_flush_in_arrival_order():
    ran = []
    buckets = runner.ShapeBuckets(ran.append, size=2, max_waiting=3)
    for shape, item in [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]:
        buckets.add(shape, item)
    assert ran == [[1, 3], [2, 5]]  # each bucket as it fills
    buckets.add("d", 6)
    buckets.add("e", 7)
    buckets.add("c", 8)  # fills c
    buckets.add("f", 9)
    buckets.add("e", 10)
    assert ran == [[1, 3], [2, 5], [4, 8], [7, 10]]
    buckets.add("g", 11)
    buckets.add("h", 12)  # 4 waiting (d, f, g, h): over the bound, the fullest (the first of equals) runs
    assert ran[-1] == [6]
    buckets.flush()
    assert ran[-3:] == [[9], [11], [12]]
    buckets.flush()  # nothing left
    assert len(ran) == 8


def test_pad_batch_repeats_the_last_image():
    images = [np.full((2, 2, 3), v, np.float32) for v in (1.0, 2.0)]
    batch = runner.pad_batch(images, 4)
    assert batch.shape == (4, 2, 2, 3) and [float(b[0, 0, 0]) for b in batch] == [1.0, 2.0, 2.0, 2.0]
    ids = runner.pad_batch(np.array([7, 9], np.uint32), 3)
    assert ids.dtype == np.uint32 and ids.tolist() == [7, 9, 9]
    assert runner.pad_batch(images, 2).shape == (2, 2, 2, 3)


def test_prefetch_keeps_order_passes_the_named_errors_and_stays_a_bounded_distance_ahead():
    started = []
    lock = threading.Lock()

    def load(k):
        with lock:
            started.append(k)
        if k == 2:
            raise KeyError(k)
        return k * 10

    got = []
    for k, v in runner.prefetch(load, range(6), workers=1, ahead=1, errors=(KeyError,)):
        with lock:
            assert max(started) <= k + 1  # at most one key loaded ahead of the one yielded
        got.append((k, v if not isinstance(v, Exception) else type(v).__name__))
    assert got == [(0, 0), (1, 10), (2, "KeyError"), (3, 30), (4, 40), (5, 50)]

    def broken(k):
        raise ValueError("not one of the named errors")

    with pytest.raises(ValueError):
        list(runner.prefetch(broken, range(3), workers=2))


def test_a_runner_pads_to_whole_devices_and_drops_the_padding():
    def double(x):
        return 2.0 * x

    run = runner.make_runner(double)
    images = [np.full((8, 8, 3), v, np.float32) for v in (0.1, 0.2, 0.3)]
    out = run.restore_images(images)
    assert out.shape == (3, 8, 8, 3) and np.allclose(out[:, 0, 0, 0], [0.2, 0.4, 0.6])
    assert run.batch_size(3) == 3 + (-3 % run.n)
    scored = run.score_images(images, [2.0 * x for x in images], size=4)  # a planned size (mining)
    assert np.asarray(scored["psnr"]).shape == (4,) and np.isinf(np.asarray(scored["psnr"])[:3]).all()
    assert np.allclose(run.restore_tiled(np.full((24, 16, 3), 0.25, np.float32), tile=16, overlap=8), 0.5)
