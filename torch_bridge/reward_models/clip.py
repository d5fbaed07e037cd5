"""The CLIP reward (B.1 R_clip) and the CLIP image encoder it shares with the aesthetic head.

`ClipImageEncoder` wraps a transformers `CLIPModel` image tower with float32 torch preprocessing
and two caches (clean embeddings per sample id, the last restored batch); `build_clip` loads it
(or reuses the one `aesthetic` loaded) and `ClipSimilarityReward` scores the cosine similarity.
"""

from __future__ import annotations

import collections
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from torch_bridge.reward_models.base import (
    RewardModel,
    RewardModelUnavailable,
    _hash_files,
    _key,
    _merged_config,
    _resolve_pretrained_dir,
    _torch_dtype,
    _weight_files,
)

# OpenAI CLIP normalisation, used only when a model directory has no preprocessor_config.json.
_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipImageEncoder:
    """A transformers `CLIPModel` image tower with torch preprocessing and two caches.

    Preprocessing is `CLIPImageProcessor`'s (resize the shortest side to `size` with bicubic
    interpolation and antialiasing, centre-crop to `crop`, normalise with `image_mean`/`image_std`)
    done in float32 torch: no PIL round trip and no uint8 quantisation, because rollouts of one
    image can differ by less than 1/255. It equals transformers' own processor applied to float
    tensors with `do_rescale=False` (tested). Bicubic overshoot outside [0, 1] is kept, as there.

    Caches:
        * clean images: embedding per sample id, LRU with `gt_cache_size` entries. Each entry keeps
          a fingerprint of the image, so an id reused for a different crop is recomputed (counted
          as a mismatch) rather than served stale.
        * restored images: the last batch and its embeddings, so the clip and aesthetic components
          called on the same batch run one CLIP forward.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        model_id: str,
        directory: pathlib.Path,
        device: torch.device,
        dtype: torch.dtype,
        resize_to: int,
        crop: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        gt_cache_size: int,
    ) -> None:
        self.model = model
        self.model_id = model_id
        self.directory = directory
        self.device = device
        self.dtype = dtype
        self.resize_to = resize_to
        self.crop = crop
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.batch_size = max(1, int(batch_size))
        self.gt_cache_size = max(0, int(gt_cache_size))
        self._gt_cache: collections.OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = collections.OrderedDict()
        self._last_restored: tuple[torch.Tensor, torch.Tensor] | None = None
        self.counters = collections.Counter()

    def info(self) -> dict:
        return {
            "model_id": self.model_id,
            "path": str(self.directory),
            "weights": _hash_files(_weight_files(self.directory)),
            "dtype": str(self.dtype).removeprefix("torch."),
            "preprocess": {
                "resize_shortest_edge": self.resize_to,
                "crop": list(self.crop),
                "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist(),
                "interpolation": "bicubic, antialias",
            },
        }

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> normalised (B, 3, crop_h, crop_w) pixel values."""
        h, w = images.shape[-2:]
        short, long = (h, w) if h <= w else (w, h)
        new_long = int(self.resize_to * long / short)  # as transformers' shortest-edge resize
        size = (self.resize_to, new_long) if h <= w else (new_long, self.resize_to)
        if (h, w) != size:
            images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
        ch, cw = self.crop
        top, left = max(0, (size[0] - ch) // 2), max(0, (size[1] - cw) // 2)
        images = images[..., top : top + ch, left : left + cw]
        return (images - self.mean) / self.std

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Projected CLIP image embeddings (not normalised), float32 (B, D)."""
        if images.shape[0] == 0:
            return torch.empty(0, self.model.config.projection_dim, device=self.device)
        outs = []
        for start in range(0, images.shape[0], self.batch_size):
            pixels = self.preprocess(images[start : start + self.batch_size]).to(self.dtype)
            out = self.model.get_image_features(pixel_values=pixels)
            # transformers v5 returns BaseModelOutputWithPooling (projected embedding in
            # pooler_output); v4 returned the tensor itself.
            outs.append(out if isinstance(out, torch.Tensor) else out.pooler_output)
        self.counters["forward_images"] += images.shape[0]
        return torch.cat(outs).float()

    def embed_restored(self, images: torch.Tensor) -> torch.Tensor:
        """`embed` with a one-batch cache: an equal batch reuses the last embeddings."""
        last = self._last_restored
        if (
            last is not None
            and last[0].shape == images.shape
            and last[0].device == images.device
            and torch.equal(last[0], images)
        ):
            self.counters["restored_cache_hits"] += 1
            return last[1]
        emb = self.embed(images)
        self._last_restored = (images.clone(), emb)  # a copy: the caller may reuse its buffer
        return emb

    @staticmethod
    def _fingerprint(image: torch.Tensor) -> torch.Tensor:
        # Three float64 moments (sum, sum of squares, position-weighted sum) plus the shape tell
        # two crops apart; the image itself would cost megabytes per cache entry.
        x = image.double().flatten()
        ramp = torch.linspace(0.0, 1.0, x.numel(), dtype=torch.float64, device=x.device)
        stats = torch.stack([x.sum(), (x * x).sum(), (x * ramp).sum()]).cpu()
        return torch.cat([torch.tensor(image.shape, dtype=torch.float64), stats])

    def embed_clean(self, images: torch.Tensor, sample_ids: list[str] | None) -> torch.Tensor:
        """Embeddings of clean images, cached per sample id (LRU) when ids are given.

        The G rollouts of one image share its id and clean image: within a batch each id is
        embedded once.
        """
        if not sample_ids or self.gt_cache_size == 0:
            return self.embed(images)
        fingerprints = [self._fingerprint(img) for img in images]
        result: list[torch.Tensor | None] = [None] * len(sample_ids)
        to_embed: list[int] = []  # batch positions to run through CLIP
        slot_of: dict[str, int] = {}  # sample id -> index into to_embed
        pending: list[tuple[int, int]] = []  # (batch position, index into to_embed)
        for i, sid in enumerate(sample_ids):
            entry = self._gt_cache.get(sid)
            if entry is not None and torch.allclose(entry[0], fingerprints[i], rtol=1e-9, atol=0):
                self._gt_cache.move_to_end(sid)
                result[i] = entry[1]
                self.counters["gt_cache_hits"] += 1
                continue
            slot = slot_of.get(sid)
            if slot is not None and torch.allclose(fingerprints[to_embed[slot]], fingerprints[i], rtol=1e-9, atol=0):
                pending.append((i, slot))  # a repeat of an id already being embedded
                continue
            if entry is not None or slot is not None:
                self.counters["gt_cache_mismatches"] += 1  # same id, different image
            self.counters["gt_cache_misses"] += 1
            slot_of[sid] = len(to_embed)
            pending.append((i, len(to_embed)))
            to_embed.append(i)
        if to_embed:
            emb = self.embed(images[to_embed])
            for i, slot in pending:
                result[i] = emb[slot]
            for sid, slot in slot_of.items():
                # clone: a row view would keep the whole batch's embeddings alive
                self._gt_cache[sid] = (fingerprints[to_embed[slot]], emb[slot].clone())
                self._gt_cache.move_to_end(sid)
            while len(self._gt_cache) > self.gt_cache_size:
                self._gt_cache.popitem(last=False)
        return torch.stack(result)

    def stats(self) -> dict:
        """Counters: forwards, restored-batch cache hits, clean cache hits/misses/mismatches."""
        return {**self.counters, "gt_cache_entries": len(self._gt_cache)}


def _read_clip_preprocessing(directory: pathlib.Path, image_size: int) -> dict:
    """CLIP preprocessing constants from `preprocessor_config.json` (fallback: OpenAI's).

    Read as JSON rather than through `CLIPImageProcessor` because only four numbers are needed
    and the processor classes differ between transformers versions and torchvision presence.
    """
    config_path = directory / "preprocessor_config.json"
    raw = json.loads(config_path.read_text()) if config_path.is_file() else {}
    size = raw.get("size", image_size)
    if isinstance(size, dict):
        size = size.get("shortest_edge", size.get("height", image_size))
    crop = raw.get("crop_size", image_size) if raw.get("do_center_crop", True) else size
    crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else (int(crop), int(crop))
    return {
        "resize_to": int(size),
        "crop": crop,
        "mean": tuple(raw.get("image_mean", _OPENAI_CLIP_MEAN)),
        "std": tuple(raw.get("image_std", _OPENAI_CLIP_STD)),
    }


def _get_clip_encoder(
    value: Any,
    key: str,
    device: str,
    dtype_name: str,
    batch_size: int,
    gt_cache_size: int,
    shared: dict | None,
) -> ClipImageEncoder:
    """Loads (or reuses from `shared`) a CLIP image encoder."""
    dev = torch.device(device)
    dtype = _torch_dtype(dtype_name, dev, key.rsplit(".", 1)[0] + ".dtype")
    directory = _resolve_pretrained_dir(value, key, "CLIP model")
    cache_key = ("clip", str(directory), str(dev), dtype)
    if shared is not None and cache_key in shared:
        encoder = shared[cache_key]
        encoder.gt_cache_size = max(encoder.gt_cache_size, int(gt_cache_size))
        return encoder

    from transformers import CLIPModel

    try:
        model = CLIPModel.from_pretrained(directory, dtype=dtype)
    except (OSError, ValueError) as e:
        raise RewardModelUnavailable(
            f"{key}='{value}': cannot load a CLIPModel from '{directory}' ({type(e).__name__}: {e})"
        ) from e
    model = model.to(dev).eval().requires_grad_(False)
    image_size = int(model.config.vision_config.image_size)
    prep = _read_clip_preprocessing(directory, image_size)
    if prep["crop"] != (image_size, image_size):
        raise RewardModelUnavailable(
            f"{key}: '{directory}' preprocessor crop {prep['crop']} does not match the model's image_size {image_size}."
        )
    encoder = ClipImageEncoder(
        model,
        model_id=str(value),
        directory=directory,
        device=dev,
        dtype=dtype,
        batch_size=batch_size,
        gt_cache_size=gt_cache_size,
        **prep,
    )
    if shared is not None:
        shared[cache_key] = encoder
    return encoder


class ClipSimilarityReward(RewardModel):
    """Cosine similarity of the CLIP image embeddings of restored and clean (B.1 R_clip)."""

    name = "clip"

    def __init__(self, encoder: ClipImageEncoder, config: dict) -> None:
        super().__init__(device=encoder.device, config=config)
        self.encoder = encoder

    def describe(self) -> dict:
        """The encoder's record (model id, weights, dtype, preprocessing) and the score."""
        return {
            **self.encoder.info(),
            "score": "cos(CLIP(restored), CLIP(clean))",
            "score_range": [-1.0, 1.0],
        }

    def stats(self) -> dict:
        """The encoder's counters (forwards, cache hits and misses)."""
        return self.encoder.stats()

    def score(
        self,
        degraded: torch.Tensor,
        restored: torch.Tensor,
        clean: torch.Tensor,
        sample_ids: list[str] | None,
    ) -> torch.Tensor:
        """(B,) float32 cosine similarities; `degraded` is unused.

        `sample_ids` (str or int; the G rollouts of an image share one): clean embeddings are
        cached under them. An id seen again with a different clean image (another random crop)
        is recomputed. None: no caching.
        """
        e_restored = self.encoder.embed_restored(restored)
        e_clean = self.encoder.embed_clean(clean, sample_ids)
        return F.cosine_similarity(e_restored, e_clean, dim=-1, eps=1e-8).float()


def build_clip(cfg: dict, device: str, *, shared: dict | None = None) -> ClipSimilarityReward:
    """Builds the CLIP similarity component.

    Args:
        cfg: the `clip` section.
        device: torch device string.
        shared: per-build cache of loaded encoders (lets `aesthetic` reuse the same model).

    Returns:
        The component.

    Raises:
        RewardModelUnavailable: the model directory or hub id cannot be resolved or loaded.
    """
    cfg = _merged_config("clip", cfg)
    encoder = _get_clip_encoder(
        cfg["model_path"],
        _key("clip", "model_path"),
        device,
        cfg["dtype"],
        cfg["batch_size"],
        cfg["gt_cache_size"],
        shared,
    )
    return ClipSimilarityReward(encoder, cfg)
