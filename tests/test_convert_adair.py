"""End-to-end tests of ``python -m torch_bridge.convert_adair`` and ``irpo_jax.load_model``."""

import json
import pathlib
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
    assert convert("--to_torch", converted, out) == 0
    original = torch.load(tiny_dir / "state_dict.pth", weights_only=True)
    back = torch.load(out, weights_only=True)
    assert list(back) == list(original)
    for key in original:
        assert torch.equal(back[key], original[key]), key
    cfg = json.loads((tiny_dir / "config.json").read_text())["config"]
    TorchAdaIR(**cfg).load_state_dict(back, strict=True)


def test_the_old_spelling_to_torch_still_works_with_a_note(converted, tmp_path, capsys):
    out = tmp_path / "back.pth"
    assert convert("--to-torch", converted, out) == 0 and out.is_file()
    assert "note: --to-torch is now spelled --to_torch" in capsys.readouterr().err


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
    return [
        p.name
        for p in parent.iterdir()
        if ".partial-" in p.name or p.name.endswith(".replaced") or p.name.startswith(".convert_adair.")
    ]


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
        assert "trained_steps=3" in err and "--to_torch" in err and "Pass --overwrite" not in err
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
    assert f"--to_torch {src} {tmp_path / 'out.pth'}" in err
    assert not (tmp_path / "out.pth").exists()


def test_export_refuses_to_overwrite(converted, tmp_path, capsys):
    out = tmp_path / "exists.pth"
    out.write_bytes(b"user data")
    assert convert("--to_torch", converted, out) == 1
    assert "exists.pth" in capsys.readouterr().err
    assert out.read_bytes() == b"user data"


def test_export_to_a_directory_is_refused(converted, tmp_path, capsys):
    out = tmp_path / "adir"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    for extra in ([], ["--overwrite"]):
        assert convert("--to_torch", converted, out, *extra) == 1
        err = capsys.readouterr().err
        assert str(out) in err and "is an existing directory" in err and "existing file" not in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "user data"


def test_load_model_errors(tmp_path, tiny_dir):
    with pytest.raises(checkpointing.CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(checkpointing.CheckpointError, match="convert_adair"):
        load_model(tiny_dir / "state_dict.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpointing.CheckpointError, match="empty folder"):
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
    assert convert("--to_torch", src, out) == 0
    assert "policy-head tensors" in capsys.readouterr().out
    back = torch.load(out, weights_only=True)
    original = torch.load(tiny_dir / "state_dict.pth", weights_only=True)
    assert all(torch.equal(back[k], original[k]) for k in original) and set(back) == set(original)
    heads = torch.load(tmp_path / "policy.policy_heads.pth", weights_only=True)
    expected = table.extra_parameters(pol)
    assert set(heads) == set(expected) and len(heads) == 3 * 2 * 4  # 6 heads x (2 layers x kernel, bias)
    assert all(np.array_equal(heads[k].numpy(), expected[k]) for k in heads)


# ----------------------------------------------------------------------------- what --overwrite may delete


def other_checkpoint(tiny_dir, tmp_path):
    """A valid checkpoint that differs from the fixture's (so converting it is not a no-op)."""
    sd = torch.load(tiny_dir / "state_dict.pth", weights_only=True)
    sd["output.weight"] = sd["output.weight"] * 2
    other = tmp_path / "other.pth"
    torch.save(sd, other)
    return other


def test_manifest_lists_every_file_it_wrote(converted):
    import hashlib
    import os

    listed = json.loads((converted / "manifest.json").read_text())["files"]
    on_disk = {}
    for root, _, names in os.walk(converted):
        for name in names:
            p = pathlib.Path(root, name)
            on_disk[p.relative_to(converted).as_posix()] = {
                "size": p.stat().st_size,
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            }
    del on_disk["manifest.json"]
    assert listed == on_disk and "model.json" in listed and any(k.startswith("params/") for k in listed)


def test_overwrite_replaces_its_own_output_completely(converted, tiny_dir, tmp_path):
    dst = tmp_path / "dst"
    shutil.copytree(converted, dst)
    other = other_checkpoint(tiny_dir, tmp_path)
    assert convert(other, dst, "--overwrite") == 0
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["source"]["path"] == str(other)
    files = {p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()} - {"manifest.json"}
    assert files == set(manifest["files"])  # nothing of the old conversion is left
    assert not leftovers(dst) and not leftovers(tmp_path)
    # The new conversion is the other checkpoint's.
    w = checkpointing.params_dict(checkpointing.restore_model(dst)[0])["output"]["kernel"]
    back = np.asarray(w).transpose(3, 2, 0, 1)
    np.testing.assert_array_equal(back, torch.load(other, weights_only=True)["output.weight"].numpy())


@pytest.mark.parametrize(
    "where, shown",
    [  # a folder the converter did not make is named whole
        ("params/notes.txt", "params/notes.txt"),
        ("params/ocdbt.process_0/mine/results.csv", "params/ocdbt.process_0/mine/"),
        ("keep/me.txt", "keep/"),
    ],
)
def test_overwrite_never_deletes_files_it_did_not_write_at_any_depth(
    converted, tiny_dir, tmp_path, capsys, where, shown
):
    dst = tmp_path / "dst"
    shutil.copytree(converted, dst)
    (dst / where).parent.mkdir(parents=True, exist_ok=True)
    (dst / where).write_text("mine")
    before = snapshot(dst)
    other = other_checkpoint(tiny_dir, tmp_path)
    for extra in ([], ["--overwrite"]):
        assert convert(other, dst, *extra) == 1
        err = capsys.readouterr().err
        assert f"files convert_adair did not write: {shown}" in err and "Pass --overwrite" not in err
        assert snapshot(dst) == before
    assert not leftovers(tmp_path) and not leftovers(dst)


def _lookalike(dst, manifest_files):
    dst.mkdir()
    (dst / "model.json").write_text('{"junk": true}')
    (dst / "params").mkdir()
    (dst / "params" / "thesis.tex").write_text("important")
    manifest = {
        "source": {"sha256": "0" * 64},
        "model_config": {},
        "converter": {"name": "torch_bridge.convert_adair", "version": 1},
    }
    if manifest_files is not None:
        manifest["files"] = manifest_files
    (dst / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "files, expected",
    [
        (None, "written by an older convert_adair"),
        (
            {"model.json": {"size": 14, "sha256": "0" * 64}, "params/thesis.tex": {"size": 9, "sha256": "0" * 64}},
            "missing or modified: model.json, params/thesis.tex",
        ),
        ({"model.json": {"size": 14, "sha256": "0" * 64}}, "did not write: params/;"),
        ({"../outside.txt": {"size": 1, "sha256": "0" * 64}}, "looks like a convert_adair output but is not one"),
    ],
)
def test_a_folder_that_only_looks_like_a_conversion_is_never_replaced(tiny_dir, tmp_path, capsys, files, expected):
    """A junk model.json, a params/ folder and a manifest naming the converter: with no file list,
    a file list that does not match, or one that points outside the folder."""
    dst = tmp_path / "lookalike"
    _lookalike(dst, files)
    before = snapshot(dst)
    for extra in ([], ["--overwrite"]):
        assert convert(tiny_dir / "state_dict.pth", dst, *extra) == 1
        err = capsys.readouterr().err
        assert str(dst) in err and expected in err and "Nothing was written" in err
        assert snapshot(dst) == before
    assert not leftovers(tmp_path) and not leftovers(dst)


def test_an_older_converters_output_is_kept_but_not_replaced(converted, tiny_dir, tmp_path, capsys):
    """Outputs from before the file list: the same conversion again is still a no-op; replacing
    it is refused (the converter cannot tell its files from files added since)."""
    dst = tmp_path / "old"
    shutil.copytree(converted, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    del manifest["files"]
    (dst / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(dst)
    assert convert(tiny_dir / "lightning.ckpt", dst) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert convert(other_checkpoint(tiny_dir, tmp_path), dst, "--overwrite") == 1
    err = capsys.readouterr().err
    assert "older convert_adair" in err and "delete the folder yourself" in err
    assert snapshot(dst) == before


def test_a_damaged_conversion_is_not_reported_as_done(converted, tiny_dir, tmp_path, capsys):
    dst = tmp_path / "damaged"
    shutil.copytree(converted, dst)
    victim = sorted((dst / "params").rglob("*"))[-1]
    victim.unlink()
    assert convert(tiny_dir / "lightning.ckpt", dst) == 1
    err = capsys.readouterr().err
    assert "damaged" in err and victim.relative_to(dst).as_posix() in err


def test_an_empty_current_directory_is_filled_in_place(converted, tiny_dir, tmp_path, monkeypatch):
    import os

    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    inode = here.stat().st_ino
    assert convert(tiny_dir / "lightning.ckpt", ".") == 0
    assert here.stat().st_ino == inode and os.getcwd() == str(here)  # the same folder, not a new one
    assert sorted(p.name for p in here.iterdir()) == ["manifest.json", "model.json", "params"]
    import jax

    got = checkpointing.params_dict(checkpointing.restore_model(here)[0])
    ref = checkpointing.params_dict(checkpointing.restore_model(converted)[0])
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), got, ref))


# ----------------------------------------------------------------------------- one clear line


def one_line_error(capsys, *needles):
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.mark.parametrize(
    "dst, why",
    [
        ("/proc/irpo_test_conversion/out", "cannot write in /proc"),
        ("/sys/irpo_test_conversion", "cannot write in /sys"),
        ("FILE/out", "is a file, not a folder"),
        ("FILE", "is an existing file"),
    ],
)
def test_an_unwritable_destination_is_one_line_before_reading(tiny_dir, tmp_path, capsys, monkeypatch, dst, why):
    from torch_bridge import checkpoint_io

    (tmp_path / "FILE").write_text("x")
    dst = dst.replace("FILE", str(tmp_path / "FILE"))
    monkeypatch.setattr(checkpoint_io, "read_state_dict", lambda *a: pytest.fail("read the checkpoint first"))
    assert convert(tiny_dir / "state_dict.pth", dst) == 1
    one_line_error(capsys, dst, why)


@pytest.mark.parametrize(
    "dst, why",
    [
        ("/proc/irpo_test_export.pth", "cannot write in /proc"),
        ("/sys/irpo_test_export.pth", "cannot write in /sys"),
        ("FILE/out.pth", "is a file, not a folder"),
    ],
)
def test_an_unwritable_export_path_is_one_line(converted, tmp_path, capsys, dst, why):
    (tmp_path / "FILE").write_text("x")
    dst = dst.replace("FILE", str(tmp_path / "FILE"))
    assert convert("--to_torch", converted, dst) == 1
    one_line_error(capsys, dst, why)


def test_a_write_that_fails_anyway_is_one_line_and_leaves_nothing(converted, tmp_path, capsys, monkeypatch):
    """A failure the checks cannot foresee (the disk fills up while writing)."""
    import errno

    import torch as torch_module

    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", getattr(f, "name", None))

    monkeypatch.setattr(torch_module, "save", full)
    assert convert("--to_torch", converted, tmp_path / "x.pth") == 1
    one_line_error(capsys, "No space left on device", str(tmp_path / "x.pth"))
    assert list(tmp_path.iterdir()) == []


def test_a_destination_under_a_file_names_the_file(tiny_dir, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert convert(tiny_dir / "state_dict.pth", tmp_path / "afile" / "sub" / "out") == 1
    err = one_line_error(capsys, f"{tmp_path / 'afile'} is a file")
    assert "Errno" not in err


@pytest.mark.parametrize(
    "config, expected",
    [
        ("/nonexistent/adair.json", "--config /nonexistent/adair.json: no such file"),
        ("BAD", "--config BAD is not valid JSON"),
        ("LIST", "--config LIST holds a JSON list"),
        ('{"dim": 8,', "--config is not a valid JSON object"),
    ],
)
def test_config_flag_errors_name_the_flag_and_file(tiny_dir, tmp_path, capsys, config, expected):
    (tmp_path / "bad.json").write_text('{"dim": 8,,}')
    (tmp_path / "list.json").write_text("[8]")
    subst = {"BAD": str(tmp_path / "bad.json"), "LIST": str(tmp_path / "list.json")}
    for key, value in subst.items():
        config, expected = config.replace(key, value), expected.replace(key, value)
    assert convert(tiny_dir / "state_dict.pth", tmp_path / "out", "--config", config) == 1
    err = one_line_error(capsys, expected)
    assert "unknown AdaIR variant" not in err
    assert not (tmp_path / "out").exists()


def test_non_string_keys_are_one_line(tmp_path, capsys):
    src = tmp_path / "numbered.pth"
    torch.save({0: torch.zeros(2), 1: torch.ones(2)}, src)
    assert convert(src, tmp_path / "out") == 1
    one_line_error(capsys, "numbered.pth", "are not strings", "0 (int)")


def test_a_whole_missing_block_is_named(tiny_dir, tmp_path, capsys):
    sd = torch.load(tiny_dir / "state_dict.pth", weights_only=True)
    src = tmp_path / "no_fre1.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("fre1.")}, src)
    assert convert(src, tmp_path / "out") == 1
    err = capsys.readouterr().err
    n = sum(k.startswith("fre1.") for k in sd)
    assert f"missing keys ({n}): the whole block fre1 ({n} keys fre1.*)" in err
    assert "fre2" not in err and "fre3" not in err and "(0)" not in err


def test_float8_weights_warn_that_they_are_upcast(tiny_dir, tmp_path, capsys):
    sd = torch.load(tiny_dir / "state_dict.pth", weights_only=True)
    src = tmp_path / "fp8.pth"
    torch.save({k: v.to(torch.float8_e4m3fn) for k, v in sd.items()}, src)
    assert convert(src, tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "float8_e4m3fn" in err and "upcast to float32" in err
    assert f"{len(sd)} of {len(sd)} tensors" in err
