"""The device mesh's host-side helpers: what they return on one process, and on two processes
that share a batch-sharded array (CPU collectives over gloo on loopback)."""

import pathlib
import textwrap
import types

import jax
import numpy as np
from test_multihost import _free_port, _run_workers

from irpo_jax import mesh

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_memory_stats_are_the_first_devices_bytes_in_gb(monkeypatch):
    """``perf/device_mem_gb`` and its peak from the device's byte counts (a CPU device has none)."""
    device = types.SimpleNamespace(memory_stats=lambda: {"bytes_in_use": 2.5e9, "peak_bytes_in_use": 4e9})
    monkeypatch.setattr(jax, "local_devices", lambda: [device])
    assert mesh.memory_stats() == {"perf/device_mem_gb": 2.5, "perf/device_peak_mem_gb": 4.0}
    monkeypatch.setattr(jax, "local_devices", lambda: [types.SimpleNamespace(memory_stats=lambda: None)])
    assert mesh.memory_stats() == {}


def test_one_process_holds_every_row_of_a_sharded_batch():
    devices = jax.local_devices()
    m = mesh.make_mesh(devices)
    x = np.arange(4 * len(devices) * 3, dtype=np.float32).reshape(4 * len(devices), 3)
    sharded = jax.device_put(x, jax.sharding.NamedSharding(m, jax.sharding.PartitionSpec("data")))
    rows, first = mesh.process_rows(sharded)
    assert first == 0 and np.array_equal(np.asarray(rows), x)
    np.testing.assert_array_equal(mesh.to_host(sharded), x)


# Each of two processes with two devices holds four rows of an (8, 3) batch-sharded array (not
# fully addressable), as mesh.to_global assembles a batch: to_host must gather the whole array,
# in order, on every process; process_rows must give each process only its own rows, put back in
# order from its two shards, and the index of its first row.
TWO_PROCESS_WORKER = textwrap.dedent(
    """
    import sys
    import jax
    import numpy as np
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize("127.0.0.1:{port}", num_processes=2, process_id=int(sys.argv[1]))
    from jax.sharding import NamedSharding, PartitionSpec
    from irpo_jax import mesh
    full = np.arange(8 * 3, dtype=np.float32).reshape(8, 3) * 10 + 1  # row r starts at 30 r + 1
    me = jax.process_index()
    local = full[4 * me : 4 * me + 4]
    sharding = NamedSharding(mesh.make_mesh(), PartitionSpec("data"))
    x = jax.make_array_from_process_local_data(sharding, local)
    assert not x.is_fully_addressable and jax.device_count() == 4
    gathered = mesh.to_host(x)
    rows, first = mesh.process_rows(x)
    print("gathered", gathered.shape, bool(np.array_equal(gathered, full)))
    print("rows", first, bool(np.array_equal(np.asarray(rows), local)), np.asarray(rows)[:, 0].tolist())
    jax.distributed.shutdown()
    """
)


def test_two_processes_gather_a_shared_batch_and_each_takes_its_own_rows():
    code = TWO_PROCESS_WORKER.format(port=_free_port())
    outputs = _run_workers(code, xla_flags="--xla_force_host_platform_device_count=2")
    for i, out in enumerate(outputs):
        assert "gathered (8, 3) True" in out, out[-4000:]
        assert f"rows {4 * i} True {[30.0 * r + 1 for r in range(4 * i, 4 * i + 4)]}" in out, out[-4000:]
