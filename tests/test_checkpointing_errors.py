"""Errors of :mod:`irpo_jax.checkpointing` that users meet first: a training run's folder given
where its model directory is expected, and inputs a :class:`~irpo_jax.checkpointing.Restorer`
cannot take (8-bit pixels, grey or RGBA batches)."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

import irpo_jax
from irpo_jax import checkpointing


@pytest.fixture
def run_dir(tmp_path) -> pathlib.Path:
    """A training run's folder: the model directory is ``<run>/model``."""
    run = tmp_path / "runs" / "x"
    (run / "model").mkdir(parents=True)
    (run / "model" / "model.json").write_text(json.dumps({"format": checkpointing.MODEL_FORMAT}))
    (run / "metrics.jsonl").write_text("")
    return run


def test_a_run_folder_points_to_its_model_directory(run_dir, capsys):
    from irpo_jax import evaluate

    # restore_model is what the trainer's model.init_from calls.
    for load in (checkpointing.read_metadata, checkpointing.restore_model, irpo_jax.load_model):
        with pytest.raises(checkpointing.CheckpointError) as info:
            load(run_dir)
        assert f"did you mean {run_dir / 'model'}? (a training run's model directory)" in str(info.value)
        assert "convert_adair" not in str(info.value)
    assert evaluate.main(["--checkpoint", str(run_dir)]) == 2
    assert f"did you mean {run_dir / 'model'}?" in capsys.readouterr().err
    with pytest.raises(checkpointing.CheckpointError, match="convert_adair"):  # other folders: as before
        checkpointing.read_metadata(run_dir.parent)


@pytest.fixture(scope="module")
def restorer(tiny_dir) -> checkpointing.Restorer:
    from irpo_jax.models.convert import from_state_dict

    model = from_state_dict(dict(np.load(tiny_dir / "state_dict.npz")))
    return checkpointing.Restorer(model, checkpointing.model_metadata(model))


def test_restorer_rejects_8_bit_pixels(restorer):
    x = np.full((1, 32, 32, 3), 200, np.uint8)
    with pytest.raises(TypeError, match=r"float32 in \[0, 1\].*/ 255"):
        restorer(x)
    with pytest.raises(TypeError, match="uint8"):
        restorer(jnp.asarray(x))


@pytest.mark.parametrize("shape", [(1, 32, 32, 1), (1, 32, 32, 4), (32, 32, 3)])
def test_restorer_rejects_batches_that_are_not_rgb_nhwc(restorer, shape):
    with pytest.raises(ValueError, match=r"RGB batches \(B, H, W, 3\).*repeat the channel.*irpo_jax.restore"):
        restorer(np.zeros(shape, np.float32))


def test_restorer_takes_any_float_rgb_batch(restorer):
    x = np.random.default_rng(0).uniform(size=(1, 32, 32, 3))  # float64: converted to float32
    y = restorer(x)
    assert y.shape == (1, 32, 32, 3) and y.dtype == np.float32
    np.testing.assert_allclose(np.asarray(y), np.asarray(restorer(x.astype(np.float32))), atol=0)


# ----------------------------------------------------------------------------- what is not a model directory


def _error(path) -> str:
    with pytest.raises(checkpointing.CheckpointError) as info:
        checkpointing.read_metadata(path)
    return str(info.value)


def test_an_empty_folder_is_not_told_to_convert_itself(tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    message = _error(empty)
    assert f"{empty} is an empty folder, not an irpo-jax model directory" in message
    assert f"convert_adair {empty}" not in message  # a folder cannot be converted


def test_a_folder_of_pytorch_weights_suggests_converting_the_file(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "adair5d.ckpt").write_bytes(b"")
    (tmp_path / "weights" / "README.md").write_text("downloaded")
    message = _error(tmp_path / "weights")
    assert f"convert_adair {tmp_path / 'weights' / 'adair5d.ckpt'} converted/adair5d" in message


def test_other_folders_and_files_say_what_they_hold(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"")
    message = _error(tmp_path / "photos")
    assert "it has no model.json; it holds a.png" in message and "convert_adair" in message
    (tmp_path / "notes.txt").write_text("x")
    message = _error(tmp_path / "notes.txt")
    assert f"{tmp_path / 'notes.txt'} is a file, not an irpo-jax model directory" in message
    (tmp_path / "w.pth").write_bytes(b"")
    assert f"convert it first: `python -m torch_bridge.convert_adair {tmp_path / 'w.pth'}" in _error(tmp_path / "w.pth")


@pytest.mark.parametrize("content", ["[1, 2]", '"adair"', "\xff\xfe"])
def test_a_model_json_that_is_not_an_object_is_a_checkpoint_error(tmp_path, content):
    (tmp_path / "model.json").write_bytes(content.encode("latin-1"))
    message = _error(tmp_path)
    assert str(tmp_path / "model.json") in message and "damaged" in message
