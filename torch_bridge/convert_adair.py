"""Convert official PyTorch AdaIR checkpoints to irpo-jax model directories, and back.

  python -m torch_bridge.convert_adair adair5d.ckpt converted/adair5d --verify
  python -m torch_bridge.convert_adair --to_torch converted/adair5d adair5d_roundtrip.pth

PyTorch -> Flax reads a Lightning ``.ckpt``, a plain ``.pth`` state dict or ``.safetensors``
(always ``weights_only=True``), infers the model config from the tensor shapes unless
``--config`` is given, maps the weights through :mod:`irpo_jax.models.convert`'s strict table and
writes ``DST/`` (``model.json``, orbax ``params/``) plus ``DST/manifest.json`` recording the source
file's sha256, the model config, the converter version and the verification result.
``--verify`` runs the converted Flax model and the PyTorch reference
(:mod:`torch_bridge.reference_adair`) on a fixed input at full float32 precision and fails
above the tolerance.

What is never lost: the manifest lists every file the conversion wrote (relative path, size,
sha256). ``DST`` may be new, empty (filled in place, so ``.`` or a mount point works), or an
earlier output of this converter, which ``--overwrite`` replaces only if it holds exactly the
listed files, unchanged, and nothing else at any depth; otherwise the conversion is refused,
naming what is in the way. Outputs of converters from before the file list are refused too
(they cannot be told from a folder that only looks like one): delete them yourself. Every
destination is checked for writability before the checkpoint is read.

Flax -> PyTorch writes the official key names; the file loads into the official ``AdaIR`` with
``strict=True``, and PyTorch -> Flax -> PyTorch is bit-exact.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from torch_bridge import checkpoint_io

VERIFY_ATOL = 1e-4
VERIFY_SHAPE = (1, 64, 64, 3)  # NHWC; multiples of 8 as AdaIR needs
VERIFY_SEED = 0


class ConvertError(RuntimeError):
    """A conversion that cannot proceed; the message says what to do."""


def _parse_config(text: str | None) -> Any:
    """``--config``: a variant name (base/small/tiny), a JSON object, or a path to a JSON file.

    Anything that is not a JSON object and ends in ``.json`` or contains a ``/`` is a path (a
    variant name has neither), so a mistyped file name is reported as a missing file, not as an
    unknown variant.
    """
    if text is None:
        return None
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConvertError(f"--config is not a valid JSON object ({e}): {text}") from e
    path = pathlib.Path(text)
    if path.suffix.lower() != ".json" and not any(sep in text for sep in ("/", os.sep)):
        return text  # a variant name; convert.get_config lists the valid ones
    if not path.exists():
        raise ConvertError(
            f"--config {text}: no such file. Give a JSON file of the model config, a JSON "
            "object ('{\"dim\": 48, ...}') or a variant name (base, small, tiny)."
        )
    if not path.is_file():
        raise ConvertError(f"--config {text} is a folder, not a JSON file of the model config.")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(f"--config {text}: cannot read it ({e}).") from e
    except json.JSONDecodeError as e:
        raise ConvertError(f"--config {text} is not valid JSON: {e}.") from e
    if not isinstance(config, dict):
        raise ConvertError(
            f"--config {text} holds a JSON {type(config).__name__}, not an object of model config "
            'keys ({"dim": 48, ...}).'
        )
    return config


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
        "reference": f"torch_bridge.reference_adair (PyTorch {torch.__version__})",
    }


CONVERTER_NAME = "torch_bridge.convert_adair"
MANIFEST = "manifest.json"
# What to_flax writes into a destination, at its top level (the manifest last, see _swap_in).
_OUR_ENTRIES = ("params", "model.json", MANIFEST)
# Folders the converter makes inside a destination it fills in place (an empty folder, or its own
# earlier output): the new files are staged in one, the replaced ones parked in another.
_STAGING_PREFIX = ".convert_adair."


def _listing(path: pathlib.Path, limit: int = 5) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _read_manifest(directory: pathlib.Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_model_directory(path: pathlib.Path) -> bool:
    return path.is_dir() and (path / "model.json").is_file()


def _names_converter(manifest: dict[str, Any] | None) -> bool:
    converter = (manifest or {}).get("converter")
    return isinstance(converter, dict) and converter.get("name") == CONVERTER_NAME


def _file_list(directory: pathlib.Path) -> dict[str, dict[str, Any]]:
    """Every file under ``directory`` except the manifest: relative POSIX path -> size, sha256."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = pathlib.Path(root, name)
            rel = path.relative_to(directory).as_posix()
            if rel != MANIFEST:
                files[rel] = {"size": path.stat().st_size, "sha256": checkpoint_io.sha256_file(path)}
    return dict(sorted(files.items()))


def _valid_file_list(files: Any) -> bool:
    """A file list the converter could have written: relative paths under its own entries only."""
    if not isinstance(files, dict) or not files:
        return False
    for rel, entry in files.items():
        parts = pathlib.PurePosixPath(rel).parts if isinstance(rel, str) else ()
        if not parts or parts[0] not in ("params", "model.json") or ".." in parts or rel.startswith("/"):
            return False
        if not (
            isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)
        ):
            return False
    return True


def _differences(directory: pathlib.Path, files: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Compares ``directory`` with the file list the converter recorded when it wrote it.

    Returns:
      ``(foreign, altered)``: what is there that the list does not hold (files, links, and
      folders that hold no listed file, named with a trailing ``/`` and not searched), and the
      listed files that are missing or whose size or sha256 changed.
    """
    folders = {parent.as_posix() for rel in files for parent in pathlib.PurePosixPath(rel).parents}
    foreign, present = [], []
    for root, dirs, names in os.walk(directory):
        base = pathlib.Path(root)
        for name in list(dirs):
            rel = (base / name).relative_to(directory).as_posix()
            if (base / name).is_symlink() or rel not in folders:
                foreign.append(rel + "/")
                dirs.remove(name)  # not searched: all of it is someone else's
        for name in names:
            path = base / name
            rel = path.relative_to(directory).as_posix()
            if rel == MANIFEST:
                continue
            if rel in files and path.is_file() and not path.is_symlink():
                present.append(rel)
            else:
                foreign.append(rel)
    altered = sorted(set(files) - set(present))
    altered += [
        rel
        for rel in present
        if (directory / rel).stat().st_size != files[rel]["size"]
        or checkpoint_io.sha256_file(directory / rel) != files[rel]["sha256"]
    ]
    return sorted(foreign), sorted(altered)


def _shown(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _refusal(dst: pathlib.Path, manifest: dict[str, Any] | None) -> str | None:
    """Why the non-empty folder ``dst`` may not be replaced, as the whole error message; None if
    it holds exactly what an earlier conversion wrote (so replacing it deletes nothing else).

    Recognised positively: ``model.json``, ``params/`` and a ``manifest.json`` that names this
    converter and lists every file the conversion wrote, with sizes and sha256, and nothing else
    anywhere in the folder. A manifest.json alone proves nothing (training runs and data sets
    write one too), and a folder that only looks like a conversion is never deleted.
    """
    nothing = "Nothing was written, and the converter never deletes files it did not write"
    if not _names_converter(manifest):
        if manifest is not None and "trained_steps" in manifest and _is_model_directory(dst):
            reason = (
                f"it is a model directory written by training (manifest.json: trained_steps="
                f"{manifest['trained_steps']}), already an irpo-jax model; to export it to PyTorch use "
                f"`python -m torch_bridge.convert_adair --to_torch {dst} OUT.pth`"
            )
        elif _is_model_directory(dst):
            reason = (
                "it is an irpo-jax model directory that convert_adair did not write; to export it to "
                f"PyTorch use `python -m torch_bridge.convert_adair --to_torch {dst} OUT.pth`"
            )
        else:
            reason = f"it holds {_listing(dst)}"
        return (
            f"the destination {dst} is not a directory written by convert_adair ({reason}). "
            f"{nothing}; choose another destination."
        )
    files = manifest.get("files")
    if files is None:
        return (
            f"the destination {dst} was written by an older convert_adair, which kept no list of "
            "the files it wrote, so the converter cannot tell them from files added since and "
            f"does not replace it. {nothing}; delete the folder yourself (after checking it holds "
            "nothing of yours), or choose another destination."
        )
    if not _valid_file_list(files) or not _is_model_directory(dst) or not (dst / "params").is_dir():
        return (
            f"the destination {dst} looks like a convert_adair output but is not one (its "
            "manifest.json names the converter, but its file list is malformed or model.json or "
            f"params/ is missing; it holds {_listing(dst)}). {nothing}; choose another destination."
        )
    foreign, altered = _differences(dst, files)
    if not (foreign or altered):
        return None
    found = [f"files convert_adair did not write: {_shown(foreign)}"] if foreign else []
    found += [f"files it wrote that are missing or modified: {_shown(altered)}"] if altered else []
    todo = (
        "delete the folder yourself (after checking it holds nothing of yours)" if altered else "move those files out"
    )
    return (
        f"the destination {dst} does not hold exactly what convert_adair wrote there "
        f"({'; '.join(found)}). {nothing}; {todo}, or choose another destination."
    )


def _existing_destination(dst: pathlib.Path, manifest: dict[str, Any], overwrite: bool) -> str:
    """Decide what to do with ``dst`` before anything is written.

    Returns ``"new"`` (nothing there), ``"empty"`` (an empty directory to fill), ``"same"`` (it
    already holds this conversion) or ``"replace"`` (an earlier conversion, and ``overwrite``).
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
    old = _read_manifest(dst)
    old_source = (old or {}).get("source") if isinstance((old or {}).get("source"), dict) else {}
    same = (
        _names_converter(old)
        and _is_model_directory(dst)
        and old_source.get("sha256") == manifest["source"]["sha256"]
        and old.get("model_config") == manifest["model_config"]
    )
    if same and not overwrite:  # nothing will be written or deleted; files of others may stay
        if _valid_file_list(old.get("files")):
            _, altered = _differences(dst, old["files"])
            if altered:
                raise ConvertError(
                    f"the destination {dst} holds this conversion, but files of it changed since "
                    f"(missing or modified: {_shown(altered)}): it is damaged. Delete the folder "
                    "yourself and convert again, or choose another destination."
                )
        return "same"
    refusal = _refusal(dst, old)
    if refusal is not None:
        raise ConvertError(refusal)
    if not overwrite:
        raise ConvertError(
            f"the destination {dst} already holds a different converted checkpoint (from "
            f"{old_source.get('path')}, sha256 {str(old_source.get('sha256'))[:12]}...). "
            "Nothing was written. Pass --overwrite to replace it, or choose another destination."
        )
    return "replace"


def _check_destination(dst: pathlib.Path) -> None:
    """Refuses, before the checkpoint is read, a destination that cannot be written."""
    from irpo_jax import destinations

    if dst.exists() and not dst.is_dir():
        raise ConvertError(
            f"the destination {dst} is an existing file, not a directory. Nothing was written; "
            "choose a new destination directory (existing files are never replaced)."
        )
    try:
        destinations.check_directory(dst, "the destination")
    except destinations.DestinationError as e:
        raise ConvertError(f"{e}. Nothing was written.") from e


def _write_conversion(directory: pathlib.Path, model, manifest: dict[str, Any]) -> dict[str, Any]:
    """Writes ``model.json``, ``params/`` and, last, ``manifest.json`` listing every file written."""
    from irpo_jax import checkpointing

    checkpointing.write_model(directory, model)
    manifest = manifest | {"files": _file_list(directory)}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@contextlib.contextmanager
def _staging(dst: pathlib.Path) -> Iterator[pathlib.Path]:
    """A fresh folder inside ``dst`` for the new files; removed at the end (only ours is in it)."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX + "partial-", dir=dst))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_listed(folder: pathlib.Path, files: dict[str, Any]) -> None:
    """Deletes the listed files and the manifest under ``folder``, then the folders left empty.

    Anything else (a file someone added after the check) stays, with a warning.
    """
    for rel in [*files, MANIFEST]:
        (folder / rel).unlink(missing_ok=True)
    for root, _, _ in os.walk(folder, topdown=False):
        with contextlib.suppress(OSError):  # not empty: it holds something we did not list
            os.rmdir(root)
    if folder.exists():
        print(f"warning: kept {folder}: it holds files the converter did not write", file=sys.stderr)


def _swap_in(dst: pathlib.Path, staged: pathlib.Path, old_files: dict[str, Any] | None) -> None:
    """Moves the staged conversion into ``dst`` (in place: ``dst`` may be the working directory
    or a mount point), parking and then deleting the earlier conversion's listed files.

    The manifest leaves first and arrives last, so that a folder caught in between does not
    claim to be a complete conversion (and is refused, never replaced, by the next run).
    """
    parked = None
    if old_files is not None:
        parked = pathlib.Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX + "replaced-", dir=dst))
    try:
        if parked is not None:
            for name in reversed(_OUR_ENTRIES):
                if (dst / name).exists():
                    (dst / name).rename(parked / name)
        for name in _OUR_ENTRIES:
            (staged / name).rename(dst / name)
    except OSError:
        for name in _OUR_ENTRIES:  # put everything back where it was
            if (dst / name).exists() and not (staged / name).exists():
                with contextlib.suppress(OSError):
                    (dst / name).rename(staged / name)
            if parked is not None and (parked / name).exists():
                with contextlib.suppress(OSError):
                    (parked / name).rename(dst / name)
        if parked is not None:
            with contextlib.suppress(OSError):
                parked.rmdir()
        raise
    if parked is not None:
        _remove_listed(parked, old_files)


def to_flax(
    src: str | pathlib.Path,
    dst: str | pathlib.Path,
    *,
    config: Any = None,
    run_verify: bool = False,
    overwrite: bool = False,
    log=print,
) -> dict[str, Any]:
    """Convert the PyTorch checkpoint ``src`` into the model directory ``dst``. Returns the manifest.

    ``dst`` is new, an empty folder (filled in place), or an earlier output of this converter
    holding exactly the files its manifest lists (replaced with ``overwrite``); anything else is
    refused before anything is written (see :func:`_refusal`), and a destination that cannot be
    written before the checkpoint is even read.

    Raises:
      ConvertError: a refused destination, a failed verification or a failed write (the
        message names the path).
      CheckpointReadError, ConversionError: an unreadable or non-AdaIR checkpoint.
    """
    from irpo_jax import destinations, safe_files
    from irpo_jax.models import convert

    src, dst = pathlib.Path(src), pathlib.Path(dst).absolute()
    if _is_model_directory(src):
        out = dst if dst.suffix in (".pth", ".safetensors") else "OUT.pth"
        raise ConvertError(
            f"{src} is already an irpo-jax model directory (it has model.json), not a PyTorch "
            "checkpoint. To export it to PyTorch pass --to_torch: "
            f"`python -m torch_bridge.convert_adair --to_torch {src} {out}`."
        )
    _check_destination(dst)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", checkpoint_io.UpcastWarning)
        weights, info = checkpoint_io.read_state_dict(src)
    for w in caught:
        if issubclass(w.category, checkpoint_io.UpcastWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
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
        return json.loads((dst / MANIFEST).read_text())
    if run_verify:
        manifest["verification"] = verify(model, weights)
        result = manifest["verification"]
        log(f"verify: max |flax - torch| = {result['max_abs_error']:.3g} (tolerance {result['tolerance']:g})")
        if not result["passed"]:
            raise ConvertError(
                f"verification failed: the converted model differs from the PyTorch reference by "
                f"{result['max_abs_error']:.3g} > {result['tolerance']:g}. Nothing was written."
            )
    try:
        if action == "new":
            with safe_files.atomic_directory(dst) as tmp:
                manifest = _write_conversion(tmp, model, manifest)
        else:  # "empty" or "replace": in place, so that dst keeps its identity
            old_files = _read_manifest(dst)["files"] if action == "replace" else None
            with _staging(dst) as tmp:
                manifest = _write_conversion(tmp, model, manifest)
                _swap_in(dst, tmp, old_files)
    except OSError as e:
        raise ConvertError(f"{destinations.os_error_line(e)}. Nothing was converted into {dst}.") from e
    log(f"wrote {dst}")
    return manifest


def _check_output_file(path: pathlib.Path, overwrite: bool) -> None:
    """Refuses, before the model is read, an export path that is a folder, exists (without
    ``overwrite``) or cannot be written."""
    from irpo_jax import destinations

    if path.is_dir():
        raise ConvertError(
            f"the output path {path} is an existing directory, but --to_torch writes a single "
            f".pth or .safetensors file. Nothing was written; give a file path such as "
            f"{path / 'adair.pth'}."
        )
    if path.exists() and not overwrite:
        raise ConvertError(
            f"Refusing to overwrite the existing file '{path}'. Nothing was written; choose another "
            "output path, delete the file, or pass --overwrite."
        )
    try:
        destinations.check_file(path, "the output path")
    except destinations.DestinationError as e:
        raise ConvertError(f"{e}. Nothing was written.") from e


def to_torch(src: str | pathlib.Path, dst: str | pathlib.Path, *, overwrite: bool = False, log=print) -> None:
    """Export the model directory ``src`` as an official-key PyTorch state dict ``dst`` (.pth or .safetensors)."""
    from irpo_jax import checkpointing, destinations
    from irpo_jax.models import convert

    dst = pathlib.Path(dst)
    extra_dst = dst.with_name(dst.stem + ".policy_heads" + dst.suffix)
    _check_output_file(dst, overwrite)
    if checkpointing.read_metadata(src).get("model") != "adair":  # a policy: its heads go beside
        _check_output_file(extra_dst, overwrite)
    module, meta = checkpointing.restore_model(src)
    backbone = getattr(module, "net", module)  # an IRPO policy wraps the AdaIR as `net`
    # np.array copies: arrays viewed from JAX are read-only, and torch.from_numpy warns on those.
    weights = {k: np.array(v) for k, v in convert.state_dict(backbone).items()}
    extra = {k: np.array(v) for k, v in convert.extra_parameters(module).items()}
    try:
        checkpoint_io.write_state_dict(weights, dst, overwrite=overwrite)
        log(f"wrote {dst} ({len(weights)} tensors, official AdaIR key names; loads with strict=True)")
        if extra:
            checkpoint_io.write_state_dict(extra, extra_dst, overwrite=overwrite)
    except OSError as e:
        raise ConvertError(destinations.os_error_line(e)) from e
    if extra:
        log(
            f"note: the official AdaIR class has no place for the {len(extra)} IRPO policy-head tensors; "
            f"they were written to {extra_dst} (the policy config is in {pathlib.Path(src) / 'model.json'})."
        )


def main(argv: list[str] | None = None) -> int:
    from irpo_jax import cli

    parser = cli.ArgumentParser(
        prog="python -m torch_bridge.convert_adair",
        description="Convert an official PyTorch AdaIR checkpoint to an irpo-jax model directory "
        "(or back with --to_torch).",
    )
    parser.add_argument(
        "src", help="PyTorch checkpoint (.ckpt/.pth/.safetensors), or with --to_torch a model directory"
    )
    parser.add_argument("dst", help="output model directory, or with --to_torch a .pth/.safetensors file")
    parser.add_argument(
        "--to_torch",
        action="store_true",
        help="export a model directory back to PyTorch (also spelled --to-torch, deprecated)",
    )
    parser.add_argument("--verify", action="store_true", help="compare with the PyTorch reference after converting")
    parser.add_argument(
        "--config", help="model config instead of inferring it: base|small|tiny, a JSON object or a .json file"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier convert_adair output (never another directory); with --to_torch, an existing file",
    )
    args = parser.parse_args(argv)
    from irpo_jax.checkpointing import CheckpointError
    from irpo_jax.destinations import os_error_line
    from irpo_jax.models.convert import ConversionError

    def convert() -> int:
        if args.to_torch:
            to_torch(args.src, args.dst, overwrite=args.overwrite)
        else:
            to_flax(
                args.src, args.dst, config=_parse_config(args.config), run_verify=args.verify, overwrite=args.overwrite
            )
        return 0

    return cli.main_errors(
        convert,
        (
            ConvertError,
            ConversionError,
            CheckpointError,
            checkpoint_io.CheckpointReadError,
            FileExistsError,
            ValueError,
        ),
        # reading the source, or a write the checks could not foresee
        os_error=lambda e: os_error_line(e, "cannot access"),
    )


if __name__ == "__main__":
    sys.exit(main())
