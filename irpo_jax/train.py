"""Train AdaIR (supervised) or post-train it with IRPO (GRPO).

  python -m irpo_jax.train --config configs/allinone5.py
  python -m irpo_jax.train --config configs/allinone5.py:demo --workdir runs/demo_grpo \
      --config.model.init_from=runs/demo_supervised/model
  python -m irpo_jax.train --config configs/allinone5.py:supervised,demo

``--workdir`` defaults to ``runs/<config name>`` and is printed at start; a workdir that holds
checkpoints is resumed. Any config field can be overridden: ``--config.optim.lr=1e-5``.

Exit status: 0 when the run finished (or was already finished, or left after ``--stop_after``),
1 for an error, 2 for bad flags, 128 + the signal's number when SIGINT (130) or SIGTERM (143)
stopped it early (checkpointed; the same command resumes it), so that schedulers and ``&&``
chains see the run as unfinished.
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import sys
from typing import Any

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from irpo_jax import destinations

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/allinone5.py[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_STOP_AFTER = flags.DEFINE_integer("stop_after", None, "Checkpoint and leave after this many steps (resume later).",
                                   lower_bound=1)


def main(argv: list[str]) -> int:
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
    from irpo_jax import training

    cfg = _CONFIG.value
    try:
        cfg is None or cfg.name  # noqa: B018 - a file that failed to load raises on first use
    except OSError as e:
        reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
        reason = reason.rpartition("failure to load: ")[2]  # ml_collections' wrapper says nothing more
        print(f"error: --config: {reason}; --config takes a .py file with get_config(), "
              "e.g. configs/allinone5.py", file=sys.stderr)
        return 2
    if cfg is None:
        print("error: --config is required, e.g. --config configs/allinone5.py", file=sys.stderr)
        return 2
    workdir = pathlib.Path(_WORKDIR.value or f"runs/{cfg.name}")
    try:  # before the data and the model are loaded, which can take minutes
        destinations.check_directory(workdir, "--workdir")
    except destinations.DestinationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"workdir: {workdir}  (stage {cfg.train.stage}, model {cfg.model.variant}, data {cfg.data.root})")
    try:
        summary = training.run(cfg, workdir, progress=_PROGRESS.value, stop_after=_STOP_AFTER.value)
    except training.TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # data/config errors raised with a message for people
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # outside the loop's own handling: mining the hard set, loading data
        print("error: interrupted (Ctrl-C); the same command resumes from the last checkpoint (a hard set "
              "being mined continues from its partial file)", file=sys.stderr)  # fmt: skip
        return 128 + signal.SIGINT.value
    except OSError as e:  # the workdir refused a write the check above could not foresee (disk full)
        if not _within(e.filename, workdir):
            raise
        print(f"error: {destinations.os_error_line(e)} (in --workdir {workdir})", file=sys.stderr)
        return 1
    print(f"done: {summary['steps']}/{summary['total_steps']} steps ({summary['stop']}); "
          f"model: {workdir / 'model'}; logs: {workdir / 'metrics.jsonl'}, TensorBoard: {workdir / 'tensorboard'}")
    for sig in (signal.SIGINT, signal.SIGTERM):
        if summary["stop"].startswith(f"stopped by {sig.name}"):
            return 128 + sig.value
    return 0


def _within(filename: Any, workdir: pathlib.Path) -> bool:
    """Whether an OSError's ``filename`` is the workdir or lies in it."""
    if not isinstance(filename, (str, bytes, os.PathLike)):
        return False
    path, top = pathlib.Path(os.fsdecode(filename)).absolute(), workdir.absolute()
    return path == top or top in path.parents


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a one-line error instead of a traceback for a mistyped flag,
    config file, variant or config override (``--config.optim.lrr=1``)."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:  # an override of a field the config does not have
        detail: Any = e
        while isinstance(detail, BaseException) and detail.args:  # ml_collections nests a KeyError
            detail = detail.args[0]
        detail = str(detail)
        message = "no such config field " + " ".join(line.strip() for line in detail.splitlines())
    except SyntaxError as e:  # the config file is not Python (a JSON file, a typo)
        message = (f"--config {e.filename}: not a valid Python config file ({e.msg}, line {e.lineno}); "
                   "--config takes a .py file with get_config(), e.g. configs/allinone5.py")
    except Exception as e:  # noqa: BLE001 - flags.Error, or whatever loading the config file raised
        message = _one_line(str(e)) or type(e).__name__
    print(f"error: {message}\n(python -m irpo_jax.train --helpfull lists the flags)", file=sys.stderr)
    sys.exit(2)


def _one_line(message: str) -> str:
    """A config file's error arrives with its traceback as text: keep what precedes it and the
    exception's last line."""
    head, marker, trace = message.partition("Traceback (most recent call last):")
    lines = [line.strip() for line in (trace if marker else message).splitlines() if line.strip()]
    if marker:
        lines = [head.strip(), lines[-1]] if lines else [head.strip()]
    return " ".join(line for line in lines if line)


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
