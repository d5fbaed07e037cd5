"""irpo_jax.cli: the flag spelling, config files, one-line errors with exit codes, and SIGTERM
before a run's own signal handling."""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from irpo_jax import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_kebab_case_flags_are_respelled_with_a_note(capsys):
    got = cli.snake_case_flags(["--to-torch", "a", "--stop-after=3", "--data_root", "d", "--no-such", "--",
                                "--to-torch"], ["to_torch", "stop_after", "data_root"], prog="x")  # fmt: skip
    assert got == ["--to_torch", "a", "--stop_after=3", "--data_root", "d", "--no-such", "--", "--to-torch"]
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "x: note: --to-torch is now spelled --to_torch; the old spelling will be removed",
        "x: note: --stop-after is now spelled --stop_after; the old spelling will be removed",
    ]


def test_config_overrides_and_absl_negations_are_left_or_respelled_as_absl_expects(capsys):
    argv = ["--config.train.steps=2", "--config.data.worker-count=1", "--no-progress", "--stop-after", "2"]
    assert cli.snake_case_flags(argv, ["progress", "config", "stop_after"]) == [
        "--config.train.steps=2",
        "--config.data.worker-count=1",
        "--noprogress",
        "--stop_after",
        "2",
    ]
    assert "--no-progress is now spelled --noprogress" in capsys.readouterr().err


def test_the_parser_takes_both_spellings(capsys):
    p = cli.ArgumentParser(prog="prog")
    p.add_argument("--to_torch", action="store_true")
    p.add_argument("--data_root", default="")
    assert p.parse_args(["--to_torch", "--data_root", "d"]).to_torch is True
    assert capsys.readouterr().err == ""
    args = p.parse_args(["--to-torch", "--data-root=e"])
    assert args.to_torch is True and args.data_root == "e"
    assert capsys.readouterr().err.count("note:") == 2
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--what-ever"])
    assert e.value.code == 2


def test_load_config_reads_the_variant_and_names_what_is_wrong(tmp_path):
    cfg = cli.load_config(f"{ROOT / 'configs' / 'allinone5.py'}:supervised,demo")
    assert cfg.train.stage == "supervised"
    (tmp_path / "bad.py").write_text("def get_config(:\n")
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(cli.ConfigFileError, match="does not exist"):
        cli.load_config(str(tmp_path / "missing.py"))
    with pytest.raises(cli.ConfigFileError, match="is a folder"):
        cli.load_config(str(tmp_path))
    with pytest.raises(cli.ConfigFileError, match=r"bad.py: not a valid Python config file \(.*line 1\)"):
        cli.load_config(str(tmp_path / "bad.py"))
    with pytest.raises(cli.ConfigFileError, match="has no get_config"):
        cli.load_config(str(tmp_path / "none.py"))
    with pytest.raises(ValueError, match="unknown config argument"):
        cli.load_config(f"{ROOT / 'configs' / 'allinone5.py'}:nonsense")


class _Refused(RuntimeError):
    pass


@pytest.mark.parametrize(
    "raised, code, line",
    [
        (_Refused("the workdir is taken"), 1, "error: the workdir is taken"),
        (KeyboardInterrupt(), 130, "error: interrupted (Ctrl-C); rerun it"),
        (cli.Terminated(), 143, "error: stopped by SIGTERM; rerun it"),
        (OSError(errno.ENOSPC, "No space left on device", "/x/y"), 1, "error: full: /x/y"),
    ],
)
def test_expected_errors_are_one_line_with_their_code(capsys, raised, code, line):
    def body():
        raise raised

    got = cli.main_errors(body, (_Refused,), os_error=lambda e: f"full: {e.filename}", resume="rerun it")
    assert got == code
    assert capsys.readouterr().err.splitlines() == [line]


def test_other_errors_keep_their_traceback():
    def body():
        raise FileNotFoundError(errno.ENOENT, "No such file", "/elsewhere")

    with pytest.raises(FileNotFoundError):
        cli.main_errors(body, (_Refused,), os_error=lambda e: None)
    with pytest.raises(ZeroDivisionError):
        cli.main_errors(lambda: 1 // 0, (_Refused,))
    assert cli.main_errors(lambda: 3) == 3


def test_sigterm_during_set_up_is_one_line_and_exit_143(tmp_path):
    """The process kills itself during its set-up: the handler turns it into a line, the code stays 143."""
    script = (
        "import os, signal, sys, time\n"
        "from irpo_jax import cli\n"
        "def body():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "    return 0\n"
        "sys.exit(cli.main_errors(body, resume='the same command resumes'))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env,
                         check=False)  # fmt: skip
    assert out.returncode == 143
    assert out.stderr.strip().splitlines() == ["error: stopped by SIGTERM; the same command resumes"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # nothing leaked into this process


def test_the_handler_is_restored(monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    with cli.sigterm_raises():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_setup_logging_formats(capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = []
    try:
        cli.setup_logging(logging.WARNING)
        logging.getLogger("irpo_jax.x").warning("hello")
        assert capsys.readouterr().err == "WARNING irpo_jax.x: hello\n"
        root.handlers[:] = []
        cli.setup_logging(logging.INFO, format="server[%(process)d] %(levelname)s %(message)s")
        logging.getLogger("irpo_jax.x").info("hello")
        assert capsys.readouterr().err == f"server[{os.getpid()}] INFO hello\n"
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_a_forked_child_dies_of_sigterm_as_before():
    """Workers forked during set-up inherit the handler; they die of the signal, with no traceback."""
    with cli.sigterm_raises():
        pid = os.fork()
        if pid == 0:  # the child
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                import time

                time.sleep(30)
            finally:
                os._exit(7)  # reached only if the signal was turned into an exception
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
