"""The training library's one import, ``irpo_jax.training``, and the deprecated alias
``irpo_jax.trainer`` that keeps scripts written against it working (with a warning, once)."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_public_name_of_the_training_library_is_importable_from_the_package():
    from irpo_jax import training

    missing = [name for name in training.__all__ if not hasattr(training, name)]
    assert not missing
    assert training.TrainingError.__module__ == "irpo_jax.training.errors"


def test_the_old_trainer_module_is_an_alias_that_warns_once_naming_the_new_import(tmp_path):
    script = tmp_path / "old_script.py"
    script.write_text(
        "from irpo_jax import trainer\n"
        "import irpo_jax.trainer\n"  # a second import: no second warning
        "from irpo_jax import training\n"
        "assert all(getattr(trainer, n) is getattr(training, n) for n in training.__all__)\n"
        "assert trainer.__all__ == training.__all__\n"
    )
    # "-W always": the count is the module's own, not the warnings filter's deduplication.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-W", "always::DeprecationWarning", str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "DeprecationWarning: irpo_jax.trainer" in line]
    assert len(warnings) == 1, result.stderr
    # Attributed to the script's import line (what a user sees), naming the import to write instead.
    assert warnings[0].startswith(f"{script}:1:") and "from irpo_jax import training" in warnings[0]
