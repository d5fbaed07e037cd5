"""IRPO post-training of AdaIR on the three-task all-in-one setting (denoise, derain, dehaze).

COMMAND:
  python -m irpo_jax.train --config configs/allinone3.py
    with data/ in the AdaIR layout and the converted three-task checkpoint in checkpoints/adair3d.
EXPECTED:
  GRPO over the mined hard 30 %; evaluation on SOTS, Rain100L and BSD68 (sigma 15/25/50) in the
  layout of IRPO Table 7. Not run on real data here (no datasets or checkpoint available).

VARIANTS: :supervised, :demo, :smoke (see allinone5.py).

PUBLISHED (PSNR/SSIM; `python -m irpo_jax.evaluate ... --reference adair|irpo` prints the
  matching row under ours with the difference; the same numbers as irpo_jax/evaluation/published.py):
  IRPO Table 7, three-task (SOTS, Rain100L, BSD68 σ=15, 25, 50):
    AdaIR 31.06/0.980 38.64/0.983 34.12/0.935 31.45/0.892 28.19/0.802  avg 32.69/0.918
    IRPO  31.62/0.983 39.13/0.988 34.54/0.938 32.04/0.905 29.56/0.823  avg 33.38/0.927
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
