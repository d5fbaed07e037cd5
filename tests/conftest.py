"""Shared pytest set-up: two fake CPU devices, a persistent compile cache, torch skipping.

XLA flags must be set before jax is imported anywhere, so this file sets them first.
"""

import importlib.util
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

# Compilation dominates small CPU tests; cache it across runs (the cache lives in the checkout).
_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".cache" / "jax"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
# XLA:CPU compile time dominates the suite (a GRPO update of the tiny model took minutes with
# full optimisation); the tests' arrays are tiny, so trade run time for compile time.
jax.config.update("jax_disable_most_optimizations", True)

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


def _has_torch() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except ImportError:  # blocked by tests/block_torch.py (test_without_torch.py)
        return False


HAS_TORCH = _has_torch()


def pytest_collection_modifyitems(config, items):
    if HAS_TORCH:
        return
    skip = pytest.mark.skip(reason="torch is not installed (pip install '.[torch]')")
    for item in items:
        if "torch" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_dir() -> pathlib.Path:
    return FIXTURES / "adair_tiny"


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> pathlib.Path:
    """The built-in demo data set (AdaIR layout), built once per session."""
    from irpo_jax.data import demo

    root = tmp_path_factory.mktemp("demo") / "data"
    demo.build_demo_set(root, seed=0)
    return root


@pytest.fixture(scope="session")
def supervised_run(demo_root, tmp_path_factory):
    """Three supervised smoke steps of the tiny AdaIR on the demo set (one process, all devices)."""
    from irpo_jax import trainer
    from test_train import smoke_config

    workdir = tmp_path_factory.mktemp("sup")
    cfg = smoke_config(demo_root, "supervised", **{"train.steps": 3, "train.eval_at_end": True})
    cfg.data.eval_sets = ("rain100l", "gopro")  # the tasks smoke_config trains on
    summary = trainer.run(cfg, workdir, progress=False)
    return workdir, summary
