"""The CPU path's hand-written backward passes against autodiff of the plain formulations.

``layers.conv_implementation("rewrite")`` (the CPU default) computes the depthwise and dense
convolutions and the LayerNorm with written VJPs, and the channel attention normalises its
logits instead of its tokens (issue 25: XLA:CPU's autodiff of the plain forms spent most of the
backward's time and memory in copies). Each is checked here in float64, where only rounding
separates them from the reference, and for the dtypes the bfloat16 path hands back.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irpo_jax.models import adair, layers


def _random(rng, shape, dtype=jnp.float64, scale=1.0, shift=0.0):
    return jnp.asarray(rng.normal(size=shape) * scale + shift, dtype)


def _assert_vjps_close(f_written, f_plain, args, cotangent, atol):
    y1, vjp1 = jax.vjp(f_written, *args)
    y2, vjp2 = jax.vjp(f_plain, *args)
    for name, a, b in zip(
        ("output",) + tuple(f"grad {i}" for i in range(len(args))),
        (y1,) + vjp1(cotangent),
        (y2,) + vjp2(cotangent),
        strict=True,
    ):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        scale = float(jnp.max(jnp.abs(b))) + 1e-30
        assert float(jnp.max(jnp.abs(a - b))) <= atol * scale, name


def _xla_depthwise(x, kernel):
    c = x.shape[-1]
    p = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x, kernel[:, :, None, :], (1, 1), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c, precision="highest",
    )  # fmt: skip


@pytest.mark.parametrize("k, shape", [(3, (2, 7, 5, 6)), (5, (1, 9, 8, 3)), (7, (1, 8, 8, 2)), (1, (2, 3, 4, 5))])
def test_depthwise_written_vjp_matches_autodiff_of_xla_conv(k, shape):
    rng = np.random.default_rng(k)
    with jax.enable_x64(True):
        x, g = _random(rng, shape), _random(rng, shape)
        kernel = _random(rng, (k, k, shape[-1]))
        _assert_vjps_close(layers._depthwise_shifted, _xla_depthwise, (x, kernel), g, 1e-12)


@pytest.mark.parametrize("k, cin, cout", [(3, 3, 5), (3, 6, 2), (7, 2, 1), (5, 4, 4)])
def test_dense_conv_written_vjp_matches_autodiff(k, cin, cout):
    rng = np.random.default_rng(10 * k + cin)
    with jax.enable_x64(True):
        x, g = _random(rng, (2, 9, 6, cin)), _random(rng, (2, 9, 6, cout))
        kernel = _random(rng, (k, k, cin, cout))
        _assert_vjps_close(layers._dense_conv, layers._same_conv, (x, kernel), g, 1e-12)


def test_dense_conv_written_vjp_in_bfloat16():
    rng = np.random.default_rng(0)
    x, g = _random(rng, (1, 8, 8, 4), jnp.bfloat16), _random(rng, (1, 8, 8, 3), jnp.bfloat16)
    kernel = _random(rng, (3, 3, 4, 3), jnp.bfloat16)
    _assert_vjps_close(layers._dense_conv, layers._same_conv, (x, kernel), g, 2e-2)


@pytest.mark.parametrize("shape", [(2, 5, 6, 7), (3, 4, 8), (6, 5)])
def test_layer_norm_written_vjp_matches_autodiff(shape):
    rng = np.random.default_rng(len(shape))
    with jax.enable_x64(True):
        x = _random(rng, shape, scale=3.0, shift=1.0)
        scale, bias = _random(rng, shape[-1:]), _random(rng, shape[-1:])
        _assert_vjps_close(
            layers._layer_norm_written_vjp, layers._layer_norm, (x, scale, bias), _random(rng, shape), 1e-12
        )


def test_layer_norm_written_vjp_dtypes_under_bfloat16():
    """bfloat16 activations, float32 parameters: the input's cotangent in bfloat16, the
    parameters' in float32 (their sums over the pixels are taken in float32), close to autodiff."""
    rng = np.random.default_rng(0)
    x, g = _random(rng, (2, 4, 4, 8), jnp.bfloat16, 2.0, 1.0), _random(rng, (2, 4, 4, 8), jnp.bfloat16)
    scale, bias = _random(rng, (8,), jnp.float32), _random(rng, (8,), jnp.float32)
    _assert_vjps_close(layers._layer_norm_written_vjp, layers._layer_norm, (x, scale, bias), g, 2e-2)
    _, vjp = jax.vjp(layers._layer_norm_written_vjp, x, scale, bias)
    assert [t.dtype for t in vjp(g)] == [jnp.bfloat16, jnp.float32, jnp.float32]


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3, 2, 4, 5), (3, 4, 5), (4, 5), (5,)])
def test_sum_over_pixels(shape):
    rng = np.random.default_rng(0)
    a, b = _random(rng, shape, jnp.float32), _random(rng, shape, jnp.float32)
    got = layers.sum_over_pixels(a, b)
    for t, s in zip((a, b), got, strict=True):
        np.testing.assert_allclose(s, jnp.sum(t, axis=tuple(range(len(shape) - 1))), rtol=1e-5, atol=1e-5)


def test_depthwise_kernel_gradient_with_a_sharded_batch_needs_no_all_gather():
    """Under the trainer's mesh the kernel gradient's sum over the sharded batch is one
    all-reduce: a variadic reduction over the batch made XLA all-gather its partial sums."""
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rng = np.random.default_rng(0)
    x, kernel = _random(rng, (2, 8, 8, 4), jnp.float32), _random(rng, (3, 3, 4), jnp.float32)
    grad = jax.jit(jax.grad(lambda k, x: jnp.sum(layers._depthwise_shifted(x, k) ** 2)))
    with jax.set_mesh(mesh):
        sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
        hlo = grad.lower(kernel, sharded).compile().as_text()
        got = grad(kernel, sharded)
    assert "all-gather(" not in hlo and "all-reduce(" in hlo
    np.testing.assert_allclose(got, grad(kernel, x), rtol=1e-5, atol=1e-5)


def _channel_attention_plain(q, k, v, temperature, heads):
    """The attention as AdaIR writes it: L2-normalise q and k over the tokens, then the logits."""
    b, h, w, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(b, h * w, heads, d) for t in (q, k, v))
    q, k = layers.l2_normalize_tokens(q, axis=1), layers.l2_normalize_tokens(k, axis=1)
    attn = jnp.einsum("bnhc,bnhd->bhcd", q, k) * temperature.reshape(1, heads, 1, 1)
    out = jnp.einsum("bhcd,bnhd->bnhc", jax.nn.softmax(attn, axis=-1), v)
    return out.reshape(b, h, w, c)


@pytest.mark.parametrize("heads", [1, 3])
def test_channel_attention_matches_normalised_tokens(heads):
    """Normalising the d x d logits equals normalising the tokens: values and every gradient."""
    rng = np.random.default_rng(heads)
    with jax.enable_x64(True):
        q, k, v, g = (_random(rng, (2, 4, 5, 6)) for _ in range(4))
        temperature = _random(rng, (heads, 1, 1))

        def written(q, k, v, t):
            return adair.channel_attention(q, k, v, t, heads)

        def plain(q, k, v, t):
            return _channel_attention_plain(q, k, v, t, heads)

        _assert_vjps_close(written, plain, (q, k, v, temperature), g, 1e-12)


def test_channel_attention_zero_query_has_finite_zero_gradients():
    """channel_cross_h's query is exactly 0 with an empty mask: uniform attention, finite
    gradients, and none for the query itself beyond what reaches it (F.normalize semantics)."""
    rng = np.random.default_rng(0)
    k, v, g = (_random(rng, (1, 4, 4, 8), jnp.float32) for _ in range(3))
    q = jnp.zeros_like(k)
    out, vjp = jax.vjp(lambda q, k, v: adair.channel_attention(q, k, v, jnp.ones((2, 1, 1)), 2), q, k, v)
    ref = _channel_attention_plain(q, k, v, jnp.ones((2, 1, 1)), 2)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)
    grads = vjp(g)
    assert all(bool(jnp.all(jnp.isfinite(t))) for t in grads)
    assert float(jnp.abs(grads[1]).max()) == 0.0  # logits constant in k when q = 0


@pytest.mark.parametrize("shape", [(2, 5, 6, 7), (3, 4, 8), (6, 5)])
def test_normalization_written_vjp_matches_autodiff(shape):
    rng = np.random.default_rng(len(shape) + 10)
    with jax.enable_x64(True):
        x = _random(rng, shape, scale=3.0, shift=1.0)

        def plain(x):
            mu, inv = layers._layer_norm_stats(x)
            return (x - mu) * inv

        _assert_vjps_close(layers._normalized, plain, (x,), _random(rng, shape), 1e-12)


def test_gelu_gate_written_vjp_matches_autodiff():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        x1, x2, g = (_random(rng, (2, 4, 5, 6), scale=2.0) for _ in range(3))
        _assert_vjps_close(layers._gelu_gate_written_vjp, lambda a, b: layers.gelu(a) * b, (x1, x2), g, 1e-12)
    x1, x2, g = (_random(rng, (2, 4, 5, 6), jnp.bfloat16, 2.0) for _ in range(3))
    _assert_vjps_close(layers._gelu_gate_written_vjp, lambda a, b: layers.gelu(a) * b, (x1, x2), g, 2e-2)


def _stacked_blocks(n: int, dim: int = 16):
    from flax import nnx

    blocks = nnx.List([adair.TransformerBlock(dim, 2, 2.66, False, "WithBias", rngs=nnx.Rngs(i)) for i in range(n)])
    return nnx.split(blocks, nnx.Param, ...)


def _blocks_loss(graphdef, rest, mode):
    from flax import nnx

    def loss(params, x):
        with layers.rematerialize(mode):
            return jnp.sum(adair._run(nnx.merge(graphdef, params, rest), x) ** 2)

    return loss


def test_rematerialised_blocks_have_the_same_gradients():
    """``layers.checkpointed`` recomputes each block in the backward: the same gradients
    (float64: only rounding may differ) w.r.t. the parameters and the input."""
    with jax.enable_x64(True):
        graphdef, params, rest = _stacked_blocks(2)
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x = _random(np.random.default_rng(0), (1, 8, 8, 16))
        grads = {
            m: jax.jit(jax.grad(_blocks_loss(graphdef, rest, m), argnums=(0, 1)))(params, x) for m in ("off", "on")
        }
        for a, b in zip(jax.tree.leaves(grads["on"]), jax.tree.leaves(grads["off"]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * float(jnp.max(jnp.abs(b))))


def test_rematerialisation_shrinks_the_temporaries():
    """The recomputation cannot be scheduled before the backward reaches the block (XLA:CPU
    hoists ``jax.checkpoint``'s), so XLA's temporaries shrink."""
    graphdef, params, rest = _stacked_blocks(4)
    x = jnp.zeros((1, 32, 32, 16), jnp.float32)
    temp = {}
    for mode in ("off", "on"):
        compiled = jax.jit(jax.grad(_blocks_loss(graphdef, rest, mode), argnums=(0, 1))).lower(params, x).compile()
        temp[mode] = compiled.memory_analysis().temp_size_in_bytes
    assert temp["on"] < 0.7 * temp["off"], temp


def test_rematerialize_modes():
    with layers.conv_implementation("rewrite"):
        assert not layers.rematerializing()
        with layers.rematerialize("auto"):
            assert layers.rematerializing()
        with layers.rematerialize("on"):
            assert layers.rematerializing()
    with layers.conv_implementation("xla"), layers.rematerialize("auto"):
        assert not layers.rematerializing()
    with pytest.raises(ValueError, match="rematerialize mode"):
        with layers.rematerialize("yes"):
            pass
