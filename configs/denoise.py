"""IRPO post-training of a single-task AdaIR: denoise.

COMMAND:
  python -m irpo_jax.train --config configs/denoise.py --config.model.init_from=checkpoints/adair_denoise
    with the denoise training data in the AdaIR layout under data/ and a converted single-task AdaIR.
EXPECTED:
  GRPO over the mined hard 30 % of the denoise training pairs; evaluation on Urban100 and BSD68
  at sigma 15/25/50. IRPO Table 1(c): Urban100 35.08/0.954, 32.95/0.933, 30.07/0.888; BSD68
  34.45/0.940, 31.91/0.899, 28.71/0.815 (single-task AdaIR: 34.96, 32.74, 29.70; 34.36, 31.72,
  28.49 dB). This config has not been run on real data here.

VARIANTS: :supervised (train the single-task AdaIR from scratch), :demo, :smoke (see allinone5.py).

PUBLISHED (PSNR/SSIM; `python -m irpo_jax.evaluate ... --reference adair|irpo` prints the
  matching row under ours with the difference; the same numbers as irpo_jax/evaluation/published.py):
  IRPO Table 1(c), single-task denoising (Urban100 σ=15, 25, 50, BSD68 σ=15, 25, 50):
    AdaIR 34.96/0.953 32.74/0.931 29.70/0.885 34.36/0.938 31.72/0.897 28.49/0.813  avg 32.00/0.903
    IRPO  35.08/0.954 32.95/0.933 30.07/0.888 34.45/0.940 31.91/0.899 28.71/0.815  avg 32.19/0.905
"""

from irpo_jax import config_lib


def get_config(arg=None):
    stage, variant = config_lib.parse_arg(arg)
    c = config_lib.base_config()
    c.name = "denoise"
    c.data.root = "data"  # AdaIR layout root
    c.model.init_from = "checkpoints/adair_denoise"  # a converted single-task AdaIR
    c.data.tasks = ("denoise",)  # train on this degradation only
    c.data.eval_sets = ("urban100", "bsd68")  # its test sets (IRPO Table 1(c))
    if stage == "supervised":
        config_lib.supervised_overrides(c)
        c.name = "denoise_supervised"
        c.model.init_from = ""  # from scratch
        c.train.epochs = 150  # AdaIR's --epochs default
    return config_lib.apply_variant(c, variant)
