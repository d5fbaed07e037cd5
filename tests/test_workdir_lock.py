"""One writer per workdir (irpo_jax/training/lock.py) and a workdir that cannot be written.

A second start while a run lives is refused with the holder's process id, host and start time;
a lock left by a killed process is taken over with a note; a workdir that cannot be written
is one clear TrainingError, not an OSError from deep inside the start.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import pytest
from test_train import smoke_config

from irpo_jax import training
from irpo_jax.training import lock as lock_lib
from irpo_jax.training.workdir import check_workdir_config

ROOT = pathlib.Path(__file__).resolve().parent.parent

HOLDER = (
    "import pathlib, sys, time\n"
    "from irpo_jax.training import lock\n"
    "held = lock.acquire(pathlib.Path(sys.argv[1]))\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.fixture
def holder(tmp_path):
    """A live process holding the lock of ``tmp_path / 'run'`` (an empty workdir)."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield workdir, proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_start_is_refused_naming_the_holder(holder, demo_root):
    workdir, proc = holder
    cfg = smoke_config(demo_root, "supervised")
    with pytest.raises(training.TrainingError) as err:
        training.run(cfg, workdir, progress=False)
    message = str(err.value)
    record = json.loads((workdir / ".lock").read_text())
    assert f"in use by process {proc.pid} on host {socket.gethostname()} since {record['since']}" in message
    assert "Wait for that run to end" in message
    assert not (workdir / "config.json").exists()  # nothing of the live run's was touched
    # The command line: one line, exit status 1.
    out = subprocess.run([sys.executable, "-m", "irpo_jax.train", "--config=configs/allinone5.py:supervised,smoke",
                          f"--config.data.root={demo_root}", f"--workdir={workdir}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 1 and len(errors) == 1 and f"process {proc.pid}" in errors[0], out.stderr
    assert "Traceback" not in out.stderr


def test_the_lock_of_a_killed_run_is_taken_over_with_a_note(holder, demo_root, capsys):
    workdir, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    held = check_workdir_config(workdir, smoke_config(demo_root, "supervised"))
    try:
        assert f"last locked by process {proc.pid} on host {socket.gethostname()}" in capsys.readouterr().out
        assert json.loads((workdir / ".lock").read_text())["pid"] == os.getpid()
        assert (workdir / "config.json").exists()
    finally:
        held.release()
    assert (workdir / ".lock").read_text() == ""  # a clean release leaves no holder to report


def test_the_lock_is_released_when_the_start_is_refused(demo_root, tmp_path):
    check_workdir_config(tmp_path, smoke_config(demo_root, "supervised")).release()
    (tmp_path / "checkpoints" / "1").mkdir(parents=True)  # as if the run had a checkpoint
    with pytest.raises(training.TrainingError, match="different config"):
        check_workdir_config(tmp_path, smoke_config(demo_root, "supervised", **{"optim.lr": 1.0}))
    lock_lib.acquire(tmp_path).release()  # not left held by the refused start


def test_a_workdir_that_cannot_be_written_is_one_clear_error(demo_root, tmp_path):
    (tmp_path / "file").write_text("x")
    cfg = smoke_config(demo_root, "supervised")
    for workdir, reason in ((tmp_path / "file" / "run", f"{tmp_path / 'file'} is a file, not a folder"),
                            (pathlib.Path("/proc/irpo-run"), "")):  # fmt: skip
        with pytest.raises(training.TrainingError, match=f"--workdir {workdir} cannot be written: {reason}") as err:
            training.run(cfg, workdir, progress=False)
        assert "\n" not in str(err.value)


def test_the_lock_says_whether_it_is_held_and_records_its_holder_on_one_line(tmp_path):
    held = lock_lib.acquire(tmp_path)
    assert held.held
    text = (tmp_path / lock_lib.LOCK_NAME).read_text()
    assert text.endswith("\n") and text.count("\n") == 1  # one JSON line, as a person reading it expects
    assert json.loads(text)["pid"] == os.getpid() and json.loads(text)["host"] == socket.gethostname()
    held.release()
    assert not held.held
