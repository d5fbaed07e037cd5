"""Floating-point operations of AdaIR, derived from its config (for roofline numbers).

Counted: every convolution and every attention matrix product, at 2 FLOPs per multiply-add.
Not counted: element-wise work (LayerNorm, GELU, softmax, gates, residual adds, biases), the
FFTs of the frequency split, the bilinear resizes and pooling. For the paper's model these are a
few per cent of the arithmetic but, being memory-bound, can be a larger share of the time; the
roofline figures built on this count are therefore a lower bound on the work done.

With ``N`` the pixels at a level, ``C`` its channels, ``h`` its heads, ``d = C/h`` and
``m = int(C * ffn_expansion_factor)``:

* ``conv(cin -> cout, k x k, groups g)`` costs ``2 N k^2 (cin/g) cout``;
* a TransformerBlock costs ``2N (3C^2 + 27C)`` (qkv 1x1 + depthwise 3x3) ``+ 4 N C d`` (the
  two d x d channel-attention products per head) ``+ 2N C^2`` (project_out) ``+ 2N (2Cm + 18m
  + mC)`` (GDFN: project_in, depthwise 3x3, project_out), i.e.
  ``2N (4C^2 + 3Cm + 27C + 18m) + 4NCd``;
* a FreModule at ``C`` channels and ``N`` pixels costs ``conv1`` (3 -> C, 3x3) + three
  channel cross-attentions (each ``2N (4C^2 + 27C) + 4NCd``: q 1x1 + q depthwise, kv 1x1 + kv
  depthwise, project_out, and the two products) + FreRefine (7x7 2 -> 1 spatial gate and the
  C x C ``proj``: ``2N (98 + C^2)``) + the per-image MLPs on pooled features
  (``rate_conv``: ``2 (C^2/8 + 2C/8)``; the channel gate's shared MLP, twice: ``8 C (C/16)``);
* the encoder/decoder convs: patch embedding, three Downsample (C -> C/2, 3x3), three
  Upsample (C -> 2C, 3x3), two 1x1 channel reductions and the output conv, each at its level's
  resolution, as in :class:`irpo_jax.models.adair.AdaIR`.

A training step (forward and backward) costs ``3x`` the forward: each product's backward is two
products of the same size (the gradient with respect to its input and to its weight). The one
exception, the first convolution's unused input gradient, is below 0.1 % and ignored.
"""

from __future__ import annotations

from irpo_jax.models.adair import AdaIRConfig, get_config


def conv(pixels: int, cin: int, cout: int, k: int, groups: int = 1) -> int:
    """FLOPs of a stride-1 "same" convolution over ``pixels`` output positions."""
    return 2 * pixels * k * k * (cin // groups) * cout


def channel_attention(pixels: int, channels: int, heads: int) -> int:
    """The two (d x d per head) products of Restormer's transposed attention: q k^T and attn v."""
    return 2 * (2 * pixels * channels * (channels // heads))


def transformer_block(pixels: int, channels: int, heads: int, ffn_expansion_factor: float) -> int:
    c, n = channels, pixels
    hidden = int(c * ffn_expansion_factor)
    attn = conv(n, c, 3 * c, 1) + conv(n, 3 * c, 3 * c, 3, 3 * c) + channel_attention(n, c, heads) + conv(n, c, c, 1)
    ffn = conv(n, c, 2 * hidden, 1) + conv(n, 2 * hidden, 2 * hidden, 3, 2 * hidden) + conv(n, hidden, c, 1)
    return attn + ffn


def cross_attention(pixels: int, channels: int, heads: int) -> int:
    c, n = channels, pixels
    q = conv(n, c, c, 1) + conv(n, c, c, 3, c)
    kv = conv(n, c, 2 * c, 1) + conv(n, 2 * c, 2 * c, 3, 2 * c)
    return q + kv + channel_attention(n, c, heads) + conv(n, c, c, 1)


def fre_module(pixels: int, channels: int, heads: int) -> int:
    c, n = channels, pixels
    image_features = conv(n, 3, c, 3)
    rate = conv(1, c, c // 8, 1) + conv(1, c // 8, 2, 1)
    refine = conv(n, 2, 1, 7) + 2 * (conv(1, c, c // 16, 1) + conv(1, c // 16, c, 1)) + conv(n, c, c, 1)
    return image_features + rate + 3 * cross_attention(n, c, heads) + refine


def _levels(cfg: AdaIRConfig, height: int, width: int):
    n1 = height * width
    return n1, n1 // 4, n1 // 16, n1 // 64


def _blocks(cfg: AdaIRConfig, count: int, pixels: int, channels: int, level: int) -> int:
    return count * transformer_block(pixels, channels, cfg.heads[level], cfg.ffn_expansion_factor)


def encoder_flops(config: AdaIRConfig | str, height: int, width: int, batch: int = 1) -> int:
    """FLOPs of :meth:`~irpo_jax.models.adair.AdaIR.encode`: everything before ``fre1``."""
    cfg = get_config(config)
    c, nb = cfg.dim, cfg.num_blocks
    n1, n2, n3, n4 = _levels(cfg, height, width)
    total = conv(n1, cfg.inp_channels, c, 3)  # patch embedding
    total += _blocks(cfg, nb[0], n1, c, 0) + conv(n1, c, c // 2, 3)  # level 1, down1_2
    total += _blocks(cfg, nb[1], n2, 2 * c, 1) + conv(n2, 2 * c, c, 3)  # level 2, down2_3
    total += _blocks(cfg, nb[2], n3, 4 * c, 2) + conv(n3, 4 * c, 2 * c, 3)  # level 3, down3_4
    total += _blocks(cfg, nb[3], n4, 8 * c, 3)  # latent
    return batch * total


def decoder_flops(config: AdaIRConfig | str, height: int, width: int, batch: int = 1, *, to_fre3: bool = False) -> int:
    """FLOPs of :meth:`~irpo_jax.models.adair.AdaIR.decode`: ``fre1`` to the output.

    ``to_fre3``: only what the policy heads' inputs need, i.e. up to ``decoder_level2`` and
    ``fre3``'s image features (what XLA keeps of a pass whose restorations nobody reads: the
    frozen reference policy's log-probs).
    """
    cfg = get_config(config)
    c, nb, h3 = cfg.dim, cfg.num_blocks, cfg.heads[2]
    n1, n2, n3, n4 = _levels(cfg, height, width)
    total = fre_module(n4, 8 * c, h3) + fre_module(n3, 4 * c, h3) if cfg.decoder else 0
    total += conv(n4, 8 * c, 16 * c, 3) + conv(n3, 8 * c, 4 * c, 1)  # up4_3, reduce_chan_level3
    total += _blocks(cfg, nb[2], n3, 4 * c, 2)  # decoder level 3
    total += conv(n3, 4 * c, 8 * c, 3) + conv(n2, 4 * c, 2 * c, 1)  # up3_2, reduce_chan_level2
    total += _blocks(cfg, nb[1], n2, 2 * c, 1)  # decoder level 2
    if to_fre3:
        return batch * (total + (conv(n2, 3, 2 * c, 3) if cfg.decoder else 0))  # fre3's conv1 (the rate head's input)
    total += fre_module(n2, 2 * c, h3) if cfg.decoder else 0
    total += conv(n2, 2 * c, 4 * c, 3)  # up2_1
    total += _blocks(cfg, nb[0] + cfg.num_refinement_blocks, n1, 2 * c, 0)  # decoder level 1 + refinement
    total += conv(n1, 2 * c, cfg.out_channels, 3)  # output
    return batch * total


def forward_flops(config: AdaIRConfig | str, height: int, width: int, batch: int = 1) -> int:
    """FLOPs of one AdaIR forward on a (batch, height, width, 3) input (see the module docstring)."""
    return encoder_flops(config, height, width, batch) + decoder_flops(config, height, width, batch)


def train_step_flops(config: AdaIRConfig | str, height: int, width: int, batch: int = 1) -> int:
    """Forward + backward of a supervised step: ``3 x forward_flops`` (module docstring)."""
    return 3 * forward_flops(config, height, width, batch)


def grpo_step_flops(
    config: AdaIRConfig | str, height: int, width: int, *, group: int, images: int = 1, reference_pass: bool = True
) -> dict[str, int]:
    """FLOPs of one IRPO GRPO step, by part, as the trainer computes it (``irpo_jax.training.steps``).

    * ``rollout``: one encoder per image and ``group`` decoders (the G actions branch at ``fre1``);
    * ``reference``: the frozen reference policy's log-probs of the G action sets: its encoder and
      ``group`` decoders up to ``fre3`` (:func:`decoder_flops` ``to_fre3``); 0 without the pass
      (``reference_pass=False``: the KL term off, or a reference whose heads ignore their inputs,
      the step-0 policy, whose log-probs need no decoder);
    * ``backbone``: forward and backward (x3) of the best rollout and the deterministic output
      through one shared encoder (L_sup and L_cons; the current log-probs come from the heads on
      the rollout's stored inputs, ``grpo.reuse_head_inputs``).

    The policy heads' small MLPs are left out (below 0.01 % for the paper's model). ``total`` sums
    the parts; a supervised step on ``images`` images is :func:`train_step_flops`.
    """
    enc, dec = encoder_flops(config, height, width, images), decoder_flops(config, height, width, images)
    parts = {
        "rollout": enc + group * dec,
        "reference": encoder_flops(config, height, width, images)
        + group * decoder_flops(config, height, width, images, to_fre3=True)
        if reference_pass
        else 0,
        "backbone": 3 * (enc + 2 * dec),
    }
    return parts | {"total": sum(parts.values())}
