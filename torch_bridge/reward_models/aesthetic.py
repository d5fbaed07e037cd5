"""The LAION aesthetic reward (B.1 R_aes): the improved aesthetic predictor on CLIP ViT-L/14.

`AestheticHead` is the upstream MLP (its `.pth` loads with `strict=True`); the CLIP embedding
comes from `clip.ClipImageEncoder`, shared with the `clip` component when both name the same model.
"""

from __future__ import annotations

import pathlib

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
from torch_bridge.reward_models.clip import ClipImageEncoder, _get_clip_encoder

# LAION improved aesthetic predictor (christophschuhmann/improved-aesthetic-predictor, 6934dd8,
# file sac+logos+ava1-l14-linearMSE.pth): nn.Sequential under the attribute `layers`; indices
# 1, 3, 5 are Dropout(0.2, 0.2, 0.1) and carry no weights; the ReLUs are commented out upstream.
AESTHETIC_LAYERS: tuple[tuple[int, int, int], ...] = (
    (0, 768, 1024),
    (2, 1024, 128),
    (4, 128, 64),
    (6, 64, 16),
    (7, 16, 1),
)
AESTHETIC_HEAD_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth"
)


class AestheticHead(torch.nn.Module):
    """The LAION improved aesthetic predictor MLP: 768 -> 1024 -> 128 -> 64 -> 16 -> 1.

    No activations (upstream commented them out), so in eval mode (dropouts off) it is an affine
    map of the L2-normalised CLIP ViT-L/14 embedding. Attribute and index names follow the
    original so its `.pth` loads with `strict=True`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(768, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, 768) L2-normalised embeddings -> (B,) ratings."""
        return self.layers(embeddings).squeeze(-1)


def load_aesthetic_head(path: pathlib.Path, key: str) -> AestheticHead:
    """Loads `sac+logos+ava1-l14-linearMSE.pth` (keys `layers.{0,2,4,6,7}.{weight,bias}`).

    Args:
        path: the `.pth` file.
        key: config key, for errors.

    Returns:
        The head in eval mode on CPU.

    Raises:
        RewardModelUnavailable: a key is missing, extra, or has the wrong shape.
    """
    source = _torch_load_tensors(path, key)
    expected = {}
    for index, fan_in, fan_out in AESTHETIC_LAYERS:
        expected[f"layers.{index}.weight"] = (fan_out, fan_in)
        expected[f"layers.{index}.bias"] = (fan_out,)
    problems = [f"missing {k}" for k in expected if k not in source]
    problems += [f"unexpected {k}" for k in source if k not in expected]
    problems += [
        f"{k}: file {tuple(source[k].shape)} vs expected {shape}"
        for k, shape in expected.items()
        if k in source and tuple(source[k].shape) != shape
    ]
    if problems:
        raise RewardModelUnavailable(
            f"{key}: '{path}' is not the LAION improved aesthetic predictor head "
            f"(sac+logos+ava1-l14-linearMSE.pth layout): {'; '.join(problems[:8])}"
        )
    head = AestheticHead()
    head.load_state_dict({k: v.float() for k, v in source.items()}, strict=True)
    return head.eval().requires_grad_(False)


class AestheticReward(RewardModel):
    """LAION aesthetic rating of the restored image (B.1 R_aes), raw (about 1-10).

    The paper normalises it to [0, 1] without giving the map; the composer does that
    (e.g. `clip((s - 1) / 9, 0, 1)`).
    """

    name = "aesthetic"

    def __init__(self, head: AestheticHead, encoder: ClipImageEncoder, head_path: pathlib.Path, config: dict) -> None:
        super().__init__(device=encoder.device, config=config)
        self.head = head
        self.encoder = encoder
        self.head_path = head_path

    def describe(self) -> dict:
        """The head and the CLIP model under it (ids, weights of both, the encoder's record)."""
        clip_info = self.encoder.info()
        return {
            "model_id": f"laion-improved-aesthetic({pathlib.Path(self.head_path).name}) on {clip_info['model_id']}",
            "weights": {**_hash_files([self.head_path]), **clip_info["weights"]},
            "dtype": clip_info["dtype"],
            "clip": clip_info,
            "score": "LAION aesthetic MLP on the L2-normalised CLIP embedding of restored",
            "score_range": [1.0, 10.0],  # AVA rating scale; the affine head is not clipped
        }

    def score(
        self,
        degraded: torch.Tensor,
        restored: torch.Tensor,
        clean: torch.Tensor,
        sample_ids: list[str] | None,
    ) -> torch.Tensor:
        """(B,) float32 raw aesthetic ratings of `restored` (no reference: the rest is unused)."""
        emb = self.encoder.embed_restored(restored)
        emb = emb / emb.norm(dim=-1, keepdim=True)  # the original script's `normalized()` (L2)
        return self.head(emb).float()


def build_aesthetic(cfg: dict, device: str, *, shared: dict | None = None) -> AestheticReward:
    """Builds the aesthetic component (head `.pth` + a CLIP ViT-L/14 encoder, shared if possible).

    Args:
        cfg: the `aesthetic` section.
        device: torch device string.
        shared: per-build cache of loaded encoders.

    Returns:
        The component.

    Raises:
        RewardModelUnavailable: the head file or the CLIP model is absent, or they do not fit.
    """
    cfg = _merged_config("aesthetic", cfg)
    key = _key("aesthetic", "head_path")
    head_path = _resolve_file(
        cfg["head_path"],
        key,
        "aesthetic head file",
        f"Download {AESTHETIC_HEAD_URL} and set {key} to it, or set its weight to 0 "
        "(reward.groups.gen.components.aesthetic).",
    )
    head = load_aesthetic_head(head_path, key)
    encoder = _get_clip_encoder(
        cfg["clip_model_path"],
        _key("aesthetic", "clip_model_path"),
        device,
        cfg["dtype"],
        cfg["batch_size"],
        0,
        shared,
    )
    dim = int(encoder.model.config.projection_dim)
    if dim != AESTHETIC_LAYERS[0][1]:
        raise RewardModelUnavailable(
            f"{_key('aesthetic', 'clip_model_path')}='{cfg['clip_model_path']}' gives "
            f"{dim}-d embeddings; the aesthetic head needs {AESTHETIC_LAYERS[0][1]} "
            "(OpenAI CLIP ViT-L/14)."
        )
    return AestheticReward(head.to(encoder.device), encoder, head_path, cfg)
