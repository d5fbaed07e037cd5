"""Hard-sample mining: score every training pair with a model, keep the worst fraction.

    python -m irpo_jax.mine --data_root DIR --checkpoint MODEL_DIR --out hard.jsonl
    python -m irpo_jax.mine --config configs/allinone5.py --checkpoint MODEL_DIR --out hard.jsonl

The library (what is measured, how, the manifest format, what is never replaced) is
:mod:`irpo_jax.evaluation.mining`.

Config coupling (kept minimal): ``--config path.py[:arg]`` imports the file, calls
``get_config(arg)`` (or ``get_config()``) and uses its ``data`` field, which is a data config as
:func:`irpo_jax.data.readers.default_data_config` makes; ``--data_root`` alone is the same as
``default_data_config(root)``, and overrides ``data.root`` when both are given.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from irpo_jax import cli
from irpo_jax.data import readers
from irpo_jax.data.readers import DataError
from irpo_jax.evaluation import mining

__all__ = ["main"]


def _config_data(spec: str) -> Any:
    """``--config``'s data config (``get_config(arg).data``); a config file that fails to load or
    run is a DataError naming it."""
    try:
        config = cli.load_config(spec)
    except cli.ConfigFileError as err:  # names the file and what --config takes
        line = str(err)
        raise DataError(line if line.startswith("--config") else f"--config {spec}: {line}") from err
    except Exception as err:  # noqa: BLE001 - whatever the user's config file raised
        raise DataError(
            f"--config {spec}: loading it failed: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
        ) from err
    data = config.get("data") if hasattr(config, "get") else getattr(config, "data", None)
    if data is None:
        raise DataError(
            f"--config {spec}: get_config() has no 'data' field (a data config as "
            "irpo_jax.data.readers.default_data_config() makes)"
        )
    return data


def _run(args: argparse.Namespace) -> int:
    """The mining the flags ask for: the manifest written, its table printed."""
    # Before the config file runs: the flags alone (crop_base comes from the data config,
    # so mine() checks --crop against it again).
    mining.check_arguments(
        args.out,
        fraction=args.fraction,
        selection=args.selection,
        rank_by=args.rank_by,
        resume=not args.no_resume,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    data = _config_data(args.config) if args.config else readers.default_data_config()
    data = readers.resolve_data_config(data)
    if args.data_root:
        data = dataclasses.replace(data, root=args.data_root)
    result = mining.mine(
        data,
        args.checkpoint,
        args.out,
        fraction=args.fraction,
        selection=args.selection,
        rank_by=args.rank_by,
        crop=args.crop,
        batch_size=args.batch_size,
        seed=args.seed,
        resume=not args.no_resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    if "table" in result:
        print(result["table"])
        print(
            f"wrote {args.out} ({result['selection']['selected']} of {result['records']} pairs "
            f"selected) and {args.out.with_suffix('.summary.md')}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = cli.ArgumentParser(
        prog="python -m irpo_jax.mine",
        description="Score every training pair with a model and select the hardest fraction.",
    )
    parser.add_argument("--checkpoint", required=True, help="model directory (converted or trained)")
    parser.add_argument("--out", required=True, type=Path, help="manifest to write (JSON lines)")
    parser.add_argument("--data_root", help="AdaIR data root (e.g. a demo set); overrides data.root")
    parser.add_argument("--config", help="path.py[:arg] whose get_config() has a 'data' field")
    parser.add_argument("--fraction", type=float, default=0.3, help="share selected (default 0.3)")
    parser.add_argument("--selection", choices=mining.SELECTIONS, default="per_task")
    parser.add_argument("--rank_by", choices=mining.RANK_BY, default="psnr")
    parser.add_argument(
        "--crop", type=int, default=0, help="0: whole images (cropped to multiples of 16); N: centre N x N crops"
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="denoise noise and random selection")
    parser.add_argument("--no_resume", action="store_true", help="ignore OUT.partial.jsonl")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out (an earlier manifest or any other file)"
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.data_root and not args.config:
        parser.error("give --data_root DIR (an AdaIR data root) or --config path.py")
    cli.setup_logging(logging.WARNING)
    logging.getLogger("irpo_jax").setLevel(logging.INFO)  # ours; orbax/absl INFO is noise here
    from irpo_jax.checkpointing import CheckpointError

    def cannot_write(err: OSError) -> str:  # what the checks could not foresee (the disk filled up, ...)
        return f"{err.filename if err.filename is not None else args.out}: {err.strerror or err}"

    return cli.main_errors(
        lambda: _run(args),
        (DataError, CheckpointError, ValueError),
        code=1,
        os_error=cannot_write,
        resume=f"the same command resumes from {args.out}.partial.jsonl (--no_resume starts over)",
    )


if __name__ == "__main__":
    sys.exit(main())
