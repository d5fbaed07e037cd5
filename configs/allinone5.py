"""IRPO post-training of AdaIR on the five-task all-in-one setting (the paper's main result).

COMMAND:
  python -m irpo_jax.train --config configs/allinone5.py
    with the AdaIR data layout under data/ (data.root) and the converted official checkpoint in
    checkpoints/adair5d (model.init_from; `python -m torch_bridge.convert_adair adair5d.ckpt
    checkpoints/adair5d`). The run first mines the hard set with that model (the worst 30 % of
    each degradation by PSNR, whole images; runs/allinone5/mined.jsonl), then post-trains on it.
EXPECTED:
  30 epochs of GRPO over the hard set (G=4, 2 images per step: the paper's 1 per GPU on 2 GPUs);
  the mean reward rises over training (paper, Fig. 6) and the five-task average goes from AdaIR's
  30.20 dB / 0.910 to about 31.03 dB / 0.917 (IRPO Table 2). Not reproduced here: needs the
  datasets, the checkpoint and GPUs.
RUN LENGTH (printed at the start of every run):
  The hard set of the full training data is 27,110 pairs (30 % of each degradation, rounded up:
  denoise 3 x 1,544 (one ranking per sigma), derain 60, dehaze 21,641, deblur 631, lowlight 146).
  grpo.task_repeats=True (default): an epoch repeats each task's pairs as AdaIR's mixture does
  (data.repeats: denoise 3, derain 120, dehaze 1, deblur 5, lowlight 20): 48,812 samples, so 30
  epochs at batch 2 are 732,180 optimizer steps. grpo.task_repeats=False: every pair once, 27,110
  samples, 406,650 steps. The default keeps AdaIR's task balance: without the repeats 80 % of
  the steps are dehazing and low-light gets 0.5 % (146 of 27,110 pairs), while the paper's
  largest gains are on low-light and denoising (Table 2); the paper does not say which it used.
  The learning rate is constant (3e-5, heads x6); lambda_sup 0.35 -> 0.1 and lambda_cons
  0.2 -> 0.05 anneal linearly over these steps.

VARIANTS (append to the path, comma separated):
  :supervised  AdaIR's own supervised recipe from scratch (L1, AdamW 2e-4, 15 warm-up epochs then
               cosine per epoch, 32 images per step, augmentation modes 1-7, 150 epochs).
  :demo        the built-in demo data (make demo), the small model, CPU-sized.
  :smoke       a few steps of the tiny model (tests).

PUBLISHED (PSNR/SSIM; `python -m irpo_jax.evaluate ... --reference adair|irpo` prints the
  matching row under ours with the difference; the same numbers as irpo_jax/evaluation/published.py):
  IRPO Table 2, five-task (SOTS, Rain100L, BSD68 σ=25, GoPro, LOL):
    AdaIR 30.53/0.978 38.02/0.981 31.35/0.889 28.12/0.858 23.00/0.845  avg 30.20/0.910
    IRPO  31.36/0.982 38.72/0.987 32.13/0.896 28.89/0.863 24.08/0.858  avg 31.03/0.917
  IRPO Table 3, the same models out of domain (RRSHID, GT-Rain, SIDD, ReLoBlur, LoLI-Street):
    AdaIR 16.71/0.475 19.58/0.684 28.83/0.902 20.43/0.806 15.96/0.781  avg 20.30/0.730
    IRPO  19.94/0.623 21.17/0.692 33.18/0.919 21.94/0.837 22.43/0.875  avg 23.73/0.809
  Table 3's PSNR averages are its columns' means: +3.43 dB, as the abstract and Sec. 4.3 say (only
  the table's caption says +2.53 dB). IRPO's printed SSIM average 0.809 is not its columns' mean
  (0.789); --reference compares with the column mean and shows the printed one beside it.
  The out-of-domain sets: `--sets ood5`, README 'Out-of-domain evaluation'.
"""

from irpo_jax import config_lib


def get_config(arg=None):
    stage, variant = config_lib.parse_arg(arg)
    c = config_lib.base_config()
    c.name = "allinone5"
    c.data.root = "data"  # AdaIR layout: data/Train/{Denoise,Derain,Dehaze,Deblur,Enhance}, data/test/...
    c.model.init_from = "checkpoints/adair5d"  # converted official 5-task AdaIR (adair5d.ckpt)
    c.data.tasks = ("denoise", "derain", "dehaze", "deblur", "lowlight")  # the five degradations
    if stage == "supervised":
        config_lib.supervised_overrides(c)
        c.name = "allinone5_supervised"
        c.model.init_from = ""  # from scratch
        c.train.epochs = 150  # AdaIR's --epochs default
    return config_lib.apply_variant(c, variant)
