"""Read and write AdaIR weights as PyTorch files, safely and with errors a person can act on.

`read_state_dict` accepts the layouts AdaIR weights come in (spec §8):

* a plain state dict saved with `torch.save(model.state_dict(), "x.pth")`;
* a PyTorch-Lightning checkpoint (the official `train.py` output): a dict whose `"state_dict"`
  entry holds the weights under `"net." + official key`;
* other common wrappers: a dict whose `"state_dict"`, `"model"`, `"params"` or `"net"` entry
  (first match in that order) is the state dict;
* a `.safetensors` file.

Keys are returned with the official names: a leading `net.` (Lightning attribute) and/or
`module.` (DDP) is stripped when *every* key carries it. Pickles are always read with
`torch.load(weights_only=True)`: a checkpoint that needs arbitrary Python objects is refused,
never unpickled. This module does not import jax, so the converter can read weights before
choosing a JAX backend.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import pickle
import re
import warnings
from collections.abc import Mapping

import numpy as np
import torch

from irpo_jax import safe_files  # imports nothing else of irpo_jax (no jax)

# Checked in this order; "state_dict" first because that is where Lightning puts the weights.
WRAPPER_KEYS = ("state_dict", "model", "params", "net")
# Stripped (repeatedly, in any order) while every key starts with one of them.
STRIP_PREFIXES = ("net.", "module.")
_CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin", ".safetensors")
_FORMATS_HINT = (
    "Expected an AdaIR checkpoint: a PyTorch-Lightning .ckpt from the official train.py, a plain "
    "state dict saved with torch.save(model.state_dict(), 'weights.pth'), or a .safetensors file."
)


class CheckpointReadError(ValueError):
    """A checkpoint file is missing, unreadable, unsafe to unpickle or holds no float weights."""


class UpcastWarning(UserWarning):
    """The checkpoint's weights are stored in a narrower float type than the float32 returned."""


def sha256_file(path: pathlib.Path) -> str:
    """The file's SHA-256 as hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _describe_magic(head: bytes) -> str | None:
    """Names what a file that is not a torch zip archive or pickle looks like, else None."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None  # zip archive (torch >= 1.6) or a legacy pickle: let torch judge it
    if not head:
        return "an empty file"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head.startswith((b"<!DOCTYPE", b"<html", b"<HTML")):
        return "an HTML page (a download link that returned a web page?)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return f"an unknown binary format (first bytes {head[:8]!r})"
    return "a text file"


def _check_exists(path: pathlib.Path) -> None:
    if not path.exists():
        raise CheckpointReadError(
            f"Checkpoint file not found: '{path}'. Check the path (relative paths are resolved "
            f"from '{pathlib.Path.cwd()}'). {_FORMATS_HINT}"
        )
    if path.is_dir():
        candidates = sorted(p.name for p in path.iterdir() if p.suffix in _CHECKPOINT_SUFFIXES)
        found = (
            f" It contains: {', '.join(candidates[:10])}{' ...' if len(candidates) > 10 else ''}."
            if candidates
            else " It contains no .ckpt/.pth/.pt/.bin/.safetensors file."
        )
        raise CheckpointReadError(
            f"'{path}' is a directory, not a checkpoint file.{found} Pass the path of one "
            f"checkpoint file inside it. {_FORMATS_HINT}"
        )


def _torch_load(path: pathlib.Path) -> object:
    """`torch.load(weights_only=True)` with every failure turned into a CheckpointReadError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types here: KeyError, EOFError, RuntimeError...
        with path.open("rb") as f:
            head = f.read(16)
        looks_like = _describe_magic(head)
        if looks_like is not None:
            raise CheckpointReadError(
                f"'{path}' is not a PyTorch checkpoint: it looks like {looks_like}. Check that "
                f"you passed the weights file and that the download completed. {_FORMATS_HINT}"
            ) from err
        unsafe = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if isinstance(err, pickle.UnpicklingError) and unsafe:
            raise CheckpointReadError(
                f"'{path}' contains arbitrary Python objects besides tensors (first rejected: "
                f"{unsafe[0]}). We only read checkpoints with torch.load(weights_only=True) and "
                f"never unpickle such objects, because unpickling can execute code. If you trust "
                f"the file, re-save just its weights in a separate Python session: "
                f"`ckpt = torch.load('{path}', weights_only=False); "
                f"torch.save(ckpt['state_dict'], 'adair_weights.pth')` (for a Lightning "
                f"checkpoint; for a pickled model use `model.state_dict()`), then pass "
                f"adair_weights.pth instead."
            ) from err
        raise CheckpointReadError(
            f"'{path}' could not be read as a PyTorch checkpoint; it is probably truncated or "
            f"corrupted (an interrupted download or copy?). Re-download or re-export it and "
            f"compare its size/checksum with the source. torch.load said: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else '(no message)'}"
        ) from err


def _load_safetensors(path: pathlib.Path) -> dict[str, torch.Tensor]:
    # The torch API (not the numpy one) so bfloat16 files load too.
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointReadError(
            f"'{path}' could not be read as a .safetensors file; it is probably truncated, "
            f"corrupted or not a safetensors file despite its extension. Re-download or re-export "
            f"it. safetensors said: {err}"
        ) from err


def _unwrap(obj: object, path: pathlib.Path) -> tuple[Mapping, str | None]:
    """Finds the name -> tensor mapping inside a loaded checkpoint object."""
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                return obj[key], key
        non_tensors = [f"'{k}' ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        detail = (
            "it is an empty mapping"
            if not obj
            else f"it is a mapping whose entries {', '.join(non_tensors[:5])} are not tensors"
        )
    else:
        detail = f"it holds a {type(obj).__name__}, not a mapping"
    raise CheckpointReadError(
        f"'{path}' does not contain a state dict: {detail}. Expected a mapping from parameter "
        f"names to tensors, or a checkpoint dict with the weights under one of the keys "
        f"{', '.join(repr(k) for k in WRAPPER_KEYS)}. Re-save the weights with "
        f"torch.save(model.state_dict(), 'adair_weights.pth')."
    )


def _strip_prefixes(keys: list[str]) -> tuple[dict[str, str], list[str]]:
    """Maps each key to its official name; returns (mapping, prefixes stripped in order)."""
    stripped: list[str] = []
    names = {k: k for k in keys}
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if names and all(n.startswith(prefix) for n in names.values()):
                names = {k: n[len(prefix) :] for k, n in names.items()}
                stripped.append(prefix)
                changed = True
    return names, stripped


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Reads AdaIR weights from a .pth/.ckpt/.safetensors file.

    Args:
        path: checkpoint file; see the module docstring for the accepted layouts.

    Returns:
        `(weights, info)`: `weights` maps official key names (e.g. `fre1.para1`), in file order
        (state-dict order for pickles, name-sorted for safetensors), to float32 numpy arrays
        (float16/bfloat16/float64 tensors are cast to float32; float8 ones too, with an
        :class:`UpcastWarning`).
        `info` has `format` ('pth' | 'lightning' | 'safetensors'), `path`, `sha256` (of the
        file), `container_key` (the wrapper entry the weights came from, or None),
        `stripped_prefixes` (e.g. ['net.']), `source_dtypes` (sorted dtype names in the file)
        and, for Lightning checkpoints, `epoch`, `global_step` and `lightning_version` when
        present.

    Raises:
        CheckpointReadError: the file is missing or a directory, is not a checkpoint, is
            truncated or corrupt, needs arbitrary Python objects to unpickle, holds no mapping
            of tensors, has keys that are not strings, or holds non-float tensors.

    Warns:
        UpcastWarning: float8 weights (a quantised checkpoint) were upcast to float32.
    """
    path = pathlib.Path(path)
    _check_exists(path)
    info: dict = {"path": str(path)}

    if path.suffix == ".safetensors":
        tensors: Mapping = _load_safetensors(path)
        info.update(format="safetensors", container_key=None)
    else:
        obj = _torch_load(path)
        tensors, container_key = _unwrap(obj, path)
        # Lightning's trainer always writes this key; a bare {'state_dict': ...} is not Lightning.
        is_lightning = isinstance(obj, Mapping) and "pytorch-lightning_version" in obj
        info.update(format="lightning" if is_lightning else "pth", container_key=container_key)
        if is_lightning:
            info["lightning_version"] = obj["pytorch-lightning_version"]
            for key in ("epoch", "global_step"):
                if key in obj:
                    info[key] = obj[key]

    where = f"['{info['container_key']}']" if info["container_key"] else ""
    if not tensors:
        raise CheckpointReadError(
            f"'{path}'{where} is an empty state dict: there are no weights to read. {_FORMATS_HINT}"
        )
    not_names = [f"{k!r} ({type(k).__name__})" for k in tensors if not isinstance(k, str)]
    if not_names:
        raise CheckpointReadError(
            f"'{path}'{where} is not a state dict of named parameters: its keys "
            f"{', '.join(not_names[:5])}{' ...' if len(not_names) > 5 else ''} are not strings "
            f"(AdaIR keys look like 'patch_embed.proj.weight'). Re-save the weights with "
            f"torch.save(model.state_dict(), 'adair_weights.pth')."
        )
    bad = [f"'{k}' ({type(v).__name__})" for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointReadError(
            f"'{path}'{where} is not a mapping of tensors: entries {', '.join(bad[:5])} are not "
            f"tensors. Re-save the weights with torch.save(model.state_dict(), "
            f"'adair_weights.pth')."
        )
    # AdaIR has only float parameters (no BatchNorm counters or other integer buffers).
    non_float = [f"'{k}' ({v.dtype})" for k, v in tensors.items() if not v.is_floating_point()]
    if non_float:
        raise CheckpointReadError(
            f"'{path}'{where} holds non-float tensors where AdaIR weights are expected: "
            f"{', '.join(non_float[:5])}{' ...' if len(non_float) > 5 else ''}. This does not look "
            f"like AdaIR weights (quantised or another model's checkpoint?). Export the float32 "
            f"state dict of the AdaIR model and pass that file."
        )

    names, info["stripped_prefixes"] = _strip_prefixes(list(tensors))
    info["source_dtypes"] = sorted({str(v.dtype).removeprefix("torch.") for v in tensors.values()})
    float8 = [d for d in info["source_dtypes"] if d.startswith("float8")]
    if float8:
        count = sum(str(v.dtype).removeprefix("torch.").startswith("float8") for v in tensors.values())
        # Every float8 value is exact in float32, so the cast loses nothing; but the file's
        # precision is what the weights have, and a quantised checkpoint may expect per-tensor
        # scales (extra keys, refused by the conversion table) that a plain cast does not apply.
        warnings.warn(
            f"'{path}'{where}: {count} of {len(tensors)} tensors are {'/'.join(float8)}; they are "
            f"upcast to float32 (exactly: the values are unchanged, and so is their float8 "
            f"precision). The model computes in float32 with these values, not with the "
            f"weights the checkpoint was quantised from.",
            UpcastWarning,
            stacklevel=2,
        )
    weights = {
        names[k]: v.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy() for k, v in tensors.items()
    }
    info["sha256"] = sha256_file(path)
    return weights, info


def find_nonfinite(weights: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the arrays that contain NaN or +-inf, in the mapping's order.

    Args:
        weights: name -> array, e.g. the first result of `read_state_dict`.

    Returns:
        The offending keys (empty when every value is finite).
    """
    return [k for k, v in weights.items() if not np.isfinite(v).all()]


def write_state_dict(
    weights: Mapping[str, np.ndarray], path: str | os.PathLike, *, overwrite: bool = False
) -> pathlib.Path:
    """Writes `weights` as a plain PyTorch state dict, or as safetensors by extension.

    A `.safetensors` path gives a safetensors file; anything else a `torch.save`d dict of
    tensors that loads with `torch.load(weights_only=True)` and `AdaIR.load_state_dict`. The
    file is written next to its target and renamed into place, so an interrupted export never
    leaves a truncated checkpoint under the final name.

    Args:
        weights: official key name -> array; the dtypes are kept as given.
        path: destination file.
        overwrite: replace an existing file instead of refusing.

    Returns:
        The path written.

    Raises:
        FileExistsError: `path` exists and `overwrite` is False.
        OSError: the file cannot be written (its folder is read-only, a file, full, ...);
            nothing is left behind.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a folder, not a file", str(path))
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"Refusing to overwrite the existing file '{path}'. Choose another output path, "
            f"delete the file, or pass overwrite=True (--overwrite on the command line)."
        )
    # torch.from_numpy shares memory; contiguous copies keep safetensors (no strides) happy.
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        safe_files.atomic_write_bytes(path, save(tensors))
    else:
        # An open file, not a path: torch's own file writer reports a failed open as a
        # RuntimeError ("open file failed"), without the path or an errno.
        with safe_files.atomic_open(path, "wb") as f:
            torch.save(tensors, f)
    return path
