"""PyTorch AdaIR reference, written from `docs/adair-spec.md` (sections 1-8).

This is *not* the official code: it is an independent re-implementation of the official
`net/model.py` (c-yn/AdaIR, commit ccb8b98) that keeps exactly the official module and attribute
names, so `AdaIR(**config).load_state_dict(official_state_dict, strict=True)` works, including
the parameters the official forward never touches (`fre*.conv`, `fre*.score_gen`). It has no
einops dependency. The converter's `--verify` and the benchmarks use it as the PyTorch side of
a comparison; the golden fixtures in `tests/fixtures/adair_tiny/` pin it to the official model.

Intermediates are reachable with forward hooks on the official submodule names, e.g.
`encoder_level1.0`, `latent`, `decoder_level3`, `fre2`, `fre2.channel_cross_l` (its first
positional input is the *high* band, a forward pre-hook sees it), `fre2.frequency_refine`,
`fre2.rate_conv` (output = rate logits before the sigmoid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _to_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, heads, C/heads, H*W), head-major channel grouping as in the official
    `rearrange(t, 'b (head c) h w -> b head c (h w)')`."""
    b, c, h, w = t.shape
    return t.reshape(b, heads, c // heads, h * w)


def _channel_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, temperature: torch.Tensor
) -> torch.Tensor:
    """Restormer "transposed" attention over channels, shared by MDTA and the cross attention.

    No 1/sqrt(d) scaling: the learnt per-head `temperature` is the only logit scale.
    """
    b, c, h, w = q.shape
    q, k, v = (_to_heads(t, heads) for t in (q, k, v))  # (B, heads, C/heads, H*W)
    # F.normalize divides by max(||t||, 1e-12) along the tokens, so an all-zero q stays zero
    # (this happens for channel_cross_h whenever the frequency mask is empty).
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1)) * temperature  # (B, heads, C/heads, C/heads)
    out = attn.softmax(dim=-1) @ v
    return out.reshape(b, c, h, w)


class BiasFree_LayerNorm(nn.Module):
    """Channel LayerNorm without mean subtraction in the numerator and without a bias."""

    def __init__(self, normalized_shape: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The variance is still taken about the mean (biased, divide by C); eps 1e-5 inside sqrt.
        sigma = x.var(-1, keepdim=True, unbiased=False)
        return x / torch.sqrt(sigma + 1e-5) * self.weight


class WithBias_LayerNorm(nn.Module):
    """Standard channel LayerNorm: biased two-pass variance, eps 1e-5 inside the sqrt."""

    def __init__(self, normalized_shape: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(-1, keepdim=True)
        sigma = x.var(-1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(sigma + 1e-5) * self.weight + self.bias


class LayerNorm(nn.Module):
    """Per-pixel normalisation over channels of an NCHW tensor (the `body` holds the params)."""

    def __init__(self, dim: int, LayerNorm_type: str):
        super().__init__()
        if LayerNorm_type == "BiasFree":
            self.body = BiasFree_LayerNorm(dim)
        else:  # the official code treats every other string as 'WithBias'
            self.body = WithBias_LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x3 = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        return self.body(x3).transpose(1, 2).reshape(b, c, h, w)


class FeedForward(nn.Module):
    """GDFN: 1x1 expand to 2h, depthwise 3x3, exact-GELU gate (first half) times second half."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool):
        super().__init__()
        # Python float product then truncation: 48 * 2.66 = 127.68 -> 127.
        hidden_features = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden_features * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(
            hidden_features * 2,
            hidden_features * 2,
            kernel_size=3,
            padding=1,
            groups=hidden_features * 2,
            bias=bias,
        )
        self.project_out = nn.Conv2d(hidden_features, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)  # exact erf GELU, not the tanh approximation


class Attention(nn.Module):
    """MDTA: multi-dconv head transposed self-attention (attention over channels)."""

    def __init__(self, dim: int, num_heads: int, bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        return self.project_out(_channel_attention(q, k, v, self.num_heads, self.temperature))


class Downsample(nn.Module):
    """3x3 conv halving the channels, then PixelUnshuffle(2): (C, H, W) -> (2C, H/2, W/2)."""

    def __init__(self, n_feat: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feat, n_feat // 2, kernel_size=3, padding=1, bias=False),
            nn.PixelUnshuffle(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """3x3 conv doubling the channels, then PixelShuffle(2): (C, H, W) -> (C/2, 2H, 2W)."""

    def __init__(self, n_feat: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feat, n_feat * 2, kernel_size=3, padding=1, bias=False),
            nn.PixelShuffle(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TransformerBlock(nn.Module):
    """Restormer block: pre-norm MDTA and pre-norm GDFN, each with a residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_expansion_factor: float,
        bias: bool,
        LayerNorm_type: str,
    ):
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, LayerNorm_type)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class Chanel_Cross_Attention(nn.Module):
    """Channel cross attention: query from `x`, key/value from `y` (official spelling kept)."""

    def __init__(self, dim: int, num_head: int, bias: bool):
        super().__init__()
        self.num_head = num_head
        self.temperature = nn.Parameter(torch.ones(num_head, 1, 1))
        self.q = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.q_dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=bias)
        self.kv = nn.Conv2d(dim, dim * 2, kernel_size=1, bias=bias)
        self.kv_dwconv = nn.Conv2d(dim * 2, dim * 2, kernel_size=3, padding=1, groups=dim * 2, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"cross attention needs equal shapes, got {x.shape} and {y.shape}")
        q = self.q_dwconv(self.q(x))
        k, v = self.kv_dwconv(self.kv(y)).chunk(2, dim=1)
        return self.project_out(_channel_attention(q, k, v, self.num_head, self.temperature))


class OverlapPatchEmbed(nn.Module):
    """3x3 conv lifting the image to `embed_dim` features (always bias-free in AdaIR)."""

    def __init__(self, in_c: int = 3, embed_dim: int = 48, bias: bool = False):
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class SpatialGate(nn.Module):
    """Per-pixel gate from [max, mean] over channels (in that order) -> 7x7 conv -> sigmoid."""

    def __init__(self):
        super().__init__()
        self.spatial = nn.Conv2d(2, 1, kernel_size=7, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.cat((x.amax(1, keepdim=True), x.mean(1, keepdim=True)), dim=1)
        return torch.sigmoid(self.spatial(scale))  # (B, 1, H, W)


class ChannelGate(nn.Module):
    """Per-channel gate: one shared MLP applied to GAP and GMP, summed, then sigmoid."""

    def __init__(self, dim: int):
        super().__init__()
        # Sequential indices 0/1/2 are part of the state-dict names (mlp.0, mlp.2).
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, dim // 16, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(dim // 16, dim, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + mx)  # (B, C, 1, 1)


class FreRefine(nn.Module):
    """FMoM: the spatial map of `high` gates `low`, the channel vector of `low` gates `high`."""

    def __init__(self, dim: int):
        super().__init__()
        self.SpatialGate = SpatialGate()
        self.ChannelGate = ChannelGate(dim)
        self.proj = nn.Conv2d(dim, dim, kernel_size=1)  # the one used conv with a bias

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        spatial_weight = self.SpatialGate(high)
        channel_weight = self.ChannelGate(low)
        return self.proj(low * spatial_weight + high * channel_weight)


class FreModule(nn.Module):
    """AFLB: split the resized input image into frequency bands and inject them into `y`."""

    def __init__(self, dim: int, num_heads: int, bias: bool, in_dim: int = 3):
        super().__init__()
        # `conv` and `score_gen` are never used in the forward; they exist so that official
        # checkpoints load strictly and conversion round-trips losslessly.
        self.conv = nn.Conv2d(in_dim, dim, kernel_size=3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(in_dim, dim, kernel_size=3, padding=1, bias=False)
        self.score_gen = nn.Conv2d(2, 2, 7, padding=3)
        # para1 = 0, para2 = 1 makes a freshly initialised module the identity on y.
        self.para1 = nn.Parameter(torch.zeros(dim, 1, 1))
        self.para2 = nn.Parameter(torch.ones(dim, 1, 1))
        self.channel_cross_l = Chanel_Cross_Attention(dim, num_head=num_heads, bias=bias)
        self.channel_cross_h = Chanel_Cross_Attention(dim, num_head=num_heads, bias=bias)
        self.channel_cross_agg = Chanel_Cross_Attention(dim, num_head=num_heads, bias=bias)
        self.frequency_refine = FreRefine(dim)
        self.rate_conv = nn.Sequential(
            nn.Conv2d(dim, dim // 8, 1, bias=False),
            nn.GELU(),  # exact erf form
            nn.Conv2d(dim // 8, 2, 1, bias=False),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Args: x: the network input (B, 3, H0, W0); y: decoder feature (B, C, H, W)."""
        _, _, h, w = y.shape
        # Half-pixel centres, no antialiasing (PyTorch's bilinear defaults).
        x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False)
        high, low = self.fft(x)
        # The naming is swapped in the official code: `_l` attends with the HIGH band.
        high = self.channel_cross_l(high, y)
        low = self.channel_cross_h(low, y)
        agg = self.frequency_refine(low, high)
        out = self.channel_cross_agg(y, agg)
        return out * self.para1 + y * self.para2

    @staticmethod
    def shift(x: torch.Tensor) -> torch.Tensor:
        """fftshift over (H, W) as a roll by (int(H/2), int(W/2))."""
        h, w = x.shape[-2:]
        return torch.roll(x, shifts=(int(h / 2), int(w / 2)), dims=(2, 3))

    @staticmethod
    def unshift(x: torch.Tensor) -> torch.Tensor:
        """Inverse of `shift`."""
        h, w = x.shape[-2:]
        return torch.roll(x, shifts=(-int(h / 2), -int(w / 2)), dims=(2, 3))

    def fft(self, x: torch.Tensor, n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (high, low): moduli of the band-split `conv1(x)`, each (B, C, H, W)."""
        x = self.conv1(x)
        h, w = x.shape[-2:]
        threshold = self.rate_conv(F.adaptive_avg_pool2d(x, 1)).sigmoid()  # (B, 2, 1, 1)
        mask = torch.zeros_like(x)
        for i in range(x.shape[0]):
            # int * tensor stays in the model dtype (float32) and `.int()` truncates, exactly as
            # the official code; with n = 128 the mask is empty unless H, W >= 128 (spec §5).
            h_ = int((h // n * threshold[i, 0]).int())
            w_ = int((w // n * threshold[i, 1]).int())
            mask[i, :, h // 2 - h_ : h // 2 + h_, w // 2 - w_ : w // 2 + w_] = 1

        # norm='forward' scales the forward transform by 1/(H*W) and leaves the inverse unscaled.
        spectrum = self.shift(torch.fft.fft2(x, norm="forward", dim=(-2, -1)))
        high = torch.fft.ifft2(self.unshift(spectrum * (1 - mask)), norm="forward", dim=(-2, -1))
        low = torch.fft.ifft2(self.unshift(spectrum * mask), norm="forward", dim=(-2, -1))
        return torch.abs(high), torch.abs(low)


class AdaIR(nn.Module):
    """AdaIR with the official constructor, module names and state-dict layout.

    Args:
        inp_channels: image channels in.
        out_channels: image channels out (must equal `inp_channels` for the global residual).
        dim: level-1 width; levels 2/3/4 use 2, 4, 8 times it.
        num_blocks: TransformerBlocks per encoder level 1-4 (decoder levels reuse 1-3).
        num_refinement_blocks: TransformerBlocks after decoder level 1.
        heads: MDTA heads per level; all FreModules use `heads[2]`.
        ffn_expansion_factor: GDFN hidden width factor (truncated with `int`).
        bias: bias flag of the MDTA/GDFN/cross-attention/reduce/output convs.
        LayerNorm_type: 'WithBias' (default) or 'BiasFree'.
        decoder: whether the three FreModules exist (True in every released model).
    """

    def __init__(
        self,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: list[int] = [4, 6, 6, 8],  # noqa: B006 - official signature
        num_refinement_blocks: int = 4,
        heads: list[int] = [1, 2, 4, 8],  # noqa: B006 - official signature
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",
        decoder: bool = True,
    ):
        super().__init__()

        def blocks(width: int, n_heads: int, n: int) -> nn.Sequential:
            return nn.Sequential(
                *[TransformerBlock(width, n_heads, ffn_expansion_factor, bias, LayerNorm_type) for _ in range(n)]
            )

        # Registration order defines the state-dict key order: fre1..3 come before the encoder.
        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.decoder = decoder
        if decoder:
            self.fre1 = FreModule(dim * 8, num_heads=heads[2], bias=bias)
            self.fre2 = FreModule(dim * 4, num_heads=heads[2], bias=bias)
            self.fre3 = FreModule(dim * 2, num_heads=heads[2], bias=bias)

        self.encoder_level1 = blocks(dim, heads[0], num_blocks[0])
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = blocks(dim * 2, heads[1], num_blocks[1])
        self.down2_3 = Downsample(dim * 2)
        self.encoder_level3 = blocks(dim * 4, heads[2], num_blocks[2])
        self.down3_4 = Downsample(dim * 4)
        self.latent = blocks(dim * 8, heads[3], num_blocks[3])

        self.up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, kernel_size=1, bias=bias)
        self.decoder_level3 = blocks(dim * 4, heads[2], num_blocks[2])
        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, kernel_size=1, bias=bias)
        self.decoder_level2 = blocks(dim * 2, heads[1], num_blocks[1])
        self.up2_1 = Upsample(dim * 2)
        # Level 1 of the decoder keeps 2*dim channels (no reduce conv) with heads[0].
        self.decoder_level1 = blocks(dim * 2, heads[0], num_blocks[0])
        self.refinement = blocks(dim * 2, heads[0], num_refinement_blocks)
        self.output = nn.Conv2d(dim * 2, out_channels, kernel_size=3, padding=1, bias=bias)

    def forward(self, inp_img: torch.Tensor, noise_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Restores `inp_img` (B, 3, H, W), H and W multiples of 8; `noise_emb` is unused."""
        e1 = self.encoder_level1(self.patch_embed(inp_img))
        e2 = self.encoder_level2(self.down1_2(e1))
        e3 = self.encoder_level3(self.down2_3(e2))
        lat = self.latent(self.down3_4(e3))
        if self.decoder:
            lat = self.fre1(inp_img, lat)

        # Skip concatenations are always [upsampled decoder feature, encoder feature].
        d3 = self.reduce_chan_level3(torch.cat([self.up4_3(lat), e3], dim=1))
        d3 = self.decoder_level3(d3)
        if self.decoder:
            d3 = self.fre2(inp_img, d3)

        d2 = self.reduce_chan_level2(torch.cat([self.up3_2(d3), e2], dim=1))
        d2 = self.decoder_level2(d2)
        if self.decoder:
            d2 = self.fre3(inp_img, d2)

        d1 = torch.cat([self.up2_1(d2), e1], dim=1)
        d1 = self.refinement(self.decoder_level1(d1))
        return self.output(d1) + inp_img  # global residual, no clamping


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (AdaIR has no buffers); works on meta-device models too."""
    return sum(p.numel() for p in model.parameters())
