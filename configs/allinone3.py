"""IRPO post-training of AdaIR on the three-task all-in-one setting (denoise, derain, dehaze).

COMMAND:
  python -m irpo_jax.train --config configs/allinone3.py
    with data/ in the AdaIR layout and the converted three-task checkpoint in checkpoints/adair3d.
EXPECTED:
  GRPO over the mined hard 30 %; evaluation on SOTS, Rain100L and BSD68 (sigma 15/25/50) in the
  layout of IRPO Table 7. Not run on real data here (no datasets or checkpoint available).

VARIANTS: :supervised, :demo, :smoke (see allinone5.py).
"""

from irpo_jax import config_lib


def get_config(arg=None):
    stage, variant = config_lib.parse_arg(arg)
    c = config_lib.base_config()
    c.name = "allinone3"
    c.data.root = "data"  # AdaIR layout root
    c.model.init_from = "checkpoints/adair3d"  # converted official three-task AdaIR
    c.data.tasks = ("denoise", "derain", "dehaze")  # the three degradations
    c.data.eval_sets = ("sots", "rain100l", "bsd68")  # three-task protocol
    if stage == "supervised":
        config_lib.supervised_overrides(c)
        c.name = "allinone3_supervised"
        c.model.init_from = ""  # from scratch
        c.train.epochs = 150  # AdaIR's --epochs default
    return config_lib.apply_variant(c, variant)
