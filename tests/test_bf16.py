"""bfloat16 activations with float32 parameters (``layers.compute_dtype``) against float32.

The reference is the same model run in float32 (itself checked against PyTorch in
``test_adair``). Random ``tiny``/``small`` weights, with the FreModules' ``para1`` made non-zero
(it starts at 0, which would switch their attention branch off and leave it out of the
comparison). The tolerances leave a margin of about 2x over what was measured on this CPU
(forward max abs <= 4.3e-3 and PSNR >= 60.0 dB; gradient cosine >= 0.9996 per top-level module).
"""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from irpo_jax.models import adair, convert, layers

OUTPUT_MAX_ABS = 1e-2
OUTPUT_MIN_PSNR = 55.0  # dB, peak 1, of the bfloat16 output against the float32 one
GRAD_MIN_COSINE = 0.999  # per top-level module (encoder_level1, fre3, ...)
GRAD_MAX_REL = 1e-2  # ||g_bf16 - g_f32|| / ||g_f32|| over all parameters (measured 2.8e-3)


def random_adair(variant: str, seed: int = 0) -> adair.AdaIR:
    model = adair.AdaIR(variant, rngs=nnx.Rngs(seed))
    weights = convert.state_dict(model)
    rng = np.random.default_rng(seed)
    for k in weights:
        if k.endswith("para1"):
            weights[k] = rng.normal(0.0, 0.5, weights[k].shape).astype(np.float32)
    convert.load_state_dict(model, weights)
    return model


def images(shape, seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape).astype(np.float32))


def forward(dtype: str | None, impl: str, graphdef, state, x: jax.Array) -> jax.Array:
    """The model under ``compute_dtype(dtype)`` (no context at all for None), switched at trace time."""
    with layers.conv_implementation(impl):
        if dtype is None:
            return nnx.merge(graphdef, state)(x)
        with layers.compute_dtype(dtype):
            return nnx.merge(graphdef, state)(x)


_forward = jax.jit(forward, static_argnums=(0, 1))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _grad(dtype: str, impl: str, graphdef, state, x: jax.Array, target: jax.Array):
    return jax.grad(lambda s: jnp.mean(jnp.square(forward(dtype, impl, graphdef, s, x) - target)))(state)


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(variant: str):
        if variant not in cache:
            cache[variant] = nnx.split(random_adair(variant))
        return cache[variant]

    return get


CASES = [("tiny", 64, "rewrite"), ("tiny", 64, "xla"), ("small", 32, "auto")]


@pytest.mark.parametrize("variant,size,impl", CASES)
def test_bf16_forward_is_float32_and_close(models, variant, size, impl):
    graphdef, state = models(variant)
    x = images((2, size, size, 3), seed=1)
    ref = _forward("float32", impl, graphdef, state, x)
    got = _forward("bfloat16", impl, graphdef, state, x)
    assert got.dtype == jnp.float32
    err = np.abs(np.asarray(got) - np.asarray(ref))
    psnr = 10 * np.log10(1.0 / np.mean(err**2))
    assert err.max() < OUTPUT_MAX_ABS and psnr > OUTPUT_MIN_PSNR, (err.max(), psnr)
    assert np.abs(np.asarray(ref) - np.asarray(x)).mean() > 0.05  # the network contributes


@pytest.mark.parametrize("impl", ["rewrite", "xla"])
def test_bf16_gradients_agree_with_float32(models, impl):
    graphdef, state = models("tiny")
    x, target = images((2, 64, 64, 3), seed=1), images((2, 64, 64, 3), seed=2)
    g32 = _grad("float32", impl, graphdef, state, x, target)
    g16 = _grad("bfloat16", impl, graphdef, state, x, target)
    assert {leaf.dtype for leaf in jax.tree.leaves(g16)} == {jnp.dtype(jnp.float32)}

    def flat(tree) -> np.ndarray:
        return np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)])

    for top in g32:
        a, b = flat(g32[top]), flat(g16[top])
        if not np.any(a):  # unused by the forward (FreModule.conv, score_gen): zero in both
            assert not np.any(b), top
            continue
        cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert cos > GRAD_MIN_COSINE, (top, cos)
    a, b = flat(g32), flat(g16)
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < GRAD_MAX_REL


def test_float32_mode_is_unchanged(models):
    graphdef, state = models("tiny")
    x = images((1, 32, 32, 3), seed=3)
    plain = jax.make_jaxpr(functools.partial(forward, None, "auto"))(graphdef, state, x)
    for dtype in ("float32", jnp.float32):
        f32 = jax.make_jaxpr(functools.partial(forward, dtype, "auto"))(graphdef, state, x)
        assert str(f32) == str(plain)
    with_context = _forward("float32", "auto", graphdef, state, x)
    np.testing.assert_array_equal(np.asarray(with_context), np.asarray(_forward(None, "auto", graphdef, state, x)))


@pytest.mark.parametrize("bad", ["float16", "bf16", "int8", None])
def test_bad_dtype_is_refused(bad):
    with pytest.raises(ValueError, match=r"not one of \('float32', 'bfloat16'\)") as info:
        with layers.compute_dtype(bad):
            pass
    assert repr(bad) in str(info.value)
    assert layers.current_compute_dtype() == jnp.float32


def test_switch_is_restored_after_an_error():
    with pytest.raises(RuntimeError):
        with layers.compute_dtype(jnp.bfloat16):
            assert layers.current_compute_dtype() == jnp.bfloat16
            raise RuntimeError
    assert layers.current_compute_dtype() == jnp.float32


def _ops(jaxpr, found=None) -> list[tuple[str, tuple[str, ...], str]]:
    """(primitive, operand dtypes, first output dtype) of every equation, sub-jaxprs included."""
    found = [] if found is None else found
    for eqn in jaxpr.eqns:
        dtypes = tuple(str(v.aval.dtype) for v in eqn.invars if hasattr(v.aval, "dtype"))
        found.append((eqn.primitive.name, dtypes, str(eqn.outvars[0].aval.dtype)))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    _ops(sub.jaxpr, found)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    _ops(sub, found)
    return found


@pytest.mark.parametrize("impl", ["xla", "rewrite"])
def test_activations_are_bf16_inside_the_context(models, impl):
    """The convolutions and matmuls take bfloat16 operands (a no-op switch cannot pass)."""
    graphdef, state = models("tiny")
    x = images((1, 32, 32, 3), seed=0)
    jaxpr = jax.make_jaxpr(functools.partial(forward, "bfloat16", impl))(graphdef, state, x)
    assert jaxpr.out_avals[0].dtype == jnp.float32
    ops = _ops(jaxpr.jaxpr)
    bf16 = ("bfloat16", "bfloat16")

    def count(name: str, operands: tuple[str, ...]) -> int:
        return sum(1 for op, dtypes, _ in ops if op == name and dtypes[: len(operands)] == operands)

    # The tiny model has 34 depthwise convs (2 in each of 8 TransformerBlocks and 9 cross-attentions);
    # only the FreModules' conv1 (on the float32 image) and rate_conv (mask sizes) stay float32.
    if impl == "xla":
        assert count("conv_general_dilated", bf16) >= 40
        assert count("conv_general_dilated", ("float32", "float32")) == 3 + 6  # conv1 + rate_conv
    else:
        assert count("custom_vjp_call", ("bfloat16", "float32")) == 34  # depthwise: bf16 x, f32 kernel
        assert count("custom_vjp_call", ("float32",)) == 0
        assert count("dot_general", bf16) >= 40  # 1x1 convs as GEMMs
    # The attention: q.k^T from bfloat16 operands into float32 logits, attn @ v in bfloat16.
    assert count("dot_general", bf16) >= 17
    assert sum(1 for op, d, out in ops if op == "dot_general" and d[:2] == bf16 and out == "float32") == 17
    assert all(d == ("complex64",) for op, d, _ in ops if op == "fft")


def test_parameters_stay_float32_and_heads_read_float32(models):
    """What the policy heads pool (``image_features``, the decoder feature) is float32 under bfloat16."""
    graphdef, state = models("tiny")
    assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {jnp.dtype(jnp.float32)}
    seen = {}

    def hook(name, module, img, y):
        features = module.image_features(img, y.shape[1], y.shape[2])
        seen[name] = (features.dtype, y.dtype)
        out = module.fuse(features, y, rates=jnp.full((1, 2), 0.3), gates=jnp.full((1, 2), 0.5))
        seen[name + "_out"] = out.dtype
        return out

    def run(state, x):
        with layers.compute_dtype("bfloat16"):
            model = nnx.merge(graphdef, state)
            return model.decode(x, model.encode(x), fre_hook=hook)

    out = jax.eval_shape(run, state, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    assert out.dtype == jnp.float32
    for name in adair.FRE_NAMES:
        assert seen[name] == (jnp.float32, jnp.float32), name
        assert seen[name + "_out"] == jnp.bfloat16, name


def test_depthwise_rewrite_vjp_dtypes_and_values():
    """The hand-written depthwise backward returns (bfloat16, float32) cotangents close to XLA's."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=(3, 3, 4)).astype(np.float32))
    g = jnp.asarray(rng.normal(size=(2, 8, 8, 4)).astype(np.float32))
    y16, vjp16 = jax.vjp(layers._depthwise_shifted, x.astype(jnp.bfloat16), kernel)
    gx16, gk16 = vjp16(g.astype(jnp.bfloat16))
    assert (y16.dtype, gx16.dtype, gk16.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.float32)

    def xla(x, k):
        return jax.lax.conv_general_dilated(
            x, k[:, :, None, :], (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=4, precision="highest",
        )  # fmt: skip

    y32, vjp32 = jax.vjp(xla, x, kernel)
    gx32, gk32 = vjp32(g)
    for got, ref in ((y16, y32), (gx16, gx32), (gk16, gk32)):
        got, ref = np.asarray(got, np.float32), np.asarray(ref)
        assert np.abs(got - ref).max() < 2e-2 * np.abs(ref).max()


def test_trainer_steps_compute_in_the_configured_dtype():
    """``model.compute_dtype`` reaches the trainer's steps: bfloat16 products in the rollout's and
    the update's jaxprs (and none under float32), and a supervised step whose loss and parameter
    step stay close to the float32 ones."""
    from irpo_jax import config_lib, training
    from irpo_jax.models.policy import IRPOPolicy, PolicyConfig

    cfg = config_lib.load_config("configs/allinone5.py:smoke")
    cfg.grpo.group_size = 2
    model = IRPOPolicy(cfg.model.variant, PolicyConfig.from_dict(cfg.model.policy.to_dict()), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    tx = training.build_optimizer(cfg, params, 10)
    state = training.TrainState.initial(params, tx, 0, with_ref=True)
    clean = images((2, 32, 32, 3), seed=1)
    batch = {"clean": clean, "degraded": jnp.clip(clean + 0.1 * images((2, 32, 32, 3), seed=2), 0, 1),
             "task_id": jnp.asarray([0, 1], jnp.int32)}  # fmt: skip
    bf16_products = lambda jaxpr: any(op == "dot_general" and d[:2] == ("bfloat16",) * 2 for op, d, _ in _ops(jaxpr))  # noqa: E731
    for dtype in ("float32", "bfloat16"):
        cfg.model.compute_dtype = dtype
        rollout_fn = training.make_rollout_step(graphdef, cfg, ("psnr",))
        traced = jax.make_jaxpr(rollout_fn)(params, batch, jax.random.key(1))
        assert bf16_products(traced.jaxpr) == (dtype == "bfloat16")
        rollout = jax.tree.unflatten(jax.tree.structure(jax.eval_shape(rollout_fn, params, batch, jax.random.key(1))),
                                     [jnp.zeros(a.shape, a.dtype) for a in traced.out_avals])  # fmt: skip
        update = training.make_grpo_update(graphdef, tx, cfg, 10)
        assert bf16_products(jax.make_jaxpr(update)(state, batch, rollout, {}).jaxpr) == (dtype == "bfloat16")

    plain, sup_params = nnx.split(random_adair("tiny"), nnx.Param)
    sup_params = nnx.to_pure_dict(sup_params)
    # Adam's first step with lr = eps = 1e8 is -g (to 1e-8 relative): the steps compare gradients.
    cfg.optim.update(name="adam", lr=1e8, eps=1e8, schedule="constant", warmup_steps=0)
    sup_tx = training.build_optimizer(cfg, sup_params, 10)
    sup_state = training.TrainState.initial(sup_params, sup_tx, 0, with_ref=False)
    steps, losses = {}, {}
    for dtype in ("float32", "bfloat16"):
        new, metrics = jax.jit(training.make_supervised_step(plain, sup_tx, dtype))(sup_state, batch)
        losses[dtype] = float(metrics["loss/l1"])
        steps[dtype] = jax.flatten_util.ravel_pytree(new.params)[0] - jax.flatten_util.ravel_pytree(sup_params)[0]
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=1e-2)
    a, b = np.asarray(steps["float32"]), np.asarray(steps["bfloat16"])
    # Measured 9.1e-3 here (tiny, 32 px, an L1 loss, whose sign() turns small output differences
    # into whole-unit gradient differences at a few pixels); the bound leaves 2x.
    assert np.linalg.norm(a) > 0 and np.linalg.norm(a - b) / np.linalg.norm(a) < 2e-2


def test_trainer_refuses_an_unknown_compute_dtype(tmp_path):
    from irpo_jax import config_lib, training

    cfg = config_lib.load_config("configs/allinone5.py:smoke")
    cfg.model.compute_dtype = "float16"
    with pytest.raises(training.TrainingError, match="model.compute_dtype must be 'float32' or 'bfloat16'.*float16"):
        training.run(cfg, tmp_path, progress=False)
