"""IRPO's GRPO-Driven Model: AdaIR as a stochastic policy with Beta-distributed frequency controls.

Each FreModule (``fre1..fre3``) gets two heads (IRPO section 3.3, Appendix D):

* **Policy Rate head**: output Beta concentrations for ``(r_h, r_l)``: the low-pass mask's
  height and width. Input (``rate_input``): ``"spectrum"`` (default) is
  ``GAP(conv1(resize(x)))`` (the features AdaIR's ``rate_conv`` reads) followed by
  :func:`spectrum_features` of the degraded image x (Appendix D: the head "takes the initial
  degraded image x and passes it through an FFT"), averaged over ``spectrum_tile``-sized
  tiles of the image so that a whole test image reads what its training crops read;
  ``"pooled"`` is the first part alone.
  Mask rule (``mask_rule``, :func:`irpo_jax.models.adair.mask_half_sizes`): ``"widen"``
  (default) keeps the module's own official mask (``int((H // 128) * t)`` with
  ``t = sigmoid(rate_conv(.))``) for ``r <= 0.5`` and widens it for ``r > 0.5`` to at least the
  low-pass cutoff ``2r - 1`` in normalised frequency, up to the whole spectrum, so that an action
  means the same on 128-pixel training crops and on whole test images; ``"anchored"`` (the
  former default) maps ``r = 0.5`` to the official mask, lower rates shrink it to empty and
  higher ones widen it; ``"fraction"``: half-size ``floor(r * (H // 2))``; ``"adair"``: the
  official rule with ``r`` in place of ``t``.
* **Policy Fuse head**: input ``GAP(y)`` of the decoder feature, output Beta concentrations for
  ``(g_f, g_o)``: the fusion weights (``fuse_mode="modulate"``:
  ``y' = 2 g_f * para2 * y + 2 g_o * para1 * O``; ``"literal"``: Eq. 5 as printed).

That is 12 scalar actions per image, laid out ``[fre1: r_h, r_l, g_f, g_o, fre2: ..., fre3: ...]``;
the joint log-probability is the sum of the 12 Beta log-densities (Eq. 23).

Three modes of one forward pass (:meth:`IRPOPolicy.sample`, :meth:`IRPOPolicy.mean`,
:meth:`IRPOPolicy.given`). Sampled actions are clamped to ``[eps, 1 - eps]`` *before* they are
stored, so teacher-forcing the stored actions reproduces the sampled pass (its log-probs bit
for bit; its restorations up to how XLA fuses the two programs, ~1e-6).

Initialisation preserves the pretrained backbone at every resolution: the heads' last layer
starts with zero weights (and the rate heads' spectrum inputs with zero first-layer weights),
so the concentrations are the constants ``rate_init`` and ``fuse_init``. Under ``"widen"`` and
``"anchored"`` both default to ``alpha == beta`` (rates Beta(50, 50), fuse gates Beta(20, 20)),
whose mean is exactly 0.5 in float32: the ``mean`` mode then takes AdaIR's own mask at every level and its
fusion gates are exactly 1, i.e. it *is* the plain AdaIR with the official rule, on any input
size and for any ``rate_conv`` weights (tested, including sizes where the official rule opens
masks at fre2 and fre3). Sampled rates then explore masks wider than AdaIR's: at 128x128
training crops, where AdaIR's masks are empty, a rate above ``0.5 + 1/(H_f + 2)`` opens one;
Beta(50, 50) opens both axes at least as often as the former ``"fraction"`` default with
Beta(1, 35) at every level, with small masks (benchmarks/RESULTS.md, "Rate-action
exploration"); the half of its draws below 0.5 keeps AdaIR's own mask at every size.
``"fraction"`` and ``"adair"`` keep their former initial Beta(1, 35) (mean 1/36), for which the
``mean`` mode is AdaIR only while every mask stays empty (``"fraction"``: sides up to 140
pixels; larger images get small non-empty masks).

This is the only module that imports distrax.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import distrax
import jax
import jax.numpy as jnp
from flax import nnx

from irpo_jax.models import adair, layers

FUSE_MODES = ("modulate", "literal")
RATE_INPUTS = ("spectrum", "pooled")
ACTION_NAMES = ("r_h", "r_l", "g_f", "g_o")
ACTIONS_PER_MODULE = 4

# The rate heads' initial Beta (alpha, beta) when ``rate_init`` is left empty, by mask rule.
# "widen"/"anchored": symmetric, so the mean is exactly 0.5 (AdaIR's own mask). With 50 the draws
# open masks at 128x128 crops more often than the former "fraction" default at every level (1.3x
# at fre3, the binding level: at 100 it only ties), and small ones (1-3 bins per side on average;
# the larger alpha, the smaller): benchmarks/rate_exploration.py.
# "fraction"/"adair": their former default, mean 1/36 (empty masks at 128x128 crops).
RATE_INIT = {"widen": (50.0, 50.0), "anchored": (50.0, 50.0), "fraction": (1.0, 35.0), "adair": (1.0, 35.0)}
# What a saved model.json's "policy" means by a key it lacks: the setting before the key existed
# (policies saved before the "anchored" rule, the spectrum input and its tiles;
# PolicyConfig.from_saved).
SAVED_DEFAULTS = {"mask_rule": "fraction", "rate_input": "pooled", "spectrum_tile": 0}


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """How the Beta policy is attached to AdaIR.

    Attributes:
      mask_rule: ``"widen"`` (default; rates up to 0.5 = AdaIR's own mask, higher ones widen it),
        ``"anchored"`` (rate 0.5 = AdaIR's own mask, lower shrink it, higher widen it),
        ``"fraction"`` (half-size ``floor(r * (H // 2))``) or ``"adair"`` (official rule with r
        for t); see :func:`irpo_jax.models.adair.mask_half_sizes`.
      rate_input: ``"spectrum"`` (default; pooled conv1 features + :func:`spectrum_features`) or
        ``"pooled"`` (``GAP(conv1(resize(x)))`` only).
      spectrum_tile: side of the tiles the spectrum features are averaged over (the training
        crop, ``data.patch_size``: 128); 0 = the whole image in one periodogram (the former
        behaviour, whose low bands read higher on whole images than on crops).
      fuse_mode: ``"modulate"`` (default; Beta mean 0.5 == AdaIR) or ``"literal"`` (Eq. 5).
      rate_init: initial (alpha, beta) of the rate actions; empty (default) = ``RATE_INIT`` of the
        mask rule: (50, 50) for "widen" and "anchored", (1, 35) otherwise.
      fuse_init: initial (alpha, beta) of the fuse actions (alpha == beta: mean exactly 0.5).
      min_concentration: added after softplus, so concentrations stay positive.
      max_concentration: upper clip; float32 ``betaln`` loses ~1e-3 by 1e4 (cancellation).
      action_eps: actions are clamped to [eps, 1 - eps] before any log.
    """

    mask_rule: str = "widen"
    rate_input: str = "spectrum"
    spectrum_tile: int = 128
    fuse_mode: str = "modulate"
    rate_init: tuple[float, ...] | None = None
    fuse_init: tuple[float, float] = (20.0, 20.0)
    min_concentration: float = 1e-3
    max_concentration: float = 1e4
    action_eps: float = 1e-6

    def __post_init__(self):
        if self.mask_rule not in adair.MASK_RULES:
            raise ValueError(f"policy mask_rule must be one of {adair.MASK_RULES}, got {self.mask_rule!r}")
        if self.rate_input not in RATE_INPUTS:
            raise ValueError(f"policy rate_input must be one of {RATE_INPUTS}, got {self.rate_input!r}")
        if self.fuse_mode not in FUSE_MODES:
            raise ValueError(f"policy fuse_mode must be one of {FUSE_MODES}, got {self.fuse_mode!r}")
        object.__setattr__(self, "spectrum_tile", int(self.spectrum_tile))
        if self.spectrum_tile < 0 or 0 < self.spectrum_tile < 8:
            raise ValueError(
                f"policy spectrum_tile must be 0 (whole image) or a tile side of at least 8 pixels (the "
                f"training crop, data.patch_size), got {self.spectrum_tile}"
            )
        rate_init = self.rate_init if self.rate_init else RATE_INIT[self.mask_rule]
        object.__setattr__(self, "rate_init", tuple(float(v) for v in rate_init))
        object.__setattr__(self, "fuse_init", tuple(float(v) for v in self.fuse_init))
        for name in ("rate_init", "fuse_init"):
            value = getattr(self, name)
            if len(value) != 2:
                raise ValueError(f"policy {name} must be (alpha, beta), got {value}")
            if min(value) <= self.min_concentration:
                raise ValueError(f"{name}={value} must exceed min_concentration={self.min_concentration}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rate_init"], d["fuse_init"] = list(self.rate_init), list(self.fuse_init)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown policy config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**dict(d))

    @classmethod
    def from_saved(cls, d: Mapping[str, Any]) -> PolicyConfig:
        """The config a saved ``model.json`` describes: keys it lacks take ``SAVED_DEFAULTS``
        (what the policy computed before those keys existed), not today's defaults."""
        return cls.from_dict({**SAVED_DEFAULTS, **d})


# ----------------------------------------------------------------------------- spectrum features

# Radial band edges of the normalised frequency rho = 2 * sqrt(f_x^2 + f_y^2) (cycles per pixel
# times 2: rho = 1 is Nyquist along an axis, sqrt(2) the corners). Octaves from 1/64, so the
# lowest band holds the lowest frequencies of a 128x128 crop; DC is excluded.
SPECTRUM_BAND_EDGES = (0.0, 2.0**-6, 2.0**-5, 2.0**-4, 2.0**-3, 2.0**-2, 2.0**-1, 1.0, 2.0**0.5)
SPECTRUM_BANDS = len(SPECTRUM_BAND_EDGES) - 1
SPECTRUM_FEATURES = 2 * SPECTRUM_BANDS + 1  # a level and an anisotropy per band, and the DC
# Representative radius of each band (geometric centre of its edges; the first as if it began
# at 2**-7): the 1/rho^2 whitening below uses it.
_BAND_CENTRES = tuple(2.0 ** (b - 6.5) for b in range(SPECTRUM_BANDS - 1)) + (2.0**0.25,)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
# The fixed affine: level = (ln P_b + 2 ln rho_b - SPECTRUM_OFFSET) / SPECTRUM_SCALE. Natural
# photographs have P ~ A / rho^2 with ln A around -6 for [0, 1] images (demo and skimage photos,
# 128 crops: -4 to -10), so levels are O(1) and ~flat across bands on clean images. The DC term
# is centred on a mean luminance of 0.5: (ln |F(0)|^2 - ln 0.25) / 2 = ln(mean Y / 0.5).
SPECTRUM_OFFSET = -6.0
SPECTRUM_SCALE = 2.0
DC_OFFSET = math.log(0.25)
# Floor of the band powers: 8-bit quantisation noise alone has P = (1/255)^2 / 12 = 1.3e-6, so it
# matters only for synthetic, perfectly flat images (whose log power would be -inf).
SPECTRUM_EPS = 1e-6


def spectrum_features(img: jax.Array, tile: int = 0) -> jax.Array:
    """Resolution-normalised statistics of the degraded image's spectrum -> (B, 17) float32.

    The rate heads choose the cutoff of a low-pass mask, so they should see where the image's
    energy lies in frequency, which is what tells the degradations apart: noise raises a flat
    floor at high frequencies (higher for larger sigma), blur removes them (along its direction
    for motion blur), rain adds oriented mid/high-frequency energy, haze and low light scale the
    whole spectrum down relative to the image's structure. ``GAP(conv1(.))`` alone is close to a
    linear function of the mean colour and sees none of this.

    Computed on the luminance ``Y`` (BT.601) of the full-resolution input, once per image, per
    ``tile x tile`` tile (``tile = 0``: the whole image as one) and averaged over the tiles:

    * power ``P(f) = H W |F(f)|^2`` with ``F = fft2(Y, norm='forward')``: a periodogram, so white
      noise of variance s^2 gives ``E P = s^2`` at every frequency and image size, and any
      stationary texture the same value at the same normalised frequency whatever the crop;
    * averaged over the 8 radial bands of :data:`SPECTRUM_BAND_EDGES` (the mean power, not the
      mean log power, so that the noise floor reads s^2 exactly), over the whole band and over
      its two orientation halves: ``|f_x| > |f_y|`` (variation along x: vertical structure,
      such as rain streaks) and ``|f_y| > |f_x|`` (ties count half to each);
    * level_b = ``(ln(P_b + eps) + 2 ln rho_b + 6) / 2``: whitened by the 1/rho^2 law of natural
      images, so clean photographs give levels near 0 in every band;
      anisotropy_b = ``(ln(P_x,b + eps) - ln(P_y,b + eps)) / 2``;
    * dc = ``(ln(|F(0)|^2 + eps) - ln 0.25) / 2``, i.e. ``ln(mean Y / 0.5)``: all terms are logs,
      so a linear layer can read the band levels relative to the mean (contrast), which tells
      haze (bright, low contrast) from low light (dark, scaled down with its noise); it lifts
      the cross-validated task accuracy of the benchmark below from 81 % to 88 %.

    A band with no frequency bin at this size (the lowest ones on small inputs: at 32x32 the
    first bin is at rho = 1/16) takes the values of the next higher band; a band whose bins all
    lie in one orientation half (inputs with an aspect ratio of 2 or more) takes the anisotropy
    of the next higher band. Returns ``[level_0..7, anisotropy_0..7, dc]``. No gradient flows
    (it is a function of the input only).

    **Tiles** (``tile > 0``, the policy's ``spectrum_tile``, set to the training crop): the rate
    heads learn on ``tile``-sized crops and act on whole test images, so a whole image must read
    what its crops read. A periodogram of the whole image does not: its lowest band holds lower
    frequencies than a crop's, with more power (on 7 photographs band 0 read 1.5 crop-to-crop
    standard deviations higher). So the features are computed on ``tile x tile`` tiles at every
    ``tile // 8`` pixels along each side (:func:`tile_starts`; a side shorter than ``tile`` is one
    tile of that side) and averaged, as logs, over the tiles: a crop of exactly ``tile`` pixels
    is one tile and reads what it read before, and a whole image reads the mean of the features
    of its crops at every position, i.e. what random training crops of it read on average. (A
    grid of disjoint tiles weights the image's borders more than random crops do, which cover
    its centre more often; it read up to 0.35 standard deviations low in the middle bands.
    ``benchmarks/spectrum_shift.py`` measures the agreement.)
    ``benchmarks/head_input_separability.py`` measures how well these tell the five degradations
    and the three noise levels apart, against the pooled conv1 features alone.

    Under a mesh with a ``"data"`` axis the FFT runs per device with ``jax.shard_map``, as in
    :func:`irpo_jax.models.adair.frequency_split` (XLA would all-gather the batch).
    """
    img = jax.lax.stop_gradient(layers.at_least_float32(img))
    features = functools.partial(_tiled_spectrum_features, tile=tile)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.shape.get("data", 1) > 1 and img.shape[0] % mesh.shape["data"] == 0:
        spec = jax.sharding.PartitionSpec("data")
        return jax.shard_map(features, in_specs=spec, out_specs=spec)(img)
    return features(img)


# Tiles are taken every tile // TILE_STRIDE_DIVISOR pixels (16 for 128-pixel tiles).
TILE_STRIDE_DIVISOR = 8


def tile_starts(size: int, tile: int) -> tuple[int, ...]:
    """Start offsets of the tiles along a side of ``size`` pixels: every ``tile // 8`` pixels from
    0, and ``size - tile`` last, so the tiles reach the far border (``tile = 0`` or a side of at
    most ``tile``: one tile at 0, of the whole side)."""
    if tile <= 0 or size <= tile:
        return (0,)
    starts = list(range(0, size - tile + 1, max(tile // TILE_STRIDE_DIVISOR, 1)))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return tuple(starts)


def _tiled_spectrum_features(img: jax.Array, tile: int) -> jax.Array:
    b, h, w, c = img.shape
    ys, xs = tile_starts(h, tile), tile_starts(w, tile)
    if len(ys) * len(xs) == 1:
        return _spectrum_features(img)
    th, tw = min(tile, h), min(tile, w)

    def row(y: jax.Array) -> jax.Array:  # the mean over one row of tiles -> (B, 17)
        strip = jax.lax.dynamic_slice_in_dim(img, y, th, axis=1)  # (B, th, W, C)
        tiles = jnp.stack([strip[:, :, x : x + tw] for x in xs], axis=1)  # (B, len(xs), th, tw, C)
        features = _spectrum_features(tiles.reshape(b * len(xs), th, tw, c))
        return jnp.mean(features.reshape(b, len(xs), -1), axis=1)

    # One row of tiles at a time (jax.lax.map), so memory stays at one strip's tiles.
    return jnp.mean(jax.lax.map(row, jnp.asarray(ys, jnp.int32)), axis=0)  # (B, 17)


def _spectrum_features(img: jax.Array) -> jax.Array:
    _, h, w, _ = img.shape
    luma = jnp.sum(img * jnp.asarray(LUMA, img.dtype), axis=-1)  # (B, H, W); not a dot (no TF32)
    power = (h * w) * jnp.square(jnp.abs(jnp.fft.fft2(luma, norm="forward")))  # (B, H, W)
    f_y = 2 * jnp.fft.fftfreq(h, dtype=img.dtype)[:, None]  # (H, 1), in units of Nyquist
    f_x = 2 * jnp.fft.fftfreq(w, dtype=img.dtype)[None, :]  # (1, W)
    rho2 = f_y**2 + f_x**2  # squared edges are exact powers of two: no sqrt at the band edges
    edges2 = jnp.asarray([e * e for e in SPECTRUM_BAND_EDGES[1:-1]], img.dtype)
    band = jnp.sum(rho2[..., None] > edges2, axis=-1)  # (H, W) in 0..7
    in_band = (band[..., None] == jnp.arange(SPECTRUM_BANDS)) & (rho2 > 0)[..., None]  # (H, W, 8), no DC
    along_x = jnp.where(jnp.abs(f_x) > jnp.abs(f_y), 1.0, jnp.where(jnp.abs(f_x) == jnp.abs(f_y), 0.5, 0.0))
    orient = jnp.stack([along_x, 1.0 - along_x], axis=-1).astype(img.dtype)  # (H, W, 2)
    weights = orient[..., :, None] * in_band[..., None, :].astype(img.dtype)  # (H, W, 2, 8)
    sums = jnp.einsum("bhw,hwok->bok", power, weights, precision=jax.lax.Precision.HIGHEST)  # (B, 2, 8)
    counts = jnp.sum(weights, axis=(0, 1))  # (2, 8)
    safe = lambda c: jnp.maximum(c, 1.0)  # noqa: E731 (empty bands are replaced below)
    log_x, log_y = (jnp.log(sums[:, o] / safe(counts[o]) + SPECTRUM_EPS) for o in (0, 1))
    log_all = jnp.log((sums[:, 0] + sums[:, 1]) / safe(counts[0] + counts[1]) + SPECTRUM_EPS)
    centres = jnp.asarray([2 * math.log(c) for c in _BAND_CENTRES], img.dtype)
    level = (log_all + centres - SPECTRUM_OFFSET) / SPECTRUM_SCALE  # (B, 8)
    anisotropy = (log_x - log_y) / SPECTRUM_SCALE
    # Empty bands (only the lowest ones, on small inputs) copy the next higher band; the top band
    # (the corners beyond Nyquist) is never empty for even sizes.
    level, anisotropy = list(level.T), list(anisotropy.T)
    for b in range(SPECTRUM_BANDS - 2, -1, -1):
        level[b] = jnp.where(counts[0, b] + counts[1, b] > 0, level[b], level[b + 1])
        anisotropy[b] = jnp.where((counts[0, b] > 0) & (counts[1, b] > 0), anisotropy[b], anisotropy[b + 1])
    dc = (jnp.log(power[:, 0, 0] / (h * w) + SPECTRUM_EPS) - DC_OFFSET) / SPECTRUM_SCALE  # |F(0)|^2 = mean(Y)^2
    return jnp.stack(level + anisotropy + [dc], axis=-1)  # (B, 17)


# ----------------------------------------------------------------------------- heads


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _torch_uniform_then_zeros(fan_in: int):
    """PyTorch's default Linear init for the first ``fan_in`` input rows, zeros for the rest:
    inputs added to a head start unread (and the first rows equal the head without them)."""
    uniform = layers.torch_default_uniform(fan_in)

    def init(key, shape, dtype=jnp.float32):
        first = uniform(key, (fan_in, *shape[1:]), dtype)
        return jnp.concatenate([first, jnp.zeros((shape[0] - fan_in, *shape[1:]), dtype)], axis=0)

    return init


class BetaHead(nnx.Module):
    """A small head: pooled features (B, C [+ extra]) -> Beta concentrations (B, 2 actions, 2) as (alpha, beta).

    Linear C + extra -> max(C // 8, 4) -> exact GELU -> Linear -> 4 -> softplus + min, clipped at
    max. The last layer starts at zero weight, so at initialisation the concentrations are
    exactly ``init`` whatever the input; the ``extra_inputs`` rows of the first layer (the rate
    heads' spectrum features) start at zero too, and its other rows as without them.
    """

    def __init__(
        self, channels: int, init: tuple[float, float], cfg: PolicyConfig, *, extra_inputs: int = 0, rngs: nnx.Rngs
    ):
        hidden = max(channels // 8, 4)
        self.min_concentration, self.max_concentration = cfg.min_concentration, cfg.max_concentration
        self.fc1 = nnx.Linear(
            channels + extra_inputs, hidden, kernel_init=_torch_uniform_then_zeros(channels),
            bias_init=layers.torch_default_uniform(channels), rngs=rngs,
        )  # fmt: skip
        bias = jnp.asarray([_inverse_softplus(v - cfg.min_concentration) for v in init * 2], jnp.float32)
        self.fc2 = nnx.Linear(hidden, 4, kernel_init=nnx.initializers.zeros, bias_init=lambda *_: bias, rngs=rngs)

    def __call__(self, pooled: jax.Array) -> jax.Array:  # (B, C) -> (B, 2, 2)
        raw = self.fc2(layers.gelu(self.fc1(pooled)))
        conc = jax.nn.softplus(raw) + self.min_concentration
        conc = jnp.minimum(conc, self.max_concentration)
        return conc.reshape(pooled.shape[0], 2, 2)


class FreHeads(nnx.Module):
    """The Policy Rate and Policy Fuse heads of one FreModule."""

    def __init__(self, channels: int, cfg: PolicyConfig, *, rngs: nnx.Rngs):
        extra = SPECTRUM_FEATURES if cfg.rate_input == "spectrum" else 0
        self.policy_rate = BetaHead(channels, cfg.rate_init, cfg, extra_inputs=extra, rngs=rngs)
        self.policy_fuse = BetaHead(channels, cfg.fuse_init, cfg, rngs=rngs)


@dataclasses.dataclass
class PolicyOutput:
    """One pass of the policy.

    Attributes:
      restored: (N, H, W, 3) restorations.
      actions: (N, 12) the actions used, ``[fre1: r_h, r_l, g_f, g_o, fre2: ..., fre3: ...]``.
      concentrations: (N, 12, 2) the (alpha, beta) each action was drawn from.
      log_prob: (N,) joint log-probability of ``actions`` (Eq. 23 summed over the 3 modules).
      entropy: (N,) sum of the 12 Beta entropies along this pass.
      mask_half_sizes: (N, 3, 2) int32, the half-sizes ``(h_, w_)`` of the low-pass mask each
        FreModule used (0 on either axis: an empty mask, the low band is zero).
      official_half_sizes: (N, 3, 2) int32, the half-sizes AdaIR's own rule gives there
        (``int((H // 128) * sigmoid(rate_conv(.)))``): where they differ from
        ``mask_half_sizes``, an action changed AdaIR's mask.
      head_inputs: ``{"fre1/rate": (N, C [+ 17]), "fre1/fuse": (N, C), ...}`` what each head read
        (gradient-stopped; the rate heads' input ends with the 17 :func:`spectrum_features` under
        ``rate_input="spectrum"``): with the actions they determine the log-probs given the
        heads' parameters (:meth:`IRPOPolicy.score_actions`).
    """

    restored: jax.Array
    actions: jax.Array
    concentrations: jax.Array
    log_prob: jax.Array
    entropy: jax.Array
    mask_half_sizes: jax.Array
    official_half_sizes: jax.Array
    head_inputs: dict[str, jax.Array]


jax.tree_util.register_dataclass(
    PolicyOutput,
    data_fields=[
        "restored",
        "actions",
        "concentrations",
        "log_prob",
        "entropy",
        "mask_half_sizes",
        "official_half_sizes",
        "head_inputs",
    ],
    meta_fields=[],
)


@dataclasses.dataclass
class ActionScores:
    """Concentrations (..., 12, 2), joint log-probs (...) and entropies (...) of given actions."""

    concentrations: jax.Array
    log_prob: jax.Array
    entropy: jax.Array


jax.tree_util.register_dataclass(ActionScores, data_fields=["concentrations", "log_prob", "entropy"], meta_fields=[])


def beta(concentrations: jax.Array) -> distrax.Beta:
    """``distrax.Beta`` from (..., 2) concentrations (alpha, beta)."""
    return distrax.Beta(concentrations[..., 0], concentrations[..., 1])


def log_prob(concentrations: jax.Array, actions: jax.Array) -> jax.Array:
    """Sum over the last axis of Beta log-densities: (N, K, 2), (N, K) -> (N,)."""
    return jnp.sum(beta(concentrations).log_prob(actions), axis=-1)


def kl_divergence(conc_p: jax.Array, conc_q: jax.Array) -> jax.Array:
    """Analytic KL(p || q) summed over the actions: (N, K, 2) x2 -> (N,)."""
    return jnp.sum(beta(conc_p).kl_divergence(beta(conc_q)), axis=-1)


class IRPOPolicy(nnx.Module):
    """AdaIR (``net``) plus six Beta heads (``heads[fre1..fre3]``).

    ``net`` is a plain :class:`~irpo_jax.models.adair.AdaIR` whose parameter paths are the
    converted checkpoint's, so a converted or supervised AdaIR loads into it unchanged; its
    ``mask_rule`` is the policy's.
    """

    def __init__(
        self,
        config: adair.AdaIRConfig | str = "base",
        policy: PolicyConfig | Mapping[str, Any] | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        pcfg = policy if isinstance(policy, PolicyConfig) else PolicyConfig.from_dict(policy or {})
        cfg = adair.get_config(config, mask_rule=pcfg.mask_rule)
        if not cfg.decoder:
            raise ValueError("the IRPO policy acts on the FreModules; AdaIR(decoder=False) has none")
        self.policy_config = pcfg
        self.net = adair.AdaIR(cfg, rngs=rngs)
        dim = cfg.dim
        self.heads = nnx.Dict({name: FreHeads(dim * m, pcfg, rngs=rngs) for name, m in zip(adair.FRE_NAMES, (8, 4, 2))})

    @property
    def config(self) -> adair.AdaIRConfig:
        return self.net.config

    # ------------------------------------------------------------------------- the three modes

    def _spectrum(self, img: jax.Array) -> jax.Array | None:
        """The rate heads' per-image spectrum features (B, 17), or None under ``rate_input="pooled"``.

        Computed on the (B, ...) images before any repeat over rollouts: once per image.
        """
        pcfg = self.policy_config
        return spectrum_features(img, pcfg.spectrum_tile) if pcfg.rate_input == "spectrum" else None

    def _run(
        self, img: jax.Array, enc: adair.Encoding, choose, detach_head_inputs: bool = False,
        spectrum: jax.Array | None = None,
    ) -> PolicyOutput:  # fmt: skip
        """Decode with ``choose(index, concentrations (N, 2, 2)) -> actions (N, 2)`` per head.

        ``detach_head_inputs`` stops gradients of the concentrations (hence of log-probs and
        entropies) from reaching the backbone through the heads' pooled inputs. ``spectrum``:
        :meth:`_spectrum` of the batch's images, one row per row of ``img``.
        """
        pcfg = self.policy_config
        actions, concs, sizes, official, inputs = [], [], [], [], {}
        detach = jax.lax.stop_gradient if detach_head_inputs else (lambda t: t)

        def hook(name: str, module: adair.FreModule, img: jax.Array, y: jax.Array) -> jax.Array:
            _, h, w, _ = y.shape
            features = module.image_features(img, h, w)
            heads = self.heads[name]
            k = 2 * adair.FRE_NAMES.index(name)
            rate_input = jnp.mean(features, axis=(1, 2))  # (N, C): what rate_conv reads
            if spectrum is not None:
                rate_input = jnp.concatenate([rate_input, spectrum], axis=-1)  # (N, C + 17)
            rate_conc = heads.policy_rate(detach(rate_input))
            rates = choose(k, rate_conc)
            pooled_y = jnp.mean(y, axis=(1, 2))
            fuse_conc = heads.policy_fuse(detach(pooled_y))
            gates = choose(k + 1, fuse_conc)
            inputs[f"{name}/rate"] = jax.lax.stop_gradient(rate_input)
            inputs[f"{name}/fuse"] = jax.lax.stop_gradient(pooled_y)
            actions.extend([rates, gates])
            concs.extend([rate_conc, fuse_conc])
            stages = {}
            fused = module.fuse(features, y, rates=rates, gates=gates, fuse_mode=pcfg.fuse_mode, intermediates=stages)
            sizes.append(stages["half_sizes"])
            official.append(stages["official_half_sizes"])
            return fused

        restored = self.net.decode(img, enc, fre_hook=hook)
        actions = jnp.concatenate(actions, axis=-1)  # (N, 12)
        concs = jnp.concatenate(concs, axis=1)  # (N, 12, 2)
        dist = beta(concs)
        return PolicyOutput(
            restored=restored,
            actions=actions,
            concentrations=concs,
            log_prob=jnp.sum(dist.log_prob(actions), axis=-1),
            entropy=jnp.sum(dist.entropy(), axis=-1),
            mask_half_sizes=jnp.stack(sizes, axis=1),  # (N, 3, 2)
            official_half_sizes=jnp.stack(official, axis=1),  # (N, 3, 2)
            head_inputs=inputs,
        )

    def _clamp(self, a: jax.Array) -> jax.Array:
        eps = self.policy_config.action_eps
        return jnp.clip(a, eps, 1.0 - eps)

    def mean(self, img: jax.Array, *, detach_actions: bool = False) -> PolicyOutput:
        """Deterministic policy: every action is its Beta mean (``y_det``; evaluation, load_model).

        ``detach_actions`` makes the output a function of the backbone only (the heads get no
        gradient through the means), as IRPO's L_cons is a backbone loss.
        """
        detach = jax.lax.stop_gradient if detach_actions else (lambda t: t)
        return self._run(
            img, self.net.encode(img), lambda k, c: detach(self._clamp(c[..., 0] / (c[..., 0] + c[..., 1]))),
            spectrum=self._spectrum(img),
        )  # fmt: skip

    def sample(self, img: jax.Array, key: jax.Array, group_size: int) -> PolicyOutput:
        """``group_size`` rollouts per image from one encoder pass.

        The encoder does not depend on the actions, so it runs once on (B, ...) and its outputs
        are repeated ``group_size`` times along the batch before the decoder (rollout ``g`` of
        image ``b`` sits at row ``b * G + g``).

        Args:
          img: (B, H, W, 3) degraded images.
          key: one key for the whole batch, or (B,) keys, one per image: image ``b``'s actions
            are then those of ``sample(img[b:b+1], key[b], group_size)``, whatever the batch.
          group_size: rollouts per image (G).

        Returns:
          A :class:`PolicyOutput` whose arrays have leading shape (B, G).
        """
        b = img.shape[0]
        if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):  # raw uint32 key data
            key = jax.random.wrap_key_data(key)
        enc = self.net.encode(img)
        spectrum = self._spectrum(img)
        rep = lambda t: jnp.repeat(t, group_size, axis=0)  # noqa: E731
        n_keys = 2 * len(adair.FRE_NAMES)
        if key.ndim == 0:
            keys = jax.random.split(key, n_keys)
            draw = lambda k, conc: jax.random.beta(keys[k], conc[..., 0], conc[..., 1])  # noqa: E731
        elif key.shape == (b,):
            keys = jax.vmap(lambda one: jax.random.split(one, n_keys))(key)  # (B, n_keys)

            def draw(k: int, conc: jax.Array) -> jax.Array:  # conc (B*G, 2, 2) -> (B*G, 2)
                per_image = jax.vmap(lambda kb, c: jax.random.beta(kb, c[..., 0], c[..., 1]))
                drawn = per_image(keys[:, k], conc.reshape(b, group_size, *conc.shape[1:]))
                return drawn.reshape(b * group_size, -1)
        else:
            raise ValueError(f"key must be one key or one per image ({b},), got shape {key.shape}")

        def choose(k: int, conc: jax.Array) -> jax.Array:
            return self._clamp(jax.lax.stop_gradient(draw(k, conc)))

        out = self._run(rep(img), jax.tree.map(rep, enc), choose, spectrum=jax.tree.map(rep, spectrum))
        return jax.tree.map(lambda t: t.reshape(b, group_size, *t.shape[1:]), out)

    def given(self, img: jax.Array, actions: jax.Array, *, detach_head_inputs: bool = False) -> PolicyOutput:
        """Teacher-forced pass: use stored ``actions`` (B, G, 12); log-probs under the current parameters.

        Same layout and result as :meth:`sample` for the same actions (see the module docstring). The
        restorations depend on the backbone only (the actions are constants); the log-probs depend
        on the heads and, unless ``detach_head_inputs``, on the backbone through the heads' inputs.
        """
        b, g = actions.shape[:2]
        enc = self.net.encode(img)
        rep = lambda t: jnp.repeat(t, g, axis=0)  # noqa: E731
        flat = jax.lax.stop_gradient(actions.reshape(b * g, -1))
        out = self._run(
            rep(img), jax.tree.map(rep, enc), lambda k, c: flat[:, 2 * k : 2 * k + 2], detach_head_inputs,
            spectrum=jax.tree.map(rep, self._spectrum(img)),
        )  # fmt: skip
        return jax.tree.map(lambda t: t.reshape(b, g, *t.shape[1:]), out)

    def given_and_mean(
        self, img: jax.Array, actions: jax.Array, *, detach_actions: bool = False, one_batch: bool | None = None
    ) -> tuple[PolicyOutput, PolicyOutput]:
        """:meth:`given` (without detached head inputs) and :meth:`mean` from one encoder pass.

        The GRPO update's backbone losses need exactly these two: the best rollout re-decoded
        (``actions`` (B, K, 12), usually K = 1) and ``y_det``. Sharing the encoding makes the
        backward run through the encoder once, with the two cotangents summed.

        ``one_batch`` runs the two decodes as one batch of B*(K+1) rows, image b's K given
        action sets and then its Beta means at rows b*(K+1) ... b*(K+1)+K (the layout of
        :meth:`sample`, so a batch sharded over devices stays where it is): at the paper's one
        image, one batch of two instead of two batches of one, to keep a GPU busier (its
        one-image steps use it worst). The decoder treats every row on its own (per-sample
        LayerNorm, channel attention, FFT and pooling), so only the kernels' summation order
        can differ. ``None`` (default) picks it on accelerators and not on the CPU, where it
        measured slower (base, 64x64, forward and backward: 3.83 s against 3.32 s for the two
        passes on the 2-core development machine).
        """
        b, k = actions.shape[:2]
        enc = self.net.encode(img)
        spectrum = self._spectrum(img)
        flat = jax.lax.stop_gradient(actions.reshape(b * k, -1))
        detach = jax.lax.stop_gradient if detach_actions else (lambda t: t)
        means = lambda c: detach(self._clamp(c[..., 0] / (c[..., 0] + c[..., 1])))  # noqa: E731
        if one_batch is None:
            one_batch = jax.default_backend() != "cpu"
        if not one_batch:
            rep = lambda t: jnp.repeat(t, k, axis=0)  # noqa: E731
            given = self._run(
                rep(img), jax.tree.map(rep, enc), lambda i, c: flat[:, 2 * i : 2 * i + 2],
                spectrum=jax.tree.map(rep, spectrum),
            )  # fmt: skip
            mean = self._run(img, enc, lambda i, c: means(c), spectrum=spectrum)
            return jax.tree.map(lambda t: t.reshape(b, k, *t.shape[1:]), given), mean

        per_image = lambda t: t.reshape(b, k + 1, *t.shape[1:])  # noqa: E731
        given_actions = flat.reshape(b, k, -1)

        def choose(i: int, c: jax.Array) -> jax.Array:
            chosen = jnp.concatenate([given_actions[:, :, 2 * i : 2 * i + 2], means(per_image(c)[:, k:])], axis=1)
            return chosen.reshape(b * (k + 1), -1)

        rep = lambda t: jnp.repeat(t, k + 1, axis=0)  # noqa: E731
        out = self._run(rep(img), jax.tree.map(rep, enc), choose, spectrum=jax.tree.map(rep, spectrum))
        out = jax.tree.map(per_image, out)
        return jax.tree.map(lambda t: t[:, :k], out), jax.tree.map(lambda t: t[:, k], out)

    def score_actions(self, head_inputs: Mapping[str, jax.Array], actions: jax.Array) -> ActionScores:
        """Log-probs and entropies of ``actions`` (..., 12) from the heads alone.

        ``head_inputs`` are a pass's :attr:`PolicyOutput.head_inputs` (leading shape ``...``).
        Given the same backbone parameters this equals :meth:`given` with
        ``detach_head_inputs=True`` in everything but the restorations, at the cost of six
        small MLPs instead of a decoder pass per action set: the GRPO update uses it on fresh
        rollouts, whose head inputs were computed with the current parameters.
        """
        lead = actions.shape[:-1]
        flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
        concs = []
        for name in adair.FRE_NAMES:
            heads = self.heads[name]
            concs.append(heads.policy_rate(flat(head_inputs[f"{name}/rate"])))
            concs.append(heads.policy_fuse(flat(head_inputs[f"{name}/fuse"])))
        concs = jnp.concatenate(concs, axis=1)  # (N, 12, 2)
        dist = beta(concs)
        return ActionScores(
            concentrations=concs.reshape(*lead, *concs.shape[1:]),
            log_prob=jnp.sum(dist.log_prob(flat(actions)), axis=-1).reshape(lead),
            entropy=jnp.sum(dist.entropy(), axis=-1).reshape(lead),
        )

    def __call__(self, img: jax.Array) -> jax.Array:
        """The deterministic restoration (what evaluation and :func:`irpo_jax.load_model` use)."""
        return self.mean(img).restored
