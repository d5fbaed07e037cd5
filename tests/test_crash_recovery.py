"""What a killed run leaves, recovered at the next start: an interrupted ``model/`` refresh
(irpo_jax/training/checkpoints.py) and log records after the checkpoint (irpo_jax/metrics_log.py).

The end-to-end proof is tests/test_fault_injection.py (a run killed at 20+ points); these are
the pieces, each state built by hand, and the loop's side of the two recovery rules without the
kill harness: a run that dies after logging a step but before its checkpoint is resumed by the
same command and logs each step once, with the uninterrupted run's values; a finished run whose
``model/`` is older than its last checkpoint gets ``model/`` rewritten by the same command.
"""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from irpo_jax.metrics_log import MetricWriter, read_events, read_metrics
from irpo_jax.training import checkpoints
from irpo_jax.training.checkpoints import model_step, recover_model_directory, refresh_model


def _fake_model(directory: pathlib.Path, step: int | None, complete: bool = True) -> pathlib.Path:
    """A model directory as the trainer writes one (the files model_step looks at)."""
    (directory / "params").mkdir(parents=True)
    (directory / "model.json").write_text("{}")
    if step is not None:
        (directory / "manifest.json").write_text(json.dumps({"trained_steps": step}))
    if complete:
        (directory / "params" / "_CHECKPOINT_METADATA").write_text("{}")
    return directory


@pytest.mark.parametrize(
    "found, want",
    [
        # A delete that failed after a refresh (the issue's `Directory not empty` on the next save).
        ({"model": 6, ".model.previous": 4}, 6),
        # Killed between the fallback's two renames: model/ absent, the new copy beside it.
        ({".model.next": 8, ".model.previous": 6}, 8),
        # Killed after the new copy was complete, before the exchange.
        ({"model": 6, ".model.next": 8}, 8),
        # Killed after the exchange, before the old copy (now .model.next) was deleted.
        ({"model": 8, ".model.next": 6}, 8),
        # A copy cut short (no manifest, no committed params) never wins.
        ({"model": 6, ".model.next": (8, False)}, 6),
    ],
)
def test_an_interrupted_refresh_is_recovered(tmp_path, found, want):
    for name, step in found.items():
        step, complete = step if isinstance(step, tuple) else (step, True)
        _fake_model(tmp_path / name, step, complete)
    (tmp_path / "..model.next.partial-abc" / "params").mkdir(parents=True)  # a write cut short
    recover_model_directory(tmp_path)
    assert model_step(tmp_path / "model") == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_old_checkpoint_half_deleted_is_deleted_at_start(tmp_path):
    for step in (2, 3, 4):
        (tmp_path / str(step) / "state").mkdir(parents=True)
        for name in ("_CHECKPOINT_METADATA", "commit_success.txt"):
            (tmp_path / str(step) / name).write_text("{}")
    (tmp_path / "2" / "commit_success.txt").unlink()  # orbax's retention was deleting step 2
    checkpoints.finish_interrupted_deletions(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3", "4"]
    # Where the latest lacks the files too (another orbax, another filesystem), nothing is touched.
    (tmp_path / "3" / "commit_success.txt").unlink()
    (tmp_path / "4" / "commit_success.txt").unlink()
    checkpoints.finish_interrupted_deletions(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3", "4"]


@pytest.fixture(scope="module")
def tiny_model():
    from flax import nnx

    from irpo_jax.models import adair

    return adair.AdaIR("tiny", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_refresh_replaces_model_even_over_leftovers(tmp_path, tiny_model, monkeypatch, exchange):
    if not exchange:  # a system or filesystem without an atomic exchange
        monkeypatch.setattr(checkpoints, "_exchange", lambda a, b: False)
    _fake_model(tmp_path / "model", 2)
    _fake_model(tmp_path / ".model.previous", 1)  # a delete that failed earlier
    refresh_model(tmp_path, tiny_model, {"trained_steps": 3})
    assert model_step(tmp_path / "model") == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    from irpo_jax import checkpointing

    restored, _ = checkpointing.restore_model(tmp_path / "model")  # the hash covers every parameter's bytes
    assert checkpointing.params_sha256(restored) == checkpointing.params_sha256(tiny_model)


def _log_steps(workdir: pathlib.Path, steps) -> None:
    writer = MetricWriter(workdir)
    for step in steps:
        writer.scalars(step, {"loss/l1": 1.0 / step, "opt/lr": 0.1})
        writer.text(step, "note", f"step {step}")
        writer.image(step, "panel", np.full((4, 4, 3), step / 10, np.float32))
    writer.close()


def _event_steps(workdir: pathlib.Path) -> list[int]:
    return sorted(e.step for f in (workdir / "tensorboard").iterdir() for e in read_events(f) if e.HasField("summary"))


def test_a_resumed_run_drops_what_was_logged_after_its_checkpoint(tmp_path):
    _log_steps(tmp_path, [1, 2])  # an earlier invocation
    _log_steps(tmp_path, [3, 4, 5])  # the one killed after checkpoint 3
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "loss/l1": 0.1')  # a line the kill cut short
    events = next(p for p in sorted((tmp_path / "tensorboard").iterdir()) if _event_steps_of(p) == [3, 4, 5])
    events.write_bytes(events.read_bytes() + b"\x10\x00\x00")  # a record cut short

    writer = MetricWriter(tmp_path, keep_through_step=3)  # resumed at checkpoint 3
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    assert (tmp_path / "metrics.jsonl").read_text().endswith("}\n")
    assert _event_steps(tmp_path) == [1] * 4 + [2] * 4 + [3] * 4  # two scalars, a text, an image each
    assert writer.logged(3, "loss/") and not writer.logged(4, "loss/") and not writer.logged(3, "eval/")
    writer.scalars(4, {"loss/l1": 0.25})
    writer.flush()  # on disk before the next checkpoint, without closing
    assert _event_steps(tmp_path)[-1] == 4 and writer.logged(4, "loss/")
    writer.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    assert not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]


def _event_steps_of(path: pathlib.Path) -> list[int]:
    return sorted({e.step for e in read_events(path) if e.HasField("summary")})


def test_a_run_that_starts_at_step_0_drops_every_record(tmp_path):
    """A start killed before its first checkpoint (or one resumed from step 0, whose step-0
    probe is logged again) starts the logs afresh."""
    _log_steps(tmp_path, [1, 2])
    for keep in (-1, 0):
        MetricWriter(tmp_path, keep_through_step=keep).close()
        assert read_metrics(tmp_path) == [] and list((tmp_path / "tensorboard").iterdir()) == []
    MetricWriter(tmp_path, keep_through_step=2).close()  # a rerun with nothing to log adds no file
    assert list((tmp_path / "tensorboard").iterdir()) == []


# ----------------------------------------------------------------------------- the loop's side


class _Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing on the way out handles it."""


def _loss_records(workdir: pathlib.Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss/l1"]) for r in read_metrics(workdir) if "loss/l1" in r]


def _scalar_events(workdir: pathlib.Path) -> list[tuple[tuple[str, int], float]]:
    return [((v.tag, e.step), v.simple_value) for f in sorted((workdir / "tensorboard").iterdir())
            for e in read_events(f) if e.HasField("summary") for v in e.summary.value]  # fmt: skip


@pytest.fixture(scope="module")
def killed_before_its_last_checkpoint(demo_root, tmp_path_factory):
    """Three supervised steps of the tiny AdaIR with a checkpoint after each: uninterrupted, and
    killed at the final checkpoint's save (step 3 done and logged, checkpoint 3 not written),
    then rerun by the same command."""
    from test_train import smoke_config

    from irpo_jax import training
    from irpo_jax.training.checkpoints import TrainCheckpointer

    cfg = smoke_config(demo_root, "supervised", **{"train.steps": 3, "train.checkpoint_every": 1, "train.log_every": 1,
                                                   "train.keep_checkpoints": 2})  # fmt: skip
    reference, run = tmp_path_factory.mktemp("uninterrupted"), tmp_path_factory.mktemp("killed")
    assert training.run(cfg, reference, progress=False)["stop"] == "finished"
    real_save = TrainCheckpointer.save

    def save(self, state, *args, **kwargs):
        if int(jax.device_get(state.step)) == 3:
            raise _Killed
        return real_save(self, state, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrainCheckpointer, "save", save)
        with pytest.raises(_Killed):
            training.run(cfg, run, progress=False)
    killed = {"losses": _loss_records(run), "checkpoints": sorted(p.name for p in (run / "checkpoints").iterdir()),
              "model_step": model_step(run / "model")}  # fmt: skip
    summary = training.run(cfg, run, progress=False)
    return cfg, reference, run, killed, summary


def test_a_resumed_run_logs_each_step_once(killed_before_its_last_checkpoint):
    _, reference, run, killed, summary = killed_before_its_last_checkpoint
    # What the kill left: step 3 logged, its checkpoint (and model/) not written.
    assert [s for s, _ in killed["losses"]] == [1, 2, 3]
    assert killed["checkpoints"] == ["1", "2"] and killed["model_step"] == 2
    assert summary["stop"] == "finished" and summary["steps"] == 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "3"]  # train.keep_checkpoints=2
    # The rerun resumed at 2 and logged step 3 again: once, with the uninterrupted run's value.
    assert _loss_records(run) == _loss_records(reference)
    assert [s for s, _ in _loss_records(run)] == [1, 2, 3]
    events, want = _scalar_events(run), _scalar_events(reference)
    assert len(events) == len({k for k, _ in events}), "a (tag, step) logged twice in TensorBoard"
    assert {k for k, _ in events} == {k for k, _ in want}
    assert sorted(kv for kv in events if kv[0][0].startswith("loss/")) == sorted(
        kv for kv in want if kv[0][0].startswith("loss/")
    )


def test_a_finished_run_with_a_model_older_than_its_checkpoint_is_repaired(killed_before_its_last_checkpoint,
                                                                            tmp_path):  # fmt: skip
    """model/ of step 2 (other weights) and a leftover copy beside it, after the run finished
    (a kill between the final commit and the refresh): the same command rewrites model/ from
    checkpoint 3, and the run stays finished."""
    from flax import nnx

    from irpo_jax import checkpointing, training
    from irpo_jax.models import adair

    cfg, reference, run, _, _ = killed_before_its_last_checkpoint
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "model")
    older = adair.AdaIR("tiny", rngs=nnx.Rngs(7))
    for name in ("model", ".model.previous"):
        (copy / name).mkdir()
        checkpointing.write_model(copy / name, older, {"manifest.json": {"trained_steps": 2}})
    summary = training.run(cfg, copy, progress=False)
    assert summary["stop"] == "already finished" and summary["steps"] == 3
    assert model_step(copy / "model") == 3 and not (copy / ".model.previous").exists()
    got, _ = checkpointing.restore_model(copy / "model")
    want, _ = checkpointing.restore_model(reference / "model")
    assert checkpointing.params_sha256(got) == checkpointing.params_sha256(want) != checkpointing.params_sha256(older)
    assert _loss_records(copy) == _loss_records(reference)  # nothing logged again


def test_the_model_directory_exchange_works_with_relative_paths(tmp_path, monkeypatch):
    """``renameat2`` is called relative to the working directory (AT_FDCWD): a run started with a
    relative ``--workdir`` swaps its ``model/`` like an absolute one (or says it cannot)."""
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        pathlib.Path(name).mkdir()
        (pathlib.Path(name) / "x").write_text(name)
    if checkpoints._exchange(pathlib.Path("a"), pathlib.Path("b")):
        assert (tmp_path / "a" / "x").read_text() == "b" and (tmp_path / "b" / "x").read_text() == "a"
    else:  # a system or filesystem without renameat2: nothing moved
        assert (tmp_path / "a" / "x").read_text() == "a"
