"""Model checkpoints on disk (orbax) and :func:`load_model`, the way users get a ready restorer.

A *model directory* holds:

* ``model.json``: ``{"format": "irpo-jax-model", "version": 1, "model": "adair", "config": {...}}``;
* ``params/``: an orbax (``StandardCheckpointer``) checkpoint of the parameters as a nested dict
  whose paths are the NNX module paths (``encoder_level1/0/attn/qkv/kernel``);
* optionally ``manifest.json`` (what the converter or trainer records about its origin).

The converter (``python -m torch_bridge.convert_adair``) writes one; training checkpoints
(added by the trainer) reuse the same parameter layout. Writes go to a temporary sibling that is
renamed into place at the end, so an interrupted write never leaves a half-written directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from irpo_jax.models import adair
from irpo_jax.safe_files import atomic_directory  # noqa: F401 - the tests' model-directory fixtures call checkpointing.atomic_directory

MODEL_FORMAT = "irpo-jax-model"
MODEL_FORMAT_VERSION = 1


def _make_policy(config: adair.AdaIRConfig, policy: Mapping[str, Any] | None = None, *, rngs: nnx.Rngs):
    from irpo_jax.models.policy import IRPOPolicy, PolicyConfig  # distrax only for policy models

    return IRPOPolicy(config, PolicyConfig.from_saved(policy or {}), rngs=rngs)  # absent keys: as saved then


MODELS: dict[str, Callable[..., nnx.Module]] = {"adair": adair.AdaIR, "adair_policy": _make_policy}


class CheckpointError(ValueError):
    """A model directory that is missing, incomplete or of an unknown kind."""


def model_metadata(model: nnx.Module) -> dict[str, Any]:
    """``model.json`` content for ``model``."""
    meta = {"format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION, "config": model.config.to_dict()}
    if isinstance(model, adair.AdaIR):
        return meta | {"model": "adair"}
    policy_config = getattr(model, "policy_config", None)
    if policy_config is not None:
        return meta | {"model": "adair_policy", "policy": policy_config.to_dict()}
    raise TypeError(f"do not know how to describe a {type(model).__name__}")


def params_dict(model: nnx.Module) -> dict:
    """The parameters of ``model`` as a nested pure dict (what is stored under ``params/``)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def params_sha256(model: nnx.Module) -> str:
    """sha256 of what a model computes: its kind and config (``model.json``) and every parameter.

    Hashes the parameter values, not the files (orbax writes random file names and timestamps),
    so the same weights saved twice, or copied elsewhere, give the same hash.
    """
    meta = model_metadata(model)
    described = {k: meta.get(k) for k in ("model", "config", "policy")}
    h = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    leaves = jax.tree_util.tree_leaves_with_path(params_dict(model))
    for path, leaf in sorted(leaves, key=lambda t: jax.tree_util.keystr(t[0])):
        a = np.ascontiguousarray(jax.device_get(leaf))
        h.update(f"{jax.tree_util.keystr(path)} {a.dtype.str} {a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_model(directory: pathlib.Path, model: nnx.Module, extra_files: Mapping[str, Any] | None = None) -> None:
    """Write ``model.json``, ``params/`` and any ``extra_files`` (name -> JSON-able) into ``directory``."""
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).absolute()
    (directory / "model.json").write_text(json.dumps(model_metadata(model), indent=2) + "\n")
    # A model directory is written by one process from host copies; in a multi-process job the
    # other processes must not be waited for (orbax would otherwise sync all of them).
    me = jax.process_index()
    checkpointer = ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    )
    checkpointer.save(directory / "params", jax.tree.map(np.asarray, params_dict(model)))
    checkpointer.wait_until_finished()
    for name, content in (extra_files or {}).items():
        (directory / name).write_text(json.dumps(content, indent=2) + "\n")


_PYTORCH_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin", ".safetensors")
_WHERE_MODELS_COME_FROM = (
    "a model directory is written by `python -m torch_bridge.convert_adair CHECKPOINT.ckpt DIR` "
    "or by training (`runs/<name>/model`)"
)


def _not_a_model_directory(path: pathlib.Path) -> str:
    """Why ``path`` (which exists and has no model.json) is not a model directory, and what to do."""
    if path.is_file():
        if path.suffix.lower() in _PYTORCH_SUFFIXES:
            return (
                f"{path} is a PyTorch checkpoint file, not an irpo-jax model directory; convert it "
                f"first: `python -m torch_bridge.convert_adair {path} converted/{path.stem}`."
            )
        return f"{path} is a file, not an irpo-jax model directory; {_WHERE_MODELS_COME_FROM}."
    entries = sorted(path.iterdir())
    if not entries:
        return f"{path} is an empty folder, not an irpo-jax model directory; {_WHERE_MODELS_COME_FROM}."
    weights = [p for p in entries if p.is_file() and p.suffix.lower() in _PYTORCH_SUFFIXES]
    if weights:
        return (
            f"{path} is not an irpo-jax model directory (it has no model.json) but holds PyTorch "
            f"weights ({', '.join(p.name for p in weights[:3])}); convert one first: "
            f"`python -m torch_bridge.convert_adair {weights[0]} converted/{weights[0].stem}`."
        )
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:5])
    return (
        f"{path} is not an irpo-jax model directory (it has no model.json; it holds {shown}"
        f"{', ...' if len(entries) > 5 else ''}); {_WHERE_MODELS_COME_FROM}."
    )


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """``model.json`` of a model directory, with errors that say what is wrong."""
    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path}: the path does not exist. Give a directory written by "
            "`python -m torch_bridge.convert_adair` or by training (`runs/<name>/...`)."
        )
    meta_file = path / "model.json"
    if path.is_dir() and not meta_file.is_file() and (path / "model" / "model.json").is_file():
        raise CheckpointError(
            f"{path} is not an irpo-jax model directory (it has no model.json); did you mean "
            f"{path / 'model'}? (a training run's model directory)"
        )
    if not path.is_dir() or not meta_file.is_file():
        raise CheckpointError(_not_a_model_directory(path))
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_file} is not valid JSON ({e}); the checkpoint is damaged.") from e
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {meta_file} ({e}); the checkpoint is damaged or unreadable.") from e
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{meta_file} holds a JSON {type(meta).__name__}, not an object; the checkpoint is damaged."
        )
    if meta.get("format") != MODEL_FORMAT or meta.get("model") not in MODELS:
        raise CheckpointError(
            f"{meta_file} does not describe a known model (format={meta.get('format')!r}, "
            f"model={meta.get('model')!r}; known models: {sorted(MODELS)})."
        )
    return meta


def build_model(meta: Mapping[str, Any], *, abstract: bool = True) -> nnx.Module:
    """The (by default abstract, i.e. shape-only) model described by ``model.json``."""
    config = adair.AdaIRConfig.from_dict(meta["config"])
    kwargs = {"policy": meta["policy"]} if meta["model"] == "adair_policy" else {}
    make = lambda: MODELS[meta["model"]](config, rngs=nnx.Rngs(0), **kwargs)  # noqa: E731
    return nnx.eval_shape(make) if abstract else make()


def restore_model(path: str | os.PathLike) -> tuple[nnx.Module, dict[str, Any]]:
    """Restore the NNX module stored in a model directory. Returns ``(module, model.json)``."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).absolute()
    meta = read_metadata(path)
    model = build_model(meta)
    state = nnx.state(model, nnx.Param)
    target = nnx.to_pure_dict(state)
    if not (path / "params").is_dir():
        raise CheckpointError(f"{path} has a model.json but no params/ directory; the checkpoint is incomplete.")
    me = jax.process_index()
    checkpointer = ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    )
    try:
        restored = checkpointer.restore(path / "params", target)
    except Exception as e:  # orbax raises assorted types for damaged or mismatched trees
        raise CheckpointError(
            f"could not restore the parameters in {path / 'params'}: {type(e).__name__}: {e}. "
            "The checkpoint is damaged or was written for a different model config."
        ) from e
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, restored))
    nnx.update(model, state)
    return model, meta


class Restorer:
    """A restored model, ready to call: ``restorer(batch)`` with ``batch`` (B, H, W, 3) float in [0,1].

    Returns the model's raw output, (B, H, W, 3) float32 and *not clipped*: values can fall a
    little outside [0, 1]; clip (``jnp.clip(y, 0, 1)``) before saving or scoring, as
    :mod:`irpo_jax.evaluate` and :mod:`irpo_jax.restore` do. The forward is jitted once per input
    shape. ``module`` is the NNX model itself; for an IRPO policy, calling it runs the
    deterministic policy (every action at its Beta mean).
    """

    def __init__(self, module: nnx.Module, meta: Mapping[str, Any]):
        self.module = module
        self.meta = dict(meta)
        self._graphdef, self._state = nnx.split(module)
        self._forward = jax.jit(lambda g, s, x: nnx.merge(g, s)(x))

    @property
    def config(self) -> adair.AdaIRConfig:
        return self.module.config

    def __call__(self, batch: jax.Array | np.ndarray) -> jax.Array:
        """Restores ``batch`` (B, H, W, 3), float in [0, 1]; returns the raw (unclipped) output.

        Raises:
          TypeError: a non-floating batch (uint8 pixels would be read as 0..255 intensities).
          ValueError: a batch that is not (B, H, W, 3).
        """
        if not isinstance(batch, (jax.Array, np.ndarray)):
            batch = np.asarray(batch)
        if not jnp.issubdtype(batch.dtype, jnp.floating):
            raise TypeError(
                f"the restorer takes float images in [0, 1], got dtype {batch.dtype}: convert to "
                "float32 in [0, 1] first, e.g. x.astype(np.float32) / 255 for 8-bit pixels."
            )
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(
                f"the restorer takes RGB batches (B, H, W, 3), got shape {tuple(batch.shape)}. One "
                "image: x[None]; grey images: repeat the channel (np.repeat(x[..., None], 3, -1)), "
                "or use `python -m irpo_jax.restore`, which handles grey/RGBA files."
            )
        batch = jnp.asarray(batch, jnp.float32)
        return self._forward(self._graphdef, self._state, batch)


def load_model(path: str | os.PathLike) -> Restorer:
    """Load a converted or trained model directory into a ready :class:`Restorer`."""
    return Restorer(*restore_model(path))
