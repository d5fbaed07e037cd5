"""Convert official PyTorch AdaIR checkpoints to irpo-jax model directories, and back.

  python -m torch_bridge.convert_adair adair5d.ckpt converted/adair5d --verify
  python -m torch_bridge.convert_adair --to-torch converted/adair5d adair5d_roundtrip.pth

PyTorch -> Flax reads a Lightning ``.ckpt``, a plain ``.pth`` state dict or ``.safetensors``
(always ``weights_only=True``), infers the model config from the tensor shapes unless
``--config`` is given, maps the weights through :mod:`irpo_jax.models.convert`'s strict table and
writes ``DST/`` (``model.json``, orbax ``params/``) plus ``DST/manifest.json`` recording the source
file's sha256, the model config, the converter version and the verification result.
``--verify`` runs the converted Flax model and the PyTorch reference
(:mod:`torch_bridge.reference_adair`) on a fixed input at full float32 precision and fails
above the tolerance.

Flax -> PyTorch writes the official key names; the file loads into the official ``AdaIR`` with
``strict=True``, and PyTorch -> Flax -> PyTorch is bit-exact.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import tempfile
from typing import Any

import numpy as np

from torch_bridge import checkpoint_io

VERIFY_ATOL = 1e-4
VERIFY_SHAPE = (1, 64, 64, 3)  # NHWC; multiples of 8 as AdaIR needs
VERIFY_SEED = 0


class ConvertError(RuntimeError):
    """A conversion that cannot proceed; the message says what to do."""


def _parse_config(text: str | None) -> Any:
    """``--config``: a variant name (base/small/tiny), a JSON object, or a path to a JSON file."""
    if text is None:
        return None
    path = pathlib.Path(text)
    if path.suffix == ".json" and path.is_file():
        return json.loads(path.read_text())
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConvertError(f"--config is not valid JSON: {e}") from e
    return text


def verify(model, weights: dict[str, np.ndarray], atol: float = VERIFY_ATOL) -> dict[str, Any]:
    """Run the Flax ``model`` and the PyTorch reference on one fixed input; compare outputs.

    Both sides use full float32 precision (JAX ``highest``; torch without TF32).
    """
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from torch_bridge.reference_adair import AdaIR as TorchAdaIR

    x = np.random.default_rng(VERIFY_SEED).uniform(size=VERIFY_SHAPE).astype(np.float32)
    cfg = model.config.to_dict()
    cfg.pop("mask_rule")
    reference = TorchAdaIR(**cfg).eval()
    reference.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}, strict=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    graphdef, state = nnx.split(model)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(jax.jit(lambda g, s, v: nnx.merge(g, s)(v))(graphdef, state, jnp.asarray(x)))
    err = float(np.max(np.abs(got - expected)))
    return {
        "passed": bool(err <= atol),
        "max_abs_error": err,
        "tolerance": atol,
        "input": {"shape_nhwc": list(VERIFY_SHAPE), "distribution": "uniform[0,1)", "seed": VERIFY_SEED},
        "reference": "torch_bridge.reference_adair (PyTorch %s)" % torch.__version__,
    }


CONVERTER_NAME = "torch_bridge.convert_adair"
# What to_flax writes into a destination; anything else there was put by someone else.
_OUR_ENTRIES = frozenset({"model.json", "params", "manifest.json"})


def _listing(path: pathlib.Path, limit: int = 5) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _read_manifest(directory: pathlib.Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_model_directory(path: pathlib.Path) -> bool:
    return path.is_dir() and (path / "model.json").is_file()


def _not_ours(dst: pathlib.Path) -> str | None:
    """Why the existing directory ``dst`` was not written by this converter, or None if it was.

    Recognised positively: ``model.json``, ``params/`` and a ``manifest.json`` whose ``converter``
    names this module. A manifest.json alone proves nothing (training runs and data sets write
    one too), and a directory we cannot recognise is never deleted, with or without --overwrite.
    """
    manifest = _read_manifest(dst)
    converter = (manifest or {}).get("converter")
    ours = isinstance(converter, dict) and converter.get("name") == CONVERTER_NAME
    if ours and _is_model_directory(dst):
        if not (dst / "params").is_dir():
            return "its convert_adair manifest.json has no params/ beside it: an incomplete copy?"
        return None
    if manifest is not None and "trained_steps" in manifest and _is_model_directory(dst):
        return (
            f"it is a model directory written by training (manifest.json: trained_steps="
            f"{manifest['trained_steps']}), already an irpo-jax model; to export it to PyTorch use "
            f"`python -m torch_bridge.convert_adair --to-torch {dst} OUT.pth`"
        )
    if _is_model_directory(dst):
        return (
            "it is an irpo-jax model directory that convert_adair did not write; to export it to "
            f"PyTorch use `python -m torch_bridge.convert_adair --to-torch {dst} OUT.pth`"
        )
    return f"it holds {_listing(dst)}"


def _existing_destination(dst: pathlib.Path, manifest: dict[str, Any], overwrite: bool) -> str:
    """Decide what to do with ``dst`` before anything is written.

    Returns ``"new"`` (nothing there), ``"empty"`` (an empty directory to fill), ``"same"`` (it
    already holds this conversion) or ``"replace"`` (an older conversion, and ``overwrite``).
    Raises ConvertError for anything else; nothing is touched here.
    """
    if not dst.exists():
        return "new"
    if not dst.is_dir():
        raise ConvertError(
            f"the destination {dst} is an existing file, not a directory. Nothing was written; "
            "choose a new destination directory (existing files are never replaced)."
        )
    if not any(dst.iterdir()):
        return "empty"
    reason = _not_ours(dst)
    if reason is not None:
        raise ConvertError(
            f"the destination {dst} is not a directory written by convert_adair ({reason}). "
            "Nothing was written, and the converter never replaces such a directory; choose "
            "another destination."
        )
    old = _read_manifest(dst)
    old_source = old.get("source") if isinstance(old.get("source"), dict) else {}
    same = (
        old_source.get("sha256") == manifest["source"]["sha256"]
        and old.get("model_config") == manifest["model_config"]
    )
    if same and not overwrite:
        return "same"
    foreign = sorted(p.name for p in dst.iterdir() if p.name not in _OUR_ENTRIES)
    if foreign:  # replacing the conversion would delete them too
        raise ConvertError(
            f"the destination {dst} holds a different conversion plus files convert_adair did not "
            f"write ({', '.join(foreign[:5])}). Nothing was written; move those files out or choose "
            "another destination."
        )
    if not overwrite:
        raise ConvertError(
            f"the destination {dst} already holds a different converted checkpoint (from "
            f"{old_source.get('path')}, sha256 {str(old_source.get('sha256'))[:12]}...). "
            "Nothing was written. Pass --overwrite to replace it, or choose another destination."
        )
    return "replace"


def to_flax(
    src: str | pathlib.Path,
    dst: str | pathlib.Path,
    *,
    config: Any = None,
    run_verify: bool = False,
    overwrite: bool = False,
    log=print,
) -> dict[str, Any]:
    """Convert the PyTorch checkpoint ``src`` into the model directory ``dst``. Returns the manifest."""
    from irpo_jax import checkpointing
    from irpo_jax.models import convert

    src, dst = pathlib.Path(src), pathlib.Path(dst)
    if _is_model_directory(src):
        out = dst if dst.suffix in (".pth", ".safetensors") else "OUT.pth"
        raise ConvertError(
            f"{src} is already an irpo-jax model directory (it has model.json), not a PyTorch "
            "checkpoint. To export it to PyTorch pass --to-torch: "
            f"`python -m torch_bridge.convert_adair --to-torch {src} {out}`."
        )
    weights, info = checkpoint_io.read_state_dict(src)
    bad = checkpoint_io.find_nonfinite(weights)
    if bad:
        raise ConvertError(
            f"{src} has non-finite (NaN or inf) weights in {len(bad)} tensors, e.g. {', '.join(bad[:5])}. "
            "The checkpoint is from a diverged run or is damaged; convert an earlier checkpoint."
        )
    model = convert.from_state_dict(weights, config)
    log(f"read {src} ({info['format']}, {len(weights)} tensors); model config: {model.config.to_dict()}")
    manifest = {
        "source": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in info.items()},
        "model_config": model.config.to_dict(),
        "converter": {"name": CONVERTER_NAME, "version": convert.CONVERTER_VERSION},
        "verification": None,
    }
    manifest["source"]["path"] = str(src)
    action = _existing_destination(dst, manifest, overwrite)
    if action == "same":
        log(f"{dst} already holds this conversion (same source sha256 and config); nothing to do.")
        return json.loads((dst / "manifest.json").read_text())
    if run_verify:
        manifest["verification"] = verify(model, weights)
        result = manifest["verification"]
        log(f"verify: max |flax - torch| = {result['max_abs_error']:.3g} (tolerance {result['tolerance']:g})")
        if not result["passed"]:
            raise ConvertError(
                f"verification failed: the converted model differs from the PyTorch reference by "
                f"{result['max_abs_error']:.3g} > {result['tolerance']:g}. Nothing was written."
            )
    if action == "replace":  # our own older conversion: replace it once the new one is complete
        # A fresh, uniquely named parking directory, so that nothing else is ever deleted.
        backup = pathlib.Path(
            tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".replaced", dir=dst.parent)
        )
        dst.rename(backup / dst.name)
        try:
            with checkpointing.atomic_directory(dst) as tmp:
                checkpointing.write_model(tmp, model, {"manifest.json": manifest})
        except BaseException:
            (backup / dst.name).rename(dst)
            backup.rmdir()
            raise
        shutil.rmtree(backup, ignore_errors=True)
    else:
        if action == "empty":
            dst.rmdir()  # only now, after verification: atomic_directory renames into place
        with checkpointing.atomic_directory(dst) as tmp:
            checkpointing.write_model(tmp, model, {"manifest.json": manifest})
    log(f"wrote {dst}")
    return manifest


def _check_output_file(path: pathlib.Path) -> None:
    if path.is_dir():
        raise ConvertError(
            f"the output path {path} is an existing directory, but --to-torch writes a single "
            f".pth or .safetensors file. Nothing was written; give a file path such as "
            f"{path / 'adair.pth'}."
        )


def to_torch(src: str | pathlib.Path, dst: str | pathlib.Path, *, overwrite: bool = False, log=print) -> None:
    """Export the model directory ``src`` as an official-key PyTorch state dict ``dst`` (.pth or .safetensors)."""
    from irpo_jax import checkpointing
    from irpo_jax.models import convert

    dst = pathlib.Path(dst)
    extra_dst = dst.with_name(dst.stem + ".policy_heads" + dst.suffix)
    _check_output_file(dst)
    module, meta = checkpointing.restore_model(src)
    backbone = getattr(module, "net", module)  # an IRPO policy wraps the AdaIR as `net`
    # np.array copies: arrays viewed from JAX are read-only, and torch.from_numpy warns on those.
    weights = {k: np.array(v) for k, v in convert.state_dict(backbone).items()}
    extra = {k: np.array(v) for k, v in convert.extra_parameters(module).items()}
    if extra:
        _check_output_file(extra_dst)
    if extra and extra_dst.exists() and not overwrite:
        raise FileExistsError(f"{extra_dst} already exists; pass --overwrite to replace it.")
    checkpoint_io.write_state_dict(weights, dst, overwrite=overwrite)
    log(f"wrote {dst} ({len(weights)} tensors, official AdaIR key names; loads with strict=True)")
    if extra:
        checkpoint_io.write_state_dict(extra, extra_dst, overwrite=overwrite)
        log(
            f"note: the official AdaIR class has no place for the {len(extra)} IRPO policy-head tensors; "
            f"they were written to {extra_dst} (the policy config is in {pathlib.Path(src) / 'model.json'})."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m torch_bridge.convert_adair",
        description="Convert an official PyTorch AdaIR checkpoint to an irpo-jax model directory "
        "(or back with --to-torch).",
    )
    parser.add_argument("src", help="PyTorch checkpoint (.ckpt/.pth/.safetensors), or with --to-torch a model directory")
    parser.add_argument("dst", help="output model directory, or with --to-torch a .pth/.safetensors file")
    parser.add_argument("--to-torch", action="store_true", help="export a model directory back to PyTorch")
    parser.add_argument("--verify", action="store_true", help="compare with the PyTorch reference after converting")
    parser.add_argument(
        "--config", help="model config instead of inferring it: base|small|tiny, a JSON object or a .json file"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier convert_adair output (never another directory); with --to-torch, an existing file",
    )
    args = parser.parse_args(argv)
    from irpo_jax.checkpointing import CheckpointError
    from irpo_jax.models.convert import ConversionError

    try:
        if args.to_torch:
            to_torch(args.src, args.dst, overwrite=args.overwrite)
        else:
            to_flax(args.src, args.dst, config=_parse_config(args.config), run_verify=args.verify, overwrite=args.overwrite)
    except (ConvertError, ConversionError, CheckpointError, checkpoint_io.CheckpointReadError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
