"""A run's checkpoints: orbax ``CheckpointManager`` items under ``<workdir>/checkpoints`` and the
model directory ``<workdir>/model`` refreshed from them.

Crash safety (a kill at any moment; tests/test_fault_injection.py kills a run at 21 points): a
checkpoint is committed by orbax's rename of its temporary directory, and ``model/`` is
refreshed only after that commit, from a complete copy written beside it (``.model.next``) and
swapped in with one atomic exchange of the two directories (Linux ``renameat2(RENAME_EXCHANGE)``;
elsewhere two renames, between which ``model/`` is briefly absent). At start-up orbax deletes
the temporary directory of an interrupted save, :func:`finish_interrupted_deletions` the remains
of an old checkpoint whose deletion was interrupted, :func:`recover_model_directory` finishes or
undoes an interrupted refresh, and :meth:`TrainCheckpointer.ensure_model` rewrites a ``model/``
whose ``manifest.json`` names another step than the latest checkpoint (a kill between the
commit and the end of the refresh, or a refresh that failed).
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import pathlib
import shutil
import sys
from collections.abc import Callable, Mapping

import jax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from irpo_jax import checkpointing, safe_files
from irpo_jax.training.optimizer import TrainState

log = logging.getLogger("irpo_jax.train")

MODEL_DIR = "model"
_NEXT = ".model.next"  # the new model, complete, before the exchange (after it: the previous one)
_PREVIOUS = ".model.previous"  # the previous model between the two renames of the fallback


class TrainCheckpointer:
    """orbax ``CheckpointManager`` under ``workdir/checkpoints``: state, data iterator, metadata,
    and with ``grpo.one_step_stale`` the pending batch, rollouts and remote scores.

    Each save also refreshes ``workdir/model`` (a model directory :func:`irpo_jax.load_model`,
    evaluation and mining read).
    """

    def __init__(self, workdir: pathlib.Path, keep: int):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.workdir = workdir
        if jax.process_index() == 0:
            finish_interrupted_deletions(workdir / "checkpoints")
        # cleanup_tmp_directories: the temporary directory of a save that a kill interrupted
        # (never listed as a step) is deleted when the next run opens the manager.
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
        # Handlers named up front: a fresh manager can then read any item's metadata (``pending``
        # exists only in one-step-stale runs) before restoring it.
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler(), "pending": ocp.StandardCheckpointHandler()}  # fmt: skip
        self.manager = ocp.CheckpointManager(
            (workdir / "checkpoints").absolute(), options=options, item_handlers=handlers
        )
        if jax.process_index() == 0:
            recover_model_directory(workdir)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(
        self,
        state: TrainState,
        data_state: Mapping,
        meta: Mapping,
        model: nnx.Module | None,
        pending: Mapping | None = None,
    ) -> None:
        """Saves at ``state.step`` (a step already saved is left alone).

        ``pending``: the ``{"batch", "rollout", "remote_scores"}`` tree the next update consumes
        (one-step-stale GRPO), or None.
        """
        ocp = self._ocp
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return
        items = {
            "state": ocp.args.StandardSave(state),
            "data": ocp.args.JsonSave(dict(data_state)),
            "meta": ocp.args.JsonSave(dict(meta)),
        }
        if pending is not None:
            items["pending"] = ocp.args.StandardSave(pending)
        self.manager.save(step, args=ocp.args.Composite(**items))
        self.manager.wait_until_finished()
        if model is not None and jax.process_index() == 0:
            refresh_model(self.workdir, model, {"trained_steps": step, **meta})

    def ensure_model(self, make_model: Callable[[], nnx.Module], meta: Mapping) -> bool:
        """Rewrites ``workdir/model`` when it is not the latest checkpoint's model (process 0).

        ``model/`` follows its checkpoint's commit, so a run killed in between (or whose refresh
        failed) has a checkpoint newer than ``model/``; evaluation, mining and a next stage's
        ``init_from`` would silently read the older weights. ``make_model``: the restored
        state's model (called only when a rewrite is due). Returns whether it rewrote.
        """
        step = self.latest_step()
        if step is None or jax.process_index() != 0:
            return False
        found = model_step(self.workdir / MODEL_DIR)
        if found == step:
            return False
        what = "missing" if found is None else f"from step {found}"
        log.warning("%s is %s, the latest checkpoint is step %d: rewriting it from the checkpoint",
                    self.workdir / MODEL_DIR, what, step)  # fmt: skip
        refresh_model(self.workdir, make_model(), {"trained_steps": step, **meta})
        return True

    def restore(self, abstract_state: TrainState) -> tuple[TrainState, dict, dict]:
        ocp = self._ocp
        step = self.manager.latest_step()
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["data"], restored["meta"]

    def restore_pending(self, mesh: jax.sharding.Mesh, step: int | None = None) -> dict | None:
        """The ``pending`` tree saved at ``step`` (default: the latest), None if it has none.

        Each array comes back with the partition spec it was saved with, on ``mesh`` (a
        single-device array, e.g. remote scores made on the host, comes back replicated), so the
        update sees the same input shardings as in the run that saved it.
        """
        ocp = self._ocp
        step = self.manager.latest_step() if step is None else step
        metadata = self.manager.item_metadata(step)
        if metadata.get("pending") is None:
            return None
        tree = getattr(metadata["pending"], "tree", metadata["pending"])

        def abstract(m):
            spec = getattr(m.sharding, "partition_spec", None)
            sharding = NamedSharding(mesh, P(*spec) if spec is not None else P())
            return jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding)

        restored = self.manager.restore(
            step, args=ocp.args.Composite(pending=ocp.args.StandardRestore(jax.tree.map(abstract, tree)))
        )
        return restored["pending"]

    def close(self) -> None:
        self.manager.close()


_COMMITTED = ("_CHECKPOINT_METADATA", "commit_success.txt")  # what orbax writes into each step it commits


def finish_interrupted_deletions(checkpoints: pathlib.Path) -> None:
    """Deletes the remains of old checkpoints whose deletion a kill cut short.

    orbax deletes a checkpoint past ``keep_checkpoints`` file by file after the next commit;
    a kill in between leaves a step directory without its commit files, which orbax still
    lists (and warns about). Only steps older than the latest are touched, and only where the
    latest has those files (this orbax, on this filesystem, writes them).
    """
    if not checkpoints.is_dir():
        return
    steps = sorted((int(p.name), p) for p in checkpoints.iterdir() if p.name.isdigit() and p.is_dir())
    if not steps or not all((steps[-1][1] / name).exists() for name in _COMMITTED):
        return
    for _, path in steps[:-1]:
        if not all((path / name).exists() for name in _COMMITTED):
            log.warning("removing %s, an old checkpoint whose deletion was interrupted", path)
            shutil.rmtree(path)


def model_step(directory: pathlib.Path) -> int | None:
    """``trained_steps`` of a complete model directory written by the trainer, else None.

    Complete: ``model.json``, a committed ``params/`` and a ``manifest.json`` naming the step
    (a directory only ever appears whole, by rename, but a user may have edited it).
    """
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        step = manifest["trained_steps"]
        if not (directory / "model.json").is_file() or not (directory / "params" / "_CHECKPOINT_METADATA").is_file():
            return None
        return int(step)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def refresh_model(workdir: pathlib.Path, model: nnx.Module, manifest: Mapping) -> None:
    """Replaces ``workdir/model`` by ``model``; at every moment ``model/`` is the old one or the new one.

    The new model is written whole to ``.model.next`` first (a kill there leaves a
    ``.model.next.partial-*`` directory or a complete ``.model.next``, which
    :func:`recover_model_directory` handles), then exchanged with ``model/`` atomically.
    """
    target, new = workdir / MODEL_DIR, workdir / _NEXT
    _remove(new)  # a leftover, normally cleared at start-up
    with safe_files.atomic_directory(new) as tmp:
        checkpointing.write_model(tmp, model, {"manifest.json": dict(manifest)})
    _remove(workdir / _PREVIOUS)  # a leftover of a delete that failed
    if not target.exists():
        os.replace(new, target)
    elif _exchange(new, target):
        _remove(new)  # the previous model, now under the temporary name
    else:  # no atomic exchange here: model/ is absent between these two renames
        os.replace(target, workdir / _PREVIOUS)
        os.replace(new, target)
        _remove(workdir / _PREVIOUS)


def recover_model_directory(workdir: pathlib.Path) -> None:
    """Finishes or undoes a model refresh that a kill (or a failed delete) interrupted.

    Of ``model/``, ``.model.next`` and ``.model.previous``, the complete one with the highest
    ``trained_steps`` becomes ``model/`` (``model/`` itself wins ties); the others and any
    ``.model.next.partial-*`` are deleted. Each move is a rename, so a kill during the
    recovery leaves a state the next start recovers the same way.
    """
    for partial in workdir.glob(f".{_NEXT}.partial-*"):
        _remove(partial)
    target = workdir / MODEL_DIR
    candidates = [target, workdir / _NEXT, workdir / _PREVIOUS]
    steps = {path: model_step(path) for path in candidates if path.is_dir()}
    complete = [path for path in candidates if steps.get(path) is not None]
    if complete:
        best = max(complete, key=lambda path: steps[path])  # max keeps the first of equals: model/
        if best != target:
            log.warning("recovering %s from %s (an interrupted refresh)", target, best.name)
            if not target.exists():
                os.replace(best, target)
            elif not _exchange(best, target):  # target to the other spare name, then best into place
                spare = workdir / (_NEXT if best.name == _PREVIOUS else _PREVIOUS)
                _remove(spare)
                os.replace(target, spare)
                os.replace(best, target)
    for leftover in candidates[1:]:
        _remove(leftover)


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Swaps the directories ``a`` and ``b`` atomically (Linux ``renameat2``). False where the
    system or the filesystem cannot (the caller then falls back to two renames)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):  # e.g. an old kernel, NFS
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))
