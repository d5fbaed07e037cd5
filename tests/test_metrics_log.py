"""The training image panels (``irpo_jax.metrics_log.image_panel``): layout, untouched tiles, captions."""

import numpy as np

from irpo_jax.metrics_log import image_panel


def _images(rng, *shape):
    return rng.random(shape, dtype=np.float32)


def test_panel_tiles_are_the_inputs_and_every_tile_has_a_caption():
    rng = np.random.default_rng(0)
    h, w, g = 32, 40, 3  # not square: a swapped axis would show
    degraded, clean, mean = _images(rng, 3, h, w, 3)
    rollouts = _images(rng, g, h, w, 3)
    scores = {"psnr": np.array([27.1, 19.0, 15.5]), "ssim": np.array([0.84, 0.5, 0.3]),
              "aesthetic": np.array([5.2, np.nan, 4.0])}  # fmt: skip
    panel = image_panel(degraded, clean, rollouts=rollouts, deterministic=mean,
                        rewards=np.array([0.71, 0.2, np.nan]), scores=scores)  # fmt: skip

    tiles = [degraded, *rollouts, mean, clean]
    assert panel.dtype == np.float32 and panel.shape[1:] == (len(tiles) * w, 3) and panel.shape[0] > h
    for i, tile in enumerate(tiles):
        np.testing.assert_array_equal(panel[:h, i * w : (i + 1) * w], tile)  # byte for byte
    strip = panel[h:]
    columns = [strip[:, i * w : (i + 1) * w] for i in range(len(tiles))]
    assert all(c.max() == 1.0 for c in columns)  # text in every caption
    inked_rows = [int(np.sum(c.max(axis=(1, 2)) > 0)) for c in columns]
    # A rollout's caption (R and three components) is longer than the clean tile's one line.
    assert inked_rows[1] > 2 * inked_rows[-1] > 0
    assert not np.array_equal(columns[1], columns[2])  # different rewards, different text


def test_panel_without_rollouts_is_input_output_clean():
    rng = np.random.default_rng(1)
    degraded, output, clean = _images(rng, 3, 16, 16, 3)
    panel = image_panel(degraded, clean, deterministic=output, deterministic_label="output")
    assert panel.shape[1] == 3 * 16
    np.testing.assert_array_equal(panel[:16], np.concatenate([degraded, output, clean], axis=1))
    assert panel[16:].max() == 1.0
