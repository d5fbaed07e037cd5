"""Synthetic miniatures of every release ``prepare`` recognises, packed as each is published.

Each miniature has the real release's folder names, nesting, file-name patterns and archive
format (irpo_jax/data/releases.py cites the sources), a few tiny images in place of thousands,
and the files a real release carries that must not be used (WED's distorted images, RainTrainL's
rain-streak maps, OTS's depth maps and a hazy image without its clear scene, SOTS indoor, BSD68's
PNG and noisy copies, GoPro's blur_gamma, the out-of-domain sets' training splits and masks).
The RAR (WED) and the 7z (Rain100L) need ``bsdtar`` to be read: without it they are written as
the folders they unpack to, and :data:`PACKED` says so.

:func:`build` returns, per release, the pairs the readers must find after ``prepare``, written
down from the release structure, not from the recognisers.
"""

from __future__ import annotations

import io
import pathlib
import shutil
import struct
import subprocess
import tempfile
import zipfile
import zlib

import numpy as np
import ood_miniatures
from PIL import Image

PACKED = shutil.which("bsdtar") is not None  # RAR/7z archives as released (else their folders)
TRAIN = 128  # training images: one 128x128 crop (data.patch_size)
TEST = 32


def _image(rng: np.random.Generator, side: int, fmt: str) -> bytes:
    base = rng.uniform(40, 215, size=(1, 1, 3))
    ramp = np.linspace(-30, 30, side)[None, :, None] + np.linspace(-20, 20, side)[:, None, None]
    a = np.clip(base + ramp + rng.normal(0, 4, (side, side, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def _fmt(name: str) -> str:
    return {".jpg": "JPEG", ".png": "PNG", ".bmp": "BMP"}[pathlib.PurePosixPath(name).suffix.lower()]


def write_zip(path: pathlib.Path, files: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)


def write_folder(root: pathlib.Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def write_rar4(path: pathlib.Path, files: dict[str, bytes]) -> None:
    """A RAR 4 archive with stored (uncompressed) members: the format WED's .rar is read as, written
    without the (non-free) rar program. Blocks: marker, archive header, one file header + data per
    member, end of archive; each header's CRC is the low 16 bits of its CRC32."""

    def block(htype: int, flags: int, body: bytes) -> bytes:
        hdr = struct.pack("<BHH", htype, flags, 7 + len(body)) + body
        return struct.pack("<H", zlib.crc32(hdr) & 0xFFFF) + hdr

    out = bytearray(b"Rar!\x1a\x07\x00")
    out += block(0x73, 0, struct.pack("<HI", 0, 0))
    for name, data in files.items():
        nb = name.encode()
        # pack size, unpacked size, host OS (3 = Unix), CRC32, DOS time, version 2.0, method
        # 0x30 (store), name length, attributes; flag 0x8000: data follows the header.
        body = (
            struct.pack(
                "<IIBIIBBHI", len(data), len(data), 3, zlib.crc32(data), 0x5A2B0000, 20, 0x30, len(nb), 0o100644
            )
            + nb
        )
        out += block(0x74, 0x8000, body) + data
    out += block(0x7B, 0x4000, b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))


def write_7z(path: pathlib.Path, files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(pathlib.Path(tmp), files)
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["bsdtar", "--format", "7zip", "-cf", str(path.absolute()), "-C", tmp, "."], check=True)


def build(downloads: pathlib.Path, seed: int = 0) -> dict[str, dict]:
    """Writes the downloads folder. Returns ``{release: {"count": n, "pairs": {(degraded, clean)}}}``
    with paths relative to the data root (``degraded`` None for clean-only denoising images), and
    for the out-of-domain sets ``{"count": n, "names": [...]}`` as :mod:`tests.ood_miniatures` has them."""
    rng = np.random.default_rng(seed)
    img = lambda name, side: _image(rng, side, _fmt(name))  # noqa: E731
    exp: dict[str, dict] = {}

    # WED: exploration_database_and_code.rar -> pristine_images/#####.bmp (and distorted copies).
    files = {f"exploration_database_and_code/pristine_images/{i:05d}.bmp": img("x.bmp", TRAIN) for i in (1, 2, 4744)}
    files["exploration_database_and_code/distorted_images/jpeg/00001_1.bmp"] = img("x.bmp", TRAIN)
    files["exploration_database_and_code/README.txt"] = b"Waterloo Exploration Database\n"
    (write_rar4 if PACKED else lambda p, f: write_folder(p.with_suffix(""), f))(
        downloads / "exploration_database_and_code.rar", files
    )
    exp["wed"] = {"count": 3, "pairs": {(None, f"Train/Denoise/{i:05d}.bmp") for i in (1, 2, 4744)}}

    # BSD400 (the Drive file; its inside not confirmed): a BSD400 folder of a<id>.jpg, as listed.
    names = ["a100007.jpg", "a10081.jpg"]
    write_zip(downloads / "BSD400.zip", {f"BSD400/{n}": img(n, TRAIN) for n in names})
    exp["bsd400"] = {"count": 2, "pairs": {(None, f"Train/Denoise/{n}") for n in names}}

    # Rain100L: RainTrainL (PReNet: one folder, rain-N/norain-N + streak/region maps) and the test
    # set (rainy/rain-NNN.png + norain-NNN.png), in the "Train100L&Rain100L" Drive folder.
    rain = downloads / "Train100L&Rain100L"
    files = {}
    for n in (1, 2, 10):
        files[f"RainTrainL/rain-{n}.png"] = img("x.png", TRAIN)
        files[f"RainTrainL/norain-{n}.png"] = img("x.png", TRAIN)
    files["RainTrainL/rainstreak-1.png"] = img("x.png", TRAIN)
    files["RainTrainL/rainregion-1.png"] = img("x.png", TRAIN)
    write_zip(rain / "RainTrainL.zip", files)
    exp["raintrainl"] = {
        "count": 3,
        "pairs": {(f"Train/Derain/rainy/rain-{n}.png", f"Train/Derain/gt/norain-{n}.png") for n in (1, 2, 10)},
    }
    files = {}
    for n in (1, 2):
        files[f"Rain100L/rainy/rain-{n:03d}.png"] = img("x.png", TEST)
        files[f"Rain100L/norain-{n:03d}.png"] = img("x.png", TEST)
    (write_7z if PACKED else lambda p, f: write_folder(p.with_suffix(""), f))(rain / "Rain100L.7z", files)
    exp["rain100l"] = {
        "count": 2,
        "pairs": {(f"test/derain/Rain100L/input/{n}.png", f"test/derain/Rain100L/target/{n}.png") for n in (1, 2)},
    }

    # RESIDE-beta OTS, the outer archive extracted: haze/partK.zip (partK/IIII_A_B.jpg), clear/, depth/.
    ots = downloads / "OTS_BETA"
    hazy = {"1": ["0025_0.8_0.04.jpg", "0025_1_0.1.jpg"], "2": ["3068_0.8_0.04.jpg", "9999_0.8_0.1.jpg"]}
    for part, ns in hazy.items():
        write_zip(ots / "haze" / f"part{part}.zip", {f"part{part}/{n}": img(n, TRAIN) for n in ns})
    write_folder(
        ots, {"clear/0025.jpg": img("x.jpg", TRAIN), "clear/3068.jpg": img("x.jpg", TRAIN), "depth/0025.mat": b"depth"}
    )
    exp["ots"] = {
        "count": 3,
        "pairs": {
            ("Train/Dehaze/synthetic/part1/0025_0.8_0.04.jpg", "Train/Dehaze/original/0025.jpg"),
            ("Train/Dehaze/synthetic/part1/0025_1_0.1.jpg", "Train/Dehaze/original/0025.jpg"),
            ("Train/Dehaze/synthetic/part2/3068_0.8_0.04.jpg", "Train/Dehaze/original/3068.jpg"),
        },
    }  # 9999: no clear

    # SOTS: outdoor/hazy/IIII_A_B.jpg with outdoor/gt/IIII.png; indoor/ is not used.
    write_zip(
        downloads / "SOTS.zip",
        {
            "SOTS/outdoor/hazy/0001_0.8_0.2.jpg": img("x.jpg", TEST),
            "SOTS/outdoor/gt/0001.png": img("x.png", TEST),
            "SOTS/outdoor/hazy/0002_1_0.08.jpg": img("x.jpg", TEST),
            "SOTS/outdoor/gt/0002.png": img("x.png", TEST),
            "SOTS/indoor/hazy/1400_1.png": img("x.png", TEST),
            "SOTS/indoor/gt/1400.png": img("x.png", TEST),
        },
    )
    exp["sots"] = {
        "count": 2,
        "pairs": {
            ("test/dehaze/input/0001_0.8_0.2.jpg", "test/dehaze/target/0001.png"),
            ("test/dehaze/input/0002_1_0.08.jpg", "test/dehaze/target/0002.png"),
        },
    }

    # CBSD68: the GitHub repository's zip; CBSD68/original/*.jpg (original_png, noisyNN not used).
    top = "CBSD68-dataset-master/CBSD68"
    write_zip(
        downloads / "CBSD68-dataset-master.zip",
        {
            f"{top}/original/101085.jpg": img("x.jpg", TEST),
            f"{top}/original/3096.jpg": img("x.jpg", TEST),
            f"{top}/original_png/0000.png": img("x.png", TEST),
            f"{top}/noisy25/0000.png": img("x.png", TEST),
        },
    )
    exp["bsd68"] = {
        "count": 2,
        "pairs": {(None, "test/denoise/bsd68/101085.jpg"), (None, "test/denoise/bsd68/3096.jpg")},
    }

    # GoPro: GOPRO_Large/{train,test}/<seq>/{blur,blur_gamma,sharp}/NNNNNN.png; frame names repeat
    # across sequences, hence AdaIR's <seq>_<frame> names.
    files = {}
    train = [("GOPR0372_07_00", "000047"), ("GOPR0372_07_00", "000048"), ("GOPR0374_11_00", "000047")]
    test = [("GOPR0384_11_00", "000001")]
    for split, frames, side in (("train", train, TRAIN), ("test", test, TEST)):
        for seq, frame in frames:
            for role in ("blur", "blur_gamma", "sharp"):
                files[f"GOPRO_Large/{split}/{seq}/{role}/{frame}.png"] = img("x.png", side)
    write_zip(downloads / "GOPRO_Large.zip", files)
    exp["gopro_train"] = {
        "count": 3,
        "pairs": {(f"Train/Deblur/blur/{s}_{f}.png", f"Train/Deblur/sharp/{s}_{f}.png") for s, f in train},
    }
    exp["gopro_test"] = {
        "count": 1,
        "pairs": {(f"test/deblur/gopro/input/{s}_{f}.png", f"test/deblur/gopro/target/{s}_{f}.png") for s, f in test},
    }

    # LOL: LOLdataset.zip -> our485/{low,high}, eval15/{low,high}.
    files = {}
    for split, ns, side in (("our485", ("2", "5"), TRAIN), ("eval15", ("1",), TEST)):
        for n in ns:
            for role in ("low", "high"):
                files[f"LOLdataset/{split}/{role}/{n}.png"] = img("x.png", side)
    write_zip(downloads / "LOLdataset.zip", files)
    exp["lol_train"] = {
        "count": 2,
        "pairs": {(f"Train/Enhance/low/{n}.png", f"Train/Enhance/gt/{n}.png") for n in ("2", "5")},
    }
    exp["lol_test"] = {"count": 1, "pairs": {("test/enhance/lol/input/1.png", "test/enhance/lol/target/1.png")}}

    # The out-of-domain sets (tests/ood_miniatures: each release's layout), packed as published.
    with tempfile.TemporaryDirectory() as tmp:
        ood = ood_miniatures.build(pathlib.Path(tmp), seed=seed + 1)
        src = pathlib.Path(tmp) / "test" / "ood"

        def pack(zip_path: pathlib.Path, folder: pathlib.Path, prefix: str) -> None:
            write_zip(
                zip_path,
                {
                    (f"{prefix}/" if prefix else "") + p.relative_to(folder).as_posix(): p.read_bytes()
                    for p in sorted(folder.rglob("*"))
                    if p.is_file()
                },
            )

        pack(downloads / "RRSHID.zip", src / "rrshid" / "RRSHID", "RRSHID")
        pack(downloads / "GT-RAIN" / "GT-RAIN_test.zip", src / "gtrain" / "GT-RAIN_test", "GT-RAIN_test")
        pack(downloads / "GT-RAIN" / "GT-RAIN_train.zip", src / "gtrain" / "GT-RAIN_train", "GT-RAIN_train")
        shutil.copytree(src / "sidd" / "SIDD_Benchmark_zips", downloads / "SIDD")
        pack(downloads / "ReLoBlur_testset.zip", src / "reloblur", "ReLoBlur")
        pack(downloads / "LoLI-Street.zip", src / "lolistreet", "")
    for name, rows in ood.items():
        exp[name] = {"count": len(rows), "names": [r["name"] for r in rows]}
    return exp


def unknown_archive(downloads: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """A download that is none of the sets (holiday photographs)."""
    rng = np.random.default_rng(seed)
    path = downloads / "holiday_photos.zip"
    write_zip(path, {"holiday/beach.jpg": _image(rng, TEST, "JPEG")})
    return path
