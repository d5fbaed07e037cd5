"""Reading and writing AdaIR weight files: layouts, prefixes, round trips and error messages."""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.torch

torch = pytest.importorskip("torch")

from torch_bridge.checkpoint_io import (  # noqa: E402
    CheckpointReadError,
    find_nonfinite,
    read_state_dict,
    write_state_dict,
)


@pytest.fixture(scope="module")
def tiny_weights(tiny_dir: pathlib.Path) -> tuple[dict[str, np.ndarray], dict]:
    return read_state_dict(tiny_dir / "state_dict.pth")


def _assert_bit_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray], *, same_order: bool = True) -> None:
    assert (list(a) == list(b)) if same_order else (sorted(a) == sorted(b))
    for k in a:
        assert a[k].dtype == b[k].dtype == np.float32, k
        assert a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


def test_plain_state_dict(tiny_weights, tiny_dir):
    weights, info = tiny_weights
    assert len(weights) == 191
    assert list(weights)[0] == "patch_embed.proj.weight"
    assert info["format"] == "pth"
    assert info["container_key"] is None
    assert info["stripped_prefixes"] == []
    assert info["source_dtypes"] == ["float32"]
    assert len(info["sha256"]) == 64
    reference = torch.load(tiny_dir / "state_dict.pth", map_location="cpu", weights_only=True)
    _assert_bit_identical(weights, {k: v.numpy() for k, v in reference.items()})


def test_lightning_checkpoint_matches_state_dict(tiny_weights, tiny_dir):
    weights, info = read_state_dict(tiny_dir / "lightning.ckpt")
    _assert_bit_identical(weights, tiny_weights[0])
    assert info["format"] == "lightning"
    assert info["container_key"] == "state_dict"
    assert info["stripped_prefixes"] == ["net."]
    assert info["epoch"] == 0 and info["global_step"] == 1
    assert info["sha256"] != tiny_weights[1]["sha256"]


def test_safetensors_round_trip(tiny_weights, tmp_path):
    out = write_state_dict(tiny_weights[0], tmp_path / "w.safetensors")
    weights, info = read_state_dict(out)
    assert info["format"] == "safetensors"
    # safetensors stores tensors in its own (name-sorted) order, so only the key set survives.
    _assert_bit_identical(weights, tiny_weights[0], same_order=False)


def test_pth_round_trip_and_refuses_overwrite(tiny_weights, tmp_path):
    path = write_state_dict(tiny_weights[0], tmp_path / "sub" / "w.pth")
    weights, info = read_state_dict(path)
    assert info["format"] == "pth"
    _assert_bit_identical(weights, tiny_weights[0])

    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True") as excinfo:
        write_state_dict({"x": np.zeros(2, np.float32)}, path)
    assert str(path) in str(excinfo.value)
    assert path.read_bytes() == before
    write_state_dict({"x": np.zeros(2, np.float32)}, path, overwrite=True)
    assert list(read_state_dict(path)[0]) == ["x"]
    assert [p.name for p in path.parent.iterdir()] == ["w.pth"]  # no temporary left behind


def test_ddp_and_wrapper_prefixes(tmp_path):
    sd = {"module.net.a.weight": torch.ones(2), "module.net.b.bias": torch.zeros(3)}
    torch.save({"model": sd, "step": 7}, tmp_path / "ddp.pth")
    weights, info = read_state_dict(tmp_path / "ddp.pth")
    assert list(weights) == ["a.weight", "b.bias"]
    assert info["stripped_prefixes"] == ["module.", "net."]
    assert info["container_key"] == "model" and info["format"] == "pth"

    # A prefix only some keys carry is part of the name, not a wrapper: keep it.
    torch.save({"module.a": torch.ones(1), "b": torch.ones(1)}, tmp_path / "mixed.pth")
    weights, info = read_state_dict(tmp_path / "mixed.pth")
    assert list(weights) == ["module.a", "b"] and info["stripped_prefixes"] == []


def test_half_precision_is_cast_to_float32(tmp_path):
    torch.save({"w": torch.tensor([1.5, -2.0], dtype=torch.bfloat16)}, tmp_path / "bf16.pth")
    weights, info = read_state_dict(tmp_path / "bf16.pth")
    assert weights["w"].dtype == np.float32 and weights["w"].tolist() == [1.5, -2.0]
    assert info["source_dtypes"] == ["bfloat16"]


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_is_upcast_exactly_with_a_warning(tmp_path, dtype):
    from torch_bridge.checkpoint_io import UpcastWarning

    values = torch.tensor([0.5, -1.75, 3.0, 0.0078125])  # representable in both float8 types
    torch.save({"w": values.to(dtype), "b": torch.ones(2)}, tmp_path / "fp8.pth")
    with pytest.warns(UpcastWarning, match=rf"1 of 2 tensors are {str(dtype)[6:]}; they are upcast to float32"):
        weights, info = read_state_dict(tmp_path / "fp8.pth")
    assert weights["w"].dtype == np.float32 and weights["w"].tolist() == values.tolist()
    assert info["source_dtypes"] == sorted(["float32", str(dtype)[6:]])


def test_no_upcast_warning_for_float32_and_half(tmp_path, recwarn):
    torch.save({"w": torch.ones(2), "h": torch.ones(2, dtype=torch.float16)}, tmp_path / "w.pth")
    read_state_dict(tmp_path / "w.pth")
    assert not [w for w in recwarn if "upcast" in str(w.message)]


def test_keys_that_are_not_strings(tmp_path):
    path = tmp_path / "numbered.pth"
    torch.save({0: torch.zeros(2), ("a", 1): torch.ones(2)}, path)
    message = _read_error(path)
    assert "are not strings" in message and "0 (int)" in message and "('a', 1) (tuple)" in message


def test_write_errors_are_os_errors_naming_the_file(tmp_path, tiny_weights):
    """torch.save given a path reports a failed open as a RuntimeError without errno or path."""
    for target in (pathlib.Path("/proc/irpo_test_export.pth"), pathlib.Path("/proc/irpo_test.safetensors")):
        with pytest.raises(OSError) as excinfo:
            write_state_dict(tiny_weights[0], target)
        assert str(target) in str(excinfo.value.filename)
    folder = tmp_path / "folder.pth"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="folder.pth"):
        write_state_dict(tiny_weights[0], folder, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.pth"]


def _read_error(path: pathlib.Path) -> str:
    with pytest.raises(CheckpointReadError) as excinfo:
        read_state_dict(path)
    message = str(excinfo.value)
    assert str(path) in message
    return message


def test_missing_file_and_directory(tmp_path):
    assert "not found" in _read_error(tmp_path / "nope.ckpt")
    (tmp_path / "epoch=3.ckpt").write_bytes(b"")
    message = _read_error(tmp_path)
    assert "is a directory" in message and "epoch=3.ckpt" in message


@pytest.mark.parametrize(
    ("name", "content", "looks_like"),
    [
        ("notes.pth", b"these are not weights\n", "text file"),
        ("photo.ckpt", b"\x89PNG\r\n\x1a\n" + bytes(64), "PNG image"),
        ("empty.pth", b"", "empty file"),
    ],
    ids=["text", "png", "empty"],
)
def test_not_a_checkpoint(tmp_path, name, content, looks_like):
    path = tmp_path / name
    path.write_bytes(content)
    message = _read_error(path)
    assert "not a PyTorch checkpoint" in message and looks_like in message
    assert "download" in message  # the hint


def test_truncated_file(tmp_path, tiny_dir):
    data = (tiny_dir / "state_dict.pth").read_bytes()
    path = tmp_path / "half.pth"
    path.write_bytes(data[: len(data) // 2])
    message = _read_error(path)
    assert "truncated" in message and "Re-download" in message


def test_truncated_safetensors(tmp_path, tiny_weights):
    full = write_state_dict(tiny_weights[0], tmp_path / "full.safetensors")
    path = tmp_path / "half.safetensors"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert "truncated" in _read_error(path)


def test_arbitrary_python_objects_are_refused(tmp_path):
    path = tmp_path / "full.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hparams": argparse.Namespace(lr=1.0)}, path)
    message = _read_error(path)
    assert "arbitrary Python objects" in message and "argparse.Namespace" in message
    assert "never unpickle" in message
    assert "torch.save(ckpt['state_dict']" in message  # how to re-save only the weights


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (torch.zeros(3), "holds a Tensor, not a mapping"),
        ([torch.zeros(3)], "holds a list, not a mapping"),
        ({"lr": 1.0, "name": "adair"}, "'lr' (float)"),
        ({}, "empty mapping"),
        ({"state_dict": {}}, "empty state dict"),
        ({"state_dict": {"w": torch.ones(1), "epoch": 3}}, "'epoch' (int)"),
    ],
    ids=["tensor", "list", "hparams-only", "empty", "empty-wrapped", "mixed"],
)
def test_content_is_not_a_mapping_of_tensors(tmp_path, content, expected):
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    message = _read_error(path)
    assert expected in message
    assert "torch.save(model.state_dict()" in message or "Expected" in message


def test_non_float_tensors(tmp_path):
    path = tmp_path / "int.pth"
    torch.save({"w": torch.ones(2), "bn.num_batches_tracked": torch.tensor(5)}, path)
    message = _read_error(path)
    assert "non-float" in message and "'bn.num_batches_tracked' (torch.int64)" in message


def test_find_nonfinite():
    weights = {
        "ok": np.ones((2, 2), np.float32),
        "nan": np.array([0.0, np.nan], np.float32),
        "inf": np.array([[-np.inf]], np.float32),
    }
    assert find_nonfinite(weights) == ["nan", "inf"]
    assert find_nonfinite({"ok": weights["ok"]}) == []


def test_does_not_import_jax():
    code = (
        "import sys, torch_bridge.checkpoint_io; "
        "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if 'jax' in m)"
    )
    repo_root = pathlib.Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=repo_root)
