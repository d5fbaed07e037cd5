"""The one sharded inference engine: a model placed on the local devices, compiled once per shape.

Evaluation (:mod:`irpo_jax.evaluation.protocol`), mining (:mod:`irpo_jax.evaluation.mining`)
and ``python -m irpo_jax.restore`` run their images through it:

* **Placement** (:func:`make_runner`): the model's parameters replicated on a 1-D ``("data",)``
  mesh of the local devices; its functions (restore; restore, clip and score; the best-of-K
  oracle) traced under the mesh, so the model's FFTs run on each device's own images. Each is
  compiled once per distinct input shape and kept in a small module-level cache keyed by the
  model's graph, so a trainer evaluating new parameters of the same model every N steps never
  recompiles.
* **Loading** (:func:`prefetch`): images are decoded by a thread pool a few ahead, in order.
* **Batches of one shape**: images arriving one by one are grouped by shape
  (:class:`ShapeBuckets`, evaluation and restore); a known set of shapes is cut into batches up
  front (:func:`plan_batches`, mining: the same batches on every run, so an interrupted run
  resumes them and several processes share them out).
* **Padding** (:func:`pad_batch`): a batch is filled up to whole devices (or the planned size) by
  repeating its last image; the copies' outputs are discarded.
* **Tiles** (:meth:`Runner.restore_tiled`): an image too large to restore whole, window by
  window (:mod:`irpo_jax.evaluation.tiling`), the windows batched over the devices.

In a multi-process job each process runs on its own devices (evaluation: call it on process 0
only to save the work; mining shares the batches out).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from irpo_jax import metrics
from irpo_jax.evaluation import tiling
from irpo_jax.mesh import make_mesh

__all__ = [
    "EvalError",
    "Runner",
    "ShapeBuckets",
    "geometric_self_ensemble",
    "make_runner",
    "out_of_memory",
    "pad_batch",
    "plan_batches",
    "prefetch",
]

K = TypeVar("K")
V = TypeVar("V")


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
        return {"restored": restored, "psnr": metrics.psnr(restored, clean), "ssim": metrics.ssim(restored, clean)}

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
    return {
        "oracle_psnr": pick(p),
        "oracle_ssim": pick(s),
        "oracle_index": best,
        "oracle_mean_psnr": jnp.mean(p, axis=1),
    }


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
            raise EvalError(
                "evaluation needs replicated parameters; this array is sharded across "
                f"processes ({a.sharding}). Gather it first."
            )
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
            return self.fns.batch(self.state, self.put(degraded), self.put(clean), self.put(ids), jnp.uint32(seed))

    def apply_host(self, x: np.ndarray) -> np.ndarray:
        """The raw (unclipped) restoration of a host batch, back on the host."""
        with jax.default_matmul_precision(self.precision), jax.set_mesh(self.mesh):
            return np.asarray(self.fns.apply(self.state, self.put(x)))

    def score(self, restored: np.ndarray, clean: np.ndarray) -> dict:
        """Clips and scores one ``(H, W, 3)`` restoration (the tiled path)."""
        with jax.default_matmul_precision(self.precision):
            return self.fns.score(restored[None], clean[None])

    def batch_size(self, count: int) -> int:
        """``count`` images rounded up to whole devices."""
        return count + (-count % self.n)

    def score_images(
        self,
        degraded: Sequence[np.ndarray],
        clean: Sequence[np.ndarray],
        *,
        ids: np.ndarray | None = None,
        seed: int = 0,
        size: int | None = None,
    ) -> dict:
        """Restores, clips and scores ``(H, W, 3)`` images of one shape as one batch.

        Args:
          degraded, clean: the images, float32 in [0, 1].
          ids: the images' ``uint32`` ids (the oracle's per-image sampling keys); default zeros.
          seed: the oracle's sampling seed.
          size: the padded batch size (a multiple of :attr:`n`); default :meth:`batch_size`.

        Returns:
          :meth:`run_batch`'s outputs, on the devices; rows from ``len(degraded)`` on are padding.
        """
        size = self.batch_size(len(degraded)) if size is None else size
        ids = np.zeros(len(degraded), np.uint32) if ids is None else ids
        return self.run_batch(pad_batch(degraded, size), pad_batch(clean, size), pad_batch(ids, size), seed)

    def restore_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The raw (unclipped) restorations of ``(H, W, 3)`` images of one shape, run as one batch,
        on the host (``(len(images), H, W, 3)``, the padding dropped)."""
        return self.apply_host(pad_batch(images, self.batch_size(len(images))))[: len(images)]

    def restore_tiled(self, image: np.ndarray, *, tile: int, overlap: int) -> np.ndarray:
        """The raw restoration of one ``(H, W, 3)`` image in ``tile`` windows overlapping by
        ``overlap`` pixels (:func:`irpo_jax.evaluation.tiling.tiled_apply`), a window per device."""
        return tiling.tiled_apply(self.apply_host, image, tile=tile, overlap=overlap, batch_size=self.n)


def make_runner(
    model: Any,
    *,
    ensemble: bool = False,
    oracle_k: int = 0,
    devices: Sequence[jax.Device] | None = None,
    precision: str = "highest",
) -> Runner:
    """Places ``model`` on a 1-D ``("data",)`` mesh of ``devices`` (default: the local devices).

    Parameters are replicated; :meth:`Runner.run_batch` and :meth:`Runner.apply_host` take a
    batch whose size is a multiple of the device count and shard it; :meth:`Runner.score_images`
    and :meth:`Runner.restore_images` pad a list of images to one.

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
    mesh = make_mesh(list(devices or jax.local_devices()))  # this process's devices
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
        raise EvalError(
            f"--oracle_k needs an IRPO policy checkpoint (model 'adair_policy', which can "
            f"sample restorations); this model is {kind!r}"
        )
    fns = _cached_fns(key, lambda: _make_fns(graphdef, fn, ensemble, oracle_k))
    state = jax.device_put(jax.tree.map(_local_copy, state), NamedSharding(mesh, P()))
    return Runner(fns, state, mesh, kind, precision)


def out_of_memory(err: Exception) -> bool:
    """Whether ``err`` is a device running out of memory (XLA reports it as a runtime error)."""
    return "RESOURCE_EXHAUSTED" in str(err) or "out of memory" in str(err).lower()


# ----------------------------------------------------------------------------- loading and batching


def prefetch(
    load: Callable[[K], V],
    keys: Iterable[K],
    *,
    workers: int,
    ahead: int | None = None,
    errors: tuple[type[Exception], ...] = (),
) -> Iterator[tuple[K, V | Exception]]:
    """``(key, load(key))`` in the order of ``keys``, loaded by a pool of ``workers`` threads up to
    ``ahead`` keys ahead of the one yielded (default ``2 * workers + 1``); an exception of a type in
    ``errors`` comes instead of its value."""
    window = 2 * workers + 1 if ahead is None else ahead

    def get(key: K) -> V | Exception:
        try:
            return load(key)
        except errors as err:
            return err

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        for key in keys:
            pending.append((key, pool.submit(get, key)))
            if len(pending) > window:
                k, fut = pending.popleft()
                yield k, fut.result()
        while pending:
            k, fut = pending.popleft()
            yield k, fut.result()


def pad_batch(images: Sequence[np.ndarray] | np.ndarray, size: int) -> np.ndarray:
    """``images`` stacked into a batch of ``size``, filled up by repeating the last one (one compiled
    shape per bucket; the copies' outputs are discarded)."""
    batch = images if isinstance(images, np.ndarray) else np.stack(images)
    if len(batch) < size:
        batch = np.concatenate([batch, np.repeat(batch[-1:], size - len(batch), 0)])
    return batch


class ShapeBuckets:
    """Items arriving one by one, grouped by input shape into batches of one compiled shape.

    ``add(shape, item)`` runs ``run(items)`` on the bucket of ``shape`` once it holds ``size``
    items, or on the fullest bucket once more than ``max_waiting`` items wait (bounding host
    memory); ``flush()`` runs the rest, in the order their shapes came.
    """

    def __init__(self, run: Callable[[list[Any]], None], *, size: int, max_waiting: int):
        self._run, self._size, self._max_waiting = run, size, max_waiting
        self._buckets: dict[Hashable, list[Any]] = {}

    def add(self, shape: Hashable, item: Any) -> None:
        bucket = self._buckets.setdefault(shape, [])
        bucket.append(item)
        if len(bucket) == self._size:
            self._run(self._buckets.pop(shape))
        elif sum(len(b) for b in self._buckets.values()) > self._max_waiting:
            self._run(self._buckets.pop(max(self._buckets, key=lambda s: len(self._buckets[s]))))

    def flush(self) -> None:
        for shape in list(self._buckets):
            self._run(self._buckets.pop(shape))


def plan_batches(shapes: Sequence[Hashable], *, batch_size: int, devices: int) -> list[tuple[list[int], int]]:
    """A known set of images cut into batches up front: ``[(indices, padded batch size), ...]``.

    The images (``shapes[i]`` is image ``i``'s input shape) are grouped by shape, the groups taken in
    sorted order and cut into batches. Every batch of a group has one padded size (one compiled
    shape per group): ``batch_size`` rounded up to whole ``devices``, or the group's size rounded
    up to whole devices when that is smaller; a group's last batch is the one that needs padding.
    """
    per_batch = -(-max(1, int(batch_size)) // devices) * devices
    buckets: dict[Hashable, list[int]] = {}
    for i, shape in enumerate(shapes):
        buckets.setdefault(shape, []).append(i)
    chunks: list[tuple[list[int], int]] = []
    for shape in sorted(buckets):
        idx = buckets[shape]
        bsz = min(per_batch, -(-len(idx) // devices) * devices)
        chunks += [(idx[j : j + bsz], bsz) for j in range(0, len(idx), bsz)]
    return chunks
