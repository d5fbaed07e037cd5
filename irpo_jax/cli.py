"""The command lines' house rules, written once: flag spelling, config files, logging, errors as
one line with an exit code, and what SIGINT/SIGTERM do before a run's own handling starts.

**Flags are snake_case** (``--data_root``, ``--stop_after``, ``--to_torch``): the spelling of the
main CLIs' absl flags and of their config overrides (``--config.train.steps=10``), which absl
cannot spell otherwise. The kebab-case spelling (``--to-torch``) is still accepted, with a note on
stderr naming the new one: :class:`ArgumentParser` for argparse CLIs, :func:`snake_case_flags`
for the argv of an absl one.

**Exit codes**: 0 done; 1 an error the message explains (the CLIs that say 2 for every error keep
it); 2 bad flags (argparse's and absl's own); 128 + the signal's number when SIGINT (130) or
SIGTERM (143) stopped the command. :func:`main_errors` turns the exceptions a CLI lists into one
line ``error: ...`` and that code; anything else keeps its traceback (a bug, not a user's mistake).

**Signals**: under :func:`main_errors`, SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``,
so code that tidies up after Ctrl-C tidies up after it too) and ends with a one-line message and
143, as Ctrl-C does with 130; the training loop installs its own handlers while it runs (a
checkpoint, then the same codes).

Configs: :func:`load_config` reads ``path/to/config.py[:arg]`` (``get_config(arg)``), as
ml_collections' ``--config`` flag does for ``train`` (which keeps that flag for its
``--config.field=value`` overrides; :func:`config_error_line` words its errors the same way).

Imports: the standard library only (ml_collections and absl when used), so that a process without
jax or ml_collections -- the reward server, in a torch-only environment -- can use the rules too.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pathlib
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ml_collections

# -------------------------------------------------------------------------------- flag spelling


def _deprecation(old: str, new: str, prog: str | None) -> None:
    where = f"{prog}: " if prog else ""
    print(f"{where}note: {old} is now spelled {new}; the old spelling will be removed", file=sys.stderr)


def snake_case_flags(argv: Sequence[str], known: Iterable[str], prog: str | None = None) -> list[str]:
    """``argv`` with each kebab-case long flag whose snake_case name is in ``known`` respelled
    (``--to-torch`` -> ``--to_torch``, ``--stop-after=3`` -> ``--stop_after=3``), a note on
    stderr for each; everything after ``--``, values and unknown flags are left as they are.

    Args:
      argv: the arguments (without the program name).
      known: the flags' names without dashes (``to_torch``).
      prog: the program named in the note.
    """
    known = set(known)
    out: list[str] = []
    rest = iter(argv)
    for arg in rest:
        if arg == "--":
            out += [arg, *rest]
            break
        name, eq, value = arg.partition("=")
        bare = name[2:]
        if name.startswith("--") and "-" in bare and "." not in bare:
            snake = bare.replace("-", "_")
            if snake not in known and snake.startswith("no_") and snake[3:] in known:
                snake = "no" + snake[3:]  # absl's negation of a boolean: --no-progress -> --noprogress
            if bare not in known and (snake in known or snake.removeprefix("no") in known):
                _deprecation(name, f"--{snake}", prog)
                arg = f"--{snake}{eq}{value}"
        out.append(arg)
    return out


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that also takes the kebab-case spelling of its snake_case long
    flags, with a deprecation note (see the module docstring)."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None):
        args = sys.argv[1:] if args is None else list(args)
        known = [s[2:] for action in self._actions for s in action.option_strings if s.startswith("--")]
        return super().parse_known_args(snake_case_flags(args, known, self.prog), namespace)


# -------------------------------------------------------------------------------- config files


class ConfigFileError(ValueError):
    """A config file that cannot be loaded; the message names the file and what it should be."""


_WHAT_CONFIG_TAKES = "--config takes a .py file with get_config(), e.g. configs/allinone5.py"


def config_error_line(err: BaseException) -> str:
    """One line for an error raised while loading a config file (its own traceback, as text in
    ml_collections' wrapper, is cut to its last line)."""
    if isinstance(err, SyntaxError):  # the config file is not Python (a JSON file, a typo)
        return (
            f"--config {err.filename}: not a valid Python config file ({err.msg}, line {err.lineno}); "
            f"{_WHAT_CONFIG_TAKES}"
        )
    if isinstance(err, OSError):
        reason = [line.strip() for line in str(err).splitlines() if line.strip()][-1]
        reason = reason.rpartition("failure to load: ")[2]  # ml_collections' wrapper says nothing more
        return f"--config: {reason}; {_WHAT_CONFIG_TAKES}"
    return one_line(str(err)) or type(err).__name__


def one_line(message: str) -> str:
    """A message that carries a traceback as text: what precedes it and the exception's last line."""
    head, marker, trace = message.partition("Traceback (most recent call last):")
    lines = [line.strip() for line in (trace if marker else message).splitlines() if line.strip()]
    if marker:
        lines = [head.strip(), lines[-1]] if lines else [head.strip()]
    return " ".join(line for line in lines if line)


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``path/to/config.py[:arg]``: the file's ``get_config(arg)``, or ``get_config()`` when
    there is no ``arg`` (as ml_collections' ``--config`` flag calls it).

    Raises:
      ConfigFileError: the file is missing, a folder, not Python, or has no ``get_config``.
      ValueError: what ``get_config`` raised for an unknown ``arg``.
    """
    import importlib.util

    path, _, arg = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise ConfigFileError(f"config file {file} {what} (expected e.g. configs/allinone5.py)")
    module_spec = importlib.util.spec_from_file_location(f"_irpo_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigFileError(config_error_line(e)) from e
    if not hasattr(module, "get_config"):
        raise ConfigFileError(f"config file {file} has no get_config(arg=None) function")
    return module.get_config(arg) if arg else module.get_config()


# -------------------------------------------------------------------------------- logging


def setup_logging(level: int = logging.INFO, *, timestamps: bool = False, format: str | None = None) -> None:
    """The CLIs' log format on stderr; absl's own logging (orbax logs every file it writes at
    INFO) kept to warnings.

    Args:
      level: the root logger's level.
      timestamps: start each line with the time.
      format: a ``logging`` format instead of the house one (a process whose lines are mixed into
        another's log names itself: the reward server's ``reward_server[pid]``).
    """
    when = "%(asctime)s " if timestamps else ""
    logging.basicConfig(level=level, format=format or f"{when}%(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)


# -------------------------------------------------------------------------------- errors and signals


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is (like Ctrl-C's KeyboardInterrupt)."""

    signum = signal.SIGTERM


_INSTALLED_BY: list[int] = []  # the process that installed the handler (a forked child inherits it)


def _raise_terminated(signum, frame):
    if os.getpid() not in _INSTALLED_BY:  # a forked worker: die of the signal, as it would have
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` in the main thread (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    _INSTALLED_BY.append(os.getpid())
    try:
        yield
    finally:
        _INSTALLED_BY.pop()
        signal.signal(signal.SIGTERM, previous)


def interrupted_code(err: KeyboardInterrupt) -> int:
    """128 + the signal's number: 143 for :class:`Terminated`, 130 for Ctrl-C."""
    return 128 + getattr(err, "signum", signal.SIGINT).value


def interrupted_line(err: KeyboardInterrupt, resume: str = "") -> str:
    """``error: interrupted (Ctrl-C)[; resume]`` or ``error: stopped by SIGTERM[; resume]``."""
    what = "stopped by SIGTERM" if isinstance(err, Terminated) else "interrupted (Ctrl-C)"
    return f"error: {what}" + (f"; {resume}" if resume else "")


def main_errors(
    body: Callable[[], int],
    expected: tuple[type[BaseException], ...] = (),
    *,
    code: int = 1,
    os_error: Callable[[OSError], str | None] | None = None,
    resume: str = "",
    prefix: str = "error: ",
) -> int:
    """Runs a CLI's ``body()``; the errors people can act on become one line and an exit code.

    Args:
      body: the command's work; returns its exit status.
      expected: exceptions whose message is the whole story (printed as ``prefix + message``).
      code: the exit status for those and for a worded OSError.
      os_error: the line for an OSError, or None to let it keep its traceback (not this
        command's fault: a bug or the system's); None means every OSError is raised.
      resume: after an interruption, what to do next (``the same command resumes ...``).
      prefix: the start of the line (``error: ``).

    Returns:
      ``body()``'s status, ``code``, or 128 + the signal's number for SIGINT/SIGTERM.
    """
    with sigterm_raises():
        try:
            return body()
        except expected as e:
            print(f"{prefix}{e}", file=sys.stderr)
            return code
        except KeyboardInterrupt as e:
            print(interrupted_line(e, resume), file=sys.stderr)
            return interrupted_code(e)
        except OSError as e:
            line = os_error(e) if os_error is not None else None
            if line is None:
                raise
            print(f"{prefix}{line}", file=sys.stderr)
            return code
