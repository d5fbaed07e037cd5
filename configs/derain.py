"""IRPO post-training of a single-task AdaIR: derain.

COMMAND:
  python -m irpo_jax.train --config configs/derain.py --config.model.init_from=checkpoints/adair_derain
    with the derain training data in the AdaIR layout under data/ and a converted single-task AdaIR.
EXPECTED:
  GRPO over the mined hard 30 % of the derain training pairs; evaluation on Rain100L. IRPO
  Table 1(b): 39.38 dB / 0.988 (single-task AdaIR: 38.90 / 0.985). This config has not been run
  on real data here.

VARIANTS: :supervised (train the single-task AdaIR from scratch), :demo, :smoke (see allinone5.py).

PUBLISHED (PSNR/SSIM; `python -m irpo_jax.evaluate ... --reference adair|irpo` prints the
  matching row under ours with the difference; the same numbers as irpo_jax/evaluation/published.py):
  IRPO Table 1(b), single-task deraining (Rain100L):
    AdaIR 38.90/0.985
    IRPO  39.38/0.988
"""

from irpo_jax import config_lib


def get_config(arg=None):
    stage, variant = config_lib.parse_arg(arg)
    c = config_lib.base_config()
    c.name = "derain"
    c.data.root = "data"  # AdaIR layout root
    c.model.init_from = "checkpoints/adair_derain"  # a converted single-task AdaIR
    c.data.tasks = ("derain",)  # train on this degradation only
    c.data.eval_sets = ("rain100l",)  # its test set
    if stage == "supervised":
        config_lib.supervised_overrides(c)
        c.name = "derain_supervised"
        c.model.init_from = ""  # from scratch
        c.train.epochs = 150  # AdaIR's --epochs default
    return config_lib.apply_variant(c, variant)
