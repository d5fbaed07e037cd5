"""Every config file builds in every variant, with a docstring that starts with its command."""

import pathlib

import pytest

from irpo_jax import config_lib

CONFIGS = sorted((pathlib.Path(__file__).resolve().parent.parent / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("arg", ["", "supervised", "demo", "smoke", "supervised,demo"])
def test_config_builds(path, arg):
    cfg = config_lib.load_config(f"{path}:{arg}" if arg else str(path))
    assert cfg.train.stage == ("supervised" if "supervised" in arg else "grpo")
    assert set(cfg.data.tasks) <= {"denoise", "derain", "dehaze", "deblur", "lowlight"}
    if "demo" in arg or "smoke" in arg:
        assert cfg.model.variant in ("small", "tiny") and cfg.reward.bridge.mode == "off"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_docstring_starts_with_the_command(path):
    text = path.read_text()
    assert "COMMAND:\n  python -m irpo_jax.train --config configs/" + path.name in text


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown config argument 'fast'"):
        config_lib.load_config(f"{CONFIGS[0]}:fast")
