"""Benchmark evaluation: PSNR/SSIM tables under the published all-in-one protocol.

    python -m irpo_jax.evaluate --checkpoint checkpoints/adair5d --config configs/allinone5.py \
        [--sets sots,rain100l,bsd68,gopro,lol | --sets ood5] [--data_root data] [--out .] \
        [--save_images] [--reference adair|irpo] [--allow_partial] [--test_dir SET=DIR] \
        [--self_ensemble] [--oracle_k 8] [--tile 512 --tile_overlap 64] [--max_images N] [--overwrite]

writes ``<out>/eval/<step or name>/{results.json, per_image.csv, table.md}`` (plus
``images/<row>/*.png`` with ``--save_images``) and prints the table. A folder that already holds
results is replaced only when they are of the same checkpoint (``model.params_sha256``: the
parameter values and model config) under the same settings (``settings``: data, rows, options);
otherwise the CLI refuses unless ``--overwrite`` is given. A relative ``--config`` missing from
the current directory is looked up in the project root.

The library is :mod:`irpo_jax.evaluation`: the protocol and its options
(:mod:`~irpo_jax.evaluation.protocol`), the paper's table layouts (:mod:`~irpo_jax.evaluation.tables`),
the results files (:mod:`~irpo_jax.evaluation.results`) and the sharded inference engine
(:mod:`~irpo_jax.evaluation.runner`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
import shutil
import sys
from collections.abc import Sequence

from irpo_jax import cli, evaluation
from irpo_jax.data import readers
from irpo_jax.data.readers import DataError
from irpo_jax.evaluation import published

__all__ = ["main"]

# The directory holding irpo_jax/ (and configs/, in a source checkout).
PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _config_spec(spec: str) -> str:
    """``spec`` (``path[:arg]``) with a relative path that is missing from the current directory
    looked up in :data:`PROJECT_ROOT` (so the default works from any directory)."""
    path, sep, arg = spec.partition(":")
    file = pathlib.Path(path)
    if path and not file.is_absolute() and not file.is_file() and (PROJECT_ROOT / file).is_file():
        return str(PROJECT_ROOT / file) + sep + arg
    return spec


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m irpo_jax.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="model directory (convert_adair output or <workdir>/model)")
    p.add_argument(
        "--config",
        default="configs/allinone5.py",
        help="config file[:variant]; its .data is used (a relative path missing here is looked up in the project root)",
    )
    p.add_argument("--sets", default="", help="comma-separated rows (default: the config's data.eval_sets)")
    p.add_argument("--data_root", default="", help="override data.root")
    p.add_argument(
        "--out",
        default="",
        help="results go to OUT/eval/<step or name>/ (default: the workdir for <workdir>/model, else .)",
    )
    p.add_argument("--save_images", action="store_true", help="also save restored PNGs")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace results of another checkpoint or other settings in the output folder",
    )
    p.add_argument("--self_ensemble", action="store_true", help="x8 geometric self-ensemble")
    p.add_argument("--oracle_k", type=int, default=0, help="best-of-K sampled oracle (policy checkpoints)")
    p.add_argument("--seed", type=int, default=0, help="oracle sampling seed")
    p.add_argument("--tile", type=int, default=0, help="tile images with a side above SIZE (0 = never)")
    p.add_argument("--tile_overlap", type=int, default=32, help="tile overlap in pixels (multiple of 8)")
    p.add_argument("--max_images", type=int, default=0, help="first N images per row (quick check)")
    p.add_argument(
        "--precision",
        default="highest",
        choices=("highest", "high", "default"),
        help="matmul precision ('default' allows TF32/bf16 passes on GPUs: faster, not exact)",
    )
    p.add_argument(
        "--allow_partial",
        action="store_true",
        help="score a set some of whose inputs have no target or cannot be read, leaving them "
        "out; the row is marked partial (default: refuse the set, naming the files)",
    )
    p.add_argument(
        "--reference",
        choices=tuple(published.METHODS),
        default=None,
        help="print the paper's published row (AdaIR or IRPO) under ours, with the difference, "
        "when the config's setting and the model (the base AdaIR) match a published table",
    )
    p.add_argument(
        "--test_dir",
        action="append",
        default=[],
        metavar="SET=DIR",
        help="read test set SET from DIR (overrides data.test_dirs.SET; repeatable), e.g. --test_dir sidd=/data/SIDD",
    )
    return p


def _test_dirs(specs: Sequence[str]) -> dict[str, str]:
    """``--test_dir SET=DIR`` flags as ``{SET: DIR}``."""
    out = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise evaluation.EvalError(f"--test_dir {spec!r}: expected SET=DIR, e.g. --test_dir sidd=/data/SIDD")
        if name.strip() not in readers.TEST_SETS:
            raise evaluation.EvalError(
                f"--test_dir {spec!r}: unknown set {name.strip()!r}; valid: "
                f"{', '.join(readers.TEST_SETS)} (own folders: data.eval_paired)"
            )
        out[name.strip()] = folder.strip()
    return out


TILE_WARNING = (
    "warning: --tile {tile}: images with a side above {tile} px are restored in overlapping "
    "windows; AdaIR has global operations (the FFT band split, channel attention over the "
    "whole image), so tiled outputs differ from whole-image inference and the numbers are "
    "not the published protocol"
)


def _cannot_write(err: OSError) -> str:
    """The line for an OSError while evaluating (a disk that fills, a folder made read-only, ...)."""
    where = f" {err.filename}" if err.filename else ""
    return (
        f"cannot write{where}: {err.strerror or err}. Results files are written whole or not at all; "
        "choose another --out or free the space."
    )


def _load_data_config(spec: str):
    """``--config``'s config; any error in the file is an EvalError naming it."""
    try:
        return cli.load_config(_config_spec(spec))
    except cli.ConfigFileError as err:  # names the file and what --config takes
        line = str(err)
        raise evaluation.EvalError(line if line.startswith("--config") else f"--config {spec}: {line}") from err
    except Exception as err:  # a config file is Python: any error in it is the file's
        raise evaluation.EvalError(
            f"--config {spec}: {err}"
            if isinstance(err, ValueError)
            else f"--config {spec}: {type(err).__name__}: {err}"
        ) from err


def _run(args: argparse.Namespace) -> int:
    """The evaluation the flags ask for: results written, the table printed."""
    from irpo_jax import checkpointing

    if args.max_images < 0:
        raise evaluation.EvalError(f"--max_images {args.max_images}: give a positive count, or 0 for every image")
    if args.tile:
        print(TILE_WARNING.format(tile=args.tile), file=sys.stderr)
    ckpt = pathlib.Path(args.checkpoint)
    checkpointing.read_metadata(ckpt)  # a clear error before anything slow
    name, step = evaluation.describe_checkpoint(ckpt.absolute())
    config = _load_data_config(args.config)
    data_cfg = config.data
    if args.data_root:
        data_cfg.root = args.data_root
    test_dirs = _test_dirs(args.test_dir)
    if test_dirs:
        data_cfg.test_dirs = {**dict(data_cfg.get("test_dirs") or {}), **test_dirs}
    sets = [s for s in args.sets.split(",") if s.strip()] or None
    resolved = readers.resolve_data_config(data_cfg)
    readers.eval_sets(
        resolved,
        evaluation.resolve_rows(resolved, sets or list(resolved.eval_sets))[0],
        allow_partial=args.allow_partial,
    )
    if args.out:
        out = pathlib.Path(args.out)
    else:
        out = ckpt.absolute().parent if ckpt.name == "model" and step is not None else pathlib.Path(".")
    out_dir = evaluation.output_dir(
        out,
        name,
        step,
        self_ensemble=args.self_ensemble,
        oracle_k=args.oracle_k,
        max_images=args.max_images,
        tile=args.tile,
    )
    evaluation.check_writable(out_dir)
    model = checkpointing.load_model(ckpt)
    params_sha256, settings = evaluation.result_identity(
        model.module,
        data_cfg,
        sets,
        max_images=args.max_images,
        self_ensemble=args.self_ensemble,
        oracle_k=args.oracle_k,
        seed=args.seed,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        precision=args.precision,
        allow_partial=args.allow_partial,
    )
    if evaluation.check_existing_results(out_dir, params_sha256, settings, overwrite=args.overwrite):
        shutil.rmtree(out_dir / "images", ignore_errors=True)  # the other model's restorations
    results = evaluation.evaluate(
        model,
        data_cfg,
        sets,
        max_images=args.max_images,
        self_ensemble=args.self_ensemble,
        oracle_k=args.oracle_k,
        seed=args.seed,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        image_dir=out_dir / "images" if args.save_images else None,
        name=name,
        step=step,
        precision=args.precision,
        allow_partial=args.allow_partial,
    )
    results["model"].update(
        checkpoint=str(ckpt.absolute()), params_sha256=params_sha256, config=dataclasses.asdict(model.config)
    )
    results["settings"] = settings
    if args.reference:
        results["reference"] = published.reference(
            args.reference,
            published.setting_of(str(config.get("name", ""))),
            results["rows"],
            results["model"]["config"],
        )
    paths = evaluation.write_results(results, out_dir)
    print(evaluation.format_table(results))
    print(f"wrote {paths['json']}, {paths['csv'].name}, {paths['table'].name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for every error)."""
    args = _parser().parse_args(argv)
    cli.setup_logging(logging.INFO)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # its backend notes are noise here
    from irpo_jax.checkpointing import CheckpointError

    return cli.main_errors(
        lambda: _run(args),
        (evaluation.EvalError, DataError, CheckpointError),
        code=2,
        os_error=_cannot_write,
        resume="results.json of this evaluation was not written (saved images may be incomplete)",
    )


if __name__ == "__main__":
    sys.exit(main())
