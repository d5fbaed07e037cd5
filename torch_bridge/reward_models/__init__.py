"""IRPO's PyTorch reward models (Appendix B.1-B.2): LPIPS, CLIP, LAION aesthetic, Qwen2.5-VL judge.

Each model is a *component*: a callable with one signature that scores a batch of restorations
and returns one raw float32 score per sample. The reward process (`torch_bridge`'s server or its
in-process mode) builds the live components once with `build_components(cfg, device)`, records
their `info()` in the handshake, and calls them per training step. Weighting, normalisation to
[0, 1] (except where stated below) and NaN-aware aggregation belong to the composer, not here.

What each component returns, per sample (inputs are (B, 3, H, W) float32 RGB in [0, 1]):

* `lpips`: `1 - LPIPS(restored, clean)` (lpips 0.1.4, AlexNet trunk by default).
  Range (-inf, 1], 1 = identical; typically 0.5-1.
* `clip`: cosine similarity of the CLIP image embeddings of restored and clean.
  Range [-1, 1]; close to 1 for restorations.
* `aesthetic`: LAION improved aesthetic predictor on the restored image, the raw rating.
  AVA scale, about 1-10 (the composer maps it to [0, 1]).
* `qwen`: the Qwen2.5-VL judge's score `s` in 1..5 (paper B.2), rescaled `(s - 1) / 4`.
  Range [0, 1]; NaN where the answer holds no valid score (counted in `stats()`). With
  `continuous=True`: the expected score over the probabilities of the tokens "1".."5" at the
  `<Score>` position, same rescaling, always finite.

Every model is read from a local file or directory named in config, and a Hugging Face hub
id (`openai/clip-vit-large-patch14`, `Qwen/Qwen2.5-VL-7B-Instruct`) is resolved through the hub
cache (downloaded on a machine with internet). A component whose weights cannot be found raises
`RewardModelUnavailable` naming the config key and the path or id it tried, before any training;
set that component's `weight` to 0 to run without it.

Heavy imports (`lpips`, `torchvision`, `transformers`, `huggingface_hub`) happen inside the
factories, so importing this package costs only `import torch`. Components are not thread-safe:
call each from one thread.

One module per family, the shared parts in `base`, the registry in `registry`; every public name
is re-exported here (`from torch_bridge.reward_models import build_components`):

    base.py        RewardModelUnavailable, the RewardComponent protocol and RewardModel, the
                   base class of the four models (info() and the checked __call__); the default
                   config, path/hub resolution, weight hashing, batch checks
    lpips.py       LPIPSReward, build_lpips
    clip.py        ClipImageEncoder (shared with aesthetic), ClipSimilarityReward, build_clip
    aesthetic.py   AestheticHead, AestheticReward, build_aesthetic
    qwen_judge.py  QWEN_PROMPT, the score parser, QwenJudgeReward, build_qwen
    registry.py    COMPONENTS, build_components
"""

from torch_bridge.reward_models.aesthetic import (
    AESTHETIC_HEAD_URL,
    AESTHETIC_LAYERS,
    AestheticHead,
    AestheticReward,
    build_aesthetic,
    load_aesthetic_head,
)
from torch_bridge.reward_models.base import (
    CONFIG_PREFIX,
    RewardComponent,
    RewardModel,
    RewardModelUnavailable,
    default_reward_model_config,
    sha256_file,
)
from torch_bridge.reward_models.clip import ClipImageEncoder, ClipSimilarityReward, build_clip
from torch_bridge.reward_models.lpips import LPIPSReward, build_lpips
from torch_bridge.reward_models.qwen_judge import (
    QWEN_PROMPT,
    QWEN_SCORE_MAX,
    QWEN_SCORE_MIN,
    QwenJudgeReward,
    build_qwen,
    expected_judge_score,
    judge_score_prefix,
    parse_judge_score,
    rescale_judge_score,
)
from torch_bridge.reward_models.registry import COMPONENTS, build_components

__all__ = [
    "AESTHETIC_HEAD_URL",
    "AESTHETIC_LAYERS",
    "COMPONENTS",
    "CONFIG_PREFIX",
    "QWEN_PROMPT",
    "QWEN_SCORE_MAX",
    "QWEN_SCORE_MIN",
    "AestheticHead",
    "AestheticReward",
    "ClipImageEncoder",
    "ClipSimilarityReward",
    "LPIPSReward",
    "QwenJudgeReward",
    "RewardComponent",
    "RewardModel",
    "RewardModelUnavailable",
    "build_aesthetic",
    "build_clip",
    "build_components",
    "build_lpips",
    "build_qwen",
    "default_reward_model_config",
    "expected_judge_score",
    "judge_score_prefix",
    "load_aesthetic_head",
    "parse_judge_score",
    "rescale_judge_score",
    "sha256_file",
]
