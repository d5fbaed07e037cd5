"""Building blocks shared by the AdaIR port: convolutions, LayerNorm, pixel (un)shuffle, resize.

Everything is NHWC. Parameters keep PyTorch's *roles* but Flax's *layouts*:
a conv kernel is ``(kh, kw, in/groups, out)`` (PyTorch: ``(out, in/groups, kh, kw)``).

Why the convolutions are not all ``lax.conv_general_dilated``: XLA:CPU lowers grouped
(depthwise) convolutions to a slow generic loop (about 40x slower than 9 shifted
multiply-adds) and 1x1 convolutions are about 3x slower than the equivalent matmul
(``background/cpu-performance-notes.md``). :func:`conv_implementation` selects the
implementation; ``"auto"`` uses the rewrites on CPU and the library convolutions elsewhere.
Both compute the same sums (only the summation order differs, far inside parity tolerances).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_CONV_IMPL = "auto"
_IMPLS = ("auto", "rewrite", "xla")


@contextlib.contextmanager
def conv_implementation(impl: str) -> Iterator[None]:
    """Temporarily choose how depthwise and 1x1 convolutions are computed (at trace time).

    Args:
      impl: ``"rewrite"`` (shifted multiply-adds / matmuls), ``"xla"`` (``lax`` convolutions)
        or ``"auto"`` (rewrite on CPU, xla elsewhere).
    """
    global _CONV_IMPL
    if impl not in _IMPLS:
        raise ValueError(f"conv implementation {impl!r} is not one of {_IMPLS}")
    previous, _CONV_IMPL = _CONV_IMPL, impl
    try:
        yield
    finally:
        _CONV_IMPL = previous


def _use_rewrites() -> bool:
    if _CONV_IMPL == "auto":
        return jax.default_backend() == "cpu"
    return _CONV_IMPL == "rewrite"


def torch_default_uniform(fan_in: int):
    """PyTorch's default Conv2d init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform a=sqrt 5).

    Concrete keys draw on the host with numpy (seeded by the key): eager ``jax.random.uniform``
    compiles one XLA program per parameter shape, which made building a model take tens of
    seconds on CPU. Under tracing (``nnx.eval_shape``, ``jit``) it falls back to ``jax.random``.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        if isinstance(key, jax.core.Tracer):
            return jax.random.uniform(key, shape, dtype, -bound, bound)
        seed = np.asarray(jax.random.key_data(key)).astype(np.uint64).ravel().tolist()
        values = np.random.default_rng(seed).uniform(-bound, bound, size=shape)
        return jnp.asarray(values, dtype=dtype)

    return init


class Conv2d(nnx.Module):
    """``torch.nn.Conv2d`` with stride 1, "same" zero padding ``k // 2`` and optional groups.

    Attributes:
      kernel: ``(k, k, in_channels // groups, out_channels)``.
      bias: ``(out_channels,)`` or absent.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        groups: int = 1,
        bias: bool = False,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}->{out_channels} not divisible by groups={groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.groups = kernel_size, groups
        fan_in = (in_channels // groups) * kernel_size * kernel_size
        init = torch_default_uniform(fan_in)
        shape = (kernel_size, kernel_size, in_channels // groups, out_channels)
        self.kernel = nnx.Param(init(rngs.params(), shape, param_dtype))
        self.bias = nnx.Param(init(rngs.params(), (out_channels,), param_dtype)) if bias else None

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def __call__(self, x: jax.Array) -> jax.Array:  # (B, H, W, Cin) -> (B, H, W, Cout)
        kernel = self.kernel[...].astype(x.dtype)
        k = self.kernel_size
        if k == 1 and self.groups == 1 and _use_rewrites():
            # One 2-D GEMM: a 4-D ``x @ w`` makes the weight gradient a dot over three
            # contracting dimensions, which XLA:CPU runs about 2x slower.
            y = x.reshape(-1, self.in_channels) @ kernel.reshape(self.in_channels, self.out_channels)
            y = y.reshape(*x.shape[:-1], self.out_channels)
        elif self.is_depthwise and _use_rewrites():
            y = _depthwise_shifted(x, kernel[:, :, 0, :])
        else:
            p = k // 2
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=(1, 1),
                padding=((p, p), (p, p)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=self.groups,
            )
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


@jax.custom_vjp
def _depthwise_shifted(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Depthwise k x k "same" convolution as k*k shifted multiply-adds. kernel: (k, k, C).

    The backward is written out (``_depthwise_bwd``): differentiating the k*k slices of the
    padded input made XLA:CPU keep and pad k*k full-size cotangents, 6-9x the forward's time;
    written as one more shifted pass (input gradient) and k*k multiply-reductions (kernel
    gradient) it is about 2x, and only ``x`` and ``kernel`` are kept for it.
    """
    return _depthwise_sum(x, kernel)


def _depthwise_fwd(x: jax.Array, kernel: jax.Array):
    return _depthwise_sum(x, kernel), (x, kernel)


def _depthwise_bwd(res, g: jax.Array):
    x, kernel = res
    k = kernel.shape[0]
    p = k // 2
    h, w = x.shape[1], x.shape[2]
    # d/dx of a zero-padded cross-correlation: the cross-correlation of g with the flipped kernel.
    grad_x = _depthwise_sum(g, kernel[::-1, ::-1])
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    grad_k = jnp.stack(
        [jnp.stack([jnp.sum(xp[:, i : i + h, j : j + w, :] * g, axis=(0, 1, 2)) for j in range(k)]) for i in range(k)]
    )
    return grad_x, grad_k.astype(kernel.dtype)


_depthwise_shifted.defvjp(_depthwise_fwd, _depthwise_bwd)


def _depthwise_sum(x: jax.Array, kernel: jax.Array) -> jax.Array:
    k = kernel.shape[0]
    p = k // 2
    h, w = x.shape[1], x.shape[2]
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out = None
    for i in range(k):
        for j in range(k):
            term = xp[:, i : i + h, j : j + w, :] * kernel[i, j]
            out = term if out is None else out + term
    return out


class LayerNorm(nnx.Module):
    """AdaIR's ``WithBias_LayerNorm`` / ``BiasFree_LayerNorm`` over the channel axis.

    eps is 1e-5 inside the sqrt and the variance is the biased two-pass one (Flax's
    ``nnx.LayerNorm`` defaults to eps 1e-6 and E[x^2]-E[x]^2, which would not match).
    ``BiasFree`` divides by the std about the mean but does not subtract the mean.

    Attributes:
      scale: ``(C,)`` (PyTorch ``body.weight``).
      bias: ``(C,)`` (PyTorch ``body.bias``), only for ``WithBias``.
    """

    def __init__(self, channels: int, layer_norm_type: str, *, param_dtype=jnp.float32):
        if layer_norm_type not in ("WithBias", "BiasFree"):
            raise ValueError(f"LayerNorm_type must be 'WithBias' or 'BiasFree', got {layer_norm_type!r}")
        self.with_bias = layer_norm_type == "WithBias"
        self.scale = nnx.Param(jnp.ones((channels,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((channels,), param_dtype)) if self.with_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        mu = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
        inv = jax.lax.rsqrt(var + 1e-5)
        scale = self.scale[...].astype(x.dtype)
        if self.with_bias:
            return (x - mu) * inv * scale + self.bias[...].astype(x.dtype)
        return x * inv * scale


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, PyTorch's default; ``jax.nn.gelu`` defaults to the tanh approximation."""
    return jax.nn.gelu(x, approximate=False)


def pixel_unshuffle(x: jax.Array) -> jax.Array:
    """``nn.PixelUnshuffle(2)`` in NHWC: ``out[b, y, x, 4c + 2i + j] = in[b, 2y + i, 2x + j, c]``.

    The source channel is the major index (``space_to_depth`` would make it the minor one).
    """
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c)  # (b, y, i, x, j, c)
    x = x.transpose(0, 1, 3, 5, 2, 4)  # (b, y, x, c, i, j)
    return x.reshape(b, h // 2, w // 2, 4 * c)


def pixel_shuffle(x: jax.Array) -> jax.Array:
    """``nn.PixelShuffle(2)`` in NHWC, the exact inverse of :func:`pixel_unshuffle`."""
    b, h, w, c4 = x.shape
    c = c4 // 4
    x = x.reshape(b, h, w, c, 2, 2)  # (b, y, x, c, i, j)
    x = x.transpose(0, 1, 4, 2, 5, 3)  # (b, y, i, x, j, c)
    return x.reshape(b, 2 * h, 2 * w, c)


def downscale_bilinear(img: jax.Array, height: int, width: int) -> jax.Array:
    """``F.interpolate(img, (height, width), mode='bilinear')`` for integer factors, NHWC.

    With ``align_corners=False`` and no antialiasing, shrinking by an integer factor ``s`` samples
    at source coordinate ``s*y + s/2 - 1/2``, i.e. the mean of the two central rows (and columns)
    of each ``s x s`` block. (``jax.image.resize`` antialiases when downsampling by default, which
    would not match.)
    """
    b, h0, w0, c = img.shape
    if h0 % height or w0 % width or h0 // height != w0 // width:
        raise ValueError(f"cannot downscale {h0}x{w0} to {height}x{width} by one integer factor")
    s = h0 // height
    if s == 1:
        return img
    if s % 2:
        raise ValueError(f"odd downscale factor {s} is not used by AdaIR")
    blocks = img.reshape(b, height, s, width, s, c)  # (b, y, i, x, j, c)
    m = s // 2 - 1
    # Width first, then height, as PyTorch's CPU kernel nests them.
    cols = 0.5 * blocks[:, :, :, :, m, :] + 0.5 * blocks[:, :, :, :, m + 1, :]  # (b, y, i, x, c)
    return 0.5 * cols[:, :, m] + 0.5 * cols[:, :, m + 1]


def l2_normalize_tokens(t: jax.Array, axis: int) -> jax.Array:
    """``F.normalize(t, dim=axis)`` (divide by max(||t||, 1e-12)) with a NaN-free gradient at 0.

    ``t / max(norm(t), eps)`` has a NaN gradient for an all-zero ``t`` (the sqrt's derivative),
    which happens on every step for ``channel_cross_h``'s query when the frequency mask is empty.
    """
    sq = jnp.sum(t * t, axis=axis, keepdims=True)
    return t * jax.lax.rsqrt(jnp.maximum(sq, jnp.asarray(1e-24, t.dtype)))
