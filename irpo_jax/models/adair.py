"""AdaIR (ICLR'25) in Flax NNX, computing what the official PyTorch model computes.

Module and attribute names mirror ``c-yn/AdaIR`` ``net/model.py`` so that a parameter path
joined with dots is the PyTorch state-dict key with only its leaf renamed
(``encoder_level1.0.attn.qkv.weight`` <-> ``encoder_level1/0/attn/qkv/kernel``); the conversion
table lives in :mod:`irpo_jax.models.convert`. Layout is NHWC throughout.

Numerics follow ``adair-spec.md`` (section 9 is the checklist): LayerNorm eps 1e-5 with the
biased two-pass variance, exact-erf GELU, ``F.normalize`` semantics with a NaN-free gradient,
no 1/sqrt(d) in the channel attention, PixelShuffle channel order, bilinear resize without
antialiasing, ``norm='forward'`` FFTs with the asymmetric half-open low-pass rectangle.

Activations are float32, or bfloat16 under ``layers.compute_dtype("bfloat16")`` (parameters
stay float32; the policy there says which parts stay float32).

The forward is split into :meth:`AdaIR.encode` (everything before ``fre1``; it does not depend
on the frequency controls) and :meth:`AdaIR.decode`, so that the IRPO policy can branch several
rollouts from one encoding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from irpo_jax.models import layers
from irpo_jax.models.layers import Conv2d

MASK_RULES = ("adair", "fraction", "anchored", "widen")
# The rules under which a rate of 0.5 (and, for "widen", any rate up to 0.5) is the module's own
# official mask: they need the thresholds sigmoid(rate_conv(.)).
ANCHORED_RULES = ("anchored", "widen")


@dataclasses.dataclass(frozen=True)
class AdaIRConfig:
    """Constructor arguments of the official ``AdaIR`` class, plus the mask rule.

    Attributes:
      inp_channels, out_channels: image channels (3).
      dim: channels at level 1 (48 in the paper).
      num_blocks: TransformerBlocks at encoder levels 1-3 and the latent (decoder levels reuse 1-3).
      num_refinement_blocks: TransformerBlocks after decoder level 1.
      heads: attention heads per level; the FreModules all use ``heads[2]``.
      ffn_expansion_factor: GDFN hidden width = ``int(C * factor)``.
      bias: bias flag of the attention/FFN/reduce/output convs (others never have one).
      LayerNorm_type: ``"WithBias"`` or ``"BiasFree"``.
      decoder: whether the FreModules exist (every released model has them).
      mask_rule: how the low-pass mask's half-sizes follow from the rates, see
        :func:`mask_half_sizes`: ``"adair"`` (official: ``int((H//128)*t)``), ``"fraction"``
        (``floor(r*(H//2))``), ``"widen"`` (the IRPO policy's default: rates up to 0.5 keep the
        official mask, higher ones widen it to at least the low-pass cutoff ``2r - 1`` in
        normalised frequency) or ``"anchored"`` (the former default: 0.5 is the official mask,
        lower rates shrink it, higher ones widen it). Without policy rates, ``"widen"`` and
        ``"anchored"`` are the official model exactly.
    """

    inp_channels: int = 3
    out_channels: int = 3
    dim: int = 48
    num_blocks: tuple[int, int, int, int] = (4, 6, 6, 8)
    num_refinement_blocks: int = 4
    heads: tuple[int, int, int, int] = (1, 2, 4, 8)
    ffn_expansion_factor: float = 2.66
    bias: bool = False
    LayerNorm_type: str = "WithBias"  # noqa: N815 (the official keyword)
    decoder: bool = True
    mask_rule: str = "adair"

    def __post_init__(self):
        object.__setattr__(self, "num_blocks", tuple(int(n) for n in self.num_blocks))
        object.__setattr__(self, "heads", tuple(int(h) for h in self.heads))
        if len(self.num_blocks) != 4 or len(self.heads) != 4:
            raise ValueError(f"num_blocks and heads need 4 entries, got {self.num_blocks}, {self.heads}")
        if self.LayerNorm_type not in ("WithBias", "BiasFree"):
            raise ValueError(f"LayerNorm_type must be 'WithBias' or 'BiasFree', got {self.LayerNorm_type!r}")
        if self.mask_rule not in MASK_RULES:
            raise ValueError(f"mask_rule must be one of {MASK_RULES}, got {self.mask_rule!r}")
        for level, mult in enumerate((1, 2, 4, 8)):
            if (self.dim * mult) % self.heads[level]:
                raise ValueError(f"dim*{mult}={self.dim * mult} is not divisible by heads[{level}]={self.heads[level]}")
        if self.decoder and (2 * self.dim) // 16 < 1:
            raise ValueError(f"dim={self.dim} is too small: the FreModules need 2*dim >= 16 channels")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["num_blocks"], d["heads"] = list(self.num_blocks), list(self.heads)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AdaIRConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown AdaIR config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**dict(d))


VARIANTS: dict[str, AdaIRConfig] = {
    # The paper's model: 28,784,824 parameters.
    "base": AdaIRConfig(),
    # Demo-sized: trains on a 2-core CPU in minutes.
    "small": AdaIRConfig(dim=16, num_blocks=(1, 2, 2, 2), num_refinement_blocks=1),
    # The golden-fixture configuration (295,865 parameters); for tests.
    "tiny": AdaIRConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1),
}


def get_config(variant: str | AdaIRConfig | Mapping[str, Any], **overrides) -> AdaIRConfig:
    """A named variant (``base``, ``small``, ``tiny``), a dict of constructor args, or a config."""
    if isinstance(variant, AdaIRConfig):
        cfg = variant
    elif isinstance(variant, str):
        if variant not in VARIANTS:
            raise ValueError(f"unknown AdaIR variant {variant!r}; valid: {sorted(VARIANTS)}")
        cfg = VARIANTS[variant]
    else:
        cfg = AdaIRConfig.from_dict(variant)
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


# ----------------------------------------------------------------------------- attention blocks


def channel_attention(q, k, v, temperature: jax.Array, heads: int) -> jax.Array:
    """Restormer's "transposed" attention over channels, per head. q, k, v: (B, H, W, C).

    Channels are grouped head-major (channel = head * C/heads + c) as PyTorch's
    ``rearrange('b (head c) h w -> b head c (h w)')``; q and k are L2-normalised over the tokens;
    the logits are scaled by the learnt per-head temperature (no 1/sqrt(d)).

    The normalisation is applied to the (d, d) logits rather than to the tokens:
    ``q_hat^T k_hat = diag(1/|q|) (q^T k) diag(1/|k|)``, the same numbers up to rounding. So
    neither the forward nor the backward makes a normalised full-size copy of q and k: the
    backward is the d x d algebra plus two matmuls for dq, dk (autodiff of the normalised tokens
    took more time than the attention's matmuls on XLA:CPU, mostly in column reductions and
    transposes of full-size tensors).

    With bfloat16 inputs the two matmuls take bfloat16 operands; the norms over the H*W tokens,
    the logits (accumulated as float32) and the softmax stay float32.
    """
    b, h, w, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(b, h * w, heads, d) for t in (q, k, v))  # (B, N, heads, d)
    logits_dtype = jnp.promote_types(v.dtype, jnp.float32)
    with jax.named_scope("attention_l2norm"):
        inv_q = layers.inverse_token_norm(layers.at_least_float32(q), axis=1)  # (B, heads, d)
        inv_k = layers.inverse_token_norm(layers.at_least_float32(k), axis=1)
    with jax.named_scope("attention_matmul"):
        attn = jnp.einsum("bnhc,bnhd->bhcd", q, k, preferred_element_type=logits_dtype)
    with jax.named_scope("attention_softmax"):
        scale = inv_q[..., :, None] * inv_k[..., None, :] * temperature.reshape(1, heads, 1, 1).astype(logits_dtype)
        attn = jax.nn.softmax(attn * scale, axis=-1).astype(v.dtype)  # (B, heads, d, d)
    with jax.named_scope("attention_matmul"):
        out = jnp.einsum("bhcd,bnhd->bnhc", attn, v)
    return out.reshape(b, h, w, c)


class Attention(nnx.Module):
    """MDTA: qkv 1x1 -> depthwise 3x3 -> channel attention -> project_out 1x1."""

    def __init__(self, dim: int, num_heads: int, bias: bool, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.temperature = nnx.Param(jnp.ones((num_heads, 1, 1)))
        self.qkv = Conv2d(dim, dim * 3, 1, bias=bias, rngs=rngs)
        self.qkv_dwconv = Conv2d(dim * 3, dim * 3, 3, groups=dim * 3, bias=bias, rngs=rngs)
        self.project_out = Conv2d(dim, dim, 1, bias=bias, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = jnp.split(self.qkv_dwconv(self.qkv(x)), 3, axis=-1)
        return self.project_out(channel_attention(q, k, v, self.temperature[...], self.num_heads))


class FeedForward(nnx.Module):
    """GDFN: project_in 1x1 to 2h -> depthwise 3x3 -> GELU(first half) * second half -> 1x1."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool, *, rngs: nnx.Rngs):
        hidden = int(dim * ffn_expansion_factor)  # truncation, as in PyTorch (48*2.66 -> 127)
        self.project_in = Conv2d(dim, hidden * 2, 1, bias=bias, rngs=rngs)
        self.dwconv = Conv2d(hidden * 2, hidden * 2, 3, groups=hidden * 2, bias=bias, rngs=rngs)
        self.project_out = Conv2d(hidden, dim, 1, bias=bias, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x1, x2 = jnp.split(self.dwconv(self.project_in(x)), 2, axis=-1)
        with jax.named_scope("gdfn_gelu_gate"):
            gated = layers.gelu_gate(x1, x2)
        return self.project_out(gated)


class Norm(nnx.Module):
    """AdaIR's ``LayerNorm`` wrapper (its parameters sit under ``body``)."""

    def __init__(self, dim: int, layer_norm_type: str):
        self.body = layers.LayerNorm(dim, layer_norm_type)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.body(x)


class TransformerBlock(nnx.Module):
    """Pre-norm Restormer block: ``x + attn(norm1(x))`` then ``x + ffn(norm2(x))``."""

    def __init__(self, dim, num_heads, ffn_expansion_factor, bias, layer_norm_type, *, rngs):
        self.norm1 = Norm(dim, layer_norm_type)
        self.attn = Attention(dim, num_heads, bias, rngs=rngs)
        self.norm2 = Norm(dim, layer_norm_type)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class Chanel_Cross_Attention(nnx.Module):  # noqa: N801 (official spelling, kept for conversion)
    """Channel attention with the query from ``x`` and key/value from ``y``."""

    def __init__(self, dim: int, num_heads: int, bias: bool, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.temperature = nnx.Param(jnp.ones((num_heads, 1, 1)))
        self.q = Conv2d(dim, dim, 1, bias=bias, rngs=rngs)
        self.q_dwconv = Conv2d(dim, dim, 3, groups=dim, bias=bias, rngs=rngs)
        self.kv = Conv2d(dim, dim * 2, 1, bias=bias, rngs=rngs)
        self.kv_dwconv = Conv2d(dim * 2, dim * 2, 3, groups=dim * 2, bias=bias, rngs=rngs)
        self.project_out = Conv2d(dim, dim, 1, bias=bias, rngs=rngs)

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        q = self.q_dwconv(self.q(x))
        k, v = jnp.split(self.kv_dwconv(self.kv(y)), 2, axis=-1)
        return self.project_out(channel_attention(q, k, v, self.temperature[...], self.num_heads))


# ----------------------------------------------------------------------------- FreModule (AFLB)


class SpatialGate(nnx.Module):
    """sigmoid(conv7x7([max_c(x), mean_c(x)])) -> (B, H, W, 1)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.spatial = Conv2d(2, 1, 7, bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = jnp.concatenate([jnp.max(x, axis=-1, keepdims=True), jnp.mean(x, axis=-1, keepdims=True)], axis=-1)
        return jax.nn.sigmoid(self.spatial(pooled))


class ChannelGate(nnx.Module):
    """sigmoid(mlp(GAP(x)) + mlp(GMP(x))) with one shared bias-free MLP -> (B, 1, 1, C)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        hidden = dim // 16
        # Index 1 is the parameter-free ReLU, as in the PyTorch nn.Sequential.
        self.mlp = nnx.List([Conv2d(dim, hidden, 1, rngs=rngs), None, Conv2d(hidden, dim, 1, rngs=rngs)])

    def _mlp(self, t: jax.Array) -> jax.Array:
        return self.mlp[2](jax.nn.relu(self.mlp[0](t)))

    def __call__(self, x: jax.Array) -> jax.Array:
        avg = jnp.mean(x, axis=(1, 2), keepdims=True)
        mx = jnp.max(x, axis=(1, 2), keepdims=True)
        return jax.nn.sigmoid(self._mlp(avg) + self._mlp(mx))


class FreRefine(nnx.Module):
    """``proj(low * SpatialGate(high) + high * ChannelGate(low))``."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.SpatialGate = SpatialGate(rngs=rngs)
        self.ChannelGate = ChannelGate(dim, rngs=rngs)
        self.proj = Conv2d(dim, dim, 1, bias=True, rngs=rngs)

    def __call__(self, low: jax.Array, high: jax.Array) -> jax.Array:
        with jax.named_scope("frequency_refine_gates"):
            spatial_weight = self.SpatialGate(high)
            channel_weight = self.ChannelGate(low)
            gated = low * spatial_weight + high * channel_weight
        return self.proj(gated)


def mask_half_sizes(
    rates: jax.Array, height: int, width: int, rule: str, thresholds: jax.Array | None = None
) -> jax.Array:
    """Half-sizes ``(h_, w_)`` of the low-pass rectangle from ``rates`` (B, 2) in (0, 1). -> (B, 2) int32.

    Channel 0 drives the rows (height), channel 1 the columns (width); every product is in the
    rates' dtype (float32 for the official model) and truncated as ``.int()`` does (all terms
    are >= 0, so truncation is a floor). ``N = H // 2`` is the largest half-size (the whole
    spectrum); ``h_a = int((H // 128) * t)`` is the module's own official half-size for its
    ``thresholds`` t = ``sigmoid(rate_conv(.))``.

    * ``"adair"`` (official): ``int((H // 128) * t)`` with the rate in place of t.
    * ``"fraction"``: ``floor(r * N)``.
    * ``"widen"`` (the IRPO policy's default): ``max(h_a, min(floor((N + 1) * (2r - 1)), N))``
      for ``r > 0.5``, ``h_a`` for ``r <= 0.5``. A rate above 0.5 asks for the low band to reach
      at least the cutoff ``2r - 1`` in normalised frequency (the N + 1 half-sizes 0..N take
      equal shares of it, so ``r -> 1`` reaches the whole spectrum); it only ever widens
      AdaIR's own mask. So an action means the same on a 128-pixel training crop (where
      ``h_a`` is 0 at every level) and on a whole test image: the same cutoff, up to the grid's
      resolution, never narrower than AdaIR's mask. The lower half is AdaIR's own mask at every
      size, and the step-0 mean 0.5 sits inside a flat region of the rule, not on a jump: a
      rate of ``0.5 + d`` changes nothing while ``(N + 1) * 2d < 1`` (for ``d = 1e-3``: any
      feature side below 998 pixels).
    * ``"anchored"`` (the former default): piecewise linear with ``r = 0.5`` at ``h_a``:
      ``floor(h_a * 2r)`` for ``r <= 0.5`` (down to an empty mask) and
      ``floor(h_a + (N - h_a) * (2r - 1))`` above (up to one bin short of the whole spectrum,
      since ``r <= 1 - 1e-6``). Its lower half acts only where ``h_a > 0`` (test sizes), never
      at 128-pixel training crops, and 0.5 sits on a floor boundary of it.

    At ``r = 0.5`` both ``"widen"`` and ``"anchored"`` give ``h_a`` exactly (``2r`` and ``2r - 1``
    are exact in floating point), so the IRPO policy's Beta mean 0.5 reproduces AdaIR's own mask
    at any resolution and for any ``rate_conv`` weights.

    Args:
      rates: (B, 2) actions or thresholds in (0, 1).
      height, width: the feature map's size.
      rule: one of :data:`MASK_RULES`.
      thresholds: (B, 2) ``sigmoid(rate_conv(.))``; required by ``"widen"`` and ``"anchored"``.
    """
    if rule in ANCHORED_RULES:
        if thresholds is None:
            raise ValueError(f"mask_rule={rule!r} needs the module's thresholds sigmoid(rate_conv(.))")
        official = mask_half_sizes(thresholds, height, width, "adair")
        anchor = official.astype(rates.dtype)
        whole = jnp.asarray([height // 2, width // 2], rates.dtype)
        two_r = 2 * rates
        if rule == "widen":
            cutoff = jnp.minimum(jnp.floor((whole + 1) * jnp.maximum(two_r - 1, 0)), whole).astype(jnp.int32)
            return jnp.maximum(official, cutoff)
        half = jnp.where(rates <= 0.5, anchor * two_r, anchor + (whole - anchor) * (two_r - 1))
        return half.astype(jnp.int32)
    if rule == "adair":
        scale = jnp.asarray([height // 128, width // 128], rates.dtype)
    elif rule == "fraction":
        scale = jnp.asarray([height // 2, width // 2], rates.dtype)
    else:
        raise ValueError(f"mask_rule must be one of {MASK_RULES}, got {rule!r}")
    return (scale * rates).astype(jnp.int32)  # truncation toward zero (rates > 0)


def low_pass_mask(half_sizes: jax.Array, height: int, width: int) -> jax.Array:
    """Centred rectangle ``[H//2 - h_, H//2 + h_) x [W//2 - w_, W//2 + w_)`` per sample -> (B, H, W) bool.

    Built from broadcast index comparisons (static shapes, traced sizes) rather than slicing.
    """
    rows = jnp.arange(height)[None, :]
    cols = jnp.arange(width)[None, :]
    h_, w_ = half_sizes[:, :1], half_sizes[:, 1:]
    in_rows = (rows >= height // 2 - h_) & (rows < height // 2 + h_)  # (B, H)
    in_cols = (cols >= width // 2 - w_) & (cols < width // 2 + w_)  # (B, W)
    return in_rows[:, :, None] & in_cols[:, None, :]


def frequency_split(f: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """AdaIR's FFT band split of ``f`` (B, H, W, C) by a centred low-pass ``mask`` (B, H, W).

    PyTorch shifts the spectrum (roll by H//2, W//2), multiplies by the mask and rolls back;
    rolling the (real, small) mask the other way instead is the same permutation and saves two
    rolls of the complex spectrum. Returns ``(low, high)``, the moduli of the inverse transforms.

    Under a mesh with a ``"data"`` axis (``jax.set_mesh``, as the trainer traces its steps) the
    split runs per device with ``jax.shard_map``: XLA's SPMD partitioner does not partition an
    FFT along its batch dimension and all-gathers the whole batch onto every device instead.
    """
    mesh = jax.sharding.get_abstract_mesh()
    with jax.named_scope("fft_band_split"):
        if not mesh.empty and mesh.shape.get("data", 1) > 1 and f.shape[0] % mesh.shape["data"] == 0:
            spec = jax.sharding.PartitionSpec("data")
            return jax.shard_map(_frequency_split, in_specs=(spec, spec), out_specs=(spec, spec))(f, mask)
        return _frequency_split(f, mask)


def _frequency_split(f: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    h, w = f.shape[1], f.shape[2]
    spectrum = jnp.fft.fft2(f, axes=(1, 2), norm="forward")
    mask = jnp.roll(mask, (-(h // 2), -(w // 2)), axis=(1, 2))[..., None].astype(f.dtype)
    low = jnp.abs(jnp.fft.ifft2(spectrum * mask, axes=(1, 2), norm="forward"))
    high = jnp.abs(jnp.fft.ifft2(spectrum * (1 - mask), axes=(1, 2), norm="forward"))
    return low.astype(f.dtype), high.astype(f.dtype)


class FreModule(nnx.Module):
    """AdaIR's AFLB: mine a frequency split of the input image and inject it into ``y``.

    ``conv`` and ``score_gen`` are never used by the official forward; they are kept so that
    conversion is lossless and round-trips.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool, mask_rule: str, *, rngs: nnx.Rngs):
        self.mask_rule = mask_rule
        self.para1 = nnx.Param(jnp.zeros((dim, 1, 1)))
        self.para2 = nnx.Param(jnp.ones((dim, 1, 1)))
        self.conv = Conv2d(3, dim, 3, rngs=rngs)
        self.conv1 = Conv2d(3, dim, 3, rngs=rngs)
        self.score_gen = Conv2d(2, 2, 7, bias=True, rngs=rngs)
        self.channel_cross_l = Chanel_Cross_Attention(dim, num_heads, bias, rngs=rngs)
        self.channel_cross_h = Chanel_Cross_Attention(dim, num_heads, bias, rngs=rngs)
        self.channel_cross_agg = Chanel_Cross_Attention(dim, num_heads, bias, rngs=rngs)
        self.frequency_refine = FreRefine(dim, rngs=rngs)
        # Index 1 is the parameter-free GELU.
        self.rate_conv = nnx.List([Conv2d(dim, dim // 8, 1, rngs=rngs), None, Conv2d(dim // 8, 2, 1, rngs=rngs)])

    def image_features(self, img: jax.Array, height: int, width: int) -> jax.Array:
        """``conv1`` of the input image resized to the feature size -> (B, height, width, C).

        Float32 whatever the compute dtype: it feeds the FFT band split, the rate logits that
        set the mask sizes, and the policy's rate heads (``conv1`` has only 3 input channels).
        """
        return self.conv1(layers.downscale_bilinear(layers.at_least_float32(img), height, width))

    def rate_logits(self, features: jax.Array) -> jax.Array:
        """``rate_conv(GAP(features))`` -> (B, 2) logits of the mask thresholds."""
        pooled = jnp.mean(features, axis=(1, 2), keepdims=True)  # (B, 1, 1, C)
        return self.rate_conv[2](layers.gelu(self.rate_conv[0](pooled)))[:, 0, 0, :]

    def __call__(
        self,
        img: jax.Array,
        y: jax.Array,
        *,
        rates: jax.Array | None = None,
        gates: jax.Array | None = None,
        fuse_mode: str = "modulate",
        intermediates: dict | None = None,
    ) -> jax.Array:
        """Args:
          img: the network input (B, H0, W0, 3); the same image for all three modules.
          y: the decoder feature (B, H, W, C).
          rates, gates, fuse_mode, intermediates: see :meth:`fuse`.

        Returns:
          The fused feature (B, H, W, C).
        """
        _, h, w, _ = y.shape
        features = self.image_features(img, h, w)
        return self.fuse(features, y, rates=rates, gates=gates, fuse_mode=fuse_mode, intermediates=intermediates)

    def fuse(
        self,
        features: jax.Array,
        y: jax.Array,
        *,
        rates: jax.Array | None = None,
        gates: jax.Array | None = None,
        fuse_mode: str = "modulate",
        intermediates: dict | None = None,
    ) -> jax.Array:
        """The module after :meth:`image_features`: band split, attention, refinement, fusion.

        Args:
          features: :meth:`image_features` of the input image (B, H, W, C), float32.
          y: the decoder feature (B, H, W, C); it is cast to the compute dtype, as is the result.
          rates: optional (B, 2) mask actions in (0, 1) (the IRPO policy's ``r_h, r_l``): they
            replace the thresholds ``sigmoid(rate_conv(.))`` under the ``"adair"`` and
            ``"fraction"`` rules, and move the mask away from the one the thresholds set under
            ``"widen"`` and ``"anchored"`` (see :func:`mask_half_sizes`; without rates those
            rules are the official one).
          gates: optional (B, 2) fusion actions ``(g_f, g_o)`` in (0, 1). ``fuse_mode="modulate"``:
            ``y' = 2 g_o * para1 * O + 2 g_f * para2 * y`` (g = 0.5 is AdaIR exactly);
            ``"literal"`` (IRPO Eq. 5 as printed): ``y' = g_f * y + g_o * O``.
          intermediates: if a dict is given, stage outputs are stored in it.
        """
        _, h, w, _ = y.shape
        y = layers.to_compute_dtype(y)
        logits = self.rate_logits(features)
        thresholds = jax.nn.sigmoid(logits)
        if rates is None:  # the official thresholds; under "widen"/"anchored" a rate of 0.5 means them
            rates = jnp.full_like(thresholds, 0.5) if self.mask_rule in ANCHORED_RULES else thresholds
        half_sizes = mask_half_sizes(rates, h, w, self.mask_rule, thresholds)
        mask = low_pass_mask(half_sizes, h, w)
        low, high = (layers.to_compute_dtype(band) for band in frequency_split(features, mask))
        # The naming is swapped in the official code: channel_cross_l sees the HIGH band.
        high_attended = self.channel_cross_l(high, y)
        low_attended = self.channel_cross_h(low, y)
        agg = self.frequency_refine(low_attended, high_attended)
        out = self.channel_cross_agg(y, agg)
        # The fusion runs in float32 at least: para1/para2's gradients are sums over B*H*W.
        out_f, y_f = layers.at_least_float32(out), layers.at_least_float32(y)
        para1 = self.para1[...].reshape(-1).astype(y_f.dtype)
        para2 = self.para2[...].reshape(-1).astype(y_f.dtype)
        if gates is None:
            fused = out_f * para1 + y_f * para2
        else:
            g = gates.astype(y_f.dtype)[:, None, None, :]  # (B, 1, 1, 2)
            g_f, g_o = g[..., :1], g[..., 1:]
            if fuse_mode == "modulate":
                fused = (2 * g_o) * para1 * out_f + (2 * g_f) * para2 * y_f
            elif fuse_mode == "literal":
                fused = g_o * out_f + g_f * y_f
            else:
                raise ValueError(f"fuse_mode must be 'modulate' or 'literal', got {fuse_mode!r}")
        if intermediates is not None:
            intermediates.update(
                rate_logits=logits, half_sizes=half_sizes, low=low, high=high, cross_l=high_attended,
                cross_h=low_attended, refine=agg, cross_agg=out,
                official_half_sizes=mask_half_sizes(thresholds, h, w, "adair"),
            )  # fmt: skip
        return fused.astype(y.dtype)


# ----------------------------------------------------------------------------- the network


class Downsample(nnx.Module):
    """3x3 conv halving the channels, then PixelUnshuffle(2) (x4 channels, half resolution)."""

    def __init__(self, n_feat: int, *, rngs: nnx.Rngs):
        self.body = nnx.List([Conv2d(n_feat, n_feat // 2, 3, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        return layers.pixel_unshuffle(self.body[0](x))


class Upsample(nnx.Module):
    """3x3 conv doubling the channels, then PixelShuffle(2)."""

    def __init__(self, n_feat: int, *, rngs: nnx.Rngs):
        self.body = nnx.List([Conv2d(n_feat, n_feat * 2, 3, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        return layers.pixel_shuffle(self.body[0](x))


class OverlapPatchEmbed(nnx.Module):
    def __init__(self, in_c: int, embed_dim: int, bias: bool, *, rngs: nnx.Rngs):
        self.proj = Conv2d(in_c, embed_dim, 3, bias=bias, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)


def _blocks(n, dim, heads, cfg: AdaIRConfig, rngs) -> nnx.List:
    return nnx.List(
        [
            TransformerBlock(dim, heads, cfg.ffn_expansion_factor, cfg.bias, cfg.LayerNorm_type, rngs=rngs)
            for _ in range(n)
        ]
    )


def _run(blocks: Sequence[nnx.Module], x: jax.Array) -> jax.Array:
    remat = layers.rematerializing()
    for block in blocks:
        x = layers.checkpointed(block, x) if remat else block(x)
    return x


@dataclasses.dataclass
class Encoding:
    """What the encoder hands the decoder: skips ``e1..e3`` and the ``latent`` output (NHWC)."""

    e1: jax.Array
    e2: jax.Array
    e3: jax.Array
    latent: jax.Array


jax.tree_util.register_dataclass(Encoding, data_fields=["e1", "e2", "e3", "latent"], meta_fields=[])

FRE_NAMES = ("fre1", "fre2", "fre3")


class AdaIR(nnx.Module):
    """The AdaIR restorer. ``model(img)`` maps (B, H, W, 3) -> (B, H, W, 3), H and W multiples of 8.

    The output includes the global residual (``output(...) + img``) and is not clamped.
    """

    def __init__(self, config: AdaIRConfig | str = "base", *, rngs: nnx.Rngs | None = None):
        cfg = get_config(config)
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = cfg
        dim, heads, bias = cfg.dim, cfg.heads, cfg.bias
        self.patch_embed = OverlapPatchEmbed(cfg.inp_channels, dim, False, rngs=rngs)
        if cfg.decoder:
            # Registered before the encoder, as in PyTorch (the state-dict order follows).
            self.fre1 = FreModule(dim * 8, heads[2], bias, cfg.mask_rule, rngs=rngs)
            self.fre2 = FreModule(dim * 4, heads[2], bias, cfg.mask_rule, rngs=rngs)
            self.fre3 = FreModule(dim * 2, heads[2], bias, cfg.mask_rule, rngs=rngs)
        self.encoder_level1 = _blocks(cfg.num_blocks[0], dim, heads[0], cfg, rngs)
        self.down1_2 = Downsample(dim, rngs=rngs)
        self.encoder_level2 = _blocks(cfg.num_blocks[1], dim * 2, heads[1], cfg, rngs)
        self.down2_3 = Downsample(dim * 2, rngs=rngs)
        self.encoder_level3 = _blocks(cfg.num_blocks[2], dim * 4, heads[2], cfg, rngs)
        self.down3_4 = Downsample(dim * 4, rngs=rngs)
        self.latent = _blocks(cfg.num_blocks[3], dim * 8, heads[3], cfg, rngs)
        self.up4_3 = Upsample(dim * 8, rngs=rngs)
        self.reduce_chan_level3 = Conv2d(dim * 8, dim * 4, 1, bias=bias, rngs=rngs)
        self.decoder_level3 = _blocks(cfg.num_blocks[2], dim * 4, heads[2], cfg, rngs)
        self.up3_2 = Upsample(dim * 4, rngs=rngs)
        self.reduce_chan_level2 = Conv2d(dim * 4, dim * 2, 1, bias=bias, rngs=rngs)
        self.decoder_level2 = _blocks(cfg.num_blocks[1], dim * 2, heads[1], cfg, rngs)
        self.up2_1 = Upsample(dim * 2, rngs=rngs)
        # Level 1 of the decoder and the refinement run at 2*dim channels (no reduce conv).
        self.decoder_level1 = _blocks(cfg.num_blocks[0], dim * 2, heads[0], cfg, rngs)
        self.refinement = _blocks(cfg.num_refinement_blocks, dim * 2, heads[0], cfg, rngs)
        self.output = Conv2d(dim * 2, cfg.out_channels, 3, bias=bias, rngs=rngs)

    @staticmethod
    def check_input(img: jax.Array) -> None:
        if img.ndim != 4:
            raise ValueError(f"AdaIR expects an NHWC batch (B, H, W, C); got shape {tuple(img.shape)}")
        _, h, w, _ = img.shape
        if h % 8 or w % 8:
            raise ValueError(
                f"AdaIR needs height and width that are multiples of 8 (three 2x downsamplings); got "
                f"{h}x{w}. Crop or pad the image first: evaluation crops to a multiple of 16 and "
                "`python -m irpo_jax.restore` pads and crops back."
            )

    def encode(self, img: jax.Array, intermediates: dict | None = None) -> Encoding:
        """Everything before ``fre1``; independent of the frequency controls."""
        self.check_input(img)
        x = self.patch_embed(layers.to_compute_dtype(img))
        if intermediates is not None and len(self.encoder_level1):
            intermediates["encoder_level1_0"] = self.encoder_level1[0](x)
        e1 = _run(self.encoder_level1, x)
        e2 = _run(self.encoder_level2, self.down1_2(e1))
        e3 = _run(self.encoder_level3, self.down2_3(e2))
        latent = _run(self.latent, self.down3_4(e3))
        if intermediates is not None:
            intermediates["latent"] = latent
        return Encoding(e1, e2, e3, latent)

    def decode(
        self,
        img: jax.Array,
        enc: Encoding,
        *,
        fre_hook: Callable[[str, FreModule, jax.Array, jax.Array], jax.Array] | None = None,
        intermediates: dict | None = None,
    ) -> jax.Array:
        """From ``fre1`` to the output.

        Args:
          img: the network input (B, H, W, 3) (the FreModules and the residual use it).
          enc: :meth:`encode`'s result for the same batch.
          fre_hook: optional ``hook(name, module, img, y) -> y'`` run instead of each FreModule
            (the IRPO policy uses it to choose the module's actions). ``y`` is handed over in
            float32 (the policy heads pool it) and ``y'`` is cast back to the compute dtype.
          intermediates: if a dict is given, named intermediate tensors are stored in it.
        """

        def fre(name: str, y: jax.Array) -> jax.Array:
            if not self.config.decoder:
                return y
            module = getattr(self, name)
            if fre_hook is not None:
                out = layers.to_compute_dtype(fre_hook(name, module, img, layers.at_least_float32(y)))
                if intermediates is not None:
                    intermediates[name] = out
                return out
            stages = {} if intermediates is not None else None
            out = module(img, y, intermediates=stages)
            if intermediates is not None:
                intermediates[name] = out
                intermediates.update({f"{name}_{k}": v for k, v in stages.items()})
            return out

        def keep(name: str, value: jax.Array) -> jax.Array:
            if intermediates is not None:
                intermediates[name] = value
            return value

        d3 = self.reduce_chan_level3(jnp.concatenate([self.up4_3(fre("fre1", enc.latent)), enc.e3], -1))
        d3 = fre("fre2", keep("decoder_level3", _run(self.decoder_level3, d3)))
        d2 = self.reduce_chan_level2(jnp.concatenate([self.up3_2(d3), enc.e2], -1))
        d2 = fre("fre3", keep("decoder_level2", _run(self.decoder_level2, d2)))
        d1 = jnp.concatenate([self.up2_1(d2), enc.e1], -1)
        d1 = _run(self.refinement, _run(self.decoder_level1, d1))
        # The global residual in the input's dtype: the image itself never passes through bfloat16.
        return self.output(d1).astype(img.dtype) + img

    def __call__(self, img: jax.Array, *, intermediates: dict | None = None) -> jax.Array:
        """Restore ``img`` (B, H, W, 3) -> (B, H, W, 3)."""
        return self.decode(img, self.encode(img, intermediates), intermediates=intermediates)


def count_params(model: nnx.Module) -> int:
    """Number of scalar parameters (``nnx.Param`` leaves)."""
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
