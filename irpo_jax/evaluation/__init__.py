"""Evaluation: restoring and scoring images with a model, under the published protocol.

The library behind ``python -m irpo_jax.evaluate`` and ``python -m irpo_jax.mine`` (the CLIs),
the trainer's evaluations and hard-set mining, and ``python -m irpo_jax.restore``. One module
per concern:

* :mod:`~irpo_jax.evaluation.runner`: the one sharded inference engine -- the model placed on
  the local devices, compiled once per input shape, images grouped by shape into padded batches;
* :mod:`~irpo_jax.evaluation.protocol`: the published evaluation protocol (:func:`evaluate`)
  and the test rows it accepts;
* :mod:`~irpo_jax.evaluation.tables`: the paper's table layouts and the Markdown tables;
* :mod:`~irpo_jax.evaluation.results`: the results files (where, what identifies them, writing);
* :mod:`~irpo_jax.evaluation.mining`: hard-sample mining (IRPO's hard 30 %) and its manifest;
* :mod:`~irpo_jax.evaluation.tiling`: window-by-window inference for images too large whole;
* :mod:`~irpo_jax.evaluation.published`: the papers' published numbers (``--reference``).

The public names of the first four are re-exported here.
"""

from irpo_jax.evaluation.protocol import (
    EVAL_FORMAT,
    available_rows,
    evaluate,
    image_path,
    resolve_rows,
)
from irpo_jax.evaluation.results import (
    CSV_COLUMNS,
    Written,
    check_existing_results,
    check_writable,
    describe_checkpoint,
    evaluate_and_write,
    output_dir,
    result_identity,
    scalars,
    write_results,
)
from irpo_jax.evaluation.runner import EvalError, Runner, geometric_self_ensemble, make_runner
from irpo_jax.evaluation.tables import FIVE_TASK_ROWS, OOD_ROWS, THREE_TASK_ROWS, format_table

__all__ = [
    "CSV_COLUMNS",
    "EVAL_FORMAT",
    "FIVE_TASK_ROWS",
    "OOD_ROWS",
    "THREE_TASK_ROWS",
    "EvalError",
    "Runner",
    "Written",
    "available_rows",
    "check_existing_results",
    "check_writable",
    "describe_checkpoint",
    "evaluate",
    "evaluate_and_write",
    "format_table",
    "geometric_self_ensemble",
    "image_path",
    "make_runner",
    "output_dir",
    "resolve_rows",
    "result_identity",
    "scalars",
    "write_results",
]
