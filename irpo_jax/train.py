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

import os
import pathlib
import signal
import sys
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from irpo_jax import cli, destinations
from irpo_jax.training.errors import TrainingError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/allinone5.py[:variant].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_STOP_AFTER = flags.DEFINE_integer(
    "stop_after", None, "Checkpoint and leave after this many steps (resume later).", lower_bound=1
)


def main(argv: list[str]) -> int:
    del argv
    cli.setup_logging(timestamps=True)
    cfg = _CONFIG.value
    try:
        cfg is None or cfg.name  # noqa: B018 - a file that failed to load raises on first use
    except OSError as e:
        print(f"error: {cli.config_error_line(e)}", file=sys.stderr)
        return 2
    if cfg is None:
        print("error: --config is required, e.g. --config configs/allinone5.py", file=sys.stderr)
        return 2
    workdir = pathlib.Path(_WORKDIR.value or f"runs/{cfg.name}")

    def workdir_error(e: OSError) -> str | None:  # the workdir refused a write the check could not foresee
        return f"{destinations.os_error_line(e)} (in --workdir {workdir})" if _within(e.filename, workdir) else None

    return cli.main_errors(
        lambda: _train(cfg, workdir),  # imports the trainer (jax: seconds) where SIGTERM is one line too
        (TrainingError, ValueError),  # ValueError: data/config errors raised with a message for people
        os_error=workdir_error,
        # SIGINT/SIGTERM outside the loop's own handling: mining the hard set, loading data
        resume="the same command resumes from the last checkpoint (a hard set being mined continues from its "
        "partial file)",
    )


def _train(cfg: Any, workdir: pathlib.Path) -> int:
    """Checks the workdir, runs the trainer, prints where its outputs are; the exit status."""
    from irpo_jax import training

    destinations.check_directory(workdir, "--workdir")  # before the data and the model are loaded (minutes)
    print(f"workdir: {workdir}  (stage {cfg.train.stage}, model {cfg.model.variant}, data {cfg.data.root})")
    summary = training.run(cfg, workdir, progress=_PROGRESS.value, stop_after=_STOP_AFTER.value)
    print(
        f"done: {summary['steps']}/{summary['total_steps']} steps ({summary['stop']}); "
        f"model: {workdir / 'model'}; logs: {workdir / 'metrics.jsonl'}, TensorBoard: {workdir / 'tensorboard'}"
    )
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
    config file, variant or config override (``--config.optim.lrr=1``); kebab-case flags are
    respelled with a note (:mod:`irpo_jax.cli`)."""
    try:
        return flags.FLAGS(argv[:1] + cli.snake_case_flags(argv[1:], list(flags.FLAGS), "python -m irpo_jax.train"))
    except (AttributeError, KeyError) as e:  # an override of a field the config does not have
        detail: Any = e
        while isinstance(detail, BaseException) and detail.args:  # ml_collections nests a KeyError
            detail = detail.args[0]
        detail = str(detail)
        message = "no such config field " + " ".join(line.strip() for line in detail.splitlines())
    except Exception as e:  # noqa: BLE001 - flags.Error, or whatever loading the config file raised
        message = cli.config_error_line(e)
    print(f"error: {message}\n(python -m irpo_jax.train --helpfull lists the flags)", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
