"""The training CLI's one-line errors (issue 19, items 7 and 8), and the destination checks all
CLIs share (:mod:`irpo_jax.destinations`).

``python -m irpo_jax.train`` is run in-process (``train.parse_flags`` then ``train.main``, as
``absl.app.run`` does) with ``training.run`` replaced: a refused workdir must be refused before
the trainer is reached. Unwritable places are ``/proc`` (mkdir gives ENOENT) and ``/sys``
(EPERM): the suite may run as root, whom mode bits do not stop. The other CLIs' cases are tested
beside their own tests (test_convert_adair, test_restore, test_mine, test_reward_process,
test_checkpointing_errors).
"""

import errno
import pathlib

import pytest

from irpo_jax import destinations

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = f"{ROOT / 'configs' / 'allinone5.py'}:supervised,demo"
REACHED = "reached training.run"


@pytest.fixture
def train_cli(monkeypatch):
    """``run(*flags) -> exit status``; ``training.run`` raises ``REACHED`` unless replaced."""
    from absl import flags

    from irpo_jax import train, training

    def reached(*args, **kwargs):
        raise AssertionError(REACHED)

    monkeypatch.setattr(training, "run", reached)

    def run(*args: str) -> int:
        try:
            train.parse_flags(["train", *map(str, args)])  # exits 2 on a bad flag, as under app.run
            return train.main([])
        except SystemExit as e:
            return e.code
        finally:
            flags.FLAGS.unparse_flags()

    return run


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err.splitlines()[0]


@pytest.mark.parametrize(
    "workdir, expected",
    [  # the system's reason (in brackets) varies by kernel and mount
        (
            "/proc/irpo_test_run",
            r"--workdir /proc/irpo_test_run: cannot write in /proc \(.+\); choose a writable location",
        ),
        (
            "/sys/irpo_test_run",
            r"--workdir /sys/irpo_test_run: cannot write in /sys \(.+\); choose a writable location",
        ),
        (
            "FILE/run",
            "--workdir FILE/run: cannot create it because FILE is a file, not a folder; choose another location",
        ),
        ("FILE", "--workdir FILE is an existing file, not a folder; choose a folder"),
    ],
)
def test_an_unwritable_workdir_is_one_line_before_training(train_cli, tmp_path, capsys, workdir, expected):
    import re

    (tmp_path / "afile").write_text("x")
    workdir = workdir.replace("FILE", str(tmp_path / "afile"))
    expected = expected.replace("FILE", re.escape(str(tmp_path / "afile")))
    assert train_cli("--config", CONFIG, "--workdir", workdir) == 1
    assert re.fullmatch(f"error: {expected}", capsys.readouterr().err.strip())  # one line, not REACHED


def test_a_write_that_fails_in_the_workdir_during_training_is_one_line(train_cli, tmp_path, capsys, monkeypatch):
    from irpo_jax import training

    workdir = tmp_path / "run"
    victim = workdir / "checkpoints" / "8" / "state"

    def disk_full(cfg, wd, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(victim))

    monkeypatch.setattr(training, "run", disk_full)
    assert train_cli("--config", CONFIG, "--workdir", workdir) == 1
    assert one_line(capsys) == f"error: cannot write {victim}: No space left on device (in --workdir {workdir})"


def test_ctrl_c_outside_the_loop_is_one_line_and_exit_130(train_cli, tmp_path, capsys, monkeypatch):
    """A Ctrl-C while a GRPO run mines its hard set (before the loop's signal handling) says how to resume."""
    from irpo_jax import training

    def interrupted(cfg, wd, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "run", interrupted)
    assert train_cli("--config", CONFIG, "--workdir", tmp_path / "run") == 130
    assert "the same command resumes" in one_line(capsys)


def test_sigterm_outside_the_loop_is_one_line_and_exit_143(train_cli, tmp_path, capsys, monkeypatch):
    """A SIGTERM during set-up (here: the trainer before its loop) says how to resume, as Ctrl-C does."""
    import os
    import signal
    import time

    from irpo_jax import training

    def terminated(cfg, wd, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises before this ends

    monkeypatch.setattr(training, "run", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert train_cli("--config", CONFIG, "--workdir", tmp_path / "run") == 143
    assert one_line(capsys).startswith("error: stopped by SIGTERM; the same command resumes")
    assert signal.getsignal(signal.SIGTERM) is before


def test_kebab_case_flags_still_work_with_a_note(train_cli, tmp_path, capsys, monkeypatch):
    from irpo_jax import training

    seen = {}

    def record(cfg, wd, **kwargs):
        seen.update(kwargs)
        return {"steps": 1, "total_steps": 1, "stop": "finished"}

    monkeypatch.setattr(training, "run", record)
    assert train_cli("--config", CONFIG, "--workdir", tmp_path / "run", "--stop-after", "1", "--no-progress") == 0
    assert seen == {"progress": False, "stop_after": 1}
    err = capsys.readouterr().err
    assert (
        "note: --stop-after is now spelled --stop_after" in err and "--no-progress is now spelled --noprogress" in err
    )


def test_other_os_errors_keep_their_traceback(train_cli, tmp_path, monkeypatch):
    """An OSError outside the workdir is not the workdir's fault: it is raised, not reworded."""
    from irpo_jax import training

    def elsewhere(cfg, wd, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/somewhere/else.png")

    monkeypatch.setattr(training, "run", elsewhere)
    with pytest.raises(FileNotFoundError):
        train_cli("--config", CONFIG, "--workdir", tmp_path / "run")


@pytest.mark.parametrize(
    "config, needle",
    [
        (
            "BAD.json",
            "--config BAD.json: not a valid Python config file ('{' was never closed, line 1); "
            "--config takes a .py file with get_config()",
        ),
        ("BAD.py", "--config BAD.py: not a valid Python config file (invalid syntax, line 1)"),
        (
            "/nonexistent/config.py",
            "--config: [Errno 2] No such file or directory: '/nonexistent/config.py'; "
            "--config takes a .py file with get_config()",
        ),
        ("DIR", "--config: [Errno 21] Is a directory: 'DIR'; --config takes a .py file with get_config()"),
    ],
)
def test_config_file_errors_name_the_flag_and_the_file(train_cli, tmp_path, capsys, config, needle):
    (tmp_path / "BAD.json").write_text('{"optim": {"lr": 1e-4}\n')
    (tmp_path / "BAD.py").write_text("def get_config(:\n")
    (tmp_path / "DIR").mkdir()
    paths = {name: str(tmp_path / name) for name in ("BAD", "DIR")}
    for name, path in paths.items():
        config, needle = config.replace(name, path), needle.replace(name, path)
    assert train_cli("--config", config, "--workdir", tmp_path / "run") == 2
    assert one_line(capsys).startswith(f"error: {needle}")


# ----------------------------------------------------------------------------- the shared checks


def test_destination_checks_create_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    destinations.check_directory(target, "--out")
    destinations.check_file(target / "x.pth")
    assert list(tmp_path.iterdir()) == []  # the probe is gone, nothing was created
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    destinations.check_directory(tmp_path / "full")
    with pytest.raises(destinations.DestinationError, match="is an existing folder; give a file path"):
        destinations.check_file(tmp_path / "full", "--to")
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["x"]


def test_os_error_line():
    err = OSError(errno.ENOSPC, "No space left on device", "/data/x.bin")
    assert destinations.os_error_line(err) == "cannot write /data/x.bin: No space left on device"
    moved = OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")
    assert destinations.os_error_line(moved, "cannot move") == "cannot move /a -> /b: Invalid cross-device link"


@pytest.mark.parametrize("value", ["0", "-1"])
def test_stop_after_must_be_positive(train_cli, tmp_path, capsys, value):
    assert train_cli("--config", CONFIG, "--workdir", tmp_path / "run", "--stop_after", value) == 2
    assert one_line(capsys) == f"error: flag --stop_after={value}: {value} is not a positive integer"
