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
the current directory is looked up in the project root. The library entry point,
which the trainer calls every ``train.eval_every`` steps, is::

    results = evaluate(model, data_cfg, sets=None, max_images=0)
    print(format_table(results)); write_results(results, out_dir); scalars(results)

**Protocol** (DESIGN.md "Metrics protocol", adair-spec.md 10.4-10.5): both images
``crop_img(base=16)``-ed and the degraded one run *whole* (no padding, no tiling) at batch size 1
semantics (every image is restored on its own; batching only groups images of one shape),
RGB float in [0, 1], output clipped to [0, 1], PSNR/SSIM with data range 1, no border shave,
skimage's SSIM (7x7 uniform window, sample covariance, channel mean) computed by
:mod:`irpo_jax.metrics`; a set's score is the mean of its per-image scores. Noisy sets (BSD68,
Urban100) are synthesised by the official seeded stream (``np.random.seed(0)``, sigma 15 -> 25
-> 50, files in sorted order; :mod:`irpo_jax.data.readers`) and reported as one *row* per sigma
(``bsd68_s25``). Matrix products run at full float32 precision (``precision="highest"``; no
TF32), so the numbers do not depend on the GPU generation.

**Out-of-domain sets** (IRPO Table 3): ``rrshid``, ``gtrain``, ``sidd``, ``reloblur``,
``lolistreet`` (group ``ood5``), read in their releases' own layouts under
``<data root>/test/ood/<set>/`` by :mod:`irpo_jax.data.ood_sets`, which says where each comes from,
how it pairs and what it averages (GT-Rain: per scene, then over scenes, as its test code).

**Whole sets or a marked partial row.** A set some of whose inputs have no matching target, or
cannot be read, is refused with the files named (a mean over fewer images is another number);
``--allow_partial`` scores the rest and marks the row partial in the tables and in results.json
(``partial``, ``left_out``).

**Table layout** (:func:`format_table`): when the rows of IRPO Table 2 / AdaIR's five-task table
(SOTS, Rain100L, BSD68 sigma=25, GoPro, LOL) are all present, the main table has exactly those
columns and its Average is their mean (that is how 30.20/0.910 is computed); else with the five
out-of-domain rows, IRPO Table 3's layout; with the rows of the three-task table (IRPO Table 7:
SOTS, Rain100L, BSD68 sigma=15/25/50) and no GoPro/LOL, that layout; otherwise one column per
row. Every row is also listed in a second table. ``--reference adair|irpo`` adds the published
row (:mod:`irpo_jax.published`) under ours with the difference, when the config's setting and the
model (the paper's base AdaIR) match a published table, and says why not otherwise.

**Options.** ``self_ensemble``: the x8 geometric self-ensemble (mean of the outputs for the 8
flips/rotations, each transformed back), labelled in every output. ``oracle_k``: for IRPO policy
checkpoints, ``K`` restorations sampled from the policy per image and the one with the best PSNR
*against the ground truth* scored -- an oracle upper bound that uses the answer, never a
result; reported separately and labelled "oracle" everywhere (keys, CSV columns, table titles).
Per-image sampling keys are ``fold_in(PRNGKey(seed), crc32("<row>/<file name>"))``, so they do
not depend on batching or device count; the samples are never self-ensembled. ``tile``: images with a side above ``tile`` are
restored window by window (:mod:`irpo_jax.tiling`); AdaIR has global operations, so this
deviates from the protocol: the CLI warns in one line, and the number of tiled images is
recorded per row. Results files are written whole (temporary file + rename) with the user's
umask (0644 by default).

**Efficiency.** Images are loaded by a thread pool in set order, grouped by shape, and run in
batches of one image per local device (the batch is sharded over a 1-D ``("data",)`` mesh of
the local devices, parameters replicated; a partial batch is padded by repeating an image and
the padding is discarded). Each function is compiled once per distinct input shape and kept in
a small module-level cache keyed by the model's graph, so a trainer evaluating new parameters
of the same model every N steps never recompiles. In a multi-process job each process evaluates
the full sets on its own devices (call it on process 0 only to save the work).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import csv
import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from irpo_jax import metrics, published, tiling
from irpo_jax.data import readers
from irpo_jax.data.readers import DataError

log = logging.getLogger("irpo_jax.evaluate")

__all__ = [
    "CSV_COLUMNS",
    "EVAL_FORMAT",
    "FIVE_TASK_ROWS",
    "OOD_ROWS",
    "THREE_TASK_ROWS",
    "EvalError",
    "Runner",
    "available_rows",
    "check_existing_results",
    "check_writable",
    "describe_checkpoint",
    "evaluate",
    "format_table",
    "geometric_self_ensemble",
    "image_path",
    "main",
    "make_runner",
    "output_dir",
    "result_identity",
    "scalars",
    "write_results",
]

# The directory holding irpo_jax/ (and configs/, in a source checkout).
PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
EVAL_FORMAT = "irpo-jax-eval"
EVAL_VERSION = 1
# IRPO Table 2 (= AdaIR's five-task table; denoising at sigma 25) and IRPO Table 7 (three tasks).
FIVE_TASK_ROWS = ("sots", "rain100l", "bsd68_s25", "gopro", "lol")
THREE_TASK_ROWS = ("sots", "rain100l", "bsd68_s15", "bsd68_s25", "bsd68_s50")
TASK_TITLES = {"dehaze": "Dehazing", "derain": "Deraining", "denoise": "Denoising",
               "deblur": "Deblurring", "lowlight": "Low-Light"}  # fmt: skip
SET_TITLES = {"sots": "SOTS", "rain100l": "Rain100L", "bsd68": "BSD68", "urban100": "Urban100",
              "gopro": "GoPro", "lol": "LOL", "rrshid": "RRSHID", "gtrain": "GT-Rain", "sidd": "SIDD",
              "reloblur": "ReLoBlur", "lolistreet": "LoLI-Street"}  # fmt: skip
# IRPO Table 3: the five-task models on real-world out-of-domain sets.
OOD_ROWS = tuple(readers.OOD_SETS)
ORACLE_LABEL = "oracle: best of K sampled restorations, chosen by PSNR against the ground truth"
SSIM_DEFINITION = ("skimage structural_similarity: 7x7 uniform window, K1=0.01, K2=0.03, sample "
                   "covariance, 3-pixel border of the SSIM map excluded, mean over channels")


class EvalError(ValueError):
    """An evaluation that cannot run as asked; the message says what to do."""


# ----------------------------------------------------------------------------- set names


def available_rows(data_cfg: Any) -> list[str]:
    """Every name ``evaluate(sets=...)`` accepts: set names, ``<noisy set>_s<sigma>`` rows and
    the keys of ``data.eval_paired``."""
    cfg = readers.resolve_config(data_cfg)
    names = []
    for name, (_, _, layout) in readers.TEST_SETS.items():
        names.append(name)
        if layout == "noisy":
            names += [f"{name}_s{int(s)}" for s in cfg["sigmas"]]
    return names + list(readers.SET_GROUPS) + [n for n in cfg["eval_paired"] if n not in names]


def _resolve_rows(cfg: Mapping[str, Any], sets: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(set names to load, rows to report in order)``; a noisy set expands to one row per sigma.

    Raises:
      EvalError: an unknown name, listing the valid ones.
    """
    valid = available_rows(cfg)
    bases: list[str] = []
    rows: list[str] = []
    names = []
    for raw in sets:
        name = raw.strip()
        name = name.lower() if name.lower() in valid else name  # "SOTS" works too
        if name not in valid:
            raise EvalError(f"unknown test set {raw!r}; valid names: {', '.join(valid)} "
                            "(add your own paired folders under data.eval_paired)")
        names.append(name)
    for name in readers.expand_set_names(names):  # a group (ood5) stands for its sets
        m = re.fullmatch(r"(.+)_s(\d+)", name)
        base = m.group(1) if m and m.group(1) in readers.TEST_SETS else name
        if base not in bases:
            bases.append(base)
        noisy = base in readers.TEST_SETS and readers.TEST_SETS[base][2] == "noisy"
        expanded = [f"{base}_s{int(s)}" for s in cfg["sigmas"]] if noisy and base == name else [name]
        rows += [r for r in expanded if r not in rows]
    return bases, rows


def _row_title(row: str, task: str) -> str:
    m = re.fullmatch(r"(.+)_s(\d+)", row)
    base, sigma = (m.group(1), m.group(2)) if m and m.group(1) in SET_TITLES else (row, None)
    title = f"{TASK_TITLES.get(task, task)} on {SET_TITLES.get(base, base)}"
    return f"{title} σ={sigma}" if sigma else title


# ----------------------------------------------------------------------------- compiled functions


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


# ----------------------------------------------------------------------------- the evaluation loop


def _prefetch(es: readers.EvalSet, n: int, workers: int) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """``(index, item)`` in order, decoded by a thread pool a few items ahead; an image that
    cannot be read comes as its :class:`DataError` instead of the item."""
    window = 2 * workers + 2

    def get(i: int) -> dict[str, Any] | DataError:
        try:
            return es[i]
        except DataError as err:
            return err

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        for i in range(n):
            pending.append((i, pool.submit(get, i)))
            if len(pending) >= window:
                j, fut = pending.popleft()
                yield j, fut.result()
        while pending:
            j, fut = pending.popleft()
            yield j, fut.result()


def _image_id(row: str, name: str) -> int:
    return zlib.crc32(f"{row}/{name}".encode()) & 0x7FFFFFFF


def image_path(image_dir: str | os.PathLike, row: str, name: str) -> pathlib.Path:
    """Where ``--save_images`` puts the restoration of image ``name`` of ``row``:
    ``image_dir/<row>/<name with the extension .png>`` (names may hold sub-folders, e.g. GT-Rain's
    ``scene/frame.png``). :mod:`irpo_jax.compare` finds the images here."""
    return pathlib.Path(image_dir) / row / pathlib.PurePosixPath(name).with_suffix(".png")


def _save_png(path: pathlib.Path, img: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    # Rounded (the official test.py truncates; saved images are never used for the metrics).
    Image.fromarray(np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)).save(path)


def _out_of_memory(err: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(err) or "out of memory" in str(err).lower()


def _evaluate_row(runner: Runner, row: str, es: readers.EvalSet, *, max_images: int, tile: int,
                  tile_overlap: int, seed: int, oracle: bool, image_dir: pathlib.Path | None,
                  progress: bool, allow_partial: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """``(per-image records in set order, unreadable images left out)``; without
    ``allow_partial`` an unreadable image raises instead."""
    from tqdm import tqdm

    n = len(es) if max_images <= 0 else min(max_images, len(es))
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    buckets: dict[tuple, list[tuple[int, dict]]] = collections.defaultdict(list)
    bar = tqdm(total=n, desc=row, unit="img", disable=not progress, leave=False, dynamic_ncols=True)

    def record(i: int, item: dict, out: Mapping[str, Any], j: int, tiled: bool) -> None:
        h, w = item["clean"].shape[:2]
        r = {"set": row, "task": es.task, "sigma": int(es.sigma), "name": item["name"],
             "height": h, "width": w, "tiled": tiled,
             "psnr": float(out["psnr"][j]), "ssim": float(out["ssim"][j])}
        if "group" in item:
            r["group"] = item["group"]
        if oracle:
            r.update(oracle_psnr=float(out["oracle_psnr"][j]), oracle_ssim=float(out["oracle_ssim"][j]),
                     oracle_index=int(out["oracle_index"][j]),
                     oracle_mean_psnr=float(out["oracle_mean_psnr"][j]))
        records.append((i, r))
        if image_dir is not None:
            _save_png(image_path(image_dir, row, item["name"]), np.asarray(out["restored"][j]))
        bar.update(1)

    def too_big(items: Sequence[dict], err: Exception) -> EvalError:
        h, w = items[0]["degraded"].shape[:2]
        return EvalError(
            f"test set {row}: out of device memory restoring {items[0]['name']} ({w}x{h}, "
            f"{len(items)} image(s) per step) whole: {str(err).splitlines()[0][:200]}. Use a device "
            "with more memory (README 'Out-of-domain evaluation' lists what each set needs), or "
            "--tile SIZE, which restores in windows and is not the published protocol.")

    def fetch(out: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
        # Restored images stay on the device unless they are saved.
        return jax.device_get({k: v for k, v in out.items() if k != "restored" or image_dir is not None})

    def flush(shape: tuple) -> None:
        group = buckets.pop(shape)
        items = [it for _, it in group]
        items += [items[-1]] * (-len(items) % runner.n)  # pad to whole devices; discarded below
        deg = np.stack([readers.to_float01(it["degraded"]) for it in items])
        cln = np.stack([readers.to_float01(it["clean"]) for it in items])
        ids = np.array([_image_id(row, it["name"]) for it in items], np.uint32)
        try:
            out = fetch(runner.run_batch(deg, cln, ids, seed))
        except Exception as err:  # XLA reports exhausted memory as a runtime error
            if _out_of_memory(err):
                raise too_big(items, err) from err
            raise
        for j, (i, item) in enumerate(group):
            record(i, item, out, j, False)

    try:
        for i, item in _prefetch(es, n, workers=min(8, os.cpu_count() or 1)):
            if isinstance(item, DataError):
                if not allow_partial:
                    raise item
                skipped.append({"name": es.item_name(i), "reason": str(item)})
                bar.update(1)
                continue
            h, w = item["degraded"].shape[:2]
            if tile > 0 and max(h, w) > tile:
                try:
                    restored = tiling.tiled_apply(runner.apply_host, readers.to_float01(item["degraded"]),
                                                  tile=tile, overlap=tile_overlap, batch_size=runner.n)
                except Exception as err:
                    if _out_of_memory(err):
                        raise too_big([item], err) from err
                    raise
                record(i, item, fetch(runner.score(restored, readers.to_float01(item["clean"]))), 0, True)
                continue
            buckets[(h, w)].append((i, item))
            if len(buckets[(h, w)]) == runner.n:
                flush((h, w))
            elif sum(len(b) for b in buckets.values()) > 8 * runner.n:  # bound host memory
                flush(max(buckets, key=lambda s: len(buckets[s])))
        for shape in list(buckets):
            flush(shape)
    except DataError as err:
        raise EvalError(f"test set {row}: {err}. Every image of a set is needed for a comparable "
                        "average: fix or replace that file (or pass --allow_partial to score the "
                        "rest, marked partial).") from err
    finally:
        bar.close()
    return [r for _, r in sorted(records, key=lambda t: t[0])], skipped


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _set_mean(recs: Sequence[Mapping[str, Any]], key: str, *, grouped: bool) -> float:
    """A set's score: the mean of ``key`` over its images, or (``grouped``) over the groups of
    each group's mean (GT-Rain's test code averages per scene, then over scenes)."""
    if not grouped:
        return _mean([r[key] for r in recs])
    by_group: dict[str, list[float]] = collections.defaultdict(list)
    for r in recs:
        by_group[r["group"]].append(r[key])
    return _mean([_mean(v) for v in by_group.values()])


def _layout(rows: Sequence[str], tasks: Mapping[str, str]) -> tuple[str, list[str]]:
    """The paper layout these rows fill (see the module docstring): (name, columns)."""
    if all(r in rows for r in FIVE_TASK_ROWS):
        return "five_task", list(FIVE_TASK_ROWS)
    if all(r in rows for r in OOD_ROWS):
        return "ood_five", list(OOD_ROWS)
    if all(r in rows for r in THREE_TASK_ROWS) and not any(tasks[r] in ("deblur", "lowlight") for r in rows):
        return "three_task", list(THREE_TASK_ROWS)
    return "all_rows", list(rows)


def evaluate(
    model: Any,
    data_cfg: Any,
    sets: Sequence[str] | None = None,
    *,
    max_images: int = 0,
    self_ensemble: bool = False,
    oracle_k: int = 0,
    seed: int = 0,
    tile: int = 0,
    tile_overlap: int = 32,
    image_dir: str | os.PathLike | None = None,
    name: str = "model",
    step: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    precision: str = "highest",
    progress: bool = True,
    allow_partial: bool = False,
) -> dict[str, Any]:
    """Evaluates a restorer on the configured test sets under the published protocol.

    Args:
      model: a :class:`irpo_jax.checkpointing.Restorer` (``load_model(dir)``), an NNX module
        (``AdaIR``; an ``IRPOPolicy`` is run as its deterministic policy) or any jittable
        ``(B, H, W, 3) -> (B, H, W, 3)`` function of float32 images in [0, 1].
      data_cfg: the data config (``config.data``; :func:`readers.default_data_config`).
      sets: names from :func:`available_rows` (``"bsd68"`` = every sigma, ``"bsd68_s25"`` one);
        default ``data.eval_sets``.
      max_images: evaluate only the first N images of every row (0 = all; for quick checks
        during training -- such numbers are not comparable with the papers).
      self_ensemble: x8 geometric self-ensemble.
      oracle_k: K > 0 adds the best-of-K sampled oracle (policy models only).
      seed: seed of the oracle's sampling.
      tile: restore images with a side above ``tile`` in overlapping windows (0 = never).
      tile_overlap: window overlap in pixels (multiple of 8).
      image_dir: save restored images (PNG, rounded to 8 bits) under ``image_dir/<row>/``.
      name: the method name printed in the tables.
      step: training step, recorded in the results.
      devices: devices to shard batches over; default all local devices.
      precision: ``jax.default_matmul_precision`` of the forward ("highest": exact float32).
      progress: show a tqdm bar per row.
      allow_partial: score a set some of whose inputs have no target or cannot be read, leaving
        them out; the row is marked partial and lists them (default: refuse the set).

    Returns:
      A JSON-able dict (format ``"irpo-jax-eval"`` version 1)::

        {"format", "version", "model": {"name", "step", "kind"},
         "protocol": {...how the numbers were computed...},
         "rows": {row: {"task", "sigma", "title", "images", "psnr", "ssim", "tiled", "average",
                        "partial": bool, ["left_out": [{"name", "reason"}]], ["protocol"],
                        ["oracle": {"psnr", "ssim", "mean_sample_psnr"}]}},   # in set order
         "table": {"layout": "five_task" | "ood_five" | "three_task" | "all_rows",
                   "columns": [row, ...]},
         "average": {"psnr", "ssim"},            # mean over table.columns (the paper's Average)
         "oracle": None | {"label", "k", "seed", "average": {"psnr", "ssim"}},
         "per_image": [{"set", "task", "sigma", "name", "height", "width", "tiled", "psnr",
                        "ssim", ["group"], ["oracle_psnr", "oracle_ssim", "oracle_index",
                        "oracle_mean_psnr"]}, ...],
         "seconds": float}

      A row's score is the mean over its images, or, for sets scored per group (GT-Rain's
      scenes; ``average`` says which), the mean over groups of each group's mean.

    Raises:
      EvalError: an unknown set name, an unreadable test image (naming the file), an oracle on a
        non-policy model, a device out of memory (naming the image).
      DataError: a missing data folder, or inputs without a target (naming the files).
    """
    t0 = time.time()
    cfg = readers.resolve_config(data_cfg)
    if oracle_k < 0 or (oracle_k and tile):
        raise EvalError("oracle_k must be >= 0 and cannot be combined with tiling (each window "
                        "would draw its own actions)")
    if tile and (tile % 8 or tile_overlap % 8 or not 0 <= tile_overlap < tile):
        raise EvalError(f"tile={tile} and tile_overlap={tile_overlap} must be multiples of 8 with "
                        "0 <= tile_overlap < tile")
    bases, wanted = _resolve_rows(cfg, list(cfg["eval_sets"] if sets is None else sets))
    all_rows = readers.eval_sets(cfg, bases, allow_partial=allow_partial)  # DataError names the files
    rows = {r: all_rows[r] for r in wanted}  # the order asked for
    runner = make_runner(model, ensemble=self_ensemble, oracle_k=oracle_k, devices=devices,
                         precision=precision)
    image_root = pathlib.Path(image_dir) if image_dir is not None else None

    per_image: list[dict[str, Any]] = []
    out_rows: dict[str, dict[str, Any]] = {}
    for row, es in rows.items():
        t_row = time.time()
        recs, unreadable = _evaluate_row(runner, row, es, max_images=max_images, tile=tile,
                                         tile_overlap=tile_overlap, seed=seed, oracle=bool(oracle_k),
                                         image_dir=image_root, progress=progress,
                                         allow_partial=allow_partial)
        if not recs:
            raise EvalError(f"test set {row}: none of its images could be read "
                            f"(e.g. {unreadable[0]['reason']})")
        per_image += recs
        mean = functools.partial(_set_mean, recs, grouped=es.groups is not None)
        left_out = [{"name": m, "reason": "no matching target"} for m in es.missing] + unreadable
        entry = {"task": es.task, "sigma": int(es.sigma), "title": _row_title(row, es.task),
                 "images": len(recs), "psnr": mean("psnr"), "ssim": mean("ssim"),
                 "tiled": sum(r["tiled"] for r in recs),
                 "average": ("mean over groups of each group's mean" if es.groups is not None
                             else "mean over images"),
                 "partial": bool(left_out), "seconds": round(time.time() - t_row, 3)}
        if left_out:
            entry["left_out"] = left_out
        if es.protocol:
            entry["protocol"] = es.protocol
        if oracle_k:
            entry["oracle"] = {"psnr": mean("oracle_psnr"), "ssim": mean("oracle_ssim"),
                               "mean_sample_psnr": mean("oracle_mean_psnr")}
        out_rows[row] = entry
        log.info("%s: %d images, PSNR %.2f dB, SSIM %.4f", row, entry["images"], entry["psnr"], entry["ssim"])

    layout, columns = _layout(list(out_rows), {r: e["task"] for r, e in out_rows.items()})
    average = {"psnr": _mean([out_rows[c]["psnr"] for c in columns]),
               "ssim": _mean([out_rows[c]["ssim"] for c in columns])}
    oracle = None
    if oracle_k:
        oracle = {"label": ORACLE_LABEL, "k": int(oracle_k), "seed": int(seed),
                  "average": {"psnr": _mean([out_rows[c]["oracle"]["psnr"] for c in columns]),
                              "ssim": _mean([out_rows[c]["oracle"]["ssim"] for c in columns])}}
    return {
        "format": EVAL_FORMAT,
        "version": EVAL_VERSION,
        "model": {"name": name + (" (x8 self-ensemble)" if self_ensemble else ""), "step": step,
                  "kind": runner.kind},
        "protocol": {
            "crop_base": int(cfg["crop_base"]), "color": "RGB", "data_range": 1.0,
            "clip": [0.0, 1.0], "border_shave": 0, "ssim": SSIM_DEFINITION,
            "set_average": "mean of per-image scores",
            "noise": {"seed": int(cfg["test_noise_seed"]), "sigmas": [int(s) for s in cfg["sigmas"]],
                      "file_order": "sorted by name (the official os.listdir order is filesystem-dependent)"},
            "whole_images": not any(r["tiled"] for r in per_image),
            "self_ensemble": bool(self_ensemble), "tile": int(tile),
            "tile_overlap": int(tile_overlap) if tile else 0, "max_images": int(max_images),
            "precision": precision, "devices": runner.n, "data_root": str(cfg["root"]),
            "allow_partial": bool(allow_partial),
        },
        "rows": out_rows,
        "table": {"layout": layout, "columns": columns},
        "average": average,
        "oracle": oracle,
        "per_image": per_image,
        "seconds": round(time.time() - t0, 3),
    }


# ----------------------------------------------------------------------------- reporting


def _cell(psnr: float, ssim: float) -> str:
    return f"{psnr:.2f}/{ssim:.3f}"


def format_table(results: Mapping[str, Any]) -> str:
    """The results as Markdown: the paper-layout table, every row, and the oracle (if any).

    Cells are ``PSNR/SSIM`` (2 and 3 decimals, as the papers print them).
    """
    rows, table = results["rows"], results["table"]
    cols = table["columns"]
    model = results["model"]
    proto = results["protocol"]
    who = model["name"] + (f" (step {model['step']})" if model.get("step") is not None else "")
    titles = {"five_task": "Five-task all-in-one (layout of IRPO Table 2 / AdaIR; denoising at σ=25)",
              "ood_five": "Out-of-domain real-world sets (layout of IRPO Table 3)",
              "three_task": "Three-task all-in-one (layout of IRPO Table 7)",
              "all_rows": "All evaluated rows"}
    notes = []
    if proto["max_images"]:
        notes.append(f"first {proto['max_images']} image(s) per row only: not comparable with the papers")
    if not proto["whole_images"]:
        notes.append(f"some images restored in {proto['tile']}px tiles (see 'tiled'): not the protocol")
    if proto["self_ensemble"]:
        notes.append("x8 geometric self-ensemble")
    partial = {r: e for r, e in rows.items() if e.get("partial")}
    if partial:
        notes.append("PARTIAL rows, scored without some of their images (--allow_partial; see "
                     "left_out in results.json), not comparable with the papers: "
                     + ", ".join(f"{r} ({len(e['left_out'])} left out)" for r, e in partial.items()))
    notes += [f"{r}: set score = {e['average']} ({e.get('protocol', '')})" for r, e in rows.items()
              if e.get("average", "mean over images") != "mean over images"]
    ref = results.get("reference")

    def title(c: str) -> str:
        return rows[c]["title"] + (" (partial)" if rows[c].get("partial") else "")

    def header(first: str) -> list[str]:
        return [f"| {first} | " + " | ".join(title(c) for c in cols) + " | Average |",
                "|:--|" + ":-:|" * (len(cols) + 1)]

    lines = [f"# Evaluation of {who}", "",
             f"PSNR (dB) / SSIM on RGB in [0, 1], images cropped to a multiple of "
             f"{proto['crop_base']} and run whole, no border shave, skimage SSIM; set score = mean "
             "over its images."]
    lines += [f"Note: {n}." for n in notes]
    lines += ["", f"## {titles[table['layout']]}", ""] + header("Method")
    avg = results["average"]
    lines.append(f"| {model['name']} | " + " | ".join(_cell(rows[c]["psnr"], rows[c]["ssim"]) for c in cols)
                 + f" | {_cell(avg['psnr'], avg['ssim'])} |")
    if ref and ref.get("printed"):
        lines += _reference_lines(ref, cols)
    elif ref:
        lines += ["", f"No published {ref['label']} row (--reference {ref['method']}): {ref['why']}."]
    oracle = results.get("oracle")
    if oracle:
        lines += ["", f"## Oracle (not a result): {oracle['label']} (K={oracle['k']}, seed {oracle['seed']})",
                  "", "It uses the ground truth to choose, so it is an upper bound on what the sampled "
                  "policy can reach, not a restoration method.", ""] + header("Method")
        oa = oracle["average"]
        lines.append(f"| {model['name']}, oracle best-of-{oracle['k']} | "
                     + " | ".join(_cell(rows[c]["oracle"]["psnr"], rows[c]["oracle"]["ssim"]) for c in cols)
                     + f" | {_cell(oa['psnr'], oa['ssim'])} |")
    shown = bool(ref and ref.get("printed"))
    lines += ["", "## Every row", "",
              "| Row | Task | σ | Images | PSNR (dB) | SSIM | Tiled |"
              + (" Oracle PSNR | Oracle SSIM |" if oracle else "")
              + (f" {ref['label']} published | Δ (ours − published) |" if shown else ""),
              "|:--|:--|--:|--:|--:|--:|--:|" + ("--:|--:|" if oracle else "") + (":-:|:-:|" if shown else "")]
    for r, e in rows.items():
        images = f"{e['images']}" + (f" (partial: {len(e['left_out'])} left out)" if e.get("partial") else "")
        line = (f"| {r} | {e['task']} | {e['sigma'] or ''} | {images} | {e['psnr']:.2f} | "
                f"{e['ssim']:.4f} | {e['tiled']} |")
        if oracle:
            line += f" {e['oracle']['psnr']:.2f} | {e['oracle']['ssim']:.4f} |"
        if shown:
            p = ref["rows"].get(r)
            line += (f" {_cell(p['psnr'], p['ssim'])} | {p['delta_psnr']:+.2f}/{p['delta_ssim']:+.3f} |"
                     if p else " – | – |")
        lines.append(line)
    return "\n".join(lines) + "\n"


def _reference_lines(ref: Mapping[str, Any], cols: Sequence[str]) -> list[str]:
    """The published row and our difference, as two lines of the paper-layout table."""
    pub, delta = [], []
    for c in cols:
        p = ref["rows"].get(c)
        pub.append(_cell(p["psnr"], p["ssim"]) if p else "–")
        delta.append(f"{p['delta_psnr']:+.2f}/{p['delta_ssim']:+.3f}" if p else "–")
    same = next((t for t in ref["tables"] if list(t["rows"]) == list(cols) and t["average"]), None)
    note = []
    if same:
        avg, printed = same["average"], same["printed_average"]
        cell = _cell(avg["psnr"], avg["ssim"])
        if same["printed_differs"]:  # the paper's Average cell is not its columns' mean
            cell += f" (printed: {_cell(printed['psnr'], printed['ssim'])})"
            what = " and ".join(k.upper() for k in same["printed_differs"])
            note = ["", f"The published Average is the mean of the published columns; {ref['label']}'s "
                    f"printed {what} Average in {same['title']} ({_cell(printed['psnr'], printed['ssim'])}) "
                    "is not its columns' mean, so ours is compared with the column mean."]
        pub.append(cell)
    else:
        pub.append("–")
    d = same["delta_average"] if same else None
    delta.append(f"{d['psnr']:+.2f}/{d['ssim']:+.3f}" if d else "–")
    tables = "; ".join(t["title"] for t in ref["tables"])
    return [f"| {ref['label']}, published ({tables}) | " + " | ".join(pub) + " |",
            "| ours − published | " + " | ".join(delta) + " |"] + note


def scalars(results: Mapping[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Flat ``{name: value}`` for TensorBoard/JSONL: ``eval/<row>/psnr``, ``eval/average/ssim``,
    ``eval/oracle/<row>/psnr``, ..."""
    out = {}
    for r, e in results["rows"].items():
        out[f"{prefix}/{r}/psnr"] = e["psnr"]
        out[f"{prefix}/{r}/ssim"] = e["ssim"]
        if "oracle" in e:
            out[f"{prefix}/oracle/{r}/psnr"] = e["oracle"]["psnr"]
            out[f"{prefix}/oracle/{r}/ssim"] = e["oracle"]["ssim"]
    out[f"{prefix}/average/psnr"] = results["average"]["psnr"]
    out[f"{prefix}/average/ssim"] = results["average"]["ssim"]
    if results.get("oracle"):
        out[f"{prefix}/oracle/average/psnr"] = results["oracle"]["average"]["psnr"]
        out[f"{prefix}/oracle/average/ssim"] = results["oracle"]["average"]["ssim"]
    return out


CSV_COLUMNS = ("set", "task", "sigma", "name", "height", "width", "tiled", "psnr", "ssim")
ORACLE_CSV_COLUMNS = ("oracle_best_of_k_psnr", "oracle_best_of_k_ssim", "oracle_best_index",
                      "oracle_mean_sample_psnr")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_atomic(path: pathlib.Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp creates 0600 files; results are ordinary files, so follow the user's umask
        # (0644 under the usual 022), as open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_results(results: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
    """Writes ``results.json``, ``per_image.csv`` and ``table.md`` into ``out_dir`` (created).

    Each file is written to a temporary name and renamed, so a reader never sees half a file.

    Returns:
      ``{"json", "csv", "table"}`` paths.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "per_image.csv", "table": out / "table.md"}
    _write_atomic(paths["json"], json.dumps(results, indent=1) + "\n")
    oracle = bool(results.get("oracle"))
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS + (ORACLE_CSV_COLUMNS if oracle else ()))
    for r in results["per_image"]:
        row = [r[c] for c in CSV_COLUMNS[:7]] + [f"{r['psnr']:.6f}", f"{r['ssim']:.6f}"]
        if oracle:
            row += [f"{r['oracle_psnr']:.6f}", f"{r['oracle_ssim']:.6f}", r["oracle_index"],
                    f"{r['oracle_mean_psnr']:.6f}"]
        writer.writerow(row)
    _write_atomic(paths["csv"], buf.getvalue())
    _write_atomic(paths["table"], format_table(results))
    return paths


# ----------------------------------------------------------------------------- CLI


def describe_checkpoint(path: pathlib.Path) -> tuple[str, int | None]:
    """``(name, trained step or None)`` of a model directory: a trainer's ``<workdir>/model``
    is named after its workdir and carries ``trained_steps`` in ``manifest.json``."""
    step = None
    manifest = path / "manifest.json"
    if manifest.is_file():
        try:
            step = json.loads(manifest.read_text()).get("trained_steps")
        except (json.JSONDecodeError, AttributeError):
            step = None
    name = path.parent.name if path.name == "model" and path.parent.name else path.name
    return name, (int(step) if step is not None else None)


def check_writable(directory: pathlib.Path, flag: str = "--out") -> None:
    """Creates ``directory`` and writes a probe file, so a bad ``--out`` fails before any work."""
    blocker = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise EvalError(f"cannot write to {flag} {directory}: {blocker} is a file, not a folder. Choose "
                        f"another directory for {flag}.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise EvalError(f"cannot write to {flag} {directory}: {err.strerror or err}. Choose a "
                        f"writable directory for {flag}.") from err


def output_dir(out: pathlib.Path, name: str, step: int | None, *, self_ensemble: bool = False,
               oracle_k: int = 0, max_images: int = 0, tile: int = 0) -> pathlib.Path:
    """``<out>/eval/<step or name>[_x8][_oracle<K>][_first<N>][_tile<T>]``: options that change
    the numbers get their own folder, so they never overwrite the plain protocol's results."""
    leaf = str(step) if step is not None else name
    leaf += "_x8" if self_ensemble else ""
    leaf += f"_oracle{oracle_k}" if oracle_k else ""
    leaf += f"_first{max_images}" if max_images else ""
    leaf += f"_tile{tile}" if tile else ""
    return out / "eval" / leaf


RESULT_FILES = ("results.json", "per_image.csv", "table.md", "images")


def check_existing_results(directory: pathlib.Path, params_sha256: str, settings: Mapping[str, Any], *,
                           overwrite: bool = False) -> bool:
    """Refuses to replace results in ``directory`` that another checkpoint or other settings made.

    Results of the same checkpoint (``model.params_sha256`` in ``results.json``) under the same
    ``settings`` are the same numbers and may be replaced. The CLI checks this; the trainer
    writes its own run's folders directly (a resumed run re-evaluates a step it evaluated before).

    Args:
      directory: the folder :func:`output_dir` chose.
      params_sha256: :func:`irpo_jax.checkpointing.params_sha256` of the model about to be evaluated.
      settings: what, besides the parameters, decides the numbers (recorded as ``settings``).
      overwrite: replace whatever is there (``--overwrite``).

    Returns:
      True when ``directory`` holds other results that ``overwrite`` allows replacing.

    Raises:
      EvalError: ``directory`` holds other results and ``overwrite`` is False; it names the
        folder, what differs, and the two ways on (``--out``, ``--overwrite``).
    """
    present = [n for n in RESULT_FILES if (directory / n).exists()]
    if not present:
        return False
    try:
        old = json.loads((directory / "results.json").read_text())
        old_model = old.get("model") or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        old, old_model = {}, {}
    settings = json.loads(json.dumps(settings, default=str))  # as read back (tuples -> lists)
    old_settings = old.get("settings")
    if not old_model.get("params_sha256") or not isinstance(old_settings, dict):
        why = ("that do not record which checkpoint and settings made them (written by training, an "
               "earlier version or an interrupted run)")
    else:
        differs = ["checkpoint"] if old_model["params_sha256"] != params_sha256 else []
        differs += [k for k in settings if old_settings.get(k) != settings[k]]
        if not differs:
            return False
        why = f"made with a different {', '.join(differs)}"
    if overwrite:
        log.warning("--overwrite: replacing the results in %s (%s)", directory, why)
        return True
    origin = f" from {old_model['checkpoint']}" if old_model.get("checkpoint") else ""
    raise EvalError(
        f"{directory} already holds evaluation results{origin} ({', '.join(present)}) {why}. Nothing "
        "was evaluated or written. Write elsewhere with --out DIR, or pass --overwrite to replace them."
    )


def result_identity(module: Any, data_cfg: Any, sets: Sequence[str] | None = None, *, max_images: int = 0,
                    self_ensemble: bool = False, oracle_k: int = 0, seed: int = 0, tile: int = 0,
                    tile_overlap: int = 32, precision: str = "highest",
                    allow_partial: bool = False) -> tuple[str, dict[str, Any]]:
    """``(params_sha256, settings)``: what decides an evaluation's numbers, as results.json records
    it and :func:`check_existing_results` compares it: the model (parameters and config) and the
    data, rows and options of :func:`evaluate` (not the folder's name or step)."""
    from irpo_jax import checkpointing

    resolved = readers.resolve_config(data_cfg)
    bases, rows = _resolve_rows(resolved, list(resolved["eval_sets"] if sets is None else sets))
    root = str(resolved["root"])
    data = {"root": str(pathlib.Path(os.path.expanduser(root)).absolute()) if root else "",
            **{k: resolved[k] for k in ("eval_paired", "sigmas", "test_noise_seed", "crop_base")},
            # only the evaluated sets' folders: moving another set does not change these numbers
            "test_dirs": {b: resolved["test_dirs"][b] for b in bases if b in resolved["test_dirs"]}}
    settings = {"data": data, "rows": list(rows), "max_images": max_images, "self_ensemble": self_ensemble,
                "oracle_k": oracle_k, "seed": seed if oracle_k else None, "tile": tile,
                "tile_overlap": tile_overlap if tile else None, "precision": precision,
                "allow_partial": allow_partial}
    return checkpointing.params_sha256(module), settings


def _config_spec(spec: str) -> str:
    """``spec`` (``path[:arg]``) with a relative path that is missing from the current directory
    looked up in :data:`PROJECT_ROOT` (so the default works from any directory)."""
    path, sep, arg = spec.partition(":")
    file = pathlib.Path(path)
    if path and not file.is_absolute() and not file.is_file() and (PROJECT_ROOT / file).is_file():
        return str(PROJECT_ROOT / file) + sep + arg
    return spec


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m irpo_jax.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="model directory (convert_adair output or <workdir>/model)")
    p.add_argument("--config", default="configs/allinone5.py",
                   help="config file[:variant]; its .data is used (a relative path missing here is "
                        "looked up in the project root)")
    p.add_argument("--sets", default="", help="comma-separated rows (default: the config's data.eval_sets)")
    p.add_argument("--data_root", default="", help="override data.root")
    p.add_argument("--out", default="", help="results go to OUT/eval/<step or name>/ (default: the "
                                             "workdir for <workdir>/model, else .)")
    p.add_argument("--save_images", action="store_true", help="also save restored PNGs")
    p.add_argument("--overwrite", action="store_true",
                   help="replace results of another checkpoint or other settings in the output folder")
    p.add_argument("--self_ensemble", action="store_true", help="x8 geometric self-ensemble")
    p.add_argument("--oracle_k", type=int, default=0, help="best-of-K sampled oracle (policy checkpoints)")
    p.add_argument("--seed", type=int, default=0, help="oracle sampling seed")
    p.add_argument("--tile", type=int, default=0, help="tile images with a side above SIZE (0 = never)")
    p.add_argument("--tile_overlap", type=int, default=32, help="tile overlap in pixels (multiple of 8)")
    p.add_argument("--max_images", type=int, default=0, help="first N images per row (quick check)")
    p.add_argument("--precision", default="highest", choices=("highest", "high", "default"),
                   help="matmul precision ('default' allows TF32/bf16 passes on GPUs: faster, not exact)")
    p.add_argument("--allow_partial", action="store_true",
                   help="score a set some of whose inputs have no target or cannot be read, leaving them "
                        "out; the row is marked partial (default: refuse the set, naming the files)")
    p.add_argument("--reference", choices=tuple(published.METHODS), default=None,
                   help="print the paper's published row (AdaIR or IRPO) under ours, with the difference, "
                        "when the config's setting and the model (the base AdaIR) match a published table")
    p.add_argument("--test_dir", action="append", default=[], metavar="SET=DIR",
                   help="read test set SET from DIR (overrides data.test_dirs.SET; repeatable), e.g. "
                        "--test_dir sidd=/data/SIDD")
    return p


def _test_dirs(specs: Sequence[str]) -> dict[str, str]:
    """``--test_dir SET=DIR`` flags as ``{SET: DIR}``."""
    out = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise EvalError(f"--test_dir {spec!r}: expected SET=DIR, e.g. --test_dir sidd=/data/SIDD")
        if name.strip() not in readers.TEST_SETS:
            raise EvalError(f"--test_dir {spec!r}: unknown set {name.strip()!r}; valid: "
                            f"{', '.join(readers.TEST_SETS)} (own folders: data.eval_paired)")
        out[name.strip()] = folder.strip()
    return out


TILE_WARNING = ("warning: --tile {tile}: images with a side above {tile} px are restored in overlapping "
                "windows; AdaIR has global operations (the FFT band split, channel attention over the "
                "whole image), so tiled outputs differ from whole-image inference and the numbers are "
                "not the published protocol")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src.xla_bridge"):  # orbax logs every file it reads at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from irpo_jax import checkpointing, config_lib

    try:
        if args.max_images < 0:
            raise EvalError(f"--max_images {args.max_images}: give a positive count, or 0 for every image")
        if args.tile:
            print(TILE_WARNING.format(tile=args.tile), file=sys.stderr)
        ckpt = pathlib.Path(args.checkpoint)
        checkpointing.read_metadata(ckpt)  # a clear error before anything slow
        name, step = describe_checkpoint(ckpt.absolute())
        try:
            config = config_lib.load_config(_config_spec(args.config))
        except Exception as err:  # a config file is Python: any error in it is the file's
            raise EvalError(f"--config {args.config}: {err}" if isinstance(err, (FileNotFoundError, ValueError))
                            else f"--config {args.config}: {type(err).__name__}: {err}") from err
        data_cfg = config.data
        if args.data_root:
            data_cfg.root = args.data_root
        test_dirs = _test_dirs(args.test_dir)
        if test_dirs:
            data_cfg.test_dirs = {**dict(data_cfg.get("test_dirs") or {}), **test_dirs}
        sets = [s for s in args.sets.split(",") if s.strip()] or None
        resolved = readers.resolve_config(data_cfg)
        readers.eval_sets(resolved, _resolve_rows(resolved, sets or list(resolved["eval_sets"]))[0],
                          allow_partial=args.allow_partial)
        if args.out:
            out = pathlib.Path(args.out)
        else:
            out = ckpt.absolute().parent if ckpt.name == "model" and step is not None else pathlib.Path(".")
        out_dir = output_dir(out, name, step, self_ensemble=args.self_ensemble, oracle_k=args.oracle_k,
                             max_images=args.max_images, tile=args.tile)
        check_writable(out_dir)
        model = checkpointing.load_model(ckpt)
        params_sha256, settings = result_identity(
            model.module, data_cfg, sets, max_images=args.max_images, self_ensemble=args.self_ensemble,
            oracle_k=args.oracle_k, seed=args.seed, tile=args.tile, tile_overlap=args.tile_overlap,
            precision=args.precision, allow_partial=args.allow_partial,
        )
        if check_existing_results(out_dir, params_sha256, settings, overwrite=args.overwrite):
            shutil.rmtree(out_dir / "images", ignore_errors=True)  # the other model's restorations
        results = evaluate(model, data_cfg, sets, max_images=args.max_images,
                           self_ensemble=args.self_ensemble, oracle_k=args.oracle_k, seed=args.seed,
                           tile=args.tile, tile_overlap=args.tile_overlap,
                           image_dir=out_dir / "images" if args.save_images else None, name=name,
                           step=step, precision=args.precision, allow_partial=args.allow_partial)
        results["model"].update(checkpoint=str(ckpt.absolute()), params_sha256=params_sha256,
                                config=dataclasses.asdict(model.config))
        results["settings"] = settings
        if args.reference:
            results["reference"] = published.reference(
                args.reference, published.setting_of(str(config.get("name", ""))),
                results["rows"], results["model"]["config"])
        paths = write_results(results, out_dir)
    except (EvalError, DataError, checkpointing.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a disk that fills, a folder made read-only while evaluating, ...
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot write{where}: {err.strerror or err}. Results files are written whole or "
              "not at all; choose another --out or free the space.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; results.json of this evaluation was not written (saved images may "
              "be incomplete)", file=sys.stderr)
        return 130
    print(format_table(results))
    print(f"wrote {paths['json']}, {paths['csv'].name}, {paths['table'].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
