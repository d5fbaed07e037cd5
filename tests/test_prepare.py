"""``prepare`` on synthetic miniatures of every release (tests/release_miniatures.py): after it,
``train``'s and ``evaluate``'s own readers find exactly the pairs each release holds; the downloads
are never changed; reruns change nothing; a missing set, a truncated archive, a count that differs
and an unknown archive each get one line; an interrupted run leaves nothing a reader takes for a
whole set; ``--check`` reports on a folder laid out by hand."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import zipfile

import pytest
import release_miniatures

from irpo_jax.data import archives, prepare, readers, releases

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CONFIG = str(pathlib.Path(__file__).resolve().parent.parent / "configs" / "allinone5.py")


def _snapshot(folder: pathlib.Path) -> dict[str, tuple[str, int]]:
    return {
        p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prepare")
    downloads = tmp / "downloads"
    expected = release_miniatures.build(downloads)
    before = _snapshot(downloads)
    out = tmp / "data"
    results, scan = prepare.prepare(downloads, out, expected={k: v["count"] for k, v in expected.items()})
    return tmp, downloads, out, expected, before, results, scan


def _rel(root: pathlib.Path, p: str | None) -> str | None:
    return None if p is None else pathlib.Path(p).relative_to(root).as_posix()


def test_every_release_found_with_its_count(built):
    _, _, _, expected, _, results, scan = built
    assert scan.problems == [] and scan.unused == []
    assert [r.release.name for r in results] == [r.name for r in releases.RELEASES]
    for r in results:
        assert (r.state, r.found) == ("found", expected[r.release.name]["count"]), r.line()


def test_train_readers_find_exactly_the_pairs(built):
    _, _, out, expected, _, _, _ = built
    records, report = readers.train_records({"root": str(out)})
    assert report.skipped == []
    got: dict[str, set] = {}
    for r in records:
        got.setdefault(r.task, set()).add((_rel(out, r.degraded), _rel(out, r.clean)))
    want = {
        "denoise": expected["wed"]["pairs"] | expected["bsd400"]["pairs"],
        "derain": expected["raintrainl"]["pairs"],
        "dehaze": expected["ots"]["pairs"],
        "deblur": expected["gopro_train"]["pairs"],
        "lowlight": expected["lol_train"]["pairs"],
    }
    assert got == want
    # the list files name exactly those files (a list, not a folder listing, is what AdaIR reads)
    assert (out / "data_dir/noisy/denoise.txt").read_text().split() == [
        "00001.bmp",
        "00002.bmp",
        "04744.bmp",
        "a100007.jpg",
        "a10081.jpg",
    ]
    assert (out / "data_dir/rainy/rainTrain.txt").read_text().split() == [
        "rainy/rain-1.png",
        "rainy/rain-2.png",
        "rainy/rain-10.png",
    ]


def test_evaluate_readers_find_exactly_the_pairs(built):
    _, _, out, expected, _, _, _ = built
    sets = readers.eval_sets({"root": str(out)}, ["sots", "rain100l", "bsd68", "gopro", "lol", "ood5"])
    for name, release in (
        ("sots", "sots"),
        ("rain100l", "rain100l"),
        ("bsd68_s25", "bsd68"),
        ("gopro", "gopro_test"),
        ("lol", "lol_test"),
    ):
        pairs = {(_rel(out, r.degraded), _rel(out, r.clean)) for r in sets[name].records}
        assert pairs == expected[release]["pairs"], name
    for name in readers.OOD_SETS:
        es = sets[name]
        assert [es.item_name(i) for i in range(len(es))] == expected[name]["names"], name
        assert es.missing == []


def test_downloads_unchanged_and_files_unchanged(built):
    tmp, downloads, out, _, before, _, _ = built
    assert _snapshot(downloads) == before
    # plain files are hard links (same inode), archive members byte-identical copies
    clear = out / "Train/Dehaze/original/0025.jpg"
    assert clear.stat().st_ino == (downloads / "OTS_BETA/clear/0025.jpg").stat().st_ino
    with zipfile.ZipFile(downloads / "GOPRO_Large.zip") as zf:
        assert (out / "Train/Deblur/blur/GOPR0374_11_00_000047.png").read_bytes() == zf.read(
            "GOPRO_Large/train/GOPR0374_11_00/blur/000047.png"
        )


def test_rerun_changes_nothing(built):
    _, downloads, out, expected, before, _, _ = built
    laid = _snapshot(out)
    results, _ = prepare.prepare(downloads, out, expected={k: v["count"] for k, v in expected.items()})
    assert all(r.state == "found" and "already laid out" in r.detail for r in results)
    assert _snapshot(out) == laid and _snapshot(downloads) == before


def test_check_counts_and_run_lengths(built):
    _, _, out, expected, _, _, _ = built
    rows = prepare.check(out)
    by = {r.name: r for r in rows}
    assert by["denoise"].found == 5 and by["dehaze"].found == 3 and by["sots"].found == 2
    assert by["gtrain"].found == expected["gtrain"]["count"]
    assert by["denoise"].state == "count differs" and "expected 5,144 clean images, found 5" in by["denoise"].line()
    lines = prepare.run_lengths(rows, CONFIG)
    text = "\n".join(lines)
    # denoise 5 images x 3 sigmas x 3 + derain 3 x 120 + dehaze 3 + deblur 3 x 5 + lowlight 2 x 20
    assert "one epoch of AdaIR's mixture: 463 samples" in text
    # hard set: ceil(0.3 n) per degradation: denoise 2 x 3 sigmas, 1 each else -> 6x3 + 120 + 1 + 5 + 20
    assert "30 epochs of 164 samples (the hard 30%: 10 pairs) at batch 2 = 2,460 optimizer steps" in text


def test_run_lengths_at_the_papers_sizes():
    # The published sizes give the run lengths configs/allinone5.py's docstring states.
    rows = [
        prepare.CheckRow(t, "", n, n, "")
        for t, n in (("denoise", 5144), ("derain", 200), ("dehaze", 72135), ("deblur", 2103), ("lowlight", 485))
    ]
    text = "\n".join(prepare.run_lengths(rows, CONFIG))
    assert "one epoch of AdaIR's mixture: 162,646 samples" in text  # adair-spec.md 10.2
    assert "48,812 samples (the hard 30%: 27,110 pairs) at batch 2 = 732,180 optimizer steps" in text


def test_missing_truncated_wrong_count_unknown(tmp_path):
    downloads = tmp_path / "downloads"
    release_miniatures.build(downloads)
    for p in list(downloads.iterdir()):  # keep LOL and GoPro only
        if p.name not in ("LOLdataset.zip", "GOPRO_Large.zip"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    gopro = downloads / "GOPRO_Large.zip"
    data = gopro.read_bytes()
    gopro.write_bytes(data[: len(data) // 2])  # an interrupted download
    release_miniatures.unknown_archive(downloads)
    before = _snapshot(downloads)
    out = tmp_path / "data"
    rc = prepare.main(["--downloads", str(downloads), "--out", str(out)])
    assert _snapshot(downloads) == before
    assert rc == 1  # an archive could not be used
    results, scan = prepare.prepare(downloads, out)
    text = prepare.format_report(results, scan)
    lines = text.splitlines()
    assert any(ln.startswith(f"  cannot use {gopro}: not a readable zip") and "download it again" in ln for ln in lines)
    assert any(ln.startswith("  not recognised: ") and "holiday_photos.zip" in ln for ln in lines)
    by = {r.release.name: r for r in results}
    assert by["gopro_train"].state == "missing" and "GOPRO_Large.zip, seungjunnah.github.io" in by["gopro_train"].line()
    assert by["lol_train"].line().endswith("count differs: expected 485 pairs, found 2; already laid out")
    assert not (out / "Train/Deblur").exists()
    # exactly one line per set
    assert sum(ln.startswith("  ") for ln in lines) == len(releases.RELEASES) + 2


def test_corrupt_member_lays_nothing(tmp_path):
    downloads = tmp_path / "downloads"
    files = {f"LOLdataset/our485/{role}/{n}.png": bytes(range(256)) * 40 for n in (1, 2) for role in ("low", "high")}
    release_miniatures.write_zip(downloads / "LOLdataset.zip", files)
    raw = bytearray((downloads / "LOLdataset.zip").read_bytes())
    i = raw.index(b"LOLdataset/our485/low/2.png") + 40  # inside the second member's data
    raw[i] ^= 0xFF
    (downloads / "LOLdataset.zip").write_bytes(bytes(raw))
    results, _ = prepare.prepare(downloads, tmp_path / "data", sets=["lol_train"])
    assert results[0].state == "failed" and "download it again" in results[0].detail
    assert not (tmp_path / "data/Train/Enhance").exists()
    assert [p.name for p in (tmp_path / "data/Train").iterdir()] == []  # no staging left


def test_interrupted_run_is_never_taken_for_whole(tmp_path, monkeypatch):
    downloads = tmp_path / "downloads"
    release_miniatures.build(downloads)
    out = tmp_path / "data"
    real_place = archives.place

    def killed(jobs, link="hardlink"):
        real_place(jobs[: len(jobs) // 2], link)
        raise KeyboardInterrupt  # as a Ctrl-C half-way through the first unit

    monkeypatch.setattr(archives, "place", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(downloads, out)
    monkeypatch.setattr(archives, "place", real_place)
    assert not (out / "Train/Denoise").exists() and not (out / "data_dir").exists()
    with pytest.raises(readers.DataError, match="does not exist"):
        readers.train_records({"root": str(out), "tasks": ("denoise",)})
    # A SIGKILL leaves the staging folder itself: the next run removes it and lays the unit out.
    staged = out / "Train/.Denoise.prepare-new-99999"
    staged.mkdir(parents=True)
    (staged / ".prepare-staging").write_text("")
    (staged / "00001.bmp").write_bytes(b"half")
    results, _ = prepare.prepare(downloads, out, sets=["wed"], expected={"wed": 3})
    assert results[0].state == "found" and not staged.exists()
    assert sorted(p.name for p in (out / "Train").iterdir()) == ["Denoise"]


def test_hand_laid_folder_left_alone_and_replacement(tmp_path):
    downloads = tmp_path / "downloads"
    release_miniatures.build(downloads)
    out = tmp_path / "data"
    mine = out / "test/enhance/lol"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    results, _ = prepare.prepare(downloads, out, sets=["lol_train", "lol_test"])
    by = {r.release.name: r for r in results}
    assert by["lol_test"].state == "left as it is" and "not laid out by prepare" in by["lol_test"].detail
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # More data in the downloads: a unit prepare laid out is laid out again, whole.
    release_miniatures.write_zip(
        downloads / "LOL_extra.zip",
        {
            "LOLdataset/our485/low/9.png": (out / "Train/Enhance/low/2.png").read_bytes(),
            "LOLdataset/our485/high/9.png": (out / "Train/Enhance/gt/2.png").read_bytes(),
        },
    )
    results, _ = prepare.prepare(downloads, out, sets=["lol_train"], expected={"lol_train": 3})
    assert results[0].state == "found"
    assert sorted(p.name for p in (out / "Train/Enhance/low").iterdir()) == ["2.png", "5.png", "9.png"]
    # ... but not once a file of the user's is in it.
    (out / "Train/Enhance/low/mine.png").write_bytes(b"x")
    (downloads / "LOL_extra.zip").unlink()
    results, _ = prepare.prepare(downloads, out, sets=["lol_train"])
    assert results[0].state == "left as it is" and "low/mine.png added" in results[0].detail
    assert (out / "Train/Enhance/low/9.png").exists()


def test_official_lists(tmp_path):
    downloads = tmp_path / "downloads"
    release_miniatures.build(downloads)
    lists = tmp_path / "AdaIR" / "data_dir"
    (lists / "noisy").mkdir(parents=True)
    (lists / "noisy/denoise.txt").write_text("00002.bmp\na100007.jpg\na247012.jpg")  # no final newline, as AdaIR's
    results, _ = prepare.prepare(downloads, tmp_path / "data", sets=["wed", "bsd400"], lists=lists)
    assert "AdaIR's noisy/denoise.txt: 2 of its 3 entries present (missing e.g. a247012.jpg)" in results[0].detail
    records, report = readers.train_records({"root": str(tmp_path / "data"), "tasks": ("denoise",)})
    assert sorted({pathlib.Path(r.clean).name for r in records}) == ["00002.bmp", "a100007.jpg"]
    assert report.skipped and report.skipped[0][1] == "file not found"


def test_check_cli_on_a_hand_laid_folder(tmp_path, capsys):
    from irpo_jax.data import demo

    root = tmp_path / "demo"
    demo.build_demo_set(root)
    rc = prepare.main(["--check", str(root), "--validate", "none", "--config", CONFIG])
    out = capsys.readouterr().out
    assert rc == 1  # the demo's sizes are not the published ones
    assert "  derain       Train/Derain             count differs: expected 200 pairs, found" in out
    assert "test/ood/rrshid" in out and "missing" in out
    assert "allinone5_supervised: 150 epochs of" in out


def test_bad_arguments(tmp_path, capsys):
    assert prepare.main(["--downloads", str(tmp_path)]) == 2
    assert prepare.main(["--downloads", str(tmp_path), "--out", str(tmp_path / "data")]) == 2  # inside
    assert prepare.main(["--check", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_an_interrupted_run_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    """Ctrl-C (or SIGTERM, 143) while laying out: one line saying a rerun finishes, no traceback."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "prepare", interrupted)
    assert prepare.main(["--downloads", str(tmp_path / "dl"), "--out", str(tmp_path / "data")]) == 130
    assert capsys.readouterr().err.splitlines() == [
        "error: interrupted (Ctrl-C); the same command finishes what is missing"
    ]


@pytest.mark.skipif(not archives.bsdtar(), reason="bsdtar (libarchive-tools) not installed")
def test_rar_and_7z_members_are_listed_and_extracted(tmp_path):
    files = {"exploration_database_and_code/pristine_images/00007.bmp": b"BM" + bytes(100)}
    release_miniatures.write_rar4(tmp_path / "dl/w.rar", files)
    release_miniatures.write_7z(tmp_path / "dl/r.7z", {"Rain100L/rainy/rain-001.png": b"png"})
    scan = archives.scan(tmp_path / "dl")
    assert sorted(m.vpath for m in scan.members) == [
        "r.7z/Rain100L/rainy/rain-001.png",
        "w.rar/exploration_database_and_code/pristine_images/00007.bmp",
    ]
    dest = tmp_path / "out"
    archives.place([(m, dest / m.name) for m in scan.members])
    assert (dest / "00007.bmp").read_bytes() == files["exploration_database_and_code/pristine_images/00007.bmp"]
    truncated = tmp_path / "dl2/w.rar"
    truncated.parent.mkdir()
    truncated.write_bytes((tmp_path / "dl/w.rar").read_bytes()[:40])
    assert archives.scan(truncated.parent).problems[0][0] == truncated


def test_tar_and_nested_archives(tmp_path):
    import tarfile

    src = tmp_path / "src/LOLdataset/eval15/low"
    src.mkdir(parents=True)
    (src / "1.png").write_bytes(b"x")
    (tmp_path / "dl").mkdir()
    with tarfile.open(tmp_path / "dl/lol.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "src/LOLdataset", arcname="LOLdataset")
    release_miniatures.write_zip(tmp_path / "dl/outer.zip", {"OTS/haze/part1.zip": b"PK"})
    scan = archives.scan(tmp_path / "dl")
    assert [m.vpath for m in scan.members] == ["lol.tar.gz/LOLdataset/eval15/low/1.png", "outer.zip/OTS/haze/part1.zip"]
    assert "extract it into the downloads folder" in scan.problems[0][1]
    os.makedirs(tmp_path / "o")
    archives.place([(scan.members[0], tmp_path / "o/1.png")])
    assert (tmp_path / "o/1.png").read_bytes() == b"x"
