"""The one sharded inference engine: a model placed on the local devices, compiled once per shape.

**Efficiency.** Images are loaded by a thread pool in set order, grouped by shape, and run in
batches of one image per local device (the batch is sharded over a 1-D ``("data",)`` mesh of
the local devices, parameters replicated; a partial batch is padded by repeating an image and
the padding is discarded). Each function is compiled once per distinct input shape and kept in
a small module-level cache keyed by the model's graph, so a trainer evaluating new parameters
of the same model every N steps never recompiles. In a multi-process job each process evaluates
the full sets on its own devices (call it on process 0 only to save the work).

Used by :mod:`irpo_jax.evaluation.protocol`, :mod:`irpo_jax.evaluation.mining` and :mod:`irpo_jax.restore`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from irpo_jax import metrics

__all__ = ["EvalError", "Runner", "geometric_self_ensemble", "make_runner", "out_of_memory"]


class EvalError(ValueError):
    """An evaluation that cannot run as asked; the message says what to do."""


def geometric_self_ensemble(fn: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """The x8 geometric self-ensemble of an NHWC image-to-image function.

    ``mean_k T_k^-1(fn(T_k(x)))`` over the 8 dihedral transforms ``T_k`` (4 rotations, with and
    without a left-right flip). Rotations by 90 degrees swap H and W, so a non-square input
    needs the function at both orientations.
    """

    def run(x: jax.Array) -> jax.Array:
        total = 0.0
        for k in range(8):
            t = jnp.flip(x, axis=2) if k >= 4 else x
            y = fn(jnp.rot90(t, k % 4, axes=(1, 2)))
            y = jnp.rot90(y, -(k % 4), axes=(1, 2))
            total = total + (jnp.flip(y, axis=2) if k >= 4 else y)
        return total / 8.0

    return run


@dataclasses.dataclass(frozen=True)
class _Fns:
    apply: Callable  # (state, x) -> restored (unclipped)
    batch: Callable  # (state, degraded, clean, ids, seed) -> per-image outputs
    score: Callable  # (restored, clean) -> per-image outputs


def _make_fns(graphdef: Any, fn: Callable | None, ensemble: bool, oracle_k: int) -> _Fns:
    def apply(state, x):
        model = nnx.merge(graphdef, state) if graphdef is not None else fn
        return (geometric_self_ensemble(model) if ensemble else model)(x)

    def score(restored, clean):
        restored = jnp.clip(restored, 0.0, 1.0)
        return {"restored": restored, "psnr": metrics.psnr(restored, clean),
                "ssim": metrics.ssim(restored, clean)}

    def batch(state, degraded, clean, ids, seed):
        out = score(apply(state, degraded), clean)
        if oracle_k:
            out.update(_oracle(nnx.merge(graphdef, state), degraded, clean, ids, seed, oracle_k))
        return out

    return _Fns(jax.jit(apply), jax.jit(batch), jax.jit(score))


def _oracle(model: nnx.Module, degraded, clean, ids, seed, k: int) -> dict[str, jax.Array]:
    """Best of ``k`` sampled restorations per image, by PSNR against ``clean``."""
    # Per-image keys: the results do not depend on how the images are batched.
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(ids)
    samples = jnp.clip(model.sample(degraded, keys, k).restored, 0.0, 1.0)  # (B, K, H, W, 3)
    b = degraded.shape[0]
    flat = samples.reshape(b * k, *samples.shape[2:])
    ref = jnp.repeat(clean, k, axis=0)
    p = metrics.psnr(flat, ref).reshape(b, k)
    s = metrics.ssim(flat, ref).reshape(b, k)
    best = jnp.argmax(p, axis=1)  # (B,)
    pick = lambda v: jnp.take_along_axis(v, best[:, None], axis=1)[:, 0]  # noqa: E731
    return {"oracle_psnr": pick(p), "oracle_ssim": pick(s), "oracle_index": best,
            "oracle_mean_psnr": jnp.mean(p, axis=1)}


_FNS_CACHE: collections.OrderedDict = collections.OrderedDict()
_FNS_CACHE_SIZE = 8


def _cached_fns(key: tuple, make: Callable[[], _Fns]) -> _Fns:
    """Jitted functions per (model graph, options): new parameters of the same model reuse them."""
    if key in _FNS_CACHE:
        _FNS_CACHE.move_to_end(key)
        return _FNS_CACHE[key]
    fns = _FNS_CACHE[key] = make()
    while len(_FNS_CACHE) > _FNS_CACHE_SIZE:
        _FNS_CACHE.popitem(last=False)
    return fns


def _local_copy(a: Any) -> Any:
    """A parameter this process can place on its own devices (trainer arrays may span hosts)."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        if not a.is_fully_replicated:
            raise EvalError("evaluation needs replicated parameters; this array is sharded across "
                            f"processes ({a.sharding}). Gather it first.")
        return a.addressable_data(0)
    return a


@dataclasses.dataclass
class Runner:
    """The model placed on a local mesh, with its compiled functions (traced under the mesh, so
    the model's FFTs run on each device's images: :func:`irpo_jax.models.adair.frequency_split`)."""

    fns: _Fns
    state: Any
    mesh: Mesh
    kind: str
    precision: str

    @property
    def n(self) -> int:
        """Number of devices (the batch granularity)."""
        return self.mesh.devices.size

    def put(self, x: np.ndarray) -> jax.Array:
        """Shards a host batch over the mesh (batch size: a multiple of :attr:`n`)."""
        return jax.device_put(x, NamedSharding(self.mesh, P("data")))

    def run_batch(self, degraded: np.ndarray, clean: np.ndarray, ids: np.ndarray, seed: int) -> dict:
        """Restores, clips and scores a batch: ``{"restored", "psnr", "ssim"[, "oracle_*"]}``."""
        with jax.default_matmul_precision(self.precision), jax.set_mesh(self.mesh):
            return self.fns.batch(self.state, self.put(degraded), self.put(clean), self.put(ids),
                                  jnp.uint32(seed))

    def apply_host(self, x: np.ndarray) -> np.ndarray:
        """The raw (unclipped) restoration of a host batch, back on the host."""
        with jax.default_matmul_precision(self.precision), jax.set_mesh(self.mesh):
            return np.asarray(self.fns.apply(self.state, self.put(x)))

    def score(self, restored: np.ndarray, clean: np.ndarray) -> dict:
        """Clips and scores one ``(H, W, 3)`` restoration (the tiled path)."""
        with jax.default_matmul_precision(self.precision):
            return self.fns.score(restored[None], clean[None])


def make_runner(model: Any, *, ensemble: bool = False, oracle_k: int = 0,
                devices: Sequence[jax.Device] | None = None, precision: str = "highest") -> Runner:
    """Places ``model`` on a 1-D ``("data",)`` mesh of ``devices`` (default: the local devices).

    Parameters are replicated; :meth:`Runner.run_batch` and :meth:`Runner.apply_host` take a
    batch whose size is a multiple of the device count and shard it. Also used by
    :mod:`irpo_jax.restore`.

    Args:
      model: a ``Restorer``, an NNX module, or a jittable ``(B, H, W, 3) -> (B, H, W, 3)`` function.
      ensemble: wrap the forward in the x8 :func:`geometric_self_ensemble`.
      oracle_k: also sample ``K`` restorations per image in ``run_batch`` (policy models).
      devices: the mesh's devices.
      precision: ``jax.default_matmul_precision`` while tracing.

    Raises:
      EvalError: ``oracle_k`` for a model that cannot sample.
    """
    from irpo_jax import checkpointing

    module = model.module if isinstance(model, checkpointing.Restorer) else model
    mesh = Mesh(np.array(list(devices or jax.local_devices())), ("data",))
    if isinstance(module, nnx.Module):
        graphdef, state = nnx.split(module)
        kind = "adair_policy" if hasattr(module, "sample") else "adair"
        fn, key = None, (graphdef, ensemble, oracle_k)
    elif callable(module):
        graphdef, state, kind = None, {}, "function"
        fn, key = module, (module, ensemble, oracle_k)
    else:
        raise TypeError(f"evaluate needs a Restorer, an nnx.Module or a function, got {type(model).__name__}")
    if oracle_k and kind != "adair_policy":
        raise EvalError(f"--oracle_k needs an IRPO policy checkpoint (model 'adair_policy', which can "
                        f"sample restorations); this model is {kind!r}")
    fns = _cached_fns(key, lambda: _make_fns(graphdef, fn, ensemble, oracle_k))
    state = jax.device_put(jax.tree.map(_local_copy, state), NamedSharding(mesh, P()))
    return Runner(fns, state, mesh, kind, precision)


def out_of_memory(err: Exception) -> bool:
    """Whether ``err`` is a device running out of memory (XLA reports it as a runtime error)."""
    return "RESOURCE_EXHAUSTED" in str(err) or "out of memory" in str(err).lower()
