"""PyTorch AdaIR state dicts <-> Flax NNX AdaIR parameters, as a table that checks itself.

Pure numpy (no torch): ``torch_bridge`` reads checkpoint files into ``{key: np.ndarray}``
and this module does the mapping, so the rules are testable without torch.

The table: a Flax parameter path joined with dots is the official key with its leaf renamed
(``kernel`` <-> ``weight`` for convolutions, ``scale`` <-> ``weight`` for LayerNorms). Transforms:

=================  =====================================  ==========================
parameter          PyTorch layout                         Flax layout
=================  =====================================  ==========================
conv ``kernel``    (out, in/groups, kh, kw)               (kh, kw, in/groups, out)
conv ``bias``      (out,)                                 (out,)
norm ``scale``     ``body.weight`` (C,)                   (C,)
norm ``bias``      ``body.bias`` (C,)                     (C,)
``temperature``    (heads, 1, 1)                          (heads, 1, 1)
``para1/para2``    (C, 1, 1)                              (C, 1, 1)
=================  =====================================  ==========================

Every source key must be used exactly once and every target filled; a shape mismatch names the
key and both shapes; unknown and missing keys are reported together in one error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from irpo_jax.models.adair import AdaIR, AdaIRConfig, get_config
from irpo_jax.models.layers import Conv2d, LayerNorm

CONVERTER_VERSION = "1"


class ConversionError(ValueError):
    """A state dict that does not fit the AdaIR model (the message says which keys and why)."""


def _flax_params(model: nnx.Module) -> list[tuple[str, str, tuple, nnx.Module]]:
    """``(official_key, kind, shape, owner)`` for every parameter, in registration order."""
    out = []
    for path, module in nnx.iter_modules(model):
        prefix = ".".join(str(p) for p in path)
        prefix = prefix + "." if prefix else ""
        if isinstance(module, Conv2d):
            out.append((prefix + "weight", "conv", module.kernel.shape, (module, "kernel")))
            if module.bias is not None:
                out.append((prefix + "bias", "copy", module.bias.shape, (module, "bias")))
        elif isinstance(module, LayerNorm):
            out.append((prefix + "weight", "copy", module.scale.shape, (module, "scale")))
            if module.bias is not None:
                out.append((prefix + "bias", "copy", module.bias.shape, (module, "bias")))
        else:
            for name in ("temperature", "para1", "para2"):
                if isinstance(getattr(module, name, None), nnx.Param):
                    value = getattr(module, name)
                    out.append((prefix + name, "copy", value.shape, (module, name)))
    return out


def official_keys(config: AdaIRConfig | str) -> dict[str, tuple[int, ...]]:
    """The PyTorch state-dict keys and shapes of the official model for ``config``."""
    model = nnx.eval_shape(lambda: AdaIR(config, rngs=nnx.Rngs(0)))
    return {key: _torch_shape(kind, shape) for key, kind, shape, _ in _order(_flax_params(model))}


def _torch_shape(kind: str, shape: tuple) -> tuple[int, ...]:
    if kind == "conv":
        kh, kw, cin, cout = shape
        return (cout, cin, kh, kw)
    return tuple(shape)


def _order(params: list) -> list:
    """Sort into PyTorch's registration order (nnx iterates attributes alphabetically)."""
    return sorted(params, key=lambda p: _registration_rank(p[0]))


# The official registration order of attribute names inside each module.
_RANK = {
    name: i
    for i, name in enumerate(
        [
            "patch_embed",
            "fre1",
            "fre2",
            "fre3",
            "encoder_level1",
            "down1_2",
            "encoder_level2",
            "down2_3",
            "encoder_level3",
            "down3_4",
            "latent",
            "up4_3",
            "reduce_chan_level3",
            "decoder_level3",
            "up3_2",
            "reduce_chan_level2",
            "decoder_level2",
            "up2_1",
            "decoder_level1",
            "refinement",
            "output",
            # FreModule
            "para1",
            "para2",
            "conv",
            "conv1",
            "score_gen",
            "channel_cross_l",
            "channel_cross_h",
            "channel_cross_agg",
            "frequency_refine",
            "rate_conv",
            # TransformerBlock / attention / FFN / cross attention / refine
            "norm1",
            "attn",
            "norm2",
            "ffn",
            "temperature",
            "qkv",
            "qkv_dwconv",
            "q",
            "q_dwconv",
            "kv",
            "kv_dwconv",
            "project_in",
            "dwconv",
            "project_out",
            "SpatialGate",
            "ChannelGate",
            "proj",
            "spatial",
            "mlp",
            "body",
            "weight",
            "bias",
        ]  # fmt: skip
    )
}


def _registration_rank(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else _RANK.get(p, len(_RANK)) for p in key.split("."))


def infer_config(weights: Mapping[str, np.ndarray], mask_rule: str = "adair") -> AdaIRConfig:
    """Read an AdaIR constructor config off a state dict's shapes.

    dim from ``patch_embed``; blocks per level from the block indices; heads from the
    ``temperature`` shapes; the FFN factor from ``project_in``; ``bias`` from the presence of
    attention biases; the LayerNorm type from the presence of norm biases.
    """
    _reject_foreign(weights)

    def count(prefix: str) -> int:
        idx = {int(m.group(1)) for k in weights if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", k))}
        return max(idx) + 1 if idx else 0

    def heads_of(prefix: str) -> int:
        key = f"{prefix}.0.attn.temperature"
        if key not in weights:
            raise ConversionError(f"cannot infer the heads of {prefix}: key {key!r} is missing")
        return int(weights[key].shape[0])

    pe = weights["patch_embed.proj.weight"]
    dim, inp_channels = int(pe.shape[0]), int(pe.shape[1])
    levels = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
    num_blocks = tuple(count(p) for p in levels)
    if min(num_blocks) == 0:
        raise ConversionError(f"every encoder level needs at least one block; found {dict(zip(levels, num_blocks))}")
    hidden = int(weights["encoder_level1.0.ffn.project_in.weight"].shape[0]) // 2
    widths = {dim * m: int(weights[f"{p}.0.ffn.project_in.weight"].shape[0]) // 2 for p, m in zip(levels, (1, 2, 4, 8))}
    factor = _ffn_factor(dim, hidden, widths)
    return AdaIRConfig(
        inp_channels=inp_channels,
        out_channels=int(weights["output.weight"].shape[0]) if "output.weight" in weights else 3,
        dim=dim,
        num_blocks=num_blocks,
        num_refinement_blocks=count("refinement"),
        heads=tuple(heads_of(p) for p in levels),
        ffn_expansion_factor=factor,
        bias="encoder_level1.0.attn.qkv.bias" in weights,
        LayerNorm_type="WithBias" if "encoder_level1.0.norm1.body.bias" in weights else "BiasFree",
        # Any FreModule key means the model has all three: a missing one is then reported as
        # missing (by name) rather than the others as unexpected.
        decoder=any(k.startswith(("fre1.", "fre2.", "fre3.")) for k in weights),
        mask_rule=mask_rule,
    )


def _ffn_factor(dim: int, hidden: int, widths: Mapping[int, int]) -> float:
    """A factor f with ``int(C * f) == hidden width`` at every level (2.66 when it fits)."""
    candidates = [2.66, 2.0, 4.0, 3.0, 1.0, (hidden + 0.5) / dim, hidden / dim]
    for f in candidates:
        if all(int(c * f) == h for c, h in widths.items()):
            return f
    raise ConversionError(
        f"no FFN expansion factor reproduces the hidden widths {dict(widths)}; "
        "pass the model config explicitly (--config)."
    )


_FOREIGN_MARKERS = {
    "prompt": "PromptIR (it has prompt-generation blocks such as 'prompt1.prompt_param')",
    "noise_level": "PromptIR",
}


def _reject_foreign(weights: Mapping[str, np.ndarray]) -> None:
    if "patch_embed.proj.weight" in weights and "encoder_level1.0.attn.temperature" in weights:
        if not any(k.startswith(("prompt", "noise_level")) for k in weights):
            return
    sample = ", ".join(sorted(weights)[:6])
    guess = next(
        (name for marker, name in _FOREIGN_MARKERS.items() if any(k.startswith(marker) for k in weights)), None
    )
    what = f"It looks like {guess}, not AdaIR. " if guess else ""
    raise ConversionError(
        f"this is not an AdaIR state dict: {what}AdaIR keys such as 'patch_embed.proj.weight', "
        f"'encoder_level1.0.attn.temperature' and 'fre1.conv1.weight' are expected; the first keys "
        f"found are: {sample}. Convert a checkpoint of the official AdaIR model (c-yn/AdaIR)."
    )


def load_state_dict(model: AdaIR, weights: Mapping[str, np.ndarray]) -> None:
    """Fill ``model``'s AdaIR parameters in place from an official state dict (strict).

    Raises:
      ConversionError: listing unknown and missing keys together, or naming a key whose shape
        does not fit with both shapes.
    """
    table = _flax_params(model)
    expected = {key for key, *_ in table}
    unknown = sorted(set(weights) - expected)
    missing = sorted(expected - set(weights))
    if unknown or missing:
        lines = [
            f"  {what} keys ({len(keys)}): {_describe_keys(keys, universe)}"
            for what, keys, universe in (("unexpected", unknown, weights), ("missing", missing, expected))
            if keys
        ]
        raise ConversionError(
            "the state dict does not match the AdaIR configuration "
            f"(dim={model.config.dim}, num_blocks={list(model.config.num_blocks)}):\n" + "\n".join(lines)
        )
    for key, kind, shape, (owner, attr) in table:
        src = np.asarray(weights[key])
        value = src.transpose(2, 3, 1, 0) if kind == "conv" and src.ndim == 4 else src
        if tuple(value.shape) != tuple(shape):
            raise ConversionError(
                f"shape mismatch for {key!r}: the checkpoint has {tuple(src.shape)}, the model expects "
                f"{_torch_shape(kind, shape)} (PyTorch layout)"
            )
        param = getattr(owner, attr)
        param.set_value(jnp.asarray(value, dtype=param.get_value().dtype))


def state_dict(model: AdaIR) -> dict[str, np.ndarray]:
    """The official PyTorch state dict (float32 numpy, official key order) of ``model``."""
    out = {}
    for key, kind, _, (owner, attr) in _order(_flax_params(model)):
        value = np.asarray(getattr(owner, attr).get_value())
        out[key] = np.ascontiguousarray(value.transpose(3, 2, 0, 1) if kind == "conv" else value)
    return out


def from_state_dict(weights: Mapping[str, np.ndarray], config: AdaIRConfig | str | Mapping | None = None) -> AdaIR:
    """Build an :class:`AdaIR` from an official state dict (config inferred unless given)."""
    cfg = infer_config(weights) if config is None else get_config(config)
    model = nnx.eval_shape(lambda: AdaIR(cfg, rngs=nnx.Rngs(0)))
    # eval_shape leaves abstract values; load_state_dict replaces every one of them.
    load_state_dict(model, weights)
    return model


def _block(key: str) -> str:
    """The module a key belongs to: ``fre1``, ``encoder_level2.3`` (a numbered block), ``output``."""
    parts = key.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]


def _describe_keys(keys: list[str], universe) -> str:
    """``keys``, with each block all of whose keys (in ``universe``) are among them named whole."""
    blocks: dict[str, set[str]] = {}
    for k in universe:
        blocks.setdefault(_block(k), set()).add(k)
    chosen = set(keys)
    whole = sorted(b for b, members in blocks.items() if len(members) > 1 and members <= chosen)
    covered = set().union(*(blocks[b] for b in whole))
    parts = [f"the whole block {b} ({len(blocks[b])} keys {b}.*)" for b in whole]
    rest = [k for k in keys if k not in covered]
    return "; ".join(parts + ([_abbrev(rest)] if rest else []))


def _abbrev(keys: list[str], limit: int = 12) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def extra_parameters(model: nnx.Module) -> dict[str, np.ndarray]:
    """Parameters outside the official AdaIR (e.g. the IRPO policy heads), keyed by dotted path.

    For a plain :class:`AdaIR` this is empty; for an IRPO policy it is everything but ``net``.
    """
    if isinstance(model, AdaIR):
        return {}
    out = {}
    for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[0] == "net":
            continue
        out[".".join(map(str, path))] = np.ascontiguousarray(np.asarray(value.get_value()))
    return out
