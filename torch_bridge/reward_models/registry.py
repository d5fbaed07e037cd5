"""The registry of reward models and the one call that builds the configured ones.

`COMPONENTS` maps each name to its factory (one signature: `(cfg, device, *, shared)`);
`build_components` builds every live one, sharing the CLIP encoder between `clip` and
`aesthetic` and reporting every missing model at once.
"""

from __future__ import annotations

from collections.abc import Callable

from torch_bridge.reward_models.aesthetic import build_aesthetic
from torch_bridge.reward_models.base import (
    CONFIG_PREFIX,
    RewardComponent,
    RewardModelUnavailable,
    _merged_config,
)
from torch_bridge.reward_models.clip import build_clip
from torch_bridge.reward_models.lpips import build_lpips
from torch_bridge.reward_models.qwen_judge import build_qwen

COMPONENTS: dict[str, Callable[..., RewardComponent]] = {
    "lpips": build_lpips,
    "clip": build_clip,
    "aesthetic": build_aesthetic,
    "qwen": build_qwen,
}


def build_components(cfg: dict, device: str = "cpu") -> dict[str, RewardComponent]:
    """Builds every configured reward model whose weight is not 0, failing early and clearly.

    Args:
        cfg: `{"lpips": {...}, "clip": {...}, "aesthetic": {...}, "qwen": {...}}` (any subset),
            each section overriding `default_reward_model_config()`'s fields.
        device: torch device string for all components.

    Returns:
        `{name: component}` for the live components, in registry order. When `clip` and
        `aesthetic` name the same CLIP model and dtype they share one encoder (one forward).

    Raises:
        ValueError: an unknown component name or field (the message lists the valid ones).
        RewardModelUnavailable: a live component's weights are absent (names key and path).
    """
    unknown = sorted(set(cfg) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"{CONFIG_PREFIX}: unknown reward model(s) {unknown}; valid: {sorted(COMPONENTS)}")
    shared: dict = {}
    built: dict[str, RewardComponent] = {}
    missing: list[str] = []  # every absent model in one message, not one per start attempt
    for name, factory in COMPONENTS.items():  # clip before aesthetic: it owns the GT cache size
        if name not in cfg:
            continue
        section = _merged_config(name, cfg[name])
        if float(section["weight"]) == 0.0:
            continue  # switched off: its weights are not needed
        try:
            built[name] = factory(cfg[name] or {}, device, shared=shared)
        except RewardModelUnavailable as e:
            missing.append(str(e))
    if len(missing) == 1:
        raise RewardModelUnavailable(missing[0])
    if missing:
        raise RewardModelUnavailable(
            f"{len(missing)} reward models are unavailable:\n" + "\n".join(f"- {m}" for m in missing)
        )
    return built
