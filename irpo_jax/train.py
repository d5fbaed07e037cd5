"""Train AdaIR (supervised) or post-train it with IRPO (GRPO).

  python -m irpo_jax.train --config configs/allinone5.py
  python -m irpo_jax.train --config configs/allinone5.py:demo --workdir runs/demo_grpo \
      --config.model.init_from=runs/demo_supervised/model
  python -m irpo_jax.train --config configs/allinone5.py:supervised,demo

``--workdir`` defaults to ``runs/<config name>`` and is printed at start; a workdir that holds
checkpoints is resumed. Any config field can be overridden: ``--config.optim.lr=1e-5``.
"""

from __future__ import annotations

import logging
import pathlib
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/allinone5.py[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_STOP_AFTER = flags.DEFINE_integer("stop_after", None, "Checkpoint and leave after this many steps (resume later).")


def main(argv: list[str]) -> int:
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
    from irpo_jax import trainer

    cfg = _CONFIG.value
    if cfg is None:
        print("error: --config is required, e.g. --config configs/allinone5.py", file=sys.stderr)
        return 2
    workdir = pathlib.Path(_WORKDIR.value or f"runs/{cfg.name}")
    print(f"workdir: {workdir}  (stage {cfg.train.stage}, model {cfg.model.variant}, data {cfg.data.root})")
    try:
        summary = trainer.run(cfg, workdir, progress=_PROGRESS.value, stop_after=_STOP_AFTER.value)
    except trainer.TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # data/config errors raised with a message for people
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done: {summary['steps']}/{summary['total_steps']} steps ({summary['stop']}); "
          f"model: {workdir / 'model'}; logs: {workdir / 'metrics.jsonl'}, TensorBoard: {workdir / 'tensorboard'}")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
