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
import importlib.util
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from irpo_jax.data import readers
from irpo_jax.data.readers import DataError
from irpo_jax.evaluation import mining

__all__ = ["main"]


def _load_config(spec: str) -> Any:
    """``path.py[:arg]`` -> ``get_config(arg).data`` (see the module docstring)."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise DataError(f"--config {path} does not exist")
    mod_spec = importlib.util.spec_from_file_location("_irpo_mine_config", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise DataError(f"--config {path} has no get_config() function")
    config = module.get_config(arg) if arg else module.get_config()
    data = config.get("data") if hasattr(config, "get") else getattr(config, "data", None)
    if data is None:
        raise DataError(f"--config {spec}: get_config() has no 'data' field (a data config as "
                        "irpo_jax.data.readers.default_data_config() makes)")
    return data


def _config_data(spec: str) -> Any:
    """``--config``'s data config; a config file that fails to run is a DataError naming it."""
    try:
        return _load_config(spec)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the user's config file raised
        where = f" (line {err.lineno})" if isinstance(err, SyntaxError) and err.lineno else ""
        raise DataError(f"--config {spec}: loading it failed{where}: {type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")) from err


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m irpo_jax.mine",
        description="Score every training pair with a model and select the hardest fraction.",
    )
    parser.add_argument("--checkpoint", required=True,
                        help="model directory (converted or trained)")
    parser.add_argument("--out", required=True, type=Path, help="manifest to write (JSON lines)")
    parser.add_argument("--data_root",
                        help="AdaIR data root (e.g. a demo set); overrides data.root")
    parser.add_argument("--config", help="path.py[:arg] whose get_config() has a 'data' field")
    parser.add_argument("--fraction", type=float, default=0.3, help="share selected (default 0.3)")
    parser.add_argument("--selection", choices=mining.SELECTIONS, default="per_task")
    parser.add_argument("--rank_by", choices=mining.RANK_BY, default="psnr")
    parser.add_argument("--crop", type=int, default=0,
                        help="0: whole images (cropped to multiples of 16); N: centre N x N crops")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="denoise noise and random selection")
    parser.add_argument("--no_resume", action="store_true", help="ignore OUT.partial.jsonl")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out (an earlier manifest or any other file)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.data_root and not args.config:
        parser.error("give --data_root DIR (an AdaIR data root) or --config path.py")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("irpo_jax").setLevel(logging.INFO)  # ours; orbax/absl INFO is noise here
    from irpo_jax.checkpointing import CheckpointError

    try:
        # Before the config file runs: the flags alone (crop_base comes from the data config,
        # so mine() checks --crop against it again).
        mining.check_arguments(args.out, fraction=args.fraction, selection=args.selection,
                               rank_by=args.rank_by, resume=not args.no_resume,
                               overwrite=args.overwrite, batch_size=args.batch_size, seed=args.seed)
        data = _config_data(args.config) if args.config else readers.default_data_config()
        data = readers.resolve_config(data)
        if args.data_root:
            data["root"] = args.data_root
        result = mining.mine(data, args.checkpoint, args.out, fraction=args.fraction,
                             selection=args.selection, rank_by=args.rank_by, crop=args.crop,
                             batch_size=args.batch_size, seed=args.seed, resume=not args.no_resume,
                             overwrite=args.overwrite, progress=not args.no_progress)
    except (DataError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # what the checks could not foresee (the disk filled up, ...)
        where = err.filename if err.filename is not None else args.out
        print(f"error: {where}: {err.strerror or err}", file=sys.stderr)
        return 1
    if "table" in result:
        print(result["table"])
        print(f"wrote {args.out} ({result['selection']['selected']} of {result['records']} pairs "
              f"selected) and {args.out.with_suffix('.summary.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
