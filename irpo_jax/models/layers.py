"""Building blocks shared by the AdaIR port: convolutions, LayerNorm, pixel (un)shuffle, resize.

Everything is NHWC. Parameters keep PyTorch's *roles* but Flax's *layouts*:
a conv kernel is ``(kh, kw, in/groups, out)`` (PyTorch: ``(out, in/groups, kh, kw)``).

Why the convolutions are not all ``lax.conv_general_dilated``: XLA:CPU lowers grouped
(depthwise) convolutions to a slow generic loop (about 40x slower than 9 shifted
multiply-adds) and 1x1 convolutions are about 3x slower than the equivalent matmul
(``background/cpu-performance-notes.md``). :func:`conv_implementation` selects the
implementation; ``"auto"`` uses the rewrites on CPU and the library convolutions elsewhere.
Both compute the same sums (only the summation order differs, far inside parity tolerances).

:func:`compute_dtype` selects the activations' dtype (float32, or bfloat16 with float32
parameters). The layers follow their input's dtype and cast parameters to it where used;
the model casts at its entry and around the float32-only parts (:func:`to_compute_dtype`,
:func:`at_least_float32`).
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
# XLA:CPU computes a convolution's kernel gradient as a convolution over the whole feature map,
# which degenerates when the layer has few output channels (AdaIR's output conv, 96 -> 3: 14x
# slower than the GEMM of _dense_kernel_grad); with many it is as fast or faster than the GEMM.
_DENSE_KERNEL_GRAD_MAX_OUT = 8
_REMAT = "off"
_REMAT_MODES = ("auto", "on", "off")
_IMPLS = ("auto", "rewrite", "xla")
_COMPUTE_DTYPE = jnp.dtype(jnp.float32)
_COMPUTE_DTYPES = ("float32", "bfloat16")


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


@contextlib.contextmanager
def rematerialize(mode: str) -> Iterator[None]:
    """Temporarily choose whether AdaIR's TransformerBlocks are rematerialised in the backward
    (read at trace time by :func:`checkpointed`'s callers).

    ``"on"``: a differentiated block keeps only its input and recomputes its forward in the
    backward (:func:`checkpointed`); ``"off"`` (the default): autodiff keeps every activation;
    ``"auto"``: on where the CPU rewrites are on (:func:`conv_implementation`), the trainer's
    setting. On XLA:CPU it costs no time: the recomputation is paid back by a much smaller
    temporary buffer, which XLA maps and the kernel zero-fills on every call (base model,
    1x128x128, forward+backward: 3.2 -> 0.42 GB).

    Args:
      mode: ``"auto"``, ``"on"`` or ``"off"``.
    """
    global _REMAT
    if mode not in _REMAT_MODES:
        raise ValueError(f"rematerialize mode {mode!r} is not one of {_REMAT_MODES}")
    previous, _REMAT = _REMAT, mode
    try:
        yield
    finally:
        _REMAT = previous


def rematerializing() -> bool:
    """Whether :func:`rematerialize` asks for rematerialisation here (at trace time)."""
    return _REMAT == "on" or (_REMAT == "auto" and _use_rewrites())


def checkpointed(module: nnx.Module, x: jax.Array) -> jax.Array:
    """``module(x)`` whose backward recomputes the forward from ``x`` (rematerialisation).

    Written as a custom VJP rather than ``jax.checkpoint``: XLA:CPU removes the optimization
    barriers that keep ``jax.checkpoint``'s recomputation in the backward, schedules it right
    after the forward and keeps its results, so the temporaries did not shrink at all. Here the
    recomputation reads its input through a data dependency on the cotangent, which no
    schedule can move before the backward reaches the block.
    """
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def apply(params, x):
        return nnx.merge(graphdef, params, rest)(x)

    @jax.custom_vjp
    def run(params, x):
        return apply(params, x)

    def run_fwd(params, x):
        return apply(params, x), (params, x)

    def run_bwd(res, g):
        params, x = res
        # x + 0 * g[0]: the same values (XLA keeps a float multiply by 0, which is not an
        # identity for inf/NaN), available only once the cotangent is.
        x = x + (jnp.ravel(g)[0] * 0).astype(x.dtype)
        return jax.vjp(apply, params, x)[1](g)

    run.defvjp(run_fwd, run_bwd)
    return run(params, x)


def _use_rewrites() -> bool:
    if _CONV_IMPL == "auto":
        return jax.default_backend() == "cpu"
    return _CONV_IMPL == "rewrite"


@contextlib.contextmanager
def compute_dtype(dtype) -> Iterator[None]:
    """Temporarily choose the dtype AdaIR's activations are computed in (read at trace time).

    ``"float32"`` (default) casts nothing: activations keep the input's dtype, exactly as
    without this switch. ``"bfloat16"`` is meant for GPUs:

    * bfloat16: the activations (residual stream, skips, decoder features), the convolutions
      (XLA and CPU-rewrite paths; the depthwise rewrite accumulates in float32 as a library
      conv does), the attention matmuls, GELU, the gates.
    * float32: the parameters, cast to bfloat16 where used (gradients and optimizer state stay
      float32); ops whose parameter gradient is a sum over B*H*W (conv biases, LayerNorm,
      ``para1/para2`` fusion) and the depthwise kernel gradient; LayerNorm statistics, the
      q/k L2 norms over the tokens, the attention logits and softmax; the FreModules' image
      branch (bilinear resize, ``conv1``, the FFT band split, which ``jnp.fft`` only does in
      float32, and the rate logits that set the mask sizes); the decoder feature handed to a
      ``fre_hook`` (the policy heads pool it); AdaIR's output (the last conv's result is cast
      before the global residual ``+ img``).

    Measured against float32 on random ``tiny``/``small`` models, 32-64 px inputs in [0, 1]
    (``tests/test_bf16.py`` checks max abs < 1e-2, PSNR > 55 dB, cosine > 0.999): output max abs
    error <= 4.3e-3, PSNR of the bfloat16 output against the float32 one >= 60 dB; parameter
    gradients' cosine similarity >= 0.9993 per top-level module (0.992 for ``tiny``'s fre1 at
    32 px, a 4x4 feature map), relative norm error 3e-3 over all of ``tiny``'s at 64 px.

    Args:
      dtype: ``"float32"``, ``"bfloat16"`` or the corresponding ``jnp`` dtype.

    Raises:
      ValueError: for any other dtype.
    """
    global _COMPUTE_DTYPE
    try:
        name = jnp.dtype(dtype).name
    except TypeError:
        name = None
    if name not in _COMPUTE_DTYPES:
        raise ValueError(f"compute dtype {dtype!r} is not one of {_COMPUTE_DTYPES}")
    previous, _COMPUTE_DTYPE = _COMPUTE_DTYPE, jnp.dtype(name)
    try:
        yield
    finally:
        _COMPUTE_DTYPE = previous


def current_compute_dtype() -> jnp.dtype:
    """The dtype chosen by the innermost :func:`compute_dtype` (float32 outside any)."""
    return _COMPUTE_DTYPE


def to_compute_dtype(x: jax.Array) -> jax.Array:
    """``x`` in the compute dtype under bfloat16; unchanged under float32 (so float64 stays float64)."""
    if _COMPUTE_DTYPE == jnp.float32:
        return x
    return x.astype(_COMPUTE_DTYPE)


def at_least_float32(x: jax.Array) -> jax.Array:
    """``x`` upcast to float32 if it is narrower (bfloat16); float32 and float64 are unchanged."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


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

    @property
    def scope_name(self) -> str:
        """The ``jax.named_scope`` of this convolution's ops (``conv1x1``, ``dwconv3x3``, ``conv3x3``...):
        profiles and XLA's dumps group their time and memory by it."""
        k = self.kernel_size
        if k == 1 and self.groups == 1:
            return "conv1x1"
        return f"{'dw' if self.is_depthwise else ''}conv{k}x{k}"

    def __call__(self, x: jax.Array) -> jax.Array:  # (B, H, W, Cin) -> (B, H, W, Cout)
        with jax.named_scope(self.scope_name):
            return self._conv(x)

    def _conv(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(x.dtype)
        k = self.kernel_size
        if k == 1 and self.groups == 1 and _use_rewrites():
            # One 2-D GEMM: a 4-D ``x @ w`` makes the weight gradient a dot over three
            # contracting dimensions, which XLA:CPU runs about 2x slower.
            y = x.reshape(-1, self.in_channels) @ kernel.reshape(self.in_channels, self.out_channels)
            y = y.reshape(*x.shape[:-1], self.out_channels)
        elif self.is_depthwise and _use_rewrites():
            # The parameter goes in uncast: its gradient is reduced in float32 inside.
            y = _depthwise_shifted(x, self.kernel[...][:, :, 0, :])
        elif self.groups == 1 and self.out_channels <= _DENSE_KERNEL_GRAD_MAX_OUT and _use_rewrites():
            y = _dense_conv(x, kernel)
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
            # Added in float32 at least, so that the bias gradient (a sum over B*H*W) is too.
            y = at_least_float32(y)
            y = (y + self.bias[...].astype(y.dtype)).astype(x.dtype)
        return y


def _same_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    p = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@jax.custom_vjp
def _dense_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """k x k "same" convolution (``lax.conv_general_dilated``) with a hand-written kernel gradient.

    The forward and the input gradient are the library convolutions autodiff uses. The kernel
    gradient is one GEMM ``x^T @ im2col(g)``: XLA:CPU computes autodiff's version as a
    convolution whose window is the whole feature map, which took longer than any other op of
    AdaIR's backward (the output conv's, 96 -> 3 channels at 128x128). The columns are taken from
    the padded cotangent, not from the input, so that they exist only during the backward.
    """
    return _same_conv(x, kernel)


def _dense_conv_fwd(x: jax.Array, kernel: jax.Array):
    return _same_conv(x, kernel), (x, kernel)


def _dense_conv_bwd(res, g: jax.Array):
    x, kernel = res
    (grad_x,) = jax.linear_transpose(lambda t: _same_conv(t, kernel), x)(g)
    return grad_x, _dense_kernel_grad(x, g, kernel.shape[0]).astype(kernel.dtype)


def _dense_kernel_grad(x: jax.Array, g: jax.Array, k: int) -> jax.Array:
    """``grad_k[i, j, ci, co] = sum_{b,y,x} x_pad[b, y+i, x+j, ci] * g[b, y, x, co]`` as one GEMM.

    Equal to ``sum x[b, y, x, ci] * g_pad[b, y+2p-i, x+2p-j, co]`` (p = k // 2): the k*k shifted
    windows of the padded cotangent, side by side, contracted with ``x`` over every pixel.
    """
    p = k // 2
    b, h, w, cin = x.shape
    cout = g.shape[-1]
    gp = jnp.pad(g, ((0, 0), (p, p), (p, p), (0, 0)))
    cols = jnp.concatenate(
        [gp[:, 2 * p - i : 2 * p - i + h, 2 * p - j : 2 * p - j + w, :] for i in range(k) for j in range(k)], axis=-1
    )  # (B, H, W, k*k*Cout)
    acc = jnp.promote_types(x.dtype, jnp.float32)
    grad = jax.lax.dot_general(
        x.reshape(-1, cin), cols.reshape(-1, k * k * cout), (((0,), (0,)), ((), ())), preferred_element_type=acc
    )  # (Cin, k*k*Cout)
    return grad.reshape(cin, k, k, cout).transpose(1, 2, 0, 3)


_dense_conv.defvjp(_dense_conv_fwd, _dense_conv_bwd)


@jax.custom_vjp
def _depthwise_shifted(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Depthwise k x k "same" convolution as k*k shifted multiply-adds. kernel: (k, k, C).

    The backward is written out (``_depthwise_bwd``): differentiating the k*k slices of the
    padded input made XLA:CPU keep and pad k*k full-size cotangents, 6-9x the forward's time;
    written as one more shifted pass (input gradient) and k*k multiply-reductions (kernel
    gradient) it is about 2x, and only ``x`` and ``kernel`` are kept for it.

    ``x`` may be bfloat16 with a float32 ``kernel``: the sums accumulate in float32 (as a library
    convolution does), the output and the input gradient have ``x``'s dtype, and the kernel
    gradient (a sum over B*H*W) is reduced in float32 and returned in ``kernel``'s dtype.
    """
    return _depthwise_sum(x, kernel)


def _depthwise_fwd(x: jax.Array, kernel: jax.Array):
    return _depthwise_sum(x, kernel), (x, kernel)


def _depthwise_bwd(res, g: jax.Array):
    x, kernel = res
    # d/dx of a zero-padded cross-correlation: the cross-correlation of g with the flipped kernel.
    grad_x = _depthwise_sum(g, kernel[::-1, ::-1]).astype(x.dtype)
    return grad_x, _depthwise_kernel_grad(x, g, kernel.shape[0]).astype(kernel.dtype)


def _depthwise_kernel_grad(x: jax.Array, g: jax.Array, k: int) -> jax.Array:
    """``grad_k[i, j, c] = sum_{b,y,x} x_pad[b, y+i, x+j, c] * g[b, y, x, c]`` -> (k, k, C), float32 at least.

    Computed as ``sum x[b, y, x, c] * g_pad[b, y+2p-i, x+2p-j, c]`` (p = k // 2): the shifts
    are taken on the cotangent, which exists only during the backward. The k*k sums are one
    variadic reduction over the batch and the rows, which XLA:CPU fuses with the shifted products
    into a single pass over ``x`` and ``g``; the columns are summed after. As k*k separate
    reductions, XLA materialised each shifted slice for its library reduction (k*k full-size
    copies per convolution), scheduled them in the forward and kept them for the backward: half
    the op time of AdaIR's forward+backward and most of its temporaries.
    """
    p = k // 2
    h, w = x.shape[1], x.shape[2]
    acc = jnp.promote_types(x.dtype, jnp.float32)
    gp = jnp.pad(g, ((0, 0), (p, p), (p, p), (0, 0))).astype(acc)
    x = x.astype(acc)
    products = tuple(
        x * gp[:, 2 * p - i : 2 * p - i + h, 2 * p - j : 2 * p - j + w, :] for i in range(k) for j in range(k)
    )
    return jnp.stack(sum_over_pixels(*products)).reshape(k, k, -1)


_depthwise_shifted.defvjp(_depthwise_fwd, _depthwise_bwd)


def _depthwise_sum(x: jax.Array, kernel: jax.Array) -> jax.Array:
    k = kernel.shape[0]
    p = k // 2
    h, w = x.shape[1], x.shape[2]
    acc = jnp.promote_types(x.dtype, jnp.float32)  # bfloat16 inputs accumulate in float32
    kernel = kernel.astype(x.dtype).astype(acc)  # the bfloat16-rounded weights a conv would use
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out = None
    for i in range(k):
        for j in range(k):
            term = xp[:, i : i + h, j : j + w, :].astype(acc) * kernel[i, j]
            out = term if out is None else out + term
    return out.astype(x.dtype)


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
        with jax.named_scope("layernorm"):
            return self._norm(x)

    def _norm(self, x: jax.Array) -> jax.Array:
        # Statistics and normalisation in float32 at least (bfloat16 loses the variance of
        # channels with a large mean); the result goes back to x's dtype.
        xf = at_least_float32(x)
        scale = self.scale[...].astype(xf.dtype)
        if self.with_bias:
            bias = self.bias[...].astype(xf.dtype)
            if _use_rewrites():
                return _layer_norm_written_vjp(x, scale, bias)
            return _layer_norm(x, scale, bias)
        mu, inv = _layer_norm_stats(xf)
        return (xf * inv * scale).astype(x.dtype)


def _layer_norm_stats(xf: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and ``1 / sqrt(biased variance + 1e-5)`` over the last axis, kept as (..., 1)."""
    mu = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mu), axis=-1, keepdims=True)
    return mu, jax.lax.rsqrt(var + 1e-5)


def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    """``WithBias`` LayerNorm over the last axis; ``scale`` and ``bias`` in float32 at least."""
    xf = at_least_float32(x)
    mu, inv = _layer_norm_stats(xf)
    return ((xf - mu) * inv * scale + bias).astype(x.dtype)


def _layer_norm_written_vjp(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    """:func:`_layer_norm` with the normalisation's backward written out (the CPU path)."""
    return (_normalized(x) * scale + bias).astype(x.dtype)


@jax.custom_vjp
def _normalized(x: jax.Array) -> jax.Array:
    """``(x - mean) / sqrt(var + 1e-5)`` over the last axis, in float32 at least.

    The backward keeps the result and one number per pixel and is the textbook
    ``inv * (g - mean(g) - x_hat * mean(g * x_hat))``, its two per-pixel means one variadic
    reduction. Autodiff's version on XLA:CPU kept more full-size intermediates and fed library
    reductions with full-size copies of broadcast operands.
    """
    xf = at_least_float32(x)
    mu, inv = _layer_norm_stats(xf)
    return (xf - mu) * inv


def _normalized_fwd(x: jax.Array):
    xf = at_least_float32(x)
    mu, inv = _layer_norm_stats(xf)
    x_hat = (xf - mu) * inv
    return x_hat, (x_hat, inv, jnp.zeros((), x.dtype))


def _normalized_bwd(res, g: jax.Array):
    x_hat, inv, like_x = res
    g = g.astype(x_hat.dtype)
    zeros = (jnp.zeros((), g.dtype),) * 2
    sum_g, sum_gx = jax.lax.reduce(
        (g, g * x_hat), zeros, lambda a, b: (a[0] + b[0], a[1] + b[1]), (g.ndim - 1,)
    )  # (...,) each
    n = g.shape[-1]
    mean_g, mean_gx = (t[..., None] / n for t in (sum_g, sum_gx))
    return ((inv * (g - mean_g - x_hat * mean_gx)).astype(like_x.dtype),)


_normalized.defvjp(_normalized_fwd, _normalized_bwd)


def sum_over_pixels(*ts: jax.Array) -> tuple[jax.Array, ...]:
    """Each of ``ts`` (B, ..., W, C) summed over every axis but the last -> (C,) each.

    One variadic reduction over the axes between the batch and W, which XLA:CPU fuses with the
    operands' producers into one pass, then the short sums over the batch and W (a parameter
    gradient's shape: a conv kernel's or a LayerNorm's is a sum of this kind over all pixels).
    The batch stays out of the variadic reduction: with the batch sharded over a device mesh,
    XLA's partitioner all-gathers a variadic reduction's partial results, while a plain sum over
    the batch becomes one all-reduce.
    """
    if ts[0].ndim <= 2:
        return tuple(jnp.sum(t, axis=0) if t.ndim == 2 else t for t in ts)
    middle = tuple(range(1, ts[0].ndim - 2))
    zeros = tuple(jnp.zeros((), t.dtype) for t in ts)
    rows = jax.lax.reduce(ts, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), middle) if middle else ts
    return tuple(jnp.sum(r, axis=(0, 1)) for r in rows)


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, PyTorch's default; ``jax.nn.gelu`` defaults to the tanh approximation."""
    return jax.nn.gelu(x, approximate=False)


def gelu_gate(x1: jax.Array, x2: jax.Array) -> jax.Array:
    """GDFN's gate ``gelu(x1) * x2``; on the CPU path with the backward written out
    (:func:`_gelu_gate_written_vjp`)."""
    if _use_rewrites():
        return _gelu_gate_written_vjp(x1, x2)
    return gelu(x1) * x2


@jax.custom_vjp
def _gelu_gate_written_vjp(x1: jax.Array, x2: jax.Array) -> jax.Array:
    """``gelu(x1) * x2`` keeping only ``x1`` and ``x2`` for the backward, which recomputes the
    erf: ``d x1 = g * x2 * (Phi(x1) + x1 * phi(x1))``, ``d x2 = g * gelu(x1)``. Autodiff of the
    exact GELU kept four more full-size intermediates of the erf per block (a quarter of the
    base model's saved activations) and XLA:CPU wrote each as its own pass.
    """
    return gelu(x1) * x2


def _gelu_gate_fwd(x1: jax.Array, x2: jax.Array):
    return gelu(x1) * x2, (x1, x2)


def _gelu_gate_bwd(res, g: jax.Array):
    x1, x2 = res
    acc = jnp.promote_types(x1.dtype, jnp.float32)
    x, y, g = x1.astype(acc), x2.astype(acc), g.astype(acc)
    cdf = 0.5 * (1 + jax.lax.erf(x * np.asarray(1 / math.sqrt(2), acc)))
    pdf = jnp.exp(-0.5 * x * x) * np.asarray(1 / math.sqrt(2 * math.pi), acc)
    return (g * y * (cdf + x * pdf)).astype(x1.dtype), (g * x * cdf).astype(x2.dtype)


_gelu_gate_written_vjp.defvjp(_gelu_gate_fwd, _gelu_gate_bwd)


def pixel_unshuffle(x: jax.Array) -> jax.Array:
    """``nn.PixelUnshuffle(2)`` in NHWC: ``out[b, y, x, 4c + 2i + j] = in[b, 2y + i, 2x + j, c]``.

    The source channel is the major index (``space_to_depth`` would make it the minor one).
    """
    b, h, w, c = x.shape
    with jax.named_scope("pixel_shuffle"):
        x = x.reshape(b, h // 2, 2, w // 2, 2, c)  # (b, y, i, x, j, c)
        x = x.transpose(0, 1, 3, 5, 2, 4)  # (b, y, x, c, i, j)
        return x.reshape(b, h // 2, w // 2, 4 * c)


def pixel_shuffle(x: jax.Array) -> jax.Array:
    """``nn.PixelShuffle(2)`` in NHWC, the exact inverse of :func:`pixel_unshuffle`."""
    b, h, w, c4 = x.shape
    c = c4 // 4
    with jax.named_scope("pixel_shuffle"):
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


def inverse_token_norm(t: jax.Array, axis: int) -> jax.Array:
    """``1 / max(||t||, 1e-12)`` over ``axis`` (squeezed), the factor :func:`l2_normalize_tokens`
    multiplies by; NaN-free gradient at 0 for the same reason."""
    sq = jnp.sum(t * t, axis=axis)
    return jax.lax.rsqrt(jnp.maximum(sq, jnp.asarray(1e-24, t.dtype)))


def l2_normalize_tokens(t: jax.Array, axis: int) -> jax.Array:
    """``F.normalize(t, dim=axis)`` (divide by max(||t||, 1e-12)) with a NaN-free gradient at 0.

    ``t / max(norm(t), eps)`` has a NaN gradient for an all-zero ``t`` (the sqrt's derivative),
    which happens on every step for ``channel_cross_h``'s query when the frequency mask is empty.
    """
    sq = jnp.sum(t * t, axis=axis, keepdims=True)
    return t * jax.lax.rsqrt(jnp.maximum(sq, jnp.asarray(1e-24, t.dtype)))
