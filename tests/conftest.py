"""Shared pytest set-up: two fake CPU devices, a persistent compile cache, torch skipping, and
the grouping of tests for ``pytest -n 2 --dist loadfile`` (``make test``).

XLA flags must be set before jax is imported anywhere, so this file sets them first.
"""

import importlib.util
import os
import pathlib

# Two fake CPU devices, and XLA:CPU's classic elemental emitters instead of its MLIR fusion
# emitters: compiles ~35 % faster (the suite: 16.6 -> 12.4 min on 2 cores), results within ~1e-6
# (two programs of the same arithmetic may fuse, and so round, differently). Added to the
# caller's XLA_FLAGS unless they set the same flag.
SUITE_XLA_FLAGS = {"xla_force_host_platform_device_count": "2", "xla_cpu_use_fusion_emitters": "false"}
_flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join(
    [_flags] + [f"--{k}={v}" for k, v in SUITE_XLA_FLAGS.items() if f"--{k}=" not in _flags]
).strip()
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


# ``make test`` runs two pytest-xdist workers with ``--dist loadfile``: each test module is one
# work unit (its module fixtures are built once), except that the modules sharing the session
# fixtures below (``demo_root``, ``supervised_run``, ``stale_run``) form one unit together. The units that take
# longest go first (longest-first keeps the two workers' loads even); the rest keep file order.
# (Not ``--dist loadgroup``: xdist 3.8 tags grouped tests through ``item._nodeid``, which pytest 9
# no longer reads, so its ``xdist_group`` marks are silently ignored.) Both workers share the
# persistent compilation cache: JAX writes each entry as a whole file, and an entry read while
# the other worker is still writing it fails its checksum and counts as a miss.
SHARED_UNITS = {"test_train": "train", "test_multihost": "train", "test_hard_set": "train", "test_run_start": "train"}
# Ordered by each unit's seconds in a measured run (pytest --durations, 2026-12-06, 767 tests,
# beside two study runs); update it when a unit grows past its neighbours.
LONGEST_FIRST = (
    "train",  # test_train, test_multihost, test_hard_set, test_run_start: ~930 s in that run
    "test_grpo_reconstruction",
    "test_policy",
    "test_mini_irpo",
    "test_gpu_check",
    "test_fault_injection",
    "test_reproduce",
    "test_bf16",
    "test_grpo_update",
    "test_study_arms",
    "test_policy_step0",
    "test_adair",
    "test_evaluate",
)


def _unit(module_path: str) -> str:
    stem = pathlib.PurePath(module_path).stem
    return SHARED_UNITS.get(stem, stem)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with :data:`SHARED_UNITS` merged and the workers' collection order kept."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(super()._split_scope(nodeid))

    config.option.loadscopereorder = False  # xdist would sort the units by their number of tests
    return Scheduling(config, log)


def pytest_collection_modifyitems(config, items):
    if not HAS_TORCH:
        skip = pytest.mark.skip(reason="torch is not installed (pip install '.[torch]')")
        for item in items:
            if "torch" in item.keywords:
                item.add_marker(skip)
    if hasattr(config, "workerinput"):  # an xdist worker: the scheduler takes units in this order
        rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(_unit(str(item.path)), len(rank)))  # stable


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
    from test_train import smoke_config

    from irpo_jax import training

    workdir = tmp_path_factory.mktemp("sup")
    cfg = smoke_config(demo_root, "supervised", **{"train.steps": 3, "train.eval_at_end": True})
    cfg.data.eval_sets = ("rain100l", "gopro")  # the tasks smoke_config trains on
    summary = training.run(cfg, workdir, progress=False)
    return workdir, summary


@pytest.fixture(scope="session")
def stale_run(demo_root, supervised_run, tmp_path_factory):
    """One-step-stale GRPO with a (fake) remote reward: 2 steps, preempted after 1 and resumed
    (the second update consumes the rollouts saved with the checkpoint), a panel at the end."""
    from test_train import FakeRewardBridge, smoke_config

    from irpo_jax import training
    from irpo_jax.rewards import remote

    workdir = tmp_path_factory.mktemp("stale")
    # A learning rate that moves the heads enough for the stale ratio to leave 1 visibly (the
    # paper's 3e-5 moves a Beta(50, 50) rate head's log-probs by ~1e-7).
    cfg = smoke_config(demo_root, **{"model.init_from": str(supervised_run[0] / "model"), "train.steps": 2,
                                     "grpo.one_step_stale": True, "train.panel_every": 2,
                                     "optim.lr": 3e-3})  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(remote, "open_reward_bridge", lambda reward_cfg: FakeRewardBridge())
        first = training.run(cfg, workdir, progress=False, stop_after=1)
        summary = training.run(cfg, workdir, progress=False)
    assert first["steps"] == 1 and summary["steps"] == 2 and summary["stop"] == "finished"
    return workdir, cfg
