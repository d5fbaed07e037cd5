"""irpo_jax.safe_files: whole-or-nothing writes, their temporary names, modes and leftovers."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from irpo_jax import safe_files


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_writes_text_bytes_and_json(tmp_path):
    safe_files.atomic_write_text(tmp_path / "a.txt", "hello\n")
    safe_files.atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    safe_files.atomic_write_json(tmp_path / "c.json", {"b": 1, "a": [2]}, sort_keys=True)
    assert (tmp_path / "a.txt").read_text() == "hello\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.json").read_text() == json.dumps({"a": [2], "b": 1}, indent=2) + "\n"
    assert _names(tmp_path) == ["a.txt", "b.bin", "c.json"]


def test_an_exception_mid_write_keeps_the_old_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"), safe_files.atomic_open(target) as f:
        f.write("half of the new")
        raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["config.json"]


def test_a_failed_rename_keeps_the_old_content_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        safe_files.atomic_write_text(target, "new")
    assert _names(tmp_path) == []  # no target, and no temporary


def test_a_killed_writer_leaves_the_old_content_and_a_temporary_the_cleanup_removes(tmp_path):
    target = tmp_path / "metrics.jsonl"
    target.write_text("old\n")
    script = (
        "import os, signal, sys\n"
        "from irpo_jax import safe_files\n"
        "with safe_files.atomic_open(sys.argv[1]) as f:\n"
        "    f.write('half'); f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(target)], check=False,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    assert out.returncode == -9
    assert target.read_text() == "old\n"
    (leftover,) = [p for p in tmp_path.iterdir() if p != target]
    assert leftover.name.startswith(".metrics.jsonl.partial-") and safe_files.is_partial(leftover)
    assert safe_files.remove_partial_files(tmp_path) == []  # too recent: a writer elsewhere may own it
    an_hour_ago = time.time() - 3600
    os.utime(leftover, (an_hour_ago, an_hour_ago))
    assert safe_files.remove_partial_files(tmp_path) == [leftover]  # its process is gone
    assert _names(tmp_path) == ["metrics.jsonl"]


def test_the_cleanup_spares_live_writers_other_files_and_folders(tmp_path):
    live = safe_files.partial_name(tmp_path / "a.json")  # this process: alive
    live.write_text("")
    legacy = tmp_path / ".b.json.partial-x1y2z3"  # an older writer's name: removed by age only
    legacy.write_text("")
    folder = tmp_path / ".model.next.partial-abc"
    folder.mkdir()
    other = tmp_path / "c.partial-1-2-ab"  # not hidden: not ours
    other.write_text("")
    an_hour_ago = time.time() - 3600
    for p in (live, legacy, other):
        os.utime(p, (an_hour_ago, an_hour_ago))
    assert safe_files.remove_partial_files(tmp_path) == []
    assert sorted(safe_files.remove_partial_files(tmp_path, max_age_s=0)) == sorted([live, legacy])
    assert _names(tmp_path) == [".model.next.partial-abc", "c.partial-1-2-ab"]


def test_the_result_gets_the_mode_open_gives_under_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        safe_files.atomic_write_text(tmp_path / "x", "1")
        (tmp_path / "plain").write_text("1")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "x").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o640


def test_temporary_names_are_hidden_beside_the_target_unique_and_name_the_writer(tmp_path):
    names = set()

    def make():
        for _ in range(50):
            names.add(safe_files.partial_name(tmp_path / "f.txt"))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(names) == 200
    for p in names:
        assert p.parent == tmp_path and p.name.startswith(".f.txt.partial-")
        assert p.name.split(".partial-")[1].split("-")[0] == str(os.getpid())
    event = safe_files.partial_name(tmp_path / "events.out.tfevents.1.host")
    assert "tfevents" not in event.name  # TensorBoard reads any file so named


def test_safe_files_imports_nothing_from_the_package():
    source = safe_files.__file__
    with open(source) as f:
        text = f.read()
    assert "from irpo_jax" not in text and "import irpo_jax" not in text


def test_a_folder_that_refuses_the_file_is_an_os_error_naming_the_target(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        safe_files.atomic_write_text(tmp_path / "missing" / "x.json", "1")
    assert e.value.filename == str(tmp_path / "missing" / "x.json")


def test_a_write_error_names_the_target(tmp_path):
    target = tmp_path / "x.pth"
    with pytest.raises(OSError) as e, safe_files.atomic_path(target) as tmp:
        raise OSError(28, "No space left on device", str(tmp))
    assert e.value.errno == 28 and e.value.filename == str(target)
    assert _names(tmp_path) == []
