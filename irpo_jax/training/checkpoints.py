"""A run's checkpoints: orbax ``CheckpointManager`` items under ``<workdir>/checkpoints`` and the
model directory ``<workdir>/model`` refreshed from them.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import jax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from irpo_jax import checkpointing
from irpo_jax.training.optimizer import TrainState


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
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        # Handlers named up front: a fresh manager can then read any item's metadata (``pending``
        # exists only in one-step-stale runs) before restoring it.
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler(), "pending": ocp.StandardCheckpointHandler()}  # fmt: skip
        self.manager = ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=options, item_handlers=handlers)

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
            target = self.workdir / "model"
            old = self.workdir / ".model.previous"
            with checkpointing.atomic_directory(self.workdir / ".model.next") as tmp:
                checkpointing.write_model(tmp, model, {"manifest.json": {"trained_steps": step, **meta}})
            if target.exists():
                os.replace(target, old)
            os.replace(self.workdir / ".model.next", target)
            if old.exists():
                import shutil

                shutil.rmtree(old, ignore_errors=True)

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
