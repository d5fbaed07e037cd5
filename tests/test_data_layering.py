"""The data package's layering: irpo_jax.tasks is the ground floor (it imports nothing of the
package), and data/ takes the task names from there: importing its modules loads no rewards/."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = sorted(p.stem for p in (ROOT / "irpo_jax" / "data").glob("*.py") if p.stem != "__init__")


def _loaded_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('irpo_jax')))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    return set(out.stdout.split())


def test_tasks_imports_nothing_of_the_package():
    assert _loaded_after("irpo_jax.tasks") == {"irpo_jax", "irpo_jax.tasks"}


@pytest.mark.parametrize("name", ["readers", "ood_sets", "eval_sets", "manifest", "pipeline"])
def test_data_modules_import_alone_and_not_the_rewards(name):
    assert name in DATA
    loaded = _loaded_after(f"irpo_jax.data.{name}")
    assert f"irpo_jax.data.{name}" in loaded
    assert not {m for m in loaded if m.startswith("irpo_jax.rewards")}
