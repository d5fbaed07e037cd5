"""The device mesh's host-side helpers on one process: what they return without collectives."""

import types

import jax
import numpy as np

from irpo_jax import mesh


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
