"""What the reward models share: the error, the component contract, the config and the loaders.

Every family module (`lpips`, `clip`, `aesthetic`, `qwen_judge`) builds on these: the paper's
default settings (`default_reward_model_config`, merged per component by `_merged_config`),
`RewardModelUnavailable` for absent weights, the `RewardComponent` protocol the reward process
calls, `RewardModel` (that protocol's shared half: the handshake record and the checked call,
so each model writes only `describe()` and `score()`), and the helpers that resolve a local
path or hub id, hash weight files, read state dicts with `weights_only=True`, and check a
batch's shapes.
"""

from __future__ import annotations

import copy
import hashlib
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any, Protocol

import torch

# Config keys in error messages read "reward.models.<component>.<field>" (the trainer's config layout).
CONFIG_PREFIX = "reward.models"

# A hub id is "owner/name"; anything that looks like a filesystem path is treated as one.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# Files fetched for a hub id: configs, tokenizer/processor files, safetensors weights.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


class RewardModelUnavailable(ValueError):
    """A configured reward model's weights are absent or unreadable (raised at start-up)."""


class RewardComponent(Protocol):
    """One PyTorch reward model, as the reward process sees it.

    The real models implement it through `RewardModel`; stand-ins (the tests' and benchmarks'
    fakes) may implement it directly.
    """

    name: str  # "lpips" | "clip" | "aesthetic" | "qwen"

    def info(self) -> dict:
        """Handshake record: name, model_id, weights {file: sha256}, device, dtype, ..."""
        ...

    def __call__(
        self,
        degraded: torch.Tensor,
        restored: torch.Tensor,
        clean: torch.Tensor,
        *,
        sample_ids: list[str] | None = None,
    ) -> torch.Tensor:
        """Scores (B, 3, H, W) float32 in [0, 1] -> (B,) float32 raw scores (NaN: failed)."""
        ...


class RewardModel(RewardComponent):
    """The part of `RewardComponent` every real reward model shares; a subclass holds its own.

    `info()` is `name`, the subclass's `describe()`, `device`, `stats()` when it counts
    something, and a copy of `config`. `__call__` checks the three batches (shapes, one
    `sample_ids` entry per sample), puts them on `input_device` as float32 and calls
    `score(...)` under `torch.inference_mode()`.

    A subclass sets `name` and writes `describe()` and `score()` (and `stats()`, `input_device`
    where it differs).

    Args:
        device: where the model runs.
        config: the component's merged config section (recorded in `info()`).
    """

    name: str

    def __init__(self, *, device: torch.device, config: dict) -> None:
        self.device = device
        self.config = config

    @property
    def input_device(self) -> torch.device:
        """Where `__call__` puts the checked batches (the model's device)."""
        return self.device

    def describe(self) -> dict:
        """The model's own handshake fields: model_id, weights {file: sha256}, dtype, score, ..."""
        raise NotImplementedError

    def stats(self) -> dict | None:
        """Counters since build for the handshake, or None when the model counts nothing."""
        return None

    def info(self) -> dict:
        """Handshake record: name, `describe()`, device, `stats()` if any, config."""
        record = {"name": self.name, **self.describe(), "device": str(self.device)}
        stats = self.stats()
        if stats is not None:
            record["stats"] = stats
        return {**record, "config": copy.deepcopy(self.config)}

    def score(
        self,
        degraded: torch.Tensor,
        restored: torch.Tensor,
        clean: torch.Tensor,
        sample_ids: list[str] | None,
    ) -> torch.Tensor:
        """The model's scores for checked float32 (B, 3, H, W) batches on `input_device`."""
        raise NotImplementedError

    def __call__(
        self,
        degraded: torch.Tensor,
        restored: torch.Tensor,
        clean: torch.Tensor,
        *,
        sample_ids: list[str] | None = None,
    ) -> torch.Tensor:
        """Scores a batch.

        Args:
            degraded: (B, 3, H, W) in [0, 1], the policy's input.
            restored: (B, 3, H, W) in [0, 1].
            clean: (B, 3, H, W) in [0, 1].
            sample_ids: None, or one hashable id per sample (the G rollouts of an image share
                it); what a model does with them is said in its `score`.

        Returns:
            (B,) float32 raw scores (see the subclass's `score`).

        Raises:
            ValueError: the batches are not (B, 3, H, W) of one shape, or `sample_ids` does not
                have B entries.
        """
        degraded, restored, clean = _check_batch(degraded, restored, clean, self.input_device)
        _check_sample_ids(sample_ids, restored.shape[0])
        with torch.inference_mode():
            return self.score(degraded, restored, clean, sample_ids)


def default_reward_model_config() -> dict:
    """The paper's defaults for the PyTorch reward models (IRPO Appendix B.1, B.2, B.4).

    `weight` is the component's effective weight in the final reward R (Eq. 22 x B.1): R_gen has
    0.6 and inside it CLIP 0.25, LPIPS 0.25, aesthetic 0.15; the judge has 0.1. This module uses
    it only to skip components whose weight is 0; the composer applies the weights.

    Returns:
        `{"lpips": {...}, "clip": {...}, "aesthetic": {...}, "qwen": {...}}`, a fresh dict.
    """
    return {
        "lpips": {
            "weight": 0.15,  # 0.6 (R_gen) x 0.25 (LPIPS in B.1)
            "net": "alex",  # LPIPS trunk: alex | vgg | squeeze (lpips package; paper: unstated)
            "version": "0.1",  # lpips linear-head version (0.0 had an input-scaling bug)
            # torchvision state dict of the ImageNet trunk (e.g. alexnet-owt-7be5be79.pth);
            # None -> the torch hub cache file $TORCH_HOME/hub/checkpoints/<torchvision name>.
            "trunk_path": None,
            "lin_path": None,  # lpips linear heads; None -> the file shipped in the lpips wheel
        },
        "clip": {
            "weight": 0.15,  # 0.6 x 0.25 (CLIP in B.1)
            # local save_pretrained directory or hub id; paper names no variant, ViT-L/14 is the
            # one the aesthetic head needs, so one forward serves both
            "model_path": "openai/clip-vit-large-patch14",
            "dtype": "float32",  # CLIP forward dtype: float32 | bfloat16 | float16 | auto
            "batch_size": 32,  # images per CLIP forward
            "gt_cache_size": 4096,  # clean-image embeddings kept per sample id (LRU); 0 = off
        },
        "aesthetic": {
            "weight": 0.09,  # 0.6 x 0.15 (aesthetic in B.1)
            # the LAION MLP head; download AESTHETIC_HEAD_URL and put it here (relative to cwd)
            "head_path": "weights/sac+logos+ava1-l14-linearMSE.pth",
            # the head was trained on OpenAI CLIP ViT-L/14 embeddings; shares the clip component's
            # model when both name the same model and dtype
            "clip_model_path": "openai/clip-vit-large-patch14",
            "dtype": "float32",  # CLIP forward dtype
            "batch_size": 32,  # images per CLIP forward
        },
        "qwen": {
            "weight": 0.1,  # R_qwen in Eq. 22 (how often to judge is the caller's setting)
            "model_path": "Qwen/Qwen2.5-VL-7B-Instruct",  # local directory or hub id
            "dtype": "auto",  # auto = bfloat16 on CUDA, float32 on CPU
            "attn_implementation": None,  # e.g. "sdpa", "flash_attention_2"; None = default
            "max_new_tokens": 512,  # cap on the judge's answer (reasoning + score), tokens
            "batch_size": 8,  # conversations per generate() call
            # False: the parsed integer score. True: expected score over the probabilities of
            # the tokens "1".."5" at the <Score> position (Q-Align-style; a deviation, off by
            # default).
            "continuous": False,
        },
    }


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _key(component: str, field: str) -> str:
    return f"{CONFIG_PREFIX}.{component}.{field}"


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file, memoised per (path, size, mtime): a 16 GB judge is hashed once.

    Args:
        path: the file.

    Returns:
        The hex digest.
    """
    p = pathlib.Path(path).resolve()
    st = p.stat()
    memo_key = (str(p), st.st_size, st.st_mtime_ns)
    if memo_key not in _HASH_MEMO:
        digest = hashlib.sha256()
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _HASH_MEMO[memo_key] = digest.hexdigest()
    return _HASH_MEMO[memo_key]


def _weight_files(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)


def _hash_files(files: Sequence[pathlib.Path]) -> dict[str, str]:
    return {str(p): sha256_file(p) for p in files}


def _resolve_pretrained_dir(value: Any, key: str, what: str) -> pathlib.Path:
    """Turns a config value into a local directory holding a `save_pretrained` model.

    Args:
        value: a local directory, or a hub id `owner/name` (resolved through the hub cache,
            downloaded when the machine is online).
        key: the config key, for errors.
        what: a human name of the model, for errors.

    Returns:
        The directory (it contains at least one weight file).

    Raises:
        RewardModelUnavailable: naming `key` and what was tried.
    """
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise RewardModelUnavailable(
            f"{key} is not set: give a local directory saved with save_pretrained or a Hugging "
            f"Face hub id for the {what}, or set the component's weight to 0."
        )
    text = str(value)
    path = pathlib.Path(text).expanduser()
    if path.is_dir():
        directory = path.resolve()
    elif path.exists():
        raise RewardModelUnavailable(
            f"{key}='{text}' is a file; expected a directory saved with save_pretrained "
            f"(config.json + weights) for the {what}."
        )
    elif text.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(text):
        raise RewardModelUnavailable(
            f"{key}: the {what} directory '{path.resolve()}' does not exist. Put the model "
            f"there (save_pretrained layout) or set the component's weight to 0."
        )
    else:
        from huggingface_hub import constants as hub_constants
        from huggingface_hub import snapshot_download

        try:
            directory = pathlib.Path(snapshot_download(repo_id=text, allow_patterns=_HUB_PATTERNS))
            if not _weight_files(directory):  # an older repository without safetensors
                directory = pathlib.Path(snapshot_download(repo_id=text, allow_patterns=["pytorch_model*.bin"]))
        except Exception as e:  # offline, not cached, gated, ...: one message for a person
            cache = getattr(hub_constants, "HF_HUB_CACHE", "the Hugging Face cache")
            raise RewardModelUnavailable(
                f"{key}='{text}': no local directory '{path.resolve()}', and the hub id could "
                f"not be downloaded or found in the hub cache ({cache}): {type(e).__name__}: "
                f"{e}. On an offline machine, copy the {what} into a directory and set {key} to "
                f"it, or set the component's weight to 0."
            ) from e
    if not _weight_files(directory):
        raise RewardModelUnavailable(
            f"{key}='{text}': directory '{directory}' holds no weight files "
            f"({', '.join(_WEIGHT_SUFFIXES)}); expected a save_pretrained {what}."
        )
    return directory


def _resolve_file(value: Any, key: str, what: str, hint: str) -> pathlib.Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise RewardModelUnavailable(f"{key} is not set: {hint}")
    path = pathlib.Path(value).expanduser()
    if not path.is_file():
        raise RewardModelUnavailable(f"{key}: the {what} '{path.resolve()}' does not exist. {hint}")
    return path.resolve()


def _torch_load_tensors(path: pathlib.Path, key: str) -> dict[str, torch.Tensor]:
    """Reads a tensor dict with `weights_only=True` (unwrapping a top-level "state_dict")."""
    try:
        # map_location: files saved from GPU (lpips' own heads are) must load on CPU-only hosts.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RewardModelUnavailable(
            f"{key}: cannot read '{path}' as a PyTorch state dict ({type(e).__name__}: {e})."
        ) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RewardModelUnavailable(f"{key}: '{path}' is not a dict of tensors (a state dict).")
    return obj


def _torch_dtype(name: str, device: torch.device, key: str) -> torch.dtype:
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in table:
        raise ValueError(f"{key}={name!r}: expected one of {sorted(table) + ['auto']}")
    return table[name]


def _check_batch(
    degraded: torch.Tensor, restored: torch.Tensor, clean: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validates the three (B, 3, H, W) batches and puts them on `device` as float32."""
    for name, x in (("degraded", degraded), ("restored", restored), ("clean", clean)):
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{name}: expected (B, 3, H, W) RGB in [0, 1], got {tuple(x.shape)}")
    if not (degraded.shape == restored.shape == clean.shape):
        raise ValueError(
            "degraded, restored and clean must have one shape, got "
            f"{tuple(degraded.shape)}, {tuple(restored.shape)}, {tuple(clean.shape)}"
        )
    # No-ops when the caller already sends float32 on the component's device (the contract).
    return tuple(x.detach().to(device=device, dtype=torch.float32) for x in (degraded, restored, clean))


def _check_sample_ids(sample_ids: list[str] | None, batch: int) -> None:
    if sample_ids is not None and len(sample_ids) != batch:
        raise ValueError(f"sample_ids has {len(sample_ids)} entries for a batch of {batch}")


def _merged_config(name: str, cfg: dict | None) -> dict:
    """The component's defaults overridden by `cfg`; unknown fields raise (typos fail loudly)."""
    defaults = default_reward_model_config()[name]
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ValueError(f"{CONFIG_PREFIX}.{name}: unknown field(s) {unknown}; valid fields: {sorted(defaults)}")
    return {**defaults, **cfg}
