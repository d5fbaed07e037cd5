"""Devices and processes: the data-parallel mesh, where models are built, and moving batches and
results between the hosts' numpy arrays and the mesh's global arrays (DESIGN decision 2).

Parameters and optimizer state are replicated over a 1-D ``("data",)`` mesh and batches are
sharded along it. GRPO groups never straddle devices: a group is the G rollouts of one image,
and images are what is sharded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D ``("data",)`` mesh over all devices (of all processes).

    Auto axes: batch shardings propagate through the model without per-op annotations.
    """
    devices = devices if devices is not None else jax.devices()
    return jax.sharding.Mesh(np.asarray(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def on_mesh(mesh: jax.sharding.Mesh, fn: Callable) -> Callable:
    """``fn`` called (and so traced) under ``jax.set_mesh(mesh)``: the model reads the mesh to
    keep its FFTs on each device's part of the batch (:func:`irpo_jax.models.adair.frequency_split`)."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with jax.set_mesh(mesh):
            return fn(*args, **kwargs)

    return call


def init_distributed(cfg: ml_collections.ConfigDict) -> None:
    """``jax.distributed.initialize`` for multi-process runs (flags/config, or JAX's own env detection)."""
    d = cfg.distributed
    if d.num_processes > 1 or d.coordinator:
        # CPU devices need an explicit cross-process collectives library; the option only affects
        # the CPU backend (and querying the backend here would initialise it too early).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=d.coordinator or None, num_processes=d.num_processes, process_id=d.process_id
        )


def host_device() -> jax.Device | None:
    """This process's CPU device, where models are built before they are placed (an eager NNX
    init runs ~90 small XLA programs, each an XLA:GPU compile on a card); None (the default
    device) when the CPU backend is off (``JAX_PLATFORMS=cuda``)."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return None


def to_global(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """A training batch (this process's rows) as global arrays sharded over the mesh."""
    keys = ("degraded", "clean", "task_id")
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in keys}


def to_host(x: jax.Array) -> np.ndarray:
    """The whole (global) array on every process; every process must call it."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def process_rows(x: jax.Array) -> tuple[jax.Array, int]:
    """This process's rows of a batch-sharded global array, in order, and the first one's index.

    With several processes each one holds only its devices' rows (the global array cannot be
    fetched whole); its own reward process scores those, as :func:`to_global` assembles them.
    The rows stay on the accelerator: the in-process bridge takes them through DLPack, the
    reward process's client copies them to its transport.
    """
    if x.is_fully_addressable:
        return x, 0
    shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}  # replicas: once
    first, device = min(shards), jax.local_devices()[0]
    return jnp.concatenate([jax.device_put(shards[k], device) for k in sorted(shards)]), first


def memory_stats() -> dict[str, float]:
    """The first local device's memory in use and its peak, in GB (``perf/*``; empty on CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    out = {}
    if "bytes_in_use" in stats:
        out["perf/device_mem_gb"] = stats["bytes_in_use"] / 1e9
    if "peak_bytes_in_use" in stats:
        out["perf/device_peak_mem_gb"] = stats["peak_bytes_in_use"] / 1e9
    return out
