"""The data a GRPO run post-trains on: IRPO's hard set (Pillar 1), mined by the run itself.

IRPO post-trains only on the training pairs the starting model restores worst (the 30 % per
degradation, :mod:`irpo_jax.evaluation.mining`). ``python -m irpo_jax.train`` makes that part of the one
command: with ``train.stage="grpo"`` and an empty ``data.manifest``, the run first mines the hard
set with its starting model (``model.init_from``, the same ranking and progress bar as
``python -m irpo_jax.mine``; the ``mining.*`` settings) into ``<workdir>/mined.jsonl`` and then
post-trains on it. A resumed run reuses that manifest; an interrupted mining continues from its
partial file (``mined.jsonl.partial.jsonl``), or starts over when that file was made by another
model or other data.

``data.manifest="all"`` trains on every pair (the paper's "100 %" control); a path trains on
that manifest, which must have been mined under ``data.root`` by ``model.init_from`` (its
header records both) unless ``mining.allow_other_model`` (the data-root check has
``data.manifest_allow_other_root``).

``grpo.task_repeats`` decides what an epoch of the hard set is: AdaIR's mixture (each task's pairs
``data.repeats`` times, so that the small tasks are not drowned by the 72k hazy images; the
default) or every mined pair once.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any

import jax
import ml_collections

from irpo_jax.data.config import DataConfig, resolve_data_config
from irpo_jax.data.manifest import mined_by, mining_settings, read_manifest
from irpo_jax.data.records import DataError
from irpo_jax.training.errors import TrainingError

log = logging.getLogger("irpo_jax.train")

MINED = "mined.jsonl"  # the hard set a run mines, in its workdir
EVERY_PAIR = "all"  # data.manifest value: no hard set


def training_data(cfg: ml_collections.ConfigDict, workdir: pathlib.Path, *, progress: bool = True) -> DataConfig:
    """The data config the run's training iterator reads, resolved once (``data.manifest`` resolved).

    GRPO: mines ``<workdir>/mined.jsonl`` first when ``data.manifest`` is empty (every process
    takes part; the manifest is written by process 0 and read by all), checks a given manifest
    against the starting model, and applies ``grpo.task_repeats``. Supervised: ``data`` as it is
    (``"all"`` means no manifest).

    Raises:
      TrainingError: a manifest mined by another model, or mining settings that changed.
      DataError: data problems (from the readers), naming the path.
    """
    data = resolve_data_config(cfg.data)
    manifest = str(data.manifest or "")
    if manifest == EVERY_PAIR:
        data = dataclasses.replace(data, manifest="")
    elif cfg.train.stage == "grpo" and not manifest:
        if cfg.model.init_from:  # (without one, building the model says what to do)
            data = dataclasses.replace(data, manifest=str(_mine(cfg, data, workdir, progress)))
    elif cfg.train.stage == "grpo":
        _check_model(cfg, pathlib.Path(manifest), what=f"data.manifest {manifest}")
    if cfg.train.stage == "grpo" and not cfg.grpo.task_repeats:
        data = dataclasses.replace(data, repeats={task: 1 for task in data.repeats})
    return data


def _settings(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The run's mining settings, keyed as :func:`~irpo_jax.data.manifest.mining_settings` decodes a header."""
    m = cfg.mining
    return {"fraction": float(m.fraction), "selection": str(m.selection), "rank_by": str(m.rank_by),
            "crop": int(m.crop), "seed": int(cfg.seed)}  # fmt: skip


def _model_identity(checkpoint: pathlib.Path) -> dict[str, Any]:
    from irpo_jax.evaluation import mining as mine

    return {"checkpoint": str(checkpoint.absolute()), "id": mine.checkpoint_id(checkpoint)}


def _check_model(cfg: ml_collections.ConfigDict, manifest: pathlib.Path, *, what: str) -> dict[str, Any]:
    """The manifest's header, after checking that ``model.init_from`` mined it."""
    header, _ = read_manifest(manifest)
    if not cfg.model.init_from or cfg.mining.allow_other_model:
        return header
    model = mined_by(header)
    mine_id = _model_identity(pathlib.Path(cfg.model.init_from))["id"]
    if model.get("id") != mine_id:
        raise TrainingError(
            f"{what} was mined by the model {model.get('checkpoint')} (id {model.get('id')}), but this run "
            f"starts from model.init_from={cfg.model.init_from} (id {mine_id}): the hard set is the pairs the "
            "starting model restores worst. Leave data.manifest empty to mine it with this model, mine again "
            "(python -m irpo_jax.mine --checkpoint <init_from> ...), or set mining.allow_other_model=True "
            "to use it anyway."
        )
    return header


def _mine(cfg: ml_collections.ConfigDict, data: DataConfig, workdir: pathlib.Path, progress: bool) -> pathlib.Path:
    """``<workdir>/mined.jsonl``, mined now (on ``data``, the run's resolved data config) unless an
    earlier invocation of this run did."""
    from irpo_jax.evaluation import mining as mine

    out = (workdir / MINED).absolute()
    if out.exists():
        header = _check_model(cfg, out, what=f"{out} (this run's hard set)")
        recorded, wanted = mining_settings(header), _settings(cfg)
        changed = sorted(k for k in wanted if recorded.get(k) != wanted[k])
        if changed:
            diffs = ", ".join(f"{k}: {recorded.get(k)} -> {wanted[k]}" for k in changed)
            raise TrainingError(
                f"{out} was mined with other settings ({diffs}); "
                "this run trains on it. Start a new --workdir for the new settings (or delete the file, before the "
                "run's first checkpoint, to mine again)."
            )
        log.info("training on the hard set mined earlier: %s", out)
        return out
    s = _settings(cfg)
    images = f"centre {s['crop']}x{s['crop']} crops" if s["crop"] else "whole images"
    print(
        f"mining the hard set with {cfg.model.init_from}: the worst {s['fraction']:.0%} of each degradation by "
        f"{s['rank_by']} ({images}) -> {out}"
    )
    kwargs = dict(fraction=s["fraction"], selection=s["selection"], rank_by=s["rank_by"], crop=s["crop"],
                  batch_size=int(cfg.mining.batch_size), seed=s["seed"], progress=progress)  # fmt: skip
    data = dataclasses.replace(data, manifest="")
    try:
        result = mine.mine(data, cfg.model.init_from, out, resume=True, **kwargs)
    except DataError as err:
        partials = [p for p in out.parent.glob(out.name + ".partial*.jsonl") if p.is_file()]
        if not partials:
            raise
        # Our own partial file, left by another model or other data under this workdir: start over.
        log.warning("mining starts over (%s)", err)
        result = mine.mine(data, cfg.model.init_from, out, resume=False, **kwargs)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("irpo_jax.train: the hard set is written")
    if "table" in result:
        print(result["table"])
    return out
