"""The training config: one documented default (the paper's IRPO setting) and its variants.

``configs/*.py`` are thin files over :func:`base_config` (the user edits or copies them);
variants shrink the same config instead of copying it:

* ``demo``: the built-in demo data (``demo_data/``), the ``small`` model, CPU-sized steps;
* ``smoke``: the ``tiny`` model on 32-pixel crops, a handful of steps, for tests.

Every field has a one-line comment saying what it is and its unit.
"""

from __future__ import annotations

import ml_collections

from irpo_jax.data.config import default_data_config
from irpo_jax.rewards.compose import default_reward_config

VARIANTS = ("demo", "smoke")
STAGES = ("supervised", "grpo")


def base_config(stage: str = "grpo") -> ml_collections.ConfigDict:
    """IRPO post-training on the five-task all-in-one setting (Appendix C of the paper)."""
    c = ml_collections.ConfigDict()
    c.name = "allinone5"  # run name; the default workdir is runs/<name>[_<variant>]
    c.seed = 0  # seeds parameter init, data order, augmentation and action sampling

    c.model = ml_collections.ConfigDict()
    c.model.variant = "base"  # AdaIR size (irpo_jax.models.adair.VARIANTS): base|small|tiny
    c.model.init_from = ""  # model directory to start from (convert_adair output or a trained run); "" = random init
    c.model.compute_dtype = "float32"  # activations' dtype: "float32" or "bfloat16" (params stay float32; GPU option)
    c.model.policy = ml_collections.ConfigDict()
    c.model.policy.mask_rule = "widen"  # "widen": r<=0.5 is AdaIR's own mask, r>0.5 widens it to the cutoff 2r-1
    #   (same meaning on crops and whole images); "anchored": r<0.5 also shrinks it; "fraction": floor(r*(H//2));
    #   "adair": official
    c.model.policy.rate_input = "spectrum"  # rate heads read "spectrum": GAP(conv1(resize(x))) + 17 FFT statistics
    #   of x (Appendix D); "pooled": the GAP only
    c.model.policy.spectrum_tile = 128  # pixels: the FFT statistics are averaged over tiles of the training crop's
    #   size (= data.patch_size); 0 = whole image
    c.model.policy.fuse_mode = "modulate"  # "modulate": y' = 2g_f*para2*y + 2g_o*para1*O; "literal": Eq. 5
    c.model.policy.rate_init = ()  # initial Beta (alpha, beta) of r_h, r_l; () = by mask_rule: widen/anchored (50, 50)
    #   (mean 0.5 = AdaIR at any size), else (1, 35) (mean 1/36)
    c.model.policy.fuse_init = (20.0, 20.0)  # initial Beta (alpha, beta) of g_f, g_o (mean 0.5 = AdaIR)

    c.data = default_data_config("data")  # dataset roots and mixture (irpo_jax.data.config)
    # data.manifest: "" = GRPO mines the hard set itself (mining.*, into <workdir>/mined.jsonl), a path = that
    # mining manifest's selected pairs, "all" = every pair (irpo_jax.training.hard_set)

    c.mining = ml_collections.ConfigDict()  # the hard set a GRPO run mines when data.manifest is ""
    #   (python -m irpo_jax.mine)
    c.mining.fraction = 0.3  # share of each degradation's pairs kept, the worst by rank_by (paper: 30 %)
    c.mining.selection = "per_task"  # "per_task" (each task and denoising sigma ranked alone), "global" or "random"
    #   (control)
    c.mining.rank_by = "psnr"  # "psnr" or "ssim" of the starting model's restoration (lower = harder)
    c.mining.crop = 0  # 0: whole images cropped to multiples of 16, as evaluated; N: centre N x N crops (faster)
    c.mining.batch_size = 8  # images per forward while mining (rounded up to a multiple of the local devices)
    c.mining.allow_other_model = False  # accept a data.manifest mined by a model other than model.init_from

    c.train = ml_collections.ConfigDict()
    c.train.stage = stage  # "supervised" (AdaIR L1 recipe) or "grpo" (IRPO post-training)
    c.train.steps = 0  # optimizer steps (grpo.policy_iters per GRPO batch); 0 = derive from train.epochs and the data
    #   set size
    c.train.epochs = 30  # passes over the training mixture (the hard set in GRPO; see grpo.task_repeats) when steps ==
    #   0 (paper: 30)
    c.train.batch_size = 2  # global images per step (paper: 1 per GPU on 2 GPUs)
    c.train.log_every = 10  # steps between metric writes (JSONL + TensorBoard; 0 = only at the end)
    c.train.checkpoint_every = 1000  # steps between orbax checkpoints (0 = none between; always at the end and on
    #   SIGTERM/SIGINT)
    c.train.keep_checkpoints = 3  # most recent checkpoints kept
    c.train.panel_every = 500  # steps between image panels in TensorBoard (0 = never)
    c.train.eval_every = 0  # steps between evaluations on data.eval_sets (0 = only at the end)
    c.train.probe_every = 0  # GRPO: steps between reward probes on fixed training batches (0 = never)
    c.train.probe_batches = 4  # GRPO: fixed batches (train.batch_size images each, G rollouts) per probe
    c.train.eval_max_images = 0  # images per evaluation set during training (0 = all)
    c.train.eval_at_end = True  # evaluate on data.eval_sets when training finishes
    c.train.allow_config_change = False  # resume a workdir whose saved config differs
    c.train.compilation_cache = ".cache/jax"  # persistent XLA compilation cache ("" = off)
    c.train.devices = 0  # devices in the data-parallel mesh (0 = all devices of all processes)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"  # "adam" (IRPO) or "adamw" (AdaIR supervised)
    c.optim.lr = 3e-5  # base learning rate (paper: 3e-5)
    c.optim.b1 = 0.9  # Adam beta1
    c.optim.b2 = 0.999  # Adam beta2
    c.optim.eps = 1e-8  # Adam epsilon
    c.optim.weight_decay = 0.0  # decoupled weight decay (adamw only)
    c.optim.head_lr_mult = 6.0  # learning-rate multiplier of the policy heads (paper: 6x)
    c.optim.schedule = "constant"  # "constant", "cosine" (per step: linear warm-up, cosine to 0) or "adair" (per epoch,
    #   AdaIR's)
    c.optim.warmup_steps = 0  # linear warm-up steps ("constant" and "cosine")
    c.optim.warmup_epochs = 15  # "adair": linear warm-up epochs from lr 0 (AdaIR: 15)
    c.optim.cosine_epochs = 180  # "adair": epochs the warm-up + cosine spans (AdaIR: max_epochs=180)
    c.optim.grad_clip = 0.0  # global gradient-norm clip (0 = off; the paper does not clip)

    c.grpo = ml_collections.ConfigDict()
    c.grpo.group_size = 4  # rollouts G per image (paper: 4)
    c.grpo.clip_eps = 0.2  # PPO clip range epsilon (not given in the paper; PPO's default)
    c.grpo.kl_coef = 0.04  # beta of the KL to the reference policy (not given; DeepSeekMath's value)
    c.grpo.kl_estimator = "paper"  # "paper" (Eq. 11) or "analytic" (closed-form Beta KL)
    c.grpo.entropy_coef = 0.01  # tau, the entropy bonus (paper: 0.01)
    c.grpo.adv_eps = 1e-8  # epsilon inside the sqrt of the group std (Eq. 8)
    c.grpo.adv_scale = "group"  # advantage scale: "group" (Eq. 8), "batch" or "none"
    c.grpo.aggregation = "sum_then_normalize"  # or "normalize_then_sum" (per-component group normalisation; a failed
    #   component adds 0, reward.missing does not apply)
    c.grpo.policy_iters = 1  # updates per rollout batch (not given in the paper; 1: ratio 1, REINFORCE with a group
    #   baseline)
    c.grpo.one_step_stale = False  # update on the previous step's rollouts while the reward process scores this step's
    c.grpo.lambda_sup = (0.35, 0.1)  # L_sup weight, linear from start to end over training (paper)
    c.grpo.lambda_cons = (0.2, 0.05)  # L_cons weight, linear from start to end over training (paper)
    c.grpo.rl_updates_backbone = False  # let L_RL's gradient reach the backbone through the head inputs
    c.grpo.supervise_best_only = True  # L_sup/L_cons backprop through y_g* alone (same losses; False: through all G,
    #   slower)
    c.grpo.reuse_head_inputs = True  # fresh rollouts: log-probs from the heads on the rollout's pooled inputs (same
    #   losses; False: G decoder passes)
    c.grpo.task_repeats = True  # an epoch repeats each task's hard pairs data.repeats times (AdaIR's mixture); False:
    #   each once
    c.grpo.cons_target = "both"  # L_cons = l1(y_g*, y_det) backpropagates into both (Eq. 2); "det_anchor": into y_g*
    #   only

    c.reward = default_reward_config()  # composite reward and reward process (irpo_jax.rewards.compose)

    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator = ""  # "host:port" of process 0 for multi-host (also from JAX's env variables)
    c.distributed.num_processes = 1  # processes in the job
    c.distributed.process_id = 0  # this process's id
    return c


def supervised_overrides(c: ml_collections.ConfigDict) -> None:
    """AdaIR's supervised recipe (adair-spec sections 10.3 and 11).

    L1; AdamW 2e-4 (PyTorch's defaults: weight decay 0.01); the official per-epoch schedule
    (15 warm-up epochs from 0, cosine over 180 epochs, of which the configs train AdaIR's 150);
    32 images per step (8 per GPU on 4 GPUs); AdaIR's augmentation (one of the modes 1-7 per
    sample, never the identity); 128 crops (``data.patch_size``'s default). Not reproduced:
    Lightning may apply the epoch's rate one epoch late (spec section 11).
    """
    c.train.stage = "supervised"
    c.optim.name = "adamw"
    c.optim.lr = 2e-4
    c.optim.weight_decay = 0.01
    c.optim.schedule = "adair"
    c.optim.warmup_epochs = 15
    c.optim.cosine_epochs = 180
    c.train.batch_size = 32
    c.data.augment = "official"


def apply_variant(c: ml_collections.ConfigDict, variant: str | None) -> ml_collections.ConfigDict:
    """Shrink ``c`` for ``demo`` or ``smoke``; ``None``/"" leaves it as is."""
    if not variant:
        return c
    if variant not in VARIANTS:
        raise ValueError(f"unknown config variant {variant!r}; valid variants: {VARIANTS}")
    c.name = f"{c.name}_{variant}"
    c.reward.bridge.mode = "off"  # CPU demo/tests: JAX rewards only unless the user switches it on
    c.model.init_from = ""  # the demo/smoke pipelines pass their own starting point
    if c.optim.schedule == "adair":
        # A few dozen steps: 15 warm-up epochs of the demo set would leave the rate near 0 for
        # most of the run; the same warm-up + cosine shape per step instead.
        c.optim.schedule = "cosine"
    if variant == "demo":
        c.mining.crop = 128  # one input shape, one compile (real runs mine whole images)
        c.model.variant = "small"
        c.data.root = "demo_data"
        c.data.repeats = {"denoise": 1, "derain": 1, "dehaze": 1, "deblur": 1, "lowlight": 1}
        c.data.patch_size = 64
        c.model.policy.spectrum_tile = 64  # = data.patch_size
        c.data.worker_count = 0
        c.train.batch_size = 2
        c.train.steps = 40
        c.train.log_every = 5
        c.train.checkpoint_every = 20
        c.train.panel_every = 20
        c.train.probe_every = 5  # the demo's evidence of learning: reward on fixed batches
        c.train.probe_batches = 4
        c.train.eval_max_images = 2
        c.train.eval_at_end = False  # `make demo` evaluates before/after with python -m irpo_jax.evaluate
    else:  # smoke
        c.model.variant = "tiny"
        c.data.root = ""
        c.data.manifest = "all"  # no mining stage unless a test asks for it (data.manifest="")
        c.mining.crop = 32
        c.data.patch_size = 32
        c.model.policy.spectrum_tile = 32  # = data.patch_size
        c.data.worker_count = 0
        c.data.validate = "none"
        c.train.batch_size = 2
        c.train.steps = 2
        c.train.log_every = 1
        c.train.checkpoint_every = 2
        c.train.panel_every = 0
        c.train.eval_max_images = 1
        c.train.eval_at_end = False  # tests switch it on where they check it
        c.train.compilation_cache = ""
        c.grpo.group_size = 2
    return c


def parse_arg(arg: str | None) -> tuple[str | None, str | None]:
    """``"demo"`` / ``"supervised,demo"`` -> (stage or None, variant or None)."""
    stage = variant = None
    for part in filter(None, (arg or "").split(",")):
        if part in STAGES:
            stage = part
        elif part in VARIANTS:
            variant = part
        else:
            raise ValueError(f"unknown config argument {part!r}; use stages {STAGES} and/or variants {VARIANTS}")
    return stage, variant


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Load ``path/to/config.py[:arg]`` the way ``--config`` does: :func:`irpo_jax.cli.load_config`
    (kept here for the callers that import it from this module)."""
    from irpo_jax import cli

    return cli.load_config(spec)
