"""IRPO post-training of a single-task AdaIR: dehaze.

COMMAND:
  python -m irpo_jax.train --config configs/dehaze.py --config.model.init_from=checkpoints/adair_dehaze
    with the dehaze training data in the AdaIR layout under data/ and a converted single-task AdaIR.
EXPECTED:
  GRPO over the mined hard 30 % of the dehaze training pairs; evaluation on SOTS-outdoor. IRPO
  Table 1(a): 32.31 dB / 0.983 (single-task AdaIR: 31.80 / 0.981). This config has not been run
  on real data here.

VARIANTS: :supervised (train the single-task AdaIR from scratch), :demo, :smoke (see allinone5.py).

PUBLISHED (PSNR/SSIM; `python -m irpo_jax.evaluate ... --reference adair|irpo` prints the
  matching row under ours with the difference; the same numbers as irpo_jax/evaluation/published.py):
  IRPO Table 1(a), single-task dehazing (SOTS):
    AdaIR 31.80/0.981
    IRPO  32.31/0.983
"""

from irpo_jax import config_lib


def get_config(arg=None):
    stage, variant = config_lib.parse_arg(arg)
    c = config_lib.base_config()
    c.name = "dehaze"
    c.data.root = "data"  # AdaIR layout root
    c.model.init_from = "checkpoints/adair_dehaze"  # a converted single-task AdaIR
    c.data.tasks = ("dehaze",)  # train on this degradation only
    c.data.eval_sets = ("sots",)  # its test set
    if stage == "supervised":
        config_lib.supervised_overrides(c)
        c.name = "dehaze_supervised"
        c.model.init_from = ""  # from scratch
        c.train.epochs = 150  # AdaIR's --epochs default
    return config_lib.apply_variant(c, variant)
