"""irpo_jax imports, and its non-bridge tests run, with torch unimportable; the reward process
and its wire format import with jax unimportable."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODULES = [
    "irpo_jax", "irpo_jax.models.adair", "irpo_jax.models.convert", "irpo_jax.checkpointing",
    "irpo_jax.metrics", "irpo_jax.rewards", "irpo_jax.rewards.task", "irpo_jax.data.demo",
    "irpo_jax.data.degradations", "irpo_jax.data.readers", "irpo_jax.data.pipeline", "irpo_jax.mine",
    "irpo_jax.evaluate", "irpo_jax.evaluation.mining", "irpo_jax.evaluation.tiling", "irpo_jax.restore",
    "irpo_jax.training", "irpo_jax.train",
    "irpo_jax.rewards.compose", "irpo_jax.rewards.remote", "irpo_jax.models.policy",
]  # fmt: skip


def run(code_or_args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, *code_or_args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw
    )


def test_irpo_jax_imports_without_torch():
    code = "import tests.block_torch\n" + "".join(f"import {m}\n" for m in MODULES)
    code += "import sys; assert 'torch' not in sys.modules\n"
    result = run(["-c", code])
    assert result.returncode == 0, result.stderr


def test_non_bridge_tests_run_without_torch():
    result = run(
        ["-m", "pytest", "-p", "tests.block_torch", "-p", "no:cacheprovider",
         "tests/test_adair.py", "tests/test_convert_adair.py", "tests/test_demo_data.py",
         "-k", "pixel or mask_rules or frequency_split or downscale or keys or config or convert_adair or demo"]
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The bridge tests skip, the rest pass.
    assert re.search(r"\d+ passed", result.stdout) and re.search(r"\d+ skipped", result.stdout), result.stdout


def test_reward_server_and_wire_import_without_jax():
    """The reward process imports the wire format as a plain module, and that pulls in no jax
    (nor torch: the server imports torch only after setting CUDA_VISIBLE_DEVICES)."""
    code = (
        "import tests.block_jax, sys\n"
        "from torch_bridge import reward_server\n"
        "from irpo_jax.rewards import wire\n"
        "assert reward_server.wire is wire is sys.modules['irpo_jax.rewards.wire']\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'torch'))\n"
        "assert not heavy, heavy\n"
        "import irpo_jax.rewards as rewards\n"
        "assert 'open_reward_bridge' in dir(rewards) and 'irpo_jax.rewards.remote' not in sys.modules\n"
    )
    result = run(["-c", code])
    assert result.returncode == 0, result.stderr


def test_reward_server_command_line_runs_without_jax(tmp_path):
    """The server's command line up to torch -- the house rules of irpo_jax.cli (flags, one-line
    errors, logging) and safe_files (its ready file) -- runs with jax and ml_collections unimportable."""
    code = (
        "import tests.block_jax, runpy, sys\n"
        "sys.argv = ['reward_server', '--address', 'unix:/x.sock', '--config', '[1]', '--torch-threads', '1']\n"
        "try:\n"
        "    runpy.run_module('torch_bridge.reward_server', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "from irpo_jax import cli, safe_files\n"
        "cli.setup_logging(20, format='%(message)s')\n"
        f"safe_files.atomic_write_text({str(tmp_path / 'ready')!r}, 'unix:/x.sock')\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in tests.block_jax.BLOCKED + ('torch',))\n"
        "assert not heavy, heavy\n"
        "sys.exit(code)\n"
    )
    result = run(["-c", code])
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "python -m torch_bridge.reward_server: note: --torch-threads is now spelled --torch_threads; the old "
        "spelling will be removed",
        "error: --config must be a JSON object {component: settings}, not a list",
    ], result.stderr
    assert (tmp_path / "ready").read_text() == "unix:/x.sock"
