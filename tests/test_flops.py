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
