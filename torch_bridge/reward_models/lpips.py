"""The LPIPS reward (B.1 R_lpips): `1 - LPIPS(restored, clean)` with the lpips package.

The trunk (a torchvision ImageNet state dict) and the calibrated linear heads are read from
checked files, never downloaded by lpips itself; both are matched key by key.
"""

from __future__ import annotations

import os
import pathlib
import re
import warnings

import torch

from torch_bridge.reward_models.base import (
    RewardModel,
    RewardModelUnavailable,
    _hash_files,
    _key,
    _merged_config,
    _resolve_file,
    _torch_load_tensors,
)

# lpips trunk name -> (torchvision builder, weights enum) whose IMAGENET1K_V1 file lpips uses.
_LPIPS_TRUNKS = {
    "alex": ("alexnet", "AlexNet_Weights"),
    "vgg": ("vgg16", "VGG16_Weights"),
    "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights"),
}


class LPIPSReward(RewardModel):
    """`1 - LPIPS(restored, clean)` with the lpips package (Zhang et al. 2018, version 0.1).

    LPIPS takes inputs in [-1, 1]; the [0, 1] images are mapped with `2x - 1` (what
    `lpips.LPIPS.forward(normalize=True)` does). The distance is >= 0 and usually below 0.5
    for restorations, so the reward is at most 1 (identical images) and in practice in [0.5, 1].
    """

    name = "lpips"

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        net: str,
        version: str,
        trunk_path: pathlib.Path,
        lin_path: pathlib.Path,
        device: torch.device,
        config: dict,
    ) -> None:
        super().__init__(device=device, config=config)
        self.model = model
        self.net = net
        self.version = version
        self.trunk_path = trunk_path
        self.lin_path = lin_path

    def describe(self) -> dict:
        """The model id and the two weight files' hashes (computed on first call)."""
        return {
            "model_id": f"lpips-{self.net}-v{self.version}",
            "weights": _hash_files([self.trunk_path, self.lin_path]),
            "dtype": "float32",
            "score": "1 - LPIPS(restored, clean)",
            "score_range": [None, 1.0],
        }

    def score(
        self,
        degraded: torch.Tensor,
        restored: torch.Tensor,
        clean: torch.Tensor,
        sample_ids: list[str] | None,
    ) -> torch.Tensor:
        """(B,) float32 `1 - LPIPS(restored, clean)`; `degraded` and `sample_ids` are unused."""
        distance = self.model(2.0 * restored - 1.0, 2.0 * clean - 1.0)  # (B, 1, 1, 1)
        return (1.0 - distance.reshape(-1)).float()


def _load_lpips_trunk(model: torch.nn.Module, path: pathlib.Path, key: str) -> None:
    """Copies a torchvision state dict's `features.*` into lpips' sliced trunk, checking the table.

    lpips slices `torchvision.models.<trunk>().features` into `slice1..sliceN` and keeps each
    layer's index inside `features` as its name, so `net.slice2.3.weight` is `features.3.weight`.
    The classifier keys of a full torchvision file are ignored (lpips does not use them).
    """
    source = _torch_load_tensors(path, key)
    target = model.net.state_dict()
    loaded, problems = {}, []
    for name, tensor in target.items():
        match = re.fullmatch(r"slice\d+\.(\d+)\.(.+)", name)
        if match is None:
            raise RuntimeError(f"unexpected lpips trunk key {name!r}")  # lpips changed layout
        src = f"features.{match[1]}.{match[2]}"
        if src not in source:
            problems.append(f"missing {src}")
        elif source[src].shape != tensor.shape:
            problems.append(f"{src}: file {tuple(source[src].shape)} vs model {tuple(tensor.shape)}")
        else:
            loaded[name] = source.pop(src)
    unused = sorted(k for k in source if k.startswith("features."))
    if unused:
        problems.append(f"unused trunk keys {unused[:5]}")
    if problems:
        raise RewardModelUnavailable(
            f"{key}: '{path}' does not match the lpips '{model.pnet_type}' trunk (expected a "
            f"torchvision state dict with 'features.*' keys): {'; '.join(problems[:8])}"
        )
    model.net.load_state_dict(loaded, strict=True)


def _load_lpips_heads(model: torch.nn.Module, path: pathlib.Path, key: str) -> None:
    """Loads the calibrated 1x1 heads (`lin{i}.model.1.weight`), refusing partial files.

    lpips itself loads them with `strict=False`, which would silently keep random heads for a
    wrong file; here every head must be filled with the right shape.
    """
    source = _torch_load_tensors(path, key)
    target = model.state_dict()
    wanted = [k for k in target if re.fullmatch(r"lin\d+\..+", k)]
    problems = [f"missing {k}" for k in wanted if k not in source]
    problems += [f"unexpected {k}" for k in source if k not in wanted]
    problems += [
        f"{k}: file {tuple(source[k].shape)} vs model {tuple(target[k].shape)}"
        for k in wanted
        if k in source and source[k].shape != target[k].shape
    ]
    if problems:
        raise RewardModelUnavailable(
            f"{key}: '{path}' is not an lpips v{model.version} '{model.pnet_type}' head file: {'; '.join(problems[:8])}"
        )
    model.load_state_dict(source, strict=False)  # the `lins.*` aliases share these parameters


def build_lpips(cfg: dict, device: str, *, shared: dict | None = None) -> LPIPSReward:
    """Builds the LPIPS component.

    Args:
        cfg: the `lpips` section (see `default_reward_model_config`).
        device: torch device string.
        shared: unused (same signature as the other factories).

    Returns:
        The component.

    Raises:
        RewardModelUnavailable: the trunk or head file is absent or does not match.
    """
    cfg = _merged_config("lpips", cfg)
    net, version = cfg["net"], str(cfg["version"])
    if net not in _LPIPS_TRUNKS:
        raise ValueError(f"{_key('lpips', 'net')}={net!r}: expected one of {sorted(_LPIPS_TRUNKS)}")
    if version not in ("0.0", "0.1"):
        raise ValueError(f"{_key('lpips', 'version')}={version!r}: expected '0.0' or '0.1'")

    import lpips
    import torchvision

    builder, weights_enum = _LPIPS_TRUNKS[net]
    if cfg["trunk_path"] is None:
        # The file torchvision (and hence lpips with pnet_rand=False) would download into.
        url = getattr(torchvision.models, weights_enum).IMAGENET1K_V1.url
        trunk_value = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        hint = (
            f"{_key('lpips', 'trunk_path')} is unset, so the torch hub cache was tried. Copy "
            f"{url} there or set {_key('lpips', 'trunk_path')} to a torchvision {builder} state "
            f"dict, or set its weight to 0 (reward.groups.gen.components.lpips)."
        )
    else:
        trunk_value = cfg["trunk_path"]
        hint = (
            f"Expected a torchvision {builder} state dict, or set its weight to 0 (reward.groups.gen.components.lpips)."
        )
    trunk_path = _resolve_file(trunk_value, _key("lpips", "trunk_path"), f"{net} trunk file", hint)
    lin_value = cfg["lin_path"] or os.path.join(os.path.dirname(lpips.__file__), "weights", f"v{version}", f"{net}.pth")
    lin_path = _resolve_file(lin_value, _key("lpips", "lin_path"), "lpips head file", "Reinstall lpips==0.1.4.")

    with warnings.catch_warnings():
        # torchvision's "pretrained is deprecated" warnings from lpips' trunk constructors.
        warnings.simplefilter("ignore", UserWarning)
        # pnet_rand / pretrained=False: build offline, then fill both parts from our checked files.
        model = lpips.LPIPS(net=net, version=version, pretrained=False, pnet_rand=True, verbose=False)
    _load_lpips_trunk(model, trunk_path, _key("lpips", "trunk_path"))
    _load_lpips_heads(model, lin_path, _key("lpips", "lin_path"))
    dev = torch.device(device)
    model = model.to(dev).eval().requires_grad_(False)
    return LPIPSReward(
        model,
        net=net,
        version=version,
        trunk_path=trunk_path,
        lin_path=lin_path,
        device=dev,
        config=cfg,
    )
