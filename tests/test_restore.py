"""Tests of ``irpo_jax.restore`` (users' own images) and ``irpo_jax.evaluation.tiling``.

File handling is tested with the identity as the "restorer" (then every output must equal its
input exactly, which checks padding/cropping, grayscale, alpha and 16-bit precision without any
model error in the way); the CLI runs the tiny fixture model. All model inputs pad to 32x32 so
that one compiled shape serves the file tests.
"""

import pathlib
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from irpo_jax import checkpointing
from irpo_jax import restore as rs
from irpo_jax.evaluation import tiling


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_dir) -> pathlib.Path:
    from irpo_jax.models.convert import from_state_dict

    model = from_state_dict(dict(np.load(tiny_dir / "state_dict.npz")))
    dst = tmp_path_factory.mktemp("ckpt") / "adair_tiny"
    with checkpointing.atomic_directory(dst) as tmp:
        checkpointing.write_model(tmp, model)
    return dst


def identity(x):
    return x


RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- the 16-bit PNG codec


def _png_with_every_filter(path: pathlib.Path, a: np.ndarray) -> None:
    """An independent PNG encoder (the spec's forward filters, numpy int64) cycling the five
    filter types row by row, so the decoder meets None, Sub, Up, Average and Paeth."""
    h, w, c = a.shape
    raw = np.ascontiguousarray(a.astype(">u2")).view(np.uint8).reshape(h, -1).astype(np.int64)
    bpp, prev, rows = 2 * c, np.zeros(raw.shape[1], np.int64), []
    for y in range(h):
        cur = raw[y]
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        p = left + prev - upleft
        pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        pred = [0, left, prev, (left + prev) // 2, paeth][y % 5]
        rows.append(bytes([y % 5]) + ((cur - pred) % 256).astype(np.uint8).tobytes())
        prev = cur

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_png16_decoder_reads_every_filter_losslessly(tmp_path, channels):
    a = RNG.integers(0, 65536, (11, 9, channels)).astype(np.uint16)
    a[4:7] = a[3]  # smooth rows too
    _png_with_every_filter(tmp_path / "f.png", a)
    np.testing.assert_array_equal(rs.read_png16(tmp_path / "f.png"), a)
    if channels == 3:  # Pillow decodes the same file to the high bytes: the file is valid PNG
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "f.png")), (a >> 8).astype(np.uint8))


def test_png16_encoder_round_trips_and_pillow_agrees(tmp_path):
    a = RNG.integers(0, 65536, (13, 7, 3)).astype(np.uint16)
    rs.write_png16(tmp_path / "a.png", a)
    np.testing.assert_array_equal(rs.read_png16(tmp_path / "a.png"), a)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), (a >> 8).astype(np.uint8))
    g = RNG.integers(0, 65536, (5, 6)).astype(np.uint16)
    rs.write_png16(tmp_path / "g.png", g)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g.png")), g)


def test_png16_damage_is_reported(tmp_path):
    a = RNG.integers(0, 65536, (8, 8, 3)).astype(np.uint16)
    rs.write_png16(tmp_path / "a.png", a)
    data = bytearray((tmp_path / "a.png").read_bytes())
    (tmp_path / "cut.png").write_bytes(bytes(data[:60]))
    with pytest.raises(rs.ImageError, match="cut.png: truncated"):
        rs.read_image(tmp_path / "cut.png")
    data[45] ^= 0xFF  # inside IDAT
    (tmp_path / "crc.png").write_bytes(bytes(data))
    with pytest.raises(rs.ImageError, match="crc.png: corrupt PNG"):
        rs.read_image(tmp_path / "crc.png")


# ----------------------------------------------------------------------------- file handling


def _inputs(folder: pathlib.Path) -> dict[str, np.ndarray]:
    """One file per kind, odd sizes that pad to 32x32."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "rgb.png": RNG.integers(0, 256, (27, 30, 3), dtype=np.uint8),
        "grey.png": RNG.integers(0, 256, (25, 31), dtype=np.uint8),
        "rgba.png": RNG.integers(0, 256, (29, 26, 4), dtype=np.uint8),
        "grey_alpha.png": RNG.integers(0, 256, (30, 30, 2), dtype=np.uint8),
        "grey16.png": RNG.integers(0, 65536, (31, 27)).astype(np.uint16),
        "rgb16.png": RNG.integers(0, 65536, (26, 29, 3)).astype(np.uint16),
        "rgba16.tif": RNG.integers(0, 65536, (28, 32, 4)).astype(np.uint16),
    }
    for name, a in files.items():
        if name.endswith(".tif"):
            tifffile.imwrite(folder / name, a, photometric="rgb", extrasamples=["unassalpha"])
        elif a.dtype == np.uint16 and a.ndim == 3:
            rs.write_png16(folder / name, a)
        else:
            Image.fromarray(a).save(folder / name)
    return files


def _read_raw(path: pathlib.Path) -> np.ndarray:
    if path.suffix == ".tif":
        return tifffile.imread(path)
    head = rs.png_header(path)
    if head[2] == 16 and head[3] != 0:
        return rs.read_png16(path)
    return np.asarray(Image.open(path))


def test_identity_restore_reproduces_every_kind_of_file_exactly(tmp_path):
    """Grey stays grey, alpha comes back unchanged, 16 bits stay 16 bits, sizes are restored."""
    files = _inputs(tmp_path / "in" / "sub")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    report = rs.restore_files(identity, [tmp_path / "in"], tmp_path / "out", progress=False)
    assert report.ok and len(report.written) == len(files), report.summary()
    for name, a in files.items():
        out = tmp_path / "out" / "sub" / name
        got = _read_raw(out)
        assert got.dtype == a.dtype and got.shape == a.shape, name
        np.testing.assert_array_equal(got, a, err_msg=name)
    assert Image.open(tmp_path / "out/sub/grey.png").mode == "L"
    assert Image.open(tmp_path / "out/sub/grey16.png").mode.startswith("I;16")


def test_reflect_padding_and_crop_back(tmp_path):
    seen = []

    def spy(x):
        seen.append(x.shape)  # traced under jit: shapes only
        return x

    a = RNG.integers(0, 256, (10, 13, 3), dtype=np.uint8)
    padded = tiling.pad_to_multiple(a, 8)
    assert padded.shape == (16, 16, 3)
    np.testing.assert_array_equal(padded, np.pad(a, ((0, 6), (0, 3), (0, 0)), mode="reflect"))
    assert tiling.pad_to_multiple(np.ones((1, 3, 3)), 8).shape == (8, 8, 3)  # 1-pixel axes: edge
    Image.fromarray(a).save(tmp_path / "a.png")
    report = rs.restore_files(spy, [tmp_path / "a.png"], tmp_path / "o", progress=False)
    assert report.ok and seen[-1][1:] == (16, 16, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o" / "a.png")), a)


def test_corrupt_file_is_reported_and_the_rest_continue(tmp_path):
    good = RNG.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(good).save(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    report = rs.restore_files(
        identity, [tmp_path / "good.png", tmp_path / "bad.jpg", tmp_path / "gone.png"], tmp_path / "out", progress=False
    )
    assert [p.name for p in report.written] == ["good.png"]
    assert {p.name for p, _ in report.failed} == {"bad.jpg", "gone.png"}
    text = report.summary()
    assert "restored 1 of 3" in text and "bad.jpg: cannot read image" in text and "no such file" in text


def test_never_overwrites_inputs_or_existing_outputs(tmp_path):
    folder = tmp_path / "photos"
    _inputs(folder)
    with pytest.raises(rs.RestoreError, match="is the input folder"):
        rs.plan([folder], folder)
    with pytest.raises(rs.RestoreError, match="would overwrite an input"):
        rs.plan([folder / "rgb.png"], folder)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.jpg")
    with pytest.raises(rs.RestoreError, match="same output"):
        rs.plan([folder / "rgb.png", tmp_path / "rgb.jpg"], tmp_path / "o")
    # --out inside an input folder is fine: outputs are never taken as inputs on the next run.
    report = rs.restore_files(identity, [folder], folder / "restored", progress=False)
    assert report.ok
    with pytest.raises(rs.RestoreError, match="exist already.*--overwrite"):
        rs.restore_files(identity, [folder], folder / "restored", progress=False)
    again = rs.restore_files(identity, [folder], folder / "restored", overwrite=True, progress=False)
    assert len(again.written) == len(report.written)


def test_out_of_memory_falls_back_to_tiles(tmp_path):
    calls = []

    def small_device(x):
        calls.append(x.shape)
        if x.shape[1] > 16:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        return x

    a = RNG.integers(0, 256, (40, 24, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "big.png")
    report = rs.restore_files(
        small_device, [tmp_path / "big.png"], tmp_path / "o", fallback_tile=16, tile_overlap=8, progress=False
    )
    assert report.ok and [p.name for p in report.tiled] == ["big.png"], report.summary()
    assert calls[0][1:3] == (40, 24) and all(c[1:3] == (16, 16) for c in calls[1:])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o" / "big.png")), a)


# ----------------------------------------------------------------------------- the CLI


def _cli(*args):
    return rs.main([str(a) for a in args])


def test_cli_restores_with_the_model(tiny_model_dir, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    rgb = RNG.integers(0, 256, (27, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(src / "a.png")
    Image.fromarray(RNG.integers(0, 256, (30, 27), dtype=np.uint8)).save(src / "b.png")
    (src / "c.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    assert _cli("--checkpoint", tiny_model_dir, src, "--out", out) == 1  # c.png failed, the rest done
    err = capsys.readouterr().err
    assert "restored 2 of 3" in err and "c.png" in err
    assert Image.open(out / "b.png").mode == "L" and Image.open(out / "b.png").size == (27, 30)
    # The output is the model on the reflect-padded image, cropped back and rounded.
    from irpo_jax import evaluation as ev

    runner = ev.make_runner(
        checkpointing.load_model(tiny_model_dir), ensemble=False, oracle_k=0, devices=None, precision="highest"
    )  # the compiled function restore used
    x = np.pad(rgb / np.float32(255), ((0, 5), (0, 2), (0, 0)), mode="reflect")
    expected = np.rint(np.clip(runner.apply_host(np.stack([x] * runner.n))[0, :27, :30], 0, 1) * 255)
    assert np.max(np.abs(np.asarray(Image.open(out / "a.png"), np.float32) - expected)) <= 1
    # Existing outputs are refused before anything runs; --overwrite replaces them.
    (src / "c.png").unlink()
    assert _cli("--checkpoint", tiny_model_dir, src, "--out", out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _cli("--checkpoint", tiny_model_dir, src, "--out", out, "--overwrite") == 0


def test_cli_bad_inputs(tiny_model_dir, tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    assert _cli("--checkpoint", tmp_path / "missing", tmp_path / "a.png", "--out", tmp_path / "o") == 2
    assert "does not exist" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _cli("--checkpoint", tiny_model_dir, tmp_path / "a.png", "--out", blocker / "o") == 2
    assert f"cannot create it because {blocker} is a file" in capsys.readouterr().err
    assert _cli("--checkpoint", tiny_model_dir, tmp_path, "--out", tmp_path) == 2
    assert "is the input folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- tiling


def _local_net(x):
    """A local network with AdaIR's 8-pixel grid: conv, 2x PixelUnshuffle, conv, PixelShuffle,
    conv (receptive radius 5 pixels, equivariant to shifts by multiples of 2)."""
    import jax
    import jax.numpy as jnp

    k = [
        jnp.asarray(np.random.default_rng(i).normal(size=s).astype(np.float32) * 0.2)
        for i, s in enumerate([(3, 3, 3, 4), (3, 3, 16, 16), (3, 3, 4, 3)])
    ]
    conv = lambda t, w: jax.lax.conv_general_dilated(  # noqa: E731
        t, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
    )
    b, h, w_, _ = x.shape
    y = jnp.tanh(conv(x, k[0]))  # (B, H, W, 4)
    y = y.reshape(b, h // 2, 2, w_ // 2, 2, 4).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w_ // 2, 16)
    y = jnp.tanh(conv(y, k[1]))
    y = y.reshape(b, h // 2, w_ // 2, 2, 2, 4).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w_, 4)
    return conv(y, k[2]) + x


def test_tiling_equals_whole_image_inference_for_a_local_network():
    import jax

    net = jax.jit(_local_net)
    x = RNG.uniform(size=(88, 72, 3)).astype(np.float32)
    whole = np.asarray(net(x[None]))[0]
    tiled = tiling.tiled_apply(net, x, tile=32, overlap=24, batch_size=2)  # margin 6 >= radius 5
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    seams = tiling.tiled_apply(net, x, tile=32, overlap=0, batch_size=2)  # hard seams: not exact
    assert np.max(np.abs(seams - whole)) > 1e-3
    assert tiling.tile_starts(88, 32, 24) == [0, 8, 16, 24, 32, 40, 48, 56]
    assert tiling.tile_starts(72, 32, 16) == [0, 16, 32, 40]  # the last window ends at the border
    with pytest.raises(ValueError, match="multiples of 8"):
        tiling.tiled_apply(net, x, tile=30, overlap=8)


def test_tiled_adair_is_not_whole_image_inference(tiny_model_dir):
    """AdaIR has global operations (channel attention over all tokens, FFTs, pooling), so tiles
    cannot reproduce whole-image inference, and this test does not pretend otherwise: it checks
    that one window covering the image is exact, and that smaller windows are measurably
    different (the tiny fixture is untrained, so the size of its gap says nothing about a
    trained model; see irpo_jax/evaluation/tiling.py)."""
    from irpo_jax import evaluation as ev

    runner = ev.make_runner(
        checkpointing.load_model(tiny_model_dir), ensemble=False, oracle_k=0, devices=None, precision="highest"
    )
    small = RNG.uniform(size=(32, 32, 3)).astype(np.float32)
    one = tiling.tiled_apply(runner.apply_host, small, tile=32, overlap=8, batch_size=runner.n)
    np.testing.assert_array_equal(one, runner.apply_host(np.stack([small] * runner.n))[0])
    x = RNG.uniform(size=(128, 128, 3)).astype(np.float32)
    batch = np.stack([x] * runner.n)
    whole = np.asarray(runner.run_batch(batch, batch, np.zeros(runner.n, np.uint32), 0)["restored"])[0]
    tiled = np.clip(tiling.tiled_apply(runner.apply_host, x, tile=32, overlap=16, batch_size=runner.n), 0, 1)
    assert np.isfinite(tiled).all() and np.abs(tiled - whole).mean() > 1e-3


# ----------------------------------------------------------------------------- modes, flags, warnings


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_outputs_follow_the_umask(tmp_path, umask, mode):
    import os

    like = rs.Decoded(np.zeros((8, 8, 3), np.float32), None, False, np.uint8)
    old = os.umask(umask)
    try:
        for name in ("a.png", "b.tif"):
            rs.write_image(tmp_path / name, np.zeros((8, 8, 3), np.float32), like)
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"a.png": mode, "b.tif": mode}


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--fallback_tile", "-8"], "--fallback_tile -8: must be 0 or a positive multiple of 8"),
        (["--tile_overlap", "-8"], "--tile_overlap -8: must be 0 or a positive multiple of 8"),
        (["--tile", "-64"], "--tile -64: must be 0 or a positive multiple of 8"),
        (["--tile", "100"], "--tile 100: must be 0 or a positive multiple of 8"),
        (["--tile", "64", "--tile_overlap", "64"], "--tile_overlap 64 must be smaller than --tile 64"),
        (["--fallback_tile", "8"], "--fallback_tile 8: too small"),
    ],
)
def test_bad_tiling_flags_are_refused_first(tmp_path, capsys, flags, needle):
    # A checkpoint that does not exist: the flags must be refused before it is looked at.
    assert _cli("--checkpoint", tmp_path / "missing", tmp_path, "--out", tmp_path / "o", *flags) == 2
    one_line_error(capsys, needle)


@pytest.mark.parametrize(
    "out, needle",
    [
        ("/proc/irpo_test_restore", "--out /proc/irpo_test_restore: cannot write in /proc"),
        ("/sys/irpo_test_restore", "--out /sys/irpo_test_restore: cannot write in /sys"),
        ("FILE", "is an existing file, not a folder"),
    ],
)
def test_an_unwritable_out_is_one_line_before_the_model_loads(
    tiny_model_dir, tmp_path, capsys, monkeypatch, out, needle
):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "FILE").write_text("x")
    monkeypatch.setattr(checkpointing, "load_model", lambda *a: pytest.fail("loaded the model first"))
    assert (
        _cli("--checkpoint", tiny_model_dir, tmp_path / "a.png", "--out", out.replace("FILE", str(tmp_path / "FILE")))
        == 2
    )
    one_line_error(capsys, needle)


def test_tiling_warns_that_outputs_differ(tmp_path, caplog):
    Image.fromarray(RNG.integers(0, 256, (40, 24, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    with caplog.at_level("WARNING", logger="irpo_jax.restore"):
        report = rs.restore_files(
            identity, [tmp_path / "big.png"], tmp_path / "o", tile=16, tile_overlap=8, progress=False
        )
    assert report.ok and len(report.tiled) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "--tile 16" in warnings[0] and "differ from whole-image inference" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="irpo_jax.restore"):  # whole images: no warning
        rs.restore_files(identity, [tmp_path / "big.png"], tmp_path / "o2", progress=False)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
