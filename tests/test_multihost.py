"""Two JAX processes on loopback (CPU collectives over gloo) train like one process with two devices."""

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

from test_train import assert_trees_close, params_of

ROOT = pathlib.Path(__file__).resolve().parent.parent
# One device per worker process, and the suite's XLA:CPU emitters (conftest.py).
WORKER_XLA_FLAGS = "--xla_force_host_platform_device_count=1 --xla_cpu_use_fusion_emitters=false"

WORKER = textwrap.dedent(
    """
    import os, sys
    import jax
    jax.config.update("jax_disable_most_optimizations", True)
    sys.path.insert(0, os.path.join({root!r}, "tests"))
    from test_train import smoke_config
    from irpo_jax import training
    cfg = smoke_config({demo!r}, "supervised", **{{"train.steps": 3}})
    cfg.distributed.coordinator = "127.0.0.1:{port}"
    cfg.distributed.num_processes = 2
    cfg.distributed.process_id = int(sys.argv[1])
    summary = training.run(cfg, {workdir!r}, progress=False)
    assert jax.process_count() == 2 and jax.device_count() == 2, (jax.process_count(), jax.device_count())
    print("steps", summary["steps"])
    jax.distributed.shutdown()
    """
)


# One-step-stale GRPO with the fake remote reward (conftest's stale_run, uninterrupted): each
# process sends its own images' rollouts to its own reward process.
GRPO_WORKER = textwrap.dedent(
    """
    import os, sys
    import jax
    jax.config.update("jax_disable_most_optimizations", True)
    sys.path.insert(0, os.path.join({root!r}, "tests"))
    from test_train import FakeRewardBridge, smoke_config
    from irpo_jax import training
    from irpo_jax.rewards import remote

    class Recording(FakeRewardBridge):
        rows = []
        def score(self, degraded, restored, clean, **kw):
            self.rows.append((len(restored), sorted(set(int(i) for i in kw["sample_ids"]))))
            return super().score(degraded, restored, clean, **kw)

    remote.open_reward_bridge = lambda reward_cfg: Recording()
    cfg = smoke_config({demo!r}, **{{"model.init_from": {init!r}, "train.steps": 2,
                                    "grpo.one_step_stale": True, "optim.lr": 3e-3}})  # as stale_run
    cfg.distributed.coordinator = "127.0.0.1:{port}"
    cfg.distributed.num_processes = 2
    cfg.distributed.process_id = int(sys.argv[1])
    summary = training.run(cfg, {workdir!r}, progress=False)
    print("steps", summary["steps"], "scored", Recording.rows)
    jax.distributed.shutdown()
    """
)


def _run_workers(code: str, xla_flags: str = WORKER_XLA_FLAGS) -> list[str]:
    """Runs ``code`` as two processes (its argv[1]: the process id); their outputs, each checked to exit 0."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(i)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=900)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    return outputs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(demo_root, supervised_run, tmp_path):
    reference, _ = supervised_run  # 3 supervised steps, one process, two devices, same global batch
    workdir = tmp_path / "multi"
    code = WORKER.format(root=str(ROOT), demo=str(demo_root), port=_free_port(), workdir=str(workdir))
    for out in _run_workers(code):
        assert "steps 3" in out
    assert_trees_close(params_of(workdir), params_of(reference), atol=2e-5)


def test_two_processes_score_their_own_rollouts_remotely(demo_root, supervised_run, stale_run, tmp_path):
    """Multi-host GRPO with a torch reward: each process scores the rows it holds (the global
    rollout array cannot be fetched whole), and the run equals the one-process two-device one."""
    reference, _ = stale_run
    workdir = tmp_path / "multi"
    code = GRPO_WORKER.format(root=str(ROOT), demo=str(demo_root), init=str(supervised_run[0] / "model"),
                              port=_free_port(), workdir=str(workdir))  # fmt: skip
    outputs = _run_workers(code)
    for i, out in enumerate(outputs):
        assert "steps 2" in out, out[-4000:]
        # Batch 2 (one image per process), G = 2: two rows per request, the process's own image
        # (sample id step * 2 + its row); three requests (the stale mode samples one ahead).
        assert f"scored [(2, [{i}]), (2, [{2 + i}]), (2, [{4 + i}])]" in out, out[-4000:]
    assert_trees_close(params_of(workdir), params_of(reference), atol=2e-5)
