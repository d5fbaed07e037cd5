"""The FLOP formula (irpo_jax.models.flops) against an independent count: the products in the
model's jaxpr (every convolution and dot_general, 2 FLOPs per multiply-add)."""

import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from irpo_jax.models import adair, flops, layers


def jaxpr_product_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        out = eqn.outvars[0].aval.shape
        if eqn.primitive.name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape  # HWIO: k * k * (cin / groups) multiply-adds per output
            total += 2 * math.prod(out) * math.prod(rhs[:-1])
        elif eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            total += 2 * math.prod(out) * math.prod(eqn.invars[0].aval.shape[i] for i in contract)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += jaxpr_product_flops(sub)
    return total


@pytest.mark.parametrize(
    "config, shape",
    [
        ("tiny", (2, 32, 48, 3)),
        ("small", (1, 64, 64, 3)),
        ("base", (1, 128, 128, 3)),  # the paper's model at its training crop
        (dict(dim=16, num_blocks=(2, 1, 1, 3), num_refinement_blocks=2, heads=(2, 2, 4, 4),
              ffn_expansion_factor=2.0, bias=True, LayerNorm_type="BiasFree"), (1, 32, 32, 3)),
    ],
)  # fmt: skip
def test_formula_equals_the_products_in_the_jaxpr(config, shape):
    model = adair.AdaIR(adair.get_config(config), rngs=nnx.Rngs(0))
    with layers.conv_implementation("xla"):  # every conv a conv_general_dilated, as counted
        jaxpr = jax.make_jaxpr(model)(jnp.zeros(shape)).jaxpr
    b, h, w, _ = shape
    assert flops.forward_flops(adair.get_config(config), h, w, b) == jaxpr_product_flops(jaxpr)


def test_train_step_is_three_forwards_per_image():
    assert flops.train_step_flops("base", 128, 128, 8) == 3 * 8 * flops.forward_flops("base", 128, 128)


def test_encoder_decoder_split_and_the_reference_pass_xla_keeps():
    """``encoder_flops + decoder_flops == forward_flops`` by the jaxpr of each half, and the
    reference policy's log-prob pass, after dead-code elimination (what XLA runs: nothing reads
    its restorations), costs ``encoder + G * decoder(to_fre3)`` plus the heads' small MLPs."""
    from jax._src.interpreters import partial_eval as pe

    from irpo_jax.models.policy import IRPOPolicy

    cfg = adair.get_config("tiny")
    b, g, h, w = 2, 3, 32, 48
    img = jnp.zeros((b, h, w, 3))
    with layers.conv_implementation("xla"):
        model = adair.AdaIR(cfg, rngs=nnx.Rngs(0))
        enc = jaxpr_product_flops(jax.make_jaxpr(model.encode)(img).jaxpr)
        policy = IRPOPolicy(cfg, rngs=nnx.Rngs(0))
        actions = jnp.full((b, g, 12), 0.5)
        closed = jax.make_jaxpr(lambda x: policy.given(x, actions).log_prob)(img)
    assert enc == flops.encoder_flops(cfg, h, w, b)
    assert flops.encoder_flops(cfg, h, w, b) + flops.decoder_flops(cfg, h, w, b) == flops.forward_flops(cfg, h, w, b)
    kept, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    # Besides the formula, the jaxpr holds the policy heads' small MLPs and the statistics their
    # inputs are made of (well below 0.1 %); the decoder tail after fre3 that XLA drops is 1.4x it.
    expected = flops.encoder_flops(cfg, h, w, b) + b * g * flops.decoder_flops(cfg, h, w, to_fre3=True)
    tail = b * g * (flops.decoder_flops(cfg, h, w) - flops.decoder_flops(cfg, h, w, to_fre3=True))
    assert abs(jaxpr_product_flops(kept) - expected) < 1e-3 * expected < tail
    parts = flops.grpo_step_flops(cfg, h, w, group=g, images=b)
    assert parts["reference"] == expected
    assert flops.grpo_step_flops(cfg, h, w, group=g, images=b, reference_pass=False)["reference"] == 0
