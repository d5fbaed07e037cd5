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
    from irpo_jax import trainer
    cfg = smoke_config({demo!r}, "supervised", **{{"train.steps": 3}})
    cfg.distributed.coordinator = "127.0.0.1:{port}"
    cfg.distributed.num_processes = 2
    cfg.distributed.process_id = int(sys.argv[1])
    summary = trainer.run(cfg, {workdir!r}, progress=False)
    assert jax.process_count() == 2 and jax.device_count() == 2, (jax.process_count(), jax.device_count())
    print("steps", summary["steps"])
    jax.distributed.shutdown()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(demo_root, supervised_run, tmp_path):
    reference, _ = supervised_run  # 3 supervised steps, one process, two devices, same global batch
    workdir = tmp_path / "multi"
    code = WORKER.format(root=str(ROOT), demo=str(demo_root), port=_free_port(), workdir=str(workdir))
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS=WORKER_XLA_FLAGS)  # fmt: skip
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(i)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
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
        assert "steps 3" in out
    assert_trees_close(params_of(workdir), params_of(reference), atol=2e-5)
