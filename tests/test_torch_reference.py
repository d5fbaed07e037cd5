"""The from-spec PyTorch AdaIR against the golden outputs of the official model.

The fixtures in `tests/fixtures/adair_tiny/` were produced by the official `net/model.py`; these
tests pin `torch_bridge.reference_adair` to them (outputs, every stored intermediate, float64,
the non-empty frequency-mask case) and check the default configuration's state-dict layout
without running it.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

pytestmark = pytest.mark.torch

torch = pytest.importorskip("torch")

from torch_bridge.reference_adair import AdaIR, count_parameters  # noqa: E402


def _max_err(actual: np.ndarray, expected: np.ndarray) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))


@pytest.fixture(scope="module")
def tiny_config(tiny_dir: pathlib.Path) -> dict:
    return json.loads((tiny_dir / "config.json").read_text())["config"]


@pytest.fixture(scope="module")
def tiny_state_dict(tiny_dir: pathlib.Path) -> dict:
    return torch.load(tiny_dir / "state_dict.pth", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def tiny_model(tiny_config: dict, tiny_state_dict: dict) -> AdaIR:
    model = AdaIR(**tiny_config).eval()
    model.load_state_dict(tiny_state_dict, strict=True)
    return model


@pytest.fixture(scope="module")
def tiny_input(tiny_dir: pathlib.Path) -> torch.Tensor:
    return torch.from_numpy(np.load(tiny_dir / "input.npy"))


@pytest.fixture(scope="module")
def default_model() -> AdaIR:
    # Meta device: shapes and parameter counts without allocating or initialising 28.8 M floats.
    with torch.device("meta"):
        return AdaIR()


def _run_with_captures(model: AdaIR, x: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Runs `model(x)` and records the tensors the fixtures store, keyed by fixture name."""
    captured: dict[str, np.ndarray] = {}
    modules = dict(model.named_modules())
    handles = []

    def save_output(name: str):
        def hook(module, args, output):
            captured[name] = output.detach().numpy().copy()

        return hook

    def save_first_input(name: str):
        def hook(module, args):
            captured[name] = args[0].detach().numpy().copy()

        return hook

    outputs = {
        "encoder_level1_0": "encoder_level1.0",
        "latent": "latent",
        "decoder_level3": "decoder_level3",
        "decoder_level2": "decoder_level2",
    }
    for k in (1, 2, 3):
        outputs |= {
            f"fre{k}": f"fre{k}",
            f"fre{k}_cross_l": f"fre{k}.channel_cross_l",
            f"fre{k}_cross_h": f"fre{k}.channel_cross_h",
            f"fre{k}_refine": f"fre{k}.frequency_refine",
            f"fre{k}_cross_agg": f"fre{k}.channel_cross_agg",
            f"fre{k}_rate_logits": f"fre{k}.rate_conv",
        }
        # The band features are the first inputs of the two band cross-attentions.
        handles.append(modules[f"fre{k}.channel_cross_l"].register_forward_pre_hook(save_first_input(f"fre{k}_high")))
        handles.append(modules[f"fre{k}.channel_cross_h"].register_forward_pre_hook(save_first_input(f"fre{k}_low")))
    for fixture_name, module_name in outputs.items():
        handles.append(modules[module_name].register_forward_hook(save_output(fixture_name)))
    try:
        with torch.no_grad():
            out = model(x).numpy()
    finally:
        for h in handles:
            h.remove()
    return out, captured


def test_tiny_state_dict_loads_strictly_and_counts(tiny_model: AdaIR, tiny_state_dict: dict):
    assert list(tiny_model.state_dict()) == list(tiny_state_dict)
    assert len(tiny_state_dict) == 191
    assert count_parameters(tiny_model) == 295_865


def test_tiny_output_and_intermediates(tiny_model, tiny_input, tiny_dir):
    out, captured = _run_with_captures(tiny_model, tiny_input)

    err = _max_err(out, np.load(tiny_dir / "output.npy"))
    print(f"output.npy max abs error: {err:.3g}")
    assert err <= 1e-4

    names = sorted(p.stem for p in tiny_dir.glob("*.npy"))
    stored = [n for n in names if n in captured]
    # Every intermediate the fixture folder stores for the main case must be compared.
    assert len(stored) == 4 + 3 * 7, stored
    errors = {n: _max_err(captured[n], np.load(tiny_dir / f"{n}.npy")) for n in stored}
    print("intermediate max abs errors:", {n: f"{e:.2g}" for n, e in errors.items()})
    assert max(errors.values()) <= 1e-5, errors
    # The mask is empty at 64x64, so the low band is exactly zero (README, config.json).
    for k in (1, 2, 3):
        assert not captured[f"fre{k}_low"].any()


def test_tiny_float64(tiny_config, tiny_state_dict, tiny_input, tiny_dir):
    model64 = AdaIR(**tiny_config)
    model64.load_state_dict(tiny_state_dict, strict=True)
    model64 = model64.double().eval()
    with torch.no_grad():
        out = model64(tiny_input.double()).numpy()
    err = _max_err(out, np.load(tiny_dir / "output_f64.npy"))
    print(f"output_f64.npy max abs error: {err:.3g}")
    assert err <= 1e-10


def test_mask_case(tiny_config, tiny_state_dict, tiny_dir):
    """fre3's saturated rate logits give a 2x2 low-pass mask; the low band is then non-zero."""
    state = dict(tiny_state_dict)
    state["fre3.rate_conv.2.weight"] = torch.from_numpy(np.load(tiny_dir / "mask_fre3_rate_conv_2_weight.npy"))
    model = AdaIR(**tiny_config).eval()
    model.load_state_dict(state, strict=True)
    # torchvision's ToTensor conversion, in float32 throughout.
    u8 = np.load(tiny_dir / "mask_input_u8.npy")
    x = torch.from_numpy(u8.astype(np.float32) / np.float32(255))

    out, captured = _run_with_captures(model, x)
    err = _max_err(out, np.load(tiny_dir / "mask_output.npy"))
    print(f"mask_output.npy max abs error: {err:.3g}")
    assert err <= 1e-4

    errors = {
        "mask_fre3_low_c0": _max_err(captured["fre3_low"][:, :1], np.load(tiny_dir / "mask_fre3_low_c0.npy")),
        "mask_fre3_high_c0": _max_err(captured["fre3_high"][:, :1], np.load(tiny_dir / "mask_fre3_high_c0.npy")),
        "mask_fre3_rate_logits": _max_err(
            captured["fre3_rate_logits"], np.load(tiny_dir / "mask_fre3_rate_logits.npy")
        ),
    }
    print("mask-case intermediate max abs errors:", {n: f"{e:.2g}" for n, e in errors.items()})
    assert max(errors.values()) <= 1e-5, errors
    assert captured["fre3_low"].max() > 0.5  # the mask really is non-empty
    assert not captured["fre2_low"].any()  # 64x64 feature map: 64 // 128 = 0, always empty


def test_default_parameter_count(default_model: AdaIR):
    assert count_parameters(default_model) == 28_784_824


def test_default_state_dict_layout(default_model: AdaIR, fixtures_dir: pathlib.Path):
    expected = []
    for line in (fixtures_dir / "adair_default_state_dict_keys.txt").read_text().splitlines():
        key, shape = line.split("\t")
        expected.append((key, json.loads(shape)))
    actual = [(k, list(v.shape)) for k, v in default_model.state_dict().items()]
    assert len(actual) == len(expected) == 587
    assert actual == expected
