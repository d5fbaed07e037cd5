"""End-to-end tests of ``python -m torch_bridge.convert_adair`` and ``irpo_jax.load_model``."""

import json
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.torch

torch = pytest.importorskip("torch")

from irpo_jax import checkpointing, load_model  # noqa: E402
from torch_bridge import convert_adair  # noqa: E402
from torch_bridge.reference_adair import AdaIR as TorchAdaIR  # noqa: E402


def nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def convert(*args):
    return convert_adair.main([str(a) for a in args])


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_dir):
    """The fixture's genuine Lightning checkpoint, converted with --verify."""
    dst = tmp_path_factory.mktemp("conv") / "adair_tiny"
    assert convert(tiny_dir / "lightning.ckpt", dst, "--verify") == 0
    return dst


def test_manifest_records_source_config_and_verification(converted, tiny_dir):
    manifest = json.loads((converted / "manifest.json").read_text())
    import hashlib

    assert manifest["source"]["sha256"] == hashlib.sha256((tiny_dir / "lightning.ckpt").read_bytes()).hexdigest()
    assert manifest["source"]["format"] == "lightning"
    assert manifest["model_config"] == json.loads((tiny_dir / "config.json").read_text())["config"] | {
        "mask_rule": "adair"
    }
    assert manifest["converter"]["version"]
    v = manifest["verification"]
    assert v["passed"] and v["max_abs_error"] < 1e-4


def test_load_model_reproduces_the_golden_output(converted, tiny_dir):
    import jax

    restorer = load_model(converted)
    with jax.default_matmul_precision("highest"):
        out = np.asarray(restorer(nhwc(np.load(tiny_dir / "input.npy"))))
    np.testing.assert_allclose(out, nhwc(np.load(tiny_dir / "output.npy")), rtol=0, atol=1e-4)


@pytest.mark.filterwarnings("error::UserWarning")  # torch.from_numpy on a read-only JAX view warns
def test_round_trip_to_torch_is_bit_exact_and_strict_loadable(converted, tiny_dir, tmp_path):
    out = tmp_path / "back.pth"
    assert convert("--to-torch", converted, out) == 0
    original = torch.load(tiny_dir / "state_dict.pth", weights_only=True)
    back = torch.load(out, weights_only=True)
    assert list(back) == list(original)
    for key in original:
        assert torch.equal(back[key], original[key]), key
    cfg = json.loads((tiny_dir / "config.json").read_text())["config"]
    TorchAdaIR(**cfg).load_state_dict(back, strict=True)


def test_plain_pth_and_safetensors_give_the_same_parameters(converted, tiny_dir, tmp_path):
    from torch_bridge import checkpoint_io

    weights, _ = checkpoint_io.read_state_dict(tiny_dir / "state_dict.pth")
    checkpoint_io.write_state_dict(weights, tmp_path / "w.safetensors")
    ref = checkpointing.params_dict(checkpointing.restore_model(converted)[0])
    for src in (tiny_dir / "state_dict.pth", tmp_path / "w.safetensors"):
        dst = tmp_path / (src.stem + "_conv")
        assert convert(src, dst) == 0
        got = checkpointing.params_dict(checkpointing.restore_model(dst)[0])
        import jax

        assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), got, ref))


def test_explicit_config_must_fit(tiny_dir, tmp_path, capsys):
    assert convert(tiny_dir / "state_dict.pth", tmp_path / "x", "--config", "small") == 1
    err = capsys.readouterr().err
    assert "does not match the AdaIR configuration" in err and "missing keys" in err
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- bad input


def leftovers(parent):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or p.name.endswith(".replaced")]


def test_missing_source(tmp_path, capsys):
    assert convert(tmp_path / "nope.ckpt", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "nope.ckpt" in err
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_not_a_checkpoint(tmp_path, capsys):
    src = tmp_path / "notes.pth"
    src.write_text("these are my notes, not weights\n")
    assert convert(src, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "notes.pth" in err and "not a PyTorch checkpoint" in err
    assert not (tmp_path / "out").exists()


def test_truncated_checkpoint(tiny_dir, tmp_path, capsys):
    src = tmp_path / "cut.ckpt"
    data = (tiny_dir / "lightning.ckpt").read_bytes()
    src.write_bytes(data[: len(data) // 2])
    assert convert(src, tmp_path / "out") == 1
    assert "cut.ckpt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_other_architecture_is_named(tmp_path, capsys):
    """A PromptIR-like state dict (Restormer body plus prompt blocks, no FreModules)."""
    sd = {
        "patch_embed.proj.weight": torch.zeros(48, 3, 3, 3),
        "encoder_level1.0.attn.temperature": torch.ones(1, 1, 1),
        "prompt1.prompt_param": torch.zeros(1, 5, 64, 64, 64),
        "prompt1.linear_layer.weight": torch.zeros(5, 64),
    }
    src = tmp_path / "promptir.pth"
    torch.save(sd, src)
    assert convert(src, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "not an AdaIR state dict" in err and "PromptIR" in err
    assert not (tmp_path / "out").exists()


def test_nonfinite_weights_are_refused(tiny_dir, tmp_path, capsys):
    sd = torch.load(tiny_dir / "state_dict.pth", weights_only=True)
    sd["latent.0.attn.temperature"][0] = float("nan")
    src = tmp_path / "nan.pth"
    torch.save(sd, src)
    assert convert(src, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "latent.0.attn.temperature" in err
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_names_key_and_shapes(tiny_dir, tmp_path, capsys):
    sd = torch.load(tiny_dir / "state_dict.pth", weights_only=True)
    sd["output.weight"] = torch.zeros(3, 16, 5, 5)
    src = tmp_path / "bad_shape.pth"
    torch.save(sd, src)
    assert convert(src, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "'output.weight'" in err and "(3, 16, 5, 5)" in err and "(3, 16, 3, 3)" in err


def test_destination_with_another_checkpoint_needs_overwrite(converted, tiny_dir, tmp_path, capsys):
    dst = tmp_path / "dst"
    shutil.copytree(converted, dst)
    # Same source again: nothing to do, success.
    assert convert(tiny_dir / "lightning.ckpt", dst) == 0
    sd = torch.load(tiny_dir / "state_dict.pth", weights_only=True)
    sd["output.weight"] = sd["output.weight"] * 2
    other = tmp_path / "other.pth"
    torch.save(sd, other)
    assert convert(other, dst) == 1
    err = capsys.readouterr().err
    assert "already holds a different converted checkpoint" in err and "--overwrite" in err
    assert json.loads((dst / "manifest.json").read_text())["source"]["format"] == "lightning"  # untouched
    assert convert(other, dst, "--overwrite") == 0
    assert json.loads((dst / "manifest.json").read_text())["source"]["path"] == str(other)
    assert not leftovers(tmp_path)


def test_destination_that_is_not_ours_is_never_replaced(tiny_dir, tmp_path, capsys):
    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "thesis.tex").write_text("important")
    for extra in ([], ["--overwrite"]):
        assert convert(tiny_dir / "state_dict.pth", dst, *extra) == 1
        err = capsys.readouterr().err
        assert "not a directory written by convert_adair" in err and "thesis.tex" in err
    assert (dst / "thesis.tex").read_text() == "important"


def snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


@pytest.fixture(scope="module")
def trained_model_dir(converted, tmp_path_factory):
    """A model directory as the trainer writes it (``runs/<name>/model``): its own manifest.json."""
    module, meta = checkpointing.restore_model(converted)
    dst = tmp_path_factory.mktemp("run") / "model"
    manifest = {"trained_steps": 3, **meta, "stage": "supervised", "total_steps": 3}
    with checkpointing.atomic_directory(dst) as tmp:
        checkpointing.write_model(tmp, module, {"manifest.json": manifest})
    return dst


def test_a_folder_with_someone_elses_manifest_is_never_replaced(tiny_dir, tmp_path, capsys):
    """A data set (or anything else) that happens to hold a manifest.json is not a conversion."""
    dst = tmp_path / "data"
    (dst / "Train" / "Derain").mkdir(parents=True)
    (dst / "Train" / "Derain" / "rain-001.png").write_bytes(b"pixels")
    (dst / "test").mkdir()
    (dst / "manifest.json").write_text(json.dumps({"samples": 1, "files": {}}))
    before = snapshot(dst)
    for extra in ([], ["--overwrite"]):
        assert convert(tiny_dir / "state_dict.pth", dst, *extra) == 1
        err = capsys.readouterr().err
        assert str(dst) in err and "not a directory written by convert_adair" in err
        assert "Train/" in err and "test/" in err
        assert "Pass --overwrite" not in err and "sha256 None" not in err
        assert snapshot(dst) == before
    assert not leftovers(tmp_path)


def test_a_trained_model_directory_is_never_replaced(trained_model_dir, tiny_dir, capsys):
    before = snapshot(trained_model_dir)
    for extra in ([], ["--overwrite"]):
        assert convert(tiny_dir / "state_dict.pth", trained_model_dir, *extra) == 1
        err = capsys.readouterr().err
        assert str(trained_model_dir) in err and "not a directory written by convert_adair" in err
        assert "trained_steps=3" in err and "--to-torch" in err and "Pass --overwrite" not in err
        assert snapshot(trained_model_dir) == before
    assert not leftovers(trained_model_dir.parent)


def test_overwrite_keeps_files_the_converter_did_not_write(converted, tiny_dir, tmp_path, capsys):
    dst = tmp_path / "dst"
    shutil.copytree(converted, dst)
    (dst / "notes.txt").write_text("my notes")
    sd = torch.load(tiny_dir / "state_dict.pth", weights_only=True)
    sd["output.weight"] = sd["output.weight"] * 2
    other = tmp_path / "other.pth"
    torch.save(sd, other)
    before = snapshot(dst)
    for extra in ([], ["--overwrite"]):
        assert convert(other, dst, *extra) == 1
        err = capsys.readouterr().err
        assert "notes.txt" in err and "Pass --overwrite" not in err
        assert snapshot(dst) == before
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("which", ["converted", "trained_model_dir"])
def test_a_model_directory_as_source_suggests_to_torch(which, request, tmp_path, capsys):
    src = request.getfixturevalue(which)
    assert convert(src, tmp_path / "out.pth") == 1
    err = capsys.readouterr().err
    assert str(src) in err and "already an irpo-jax model directory" in err
    assert f"--to-torch {src} {tmp_path / 'out.pth'}" in err
    assert not (tmp_path / "out.pth").exists()


def test_export_refuses_to_overwrite(converted, tmp_path, capsys):
    out = tmp_path / "exists.pth"
    out.write_bytes(b"user data")
    assert convert("--to-torch", converted, out) == 1
    assert "exists.pth" in capsys.readouterr().err
    assert out.read_bytes() == b"user data"


def test_export_to_a_directory_is_refused(converted, tmp_path, capsys):
    out = tmp_path / "adir"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    for extra in ([], ["--overwrite"]):
        assert convert("--to-torch", converted, out, *extra) == 1
        err = capsys.readouterr().err
        assert str(out) in err and "is an existing directory" in err and "existing file" not in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "user data"


def test_load_model_errors(tmp_path, tiny_dir):
    with pytest.raises(checkpointing.CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(checkpointing.CheckpointError, match="convert_adair"):
        load_model(tiny_dir / "state_dict.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpointing.CheckpointError, match="no model.json"):
        load_model(tmp_path / "empty")


def test_policy_export_keeps_the_heads_in_a_separate_file(converted, tiny_dir, tmp_path, capsys):
    from flax import nnx

    from irpo_jax.models import convert as table
    from irpo_jax.models.policy import IRPOPolicy

    adair_model, _ = checkpointing.restore_model(converted)
    pol = IRPOPolicy(adair_model.config, rngs=nnx.Rngs(0))
    nnx.update(pol.net, nnx.state(adair_model))
    src = tmp_path / "policy"
    with checkpointing.atomic_directory(src) as tmp:
        checkpointing.write_model(tmp, pol)
    out = tmp_path / "policy.pth"
    assert convert("--to-torch", src, out) == 0
    assert "policy-head tensors" in capsys.readouterr().out
    back = torch.load(out, weights_only=True)
    original = torch.load(tiny_dir / "state_dict.pth", weights_only=True)
    assert all(torch.equal(back[k], original[k]) for k in original) and set(back) == set(original)
    heads = torch.load(tmp_path / "policy.policy_heads.pth", weights_only=True)
    expected = table.extra_parameters(pol)
    assert set(heads) == set(expected) and len(heads) == 3 * 2 * 4  # 6 heads x (2 layers x kernel, bias)
    assert all(np.array_equal(heads[k].numpy(), expected[k]) for k in heads)
