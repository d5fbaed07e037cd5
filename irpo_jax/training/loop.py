"""The training loop: :func:`run` builds a run from its config and steps it to the end.

What happens outside jit lives here: batches onto the mesh, the order of a step's parts, the NaN
guard's verdict, logging, image panels, reward probes, evaluations, checkpoints and signals. The
pure step functions are in :mod:`irpo_jax.training.steps`; a GRPO step's rollouts and the
requests for their torch reward scores in :mod:`irpo_jax.training.rollouts`.

With ``grpo.one_step_stale`` the update of step t consumes the batch and rollouts sampled one
step earlier (by theta_{t-1}) with their remote scores, while the reward process scores the
rollouts just sampled by theta_t in a background thread: the scoring overlaps the update
instead of preceding it. The PPO ratio then uses the log-probs stored at sampling time, so the
clip is active. The first step of a fresh run samples twice (the batch it updates on and the
next one), so a run still ends after ``train.steps`` updates and every update t consumes data
batch t, with its rollout key ``fold_in(rng, t)`` as in the normal mode. The sampled-but-not-yet-
used batch is part of every checkpoint (orbax item ``pending``), so resuming gives the same
parameters as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import signal
import sys
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from irpo_jax import checkpointing
from irpo_jax.data import readers
from irpo_jax.mesh import host_device, init_distributed, make_mesh, memory_stats, on_mesh, to_global, to_host
from irpo_jax.models import adair
from irpo_jax.safe_files import atomic_write_text
from irpo_jax.training.checkpoints import TrainCheckpointer
from irpo_jax.training.errors import TrainingError
from irpo_jax.training.optimizer import TrainState, build_optimizer, learning_rate, updates_per_batch
from irpo_jax.training.rollouts import RewardProbe, Rollouts, Sampled
from irpo_jax.training.steps import make_grpo_update, make_supervised_step, reference_is_constant
from irpo_jax.training.workdir import check_workdir_config, validate_config

log = logging.getLogger("irpo_jax.train")


def build_model(cfg: ml_collections.ConfigDict) -> nnx.Module:
    """The model a run trains: AdaIR (supervised) or IRPOPolicy (grpo), from ``model.init_from`` if set."""
    from irpo_jax.models.policy import IRPOPolicy, PolicyConfig

    rngs = nnx.Rngs(cfg.seed)
    start = None
    if cfg.model.init_from:
        start, meta = checkpointing.restore_model(cfg.model.init_from)
        log.info("starting from %s (%s, dim=%d)", cfg.model.init_from, meta["model"], start.config.dim)
    if cfg.train.stage == "supervised":
        if start is None:
            return adair.AdaIR(cfg.model.variant, rngs=rngs)
        return getattr(start, "net", start)  # a policy's backbone can be trained further
    if start is None:
        raise TrainingError(
            "GRPO post-training starts from a pretrained AdaIR, but model.init_from is empty. "
            "Convert the official checkpoint (`python -m torch_bridge.convert_adair adair5d.ckpt "
            "checkpoints/adair5d`) and pass --config.model.init_from=checkpoints/adair5d, or train one "
            "with the supervised stage (--config configs/allinone5.py:supervised)."
        )
    if isinstance(start, IRPOPolicy):
        return start
    pcfg = PolicyConfig.from_dict(cfg.model.policy.to_dict())
    if pcfg.rate_input == "spectrum" and pcfg.spectrum_tile not in (0, cfg.data.patch_size):
        log.warning(
            "model.policy.spectrum_tile=%d differs from the training crop data.patch_size=%d: the rate heads "
            "will read spectrum statistics of another size at test time than in training; set both the same",
            pcfg.spectrum_tile,
            cfg.data.patch_size,
        )
    policy = IRPOPolicy(start.config, pcfg, rngs=rngs)
    nnx.update(policy.net, nnx.state(start, nnx.Param))
    return policy


def total_steps_of(cfg: ml_collections.ConfigDict, epoch_size: int) -> int:
    """The run's optimizer steps: ``train.steps``, or ``train.epochs`` over ``epoch_size`` samples
    (one step per batch, ``grpo.policy_iters`` per GRPO batch: a whole number of batches)."""
    per_batch = updates_per_batch(cfg)
    batches = max(1, math.ceil(cfg.train.epochs * epoch_size / cfg.train.batch_size))
    total = int(cfg.train.steps) or batches * per_batch
    if total % per_batch:
        raise TrainingError(
            f"train.steps={total} counts optimizer steps, and each GRPO batch makes "
            f"grpo.policy_iters={per_batch} of them: use a multiple of {per_batch}"
        )
    return total


def _due(every: int, before: int, after: int) -> bool:
    """Whether a batch that took the run from optimizer step ``before`` to ``after`` reached or
    crossed a multiple of ``every`` (0: never)."""
    return bool(every) and after // every > before // every


class _StopSignal:
    """SIGTERM/SIGINT: the first turns into a flag the loop checks between steps (it then saves a
    checkpoint and stops: preemption-safe); a second one ends the process at once, without one.

    A watcher thread sees the signals, woken through ``signal.set_wakeup_fd``: Python runs a
    signal handler only between bytecodes of the main thread, which during an XLA compile (jax
    releases the GIL there) can be minutes away, so Ctrl-C seemed ignored. The C-level handler
    writes the signal's number to the wakeup pipe at once; the watcher says what will happen
    and, on the second signal, exits with 128 + the first signal's number.
    """

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None  # the first signal's name; later ones do not replace it
        self._first = 0
        self._previous: dict = {}
        self._wakeup_previous = -1
        self._pipe: tuple[int, int] | None = None
        self._watcher: threading.Thread | None = None

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # signals go to the main thread's handlers (e.g. inside a test runner thread)
        read, write = os.pipe()
        os.set_blocking(write, False)  # set_wakeup_fd requires it
        self._pipe = (read, write)
        self._wakeup_previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for sig in self._SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        self._watcher = threading.Thread(target=self._watch, name="stop-signal-watcher", daemon=True)
        self._watcher.start()
        return self

    @staticmethod
    def _handle(signum, frame):
        """The Python-level handler (one must be set for the wakeup fd to be written): the watcher acts."""

    def _watch(self) -> None:
        while True:
            for signum in os.read(self._pipe[0], 64):
                if signum == 0:  # __exit__'s sentinel (no signal has number 0)
                    return
                if signum in self._SIGNALS:
                    self._on_signal(signal.Signals(signum))

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.received is None:
            self.received, self._first = sig.name, sig.value
            print(f"\n{sig.name} received: the run stops after the current step and saves a checkpoint (the same "
                  "command resumes it); a second SIGINT (Ctrl-C) or SIGTERM stops it at once, without a checkpoint.",
                  file=sys.stderr, flush=True)  # fmt: skip
            return
        # The second: leave now. Nothing logged since the last checkpoint is kept by the resumed
        # run anyway, and a checkpoint or model refresh cut short is recovered at the next start
        # (checkpoints.py), so there is nothing to flush; os.write, not print: the main thread
        # may hold the stream's lock.
        os.write(2, f"\n{sig.name} received again: stopping now, without a checkpoint; the same command "
                    "resumes from the last one.\n".encode())  # fmt: skip
        os._exit(128 + self._first)

    def __exit__(self, *exc):
        if self._pipe is None:
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._wakeup_previous)
        os.write(self._pipe[1], b"\0")
        self._watcher.join(timeout=5)
        for fd in self._pipe:
            os.close(fd)
        self._pipe = None


@dataclasses.dataclass
class _StepResult:
    """What one training step hands to the logging after it."""

    step: int  # the optimizer step the update started from
    metrics: dict[str, Any]
    batch: dict[str, jax.Array]
    rollout: dict[str, Any] | None = None  # GRPO: the rollouts the update consumed
    remote_scores: dict[str, jax.Array] = dataclasses.field(default_factory=dict)
    y_det: np.ndarray | None = None  # the deterministic restoration, on panel steps
    rewards: jax.Array | None = None  # GRPO: the (B, G) composite rewards (panels)


class _Run:
    """One invocation of a run: everything :func:`run` builds, and the loop over its steps.

    Construction builds (or restores) the state; :meth:`loop` steps until the end, a signal or
    ``stop_after``; :meth:`close` releases the reward process, the writers and the checkpoint
    manager whatever happened.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: pathlib.Path, *, progress: bool = True):
        from irpo_jax.data.pipeline import make_train_iterator
        from irpo_jax.metrics_log import MetricWriter
        from irpo_jax.training import hard_set, run_length

        self.cfg, self.workdir, self.stage = cfg, workdir, cfg.train.stage
        self.stale = self.stage == "grpo" and bool(cfg.grpo.one_step_stale)
        self.pending: Sampled | None = None  # one-step-stale: the sample the next update consumes
        self.rollouts: Rollouts | None = None  # GRPO: the sampling side (reward process, scoring thread)
        self.ckpt = self.writer = self.probe = None
        self.timings = {"rollout": 0.0, "reward_wait": 0.0, "update": 0.0}
        self.mesh = make_mesh(jax.devices()[: cfg.train.devices] if cfg.train.devices else None)
        if cfg.train.batch_size % self.mesh.size:
            raise TrainingError(
                f"train.batch_size={cfg.train.batch_size} must be a multiple of the {self.mesh.size} devices "
                "(each device restores whole images and their G rollouts)."
            )
        self.replicated, self.sharded = NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P("data"))

        # GRPO: the hard set, mined first unless data.manifest names one (or "all").
        self.data_cfg = hard_set.training_data(cfg, workdir, progress=progress)
        self.data = make_train_iterator(self.data_cfg, batch_size=cfg.train.batch_size, seed=cfg.seed)
        self.total_steps = total_steps_of(cfg, self.data.epoch_size)
        text, self.plan = run_length.describe(cfg, self.data_cfg, self.data.records, self.total_steps,
                                              self.data.epoch_size)  # fmt: skip
        if jax.process_index() == 0:
            print(text)
            self._check_eval_sets()

        # Built on the host, then placed (a checkpoint's weights need not pass through device 0).
        with jax.default_device(host_device()):
            model = build_model(cfg)
            self.graphdef, params = nnx.split(model, nnx.Param)
            params = nnx.to_pure_dict(params)
            self.tx = build_optimizer(cfg, params, self.total_steps, self.data.epoch_size)
            state = TrainState.initial(params, self.tx, cfg.seed, with_ref=self.stage == "grpo")
            state = jax.tree.map(np.asarray, state)
        self.state = jax.device_put(state, self.replicated)
        self.meta = checkpointing.model_metadata(model) | {"stage": self.stage, "total_steps": self.total_steps}

        try:
            self.ckpt = TrainCheckpointer(workdir, cfg.train.keep_checkpoints)
            if self.ckpt.latest_step() is not None:
                self._restore()
            # Records logged after the restored checkpoint are dropped (this run logs them again).
            latest = self.ckpt.latest_step()
            self.writer = MetricWriter(workdir, enabled=jax.process_index() == 0,
                                       keep_through_step=-1 if latest is None else latest)  # fmt: skip
            if self.stage == "grpo":
                self.rollouts = Rollouts(cfg, workdir, self.graphdef, self.mesh)
            self._compile()
        except BaseException:
            self.close()
            raise
        self.start_step = self.step

    # ------------------------------------------------------------------------- start-up

    def _restore(self) -> None:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.state)
        self.state, data_state, _ = self.ckpt.restore(abstract)
        self.data.set_state(data_state)
        saved = self.ckpt.restore_pending(self.mesh) if self.stale else None
        if saved is not None:  # (a checkpoint of the normal mode has none: the next step samples anew)
            self.pending = Sampled.from_tree(saved)
        self.ckpt.ensure_model(self.current_model, self.meta)  # a kill may have left model/ older
        log.info("resumed %s at step %d", self.workdir, self.step)
        print(f"resuming {self.workdir} at step {self.step} of {self.total_steps}")

    def _check_eval_sets(self) -> None:
        """The test sets the run will evaluate on, read now: a missing target found at the end of
        a long run would fail its last step (an evaluation needs every image of a set)."""
        t = self.cfg.train
        if not (t.eval_at_end or t.eval_every):
            return
        try:
            readers.eval_sets(self.data_cfg)
        except readers.DataError as err:
            raise TrainingError(
                f"{err}\n(the run evaluates on data.eval_sets; fix them, choose others with "
                "--config.data.eval_sets, or set train.eval_at_end=False and train.eval_every=0)"
            ) from err

    def _compile(self) -> None:
        """The jitted step functions (traced under the mesh: the model's FFTs stay per device; the
        rollout's is :class:`Rollouts`')."""
        cfg, graphdef, mesh = self.cfg, self.graphdef, self.mesh
        if self.stage == "supervised":
            self.step_fn = on_mesh(mesh, jax.jit(make_supervised_step(graphdef, self.tx, cfg.model.compute_dtype),
                                                 donate_argnums=0))  # fmt: skip
        else:
            constant_ref = bool(cfg.grpo.kl_coef) and reference_is_constant(self.state.ref_params)
            if constant_ref:
                log.info("the reference policy's heads ignore their inputs (a step-0 policy): its log-probs "
                         "come without decoder passes")  # fmt: skip
            update = make_grpo_update(graphdef, self.tx, cfg, self.total_steps, constant_ref=constant_ref)
            self.update_fn = on_mesh(mesh, jax.jit(update, donate_argnums=0))
            if cfg.train.probe_every:
                self.probe = RewardProbe(cfg, self.data_cfg, self.sharded, self.rollouts)
        # The deterministic restoration for the panels (policy: Beta means; AdaIR: its output).
        self.mean_fn = on_mesh(mesh, jax.jit(lambda params, img: nnx.merge(graphdef, params)(img)))

    # ------------------------------------------------------------------------- pieces of a step

    @property
    def step(self) -> int:
        return int(jax.device_get(self.state.step))

    def current_model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, jax.device_get(self.state.params))

    def save(self, pending_grace_s: float | None = None) -> None:
        """Checkpoints the state (and, one-step-stale, the pending sample with its scores).

        ``pending_grace_s``: how long to wait for the pending sample's scores (None: as long as
        the request takes). After a failure or a signal the reward process may be hung or gone:
        the state is saved without the pending sample then, and the resumed run samples its
        next update afresh (a one-step-stale run's only inexact resume).
        """
        tree = None
        if self.pending is not None:
            try:
                self.pending.scores.result(timeout=pending_grace_s)
                tree = self.pending.tree()
            except Exception as e:  # noqa: BLE001 - timed out or failed: save without it
                log.warning("checkpoint without the pending rollouts (their reward scores: %s); a resumed "
                            "run samples the next update afresh", type(e).__name__)  # fmt: skip
        if self.writer is not None:
            self.writer.flush()  # everything logged up to this checkpoint is on disk before it
        self.ckpt.save(self.state, self.data.get_state(), self.meta, self.current_model(), tree)

    def _supervised_step(self, step: int, panel_due: bool) -> _StepResult:
        batch = to_global(next(self.data), self.sharded)
        y_det = to_host(self.mean_fn(self.state.params, batch["degraded"])) if panel_due else None  # before donation
        self.state, metrics = self.step_fn(self.state, batch)
        return _StepResult(step, metrics, batch, y_det=y_det)

    def _grpo_step(self, step: int, panel_due: bool, stop: _StopSignal) -> _StepResult | None:
        """Sample, wait for the scores, update. None when a signal arrived while waiting."""
        t0 = time.perf_counter()
        if self.stale and self.pending is None:  # a fresh run's first step also samples what it updates on
            self.pending = self.rollouts.sample(self.state, step, to_global(next(self.data), self.sharded))
        index = step + 1 if self.stale else step  # its rollout key and reward request (stale: a step ahead)
        fresh = self.rollouts.sample(self.state, index, to_global(next(self.data), self.sharded))
        used = self.pending if self.stale else fresh
        y_det = to_host(self.mean_fn(self.state.params, used.batch["degraded"])) if panel_due else None
        t1 = time.perf_counter()
        try:
            remote_scores = used.wait_for_scores(stop)  # stale: requested one step ago
        except Exception as e:
            self.save(pending_grace_s=0)
            raise TrainingError(
                f"the reward scores of step {step} failed: {e}\nThe state before this step was saved "
                f"in {self.workdir / 'checkpoints'}; fix the reward process (or set reward.bridge.mode=off) "
                "and rerun the same command to resume."
            ) from e
        if remote_scores is None:
            return None
        t2 = time.perf_counter()
        for _ in range(self.cfg.grpo.policy_iters):
            self.state, metrics = self.update_fn(self.state, used.batch, used.rollout, remote_scores)
        # Stale: the next update consumes this step's sample. (After a non-finite update the
        # saved checkpoint then skips the used batch, as the normal mode does.)
        self.pending = fresh if self.stale else None
        t3 = time.perf_counter()
        for name, seconds in zip(self.timings, (t1 - t0, t2 - t1, t3 - t2)):
            self.timings[name] += seconds
        rewards = metrics.pop("rewards")  # (B, G), for the panels only
        metrics = {**metrics, **used.stats}
        return _StepResult(step, metrics, used.batch, used.rollout, remote_scores, y_det, rewards)

    def _check_finite(self, result: _StepResult) -> None:
        """The NaN guard's verdict (the update was not applied): save the last good state, stop."""
        metrics = result.metrics
        if metrics["ok"] >= 1:
            return
        bad = [k.split("/", 1)[1] for k, v in metrics.items() if k.startswith("finite/") and v < 1]
        what = ", ".join(f"loss/{b}" for b in bad) or "a gradient"
        self.save()
        raise TrainingError(
            f"non-finite value in {what} at step {result.step}; the update was not applied and the last "
            f"good state was saved in {self.workdir / 'checkpoints'}. Lower optim.lr, enable "
            "optim.grad_clip, or check the data/rewards of this step."
        )

    def _after_step(self, result: _StepResult, panel_due: bool, rate: dict[str, float]) -> dict[str, float]:
        """Logs, panels, probes, evaluations and periodic checkpoints after the batch that started
        at optimizer step ``result.step`` (``grpo.policy_iters`` steps in the GRPO stage, else 1).

        The intervals count optimizer steps, as ``train.steps`` does: an event is due when the
        batch reached or crossed a multiple of its interval, and it is recorded at the step the
        batch ended on. Returns the batch's scalar metrics (its last update's)."""
        cfg, t = self.cfg, self.cfg.train
        new_step = self.step
        last = {k: float(v) for k, v in result.metrics.items() if not k.startswith("finite/") and k != "ok"}
        if _due(t.log_every, result.step, new_step) or new_step == self.total_steps:
            lr = float(learning_rate(cfg, self.total_steps, self.data.epoch_size)(new_step - 1))
            extra = {"opt/lr": lr, **rate}
            batches = max((new_step - self.start_step) // updates_per_batch(cfg), 1)  # each timed once
            extra.update({f"perf/{k}_s": v / batches for k, v in self.timings.items()})
            extra.update(memory_stats())
            self.writer.scalars(new_step, last | extra)
        if panel_due:
            tag = "degraded_rollouts_mean_clean" if result.rollout is not None else "degraded_restored_clean"
            self.writer.image(new_step, f"panels/{tag}", _panel(result))
        if self.probe is not None and (_due(t.probe_every, result.step, new_step) or new_step == self.total_steps):
            self.writer.scalars(new_step, self.probe(self.state.params))
        if _due(t.eval_every, result.step, new_step) and new_step < self.total_steps:
            _evaluate(cfg, self.workdir, self.current_model(), new_step, self.writer)
        if _due(t.checkpoint_every, result.step, new_step) and new_step < self.total_steps:
            self.save()
        return last

    # ------------------------------------------------------------------------- the loop

    def loop(self, *, progress: bool, stop_after: int | None) -> tuple[str, dict[str, float]]:
        """Steps to the end. Returns ``(stop_reason, last step's metrics)``."""
        from tqdm import tqdm

        cfg = self.cfg
        if self.probe is not None and self.step == 0:
            self.writer.scalars(0, self.probe(self.state.params))
        bar = tqdm(total=self.total_steps, initial=self.start_step, desc=f"{cfg.name} {self.stage}", unit="step",
                   disable=not progress or jax.process_index() != 0, dynamic_ncols=True)  # fmt: skip
        images_seen, t_start, last = 0, time.perf_counter(), {}
        per_batch = updates_per_batch(cfg)
        stop_reason = "finished"
        try:
            with _StopSignal() as stop:
                if self.step < self.total_steps and jax.process_index() == 0:  # (minutes on a GPU)
                    print(f"compiling the {self.stage} step (the first step waits for it)", flush=True)
                while (step := self.step) < self.total_steps:
                    panel_due = _due(cfg.train.panel_every, step, step + per_batch)
                    if self.stage == "supervised":
                        result = self._supervised_step(step, panel_due)
                    else:
                        result = self._grpo_step(step, panel_due, stop)
                        if result is None:
                            stop_reason = f"stopped by {stop.received} while waiting for the reward process"
                            break
                    # One host read per step: the NaN guard (and, on CPU fake devices, it keeps
                    # back-to-back collective steps from dead-locking).
                    result.metrics = jax.device_get(result.metrics)
                    self._check_finite(result)
                    images_seen += cfg.train.batch_size
                    elapsed = time.perf_counter() - t_start
                    rate = {"perf/images_per_s": images_seen / elapsed}
                    if self.stage == "grpo":
                        rate["perf/rollouts_per_s"] = images_seen * cfg.grpo.group_size / elapsed
                    bar.update(self.step - step)
                    bar.set_postfix({k.split("/")[-1]: f"{v:.2f}" for k, v in rate.items()})
                    last = self._after_step(result, panel_due, rate)
                    new_step = self.step
                    if stop.received and new_step < self.total_steps:  # after the last step: finished
                        stop_reason = f"stopped by {stop.received}"
                        break
                    if (
                        stop_after is not None
                        and new_step - self.start_step >= stop_after
                        and new_step < self.total_steps
                    ):
                        stop_reason = f"stopped after {stop_after} steps (stop_after)"
                        break
            self.save(pending_grace_s=30.0 if stop.received else None)
            # (Not again for a finished run whose evaluation was logged: a rerun after a kill.)
            if cfg.train.eval_at_end and stop_reason == "finished" and not self.writer.logged(self.step, "eval/"):
                _evaluate(cfg, self.workdir, self.current_model(), self.step, self.writer)
        finally:
            bar.close()
        return stop_reason, last

    def close(self) -> None:
        """Releases what the run opened, in an order that cannot hang: the writers, the checkpoint
        manager, then the sampling side (:meth:`Rollouts.close`: the bridge first, so that a request
        in flight fails instead of being waited for, then the scoring thread)."""
        for closing in (self.writer, self.ckpt, self.rollouts):
            if closing is not None:
                closing.close()

    def summary(self, stop_reason: str, last: dict[str, float]) -> dict[str, Any]:
        """The run's summary, written to ``summary.json`` (a finished run's record is kept when
        this invocation had nothing to do)."""
        summary = {"stage": self.stage, "steps": self.step, "total_steps": self.total_steps, "stop": stop_reason,
                   "workdir": str(self.workdir), "plan": self.plan, "last_metrics": last}  # fmt: skip
        previous = self.workdir / "summary.json"
        if self.start_step >= self.total_steps and previous.exists():  # nothing ran: keep the finished run's record
            return json.loads(previous.read_text()) | {"stop": "already finished"}
        if jax.process_index() == 0:
            atomic_write_text(previous, json.dumps(summary, indent=2) + "\n")
        return summary


def run(
    cfg: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train as configured; resume from ``workdir`` when it holds checkpoints. Returns a summary.

    Args:
      cfg: the resolved config.
      workdir: run directory (created; resumed when it holds checkpoints).
      progress: show a progress bar.
      stop_after: leave after this many steps of *this* invocation, checkpointing as on SIGTERM
        (for time-limited jobs; a later run with the same workdir continues).
    """
    workdir = pathlib.Path(workdir)
    validate_config(cfg)
    init_distributed(cfg)
    if cfg.train.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(cfg.train.compilation_cache))
    lock = check_workdir_config(workdir, cfg)  # held until the summary is written (process 0)
    trainer = None
    try:
        try:
            trainer = _Run(cfg, workdir, progress=progress)
            stop_reason, last = trainer.loop(progress=progress, stop_after=stop_after)
        finally:
            if trainer is not None:
                trainer.close()
        return trainer.summary(stop_reason, last)
    finally:
        if lock is not None:
            lock.release()


def _panel(result: _StepResult) -> np.ndarray:
    """The batch's first image as a captioned panel (:func:`irpo_jax.metrics_log.image_panel`):
    degraded | rollouts (reward and raw components) | deterministic output | clean."""
    from irpo_jax.metrics_log import image_panel

    first = lambda x: to_host(x)[0]  # noqa: E731
    batch, rollout = result.batch, result.rollout
    kwargs = {}
    if rollout is not None:
        kwargs["rollouts"] = np.clip(first(rollout["restored"]), 0, 1)
        kwargs["scores"] = {k: first(v) for k, v in {**rollout["jax_scores"], **result.remote_scores}.items()}
        kwargs["rewards"] = first(result.rewards) if result.rewards is not None else None
    if result.y_det is not None:
        kwargs["deterministic"] = np.clip(result.y_det[0], 0, 1)
        kwargs["deterministic_label"] = "mean" if rollout is not None else "output"
    return image_panel(first(batch["degraded"]), first(batch["clean"]), **kwargs)


def _evaluate(cfg, workdir: pathlib.Path, model: nnx.Module, step: int, writer) -> None:
    """The published-protocol evaluation on ``data.eval_sets`` (process 0), logged and written to
    ``workdir/eval/<step>[...]``."""
    if jax.process_index() != 0:
        return
    from irpo_jax import evaluation

    written = evaluation.evaluate_and_write(
        model, cfg.data, workdir, name=cfg.name, step=step, max_images=int(cfg.train.eval_max_images)
    )
    writer.scalars(step, written.scalars)
    writer.text(step, "eval/table", written.table)
    print(written.table)
