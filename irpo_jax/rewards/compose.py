"""IRPO's composite reward (paper Appendix B, Eq. 22): named components, normalisation, weights.

    R = 0.6 R_gen + 0.1 R_qwen + 0.3 R_task
    R_gen = 0.25 R_clip + 0.25 R_LPIPS + 0.15 R_aes + 0.20 R_PSNR + 0.15 R_SSIM

Components (:data:`REWARDS`), each a raw per-sample score ``(B,)`` mapped to [0, 1] here:

=============  =======  ======================================================  ===============
name           runs in  raw score                                               default window
=============  =======  ======================================================  ===============
``psnr``       JAX      PSNR in dB (``irpo_jax.metrics.psnr``, data range 1)    [15, 45] dB
``ssim``       JAX      mean SSIM, skimage definition (``metrics.ssim``)        [0, 1]
``task``       JAX      ``R_task`` of the sample's degradation (B.3)            [0, 1]
``lpips``      torch    ``1 - LPIPS`` (the reward process already flips it)     [0, 1]
``clip``       torch    CLIP image-image cosine similarity, restored vs clean   [0, 1]
``aesthetic``  torch    LAION aesthetic predictor rating (nominally 1..10)      [1, 10]
``qwen``       torch    Qwen2.5-VL judge score already rescaled to [0, 1]       [0, 1]
=============  =======  ======================================================  ===============

Every component is normalised the same way, ``clip((raw - lo) / (hi - lo), 0, 1)`` with its
``windows`` entry from the config: for PSNR that is the paper's fixed thresholds
``(tau_min, tau_max)`` (values not given in the paper; [15, 45] dB covers LOL's ~23 dB to flat
crops above 40 dB and +inf for identical images maps to 1); SSIM's negative values clip to 0;
the aesthetic rating's nominal 1..10 scale maps linearly onto [0, 1] ("normalized", formula not
given in the paper); CLIP cosine is clipped at 0.

NaN marks a component that failed or is unavailable for a sample (a judge answer that did not
parse, a torch component that raised, a remote component not requested this step). With
``missing="renormalise"`` (default, DESIGN.md decision 4) a NaN component is left out and its
weight is spread over the live components of the same group (``gen``, ``judge``, ``task``):
``R_g = (sum_live w_i x_i) * (sum_all w_i / sum_live w_i)``; a group with no live component is
left out of ``R`` the same way; a sample with nothing live is NaN. When nothing is missing this
is exactly the weighted sum of Eq. 22. Given ``group_size=G`` (the trainer's G rollouts of one
image, consecutive), a component that failed for one rollout is left out for its G - 1 siblings
too: the rollouts an advantage compares must be scored by the same formula. Per sample, a
rollout whose judge answer did not parse would otherwise get (0.6 R_gen + 0.3 R_task) / 0.9
against its siblings' 0.6 R_gen + 0.1 R_qwen + 0.3 R_task, a difference of the order of the
whole within-group spread that Eq. 8 then amplifies into a large advantage. With
``missing="strict"`` any NaN in a weighted component makes the sample's total NaN: the rollout
gets advantage 0 (Eq. 8's statistics leave it out) and cannot be g*; an image none of whose
rollouts was scored is left out of L_sup and L_cons (:func:`irpo_jax.grpo.losses.supervision_losses`).
A component with weight 0 is off: never required, never counted.

The JAX part is jittable: ``jax.jit(functools.partial(compose, cfg=cfg))`` (the config is read at
trace time and is static).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from irpo_jax import metrics
from irpo_jax.rewards.task import task_reward_by_id

__all__ = [
    "GROUPS",
    "MISSING_MODES",
    "REWARDS",
    "RewardComponent",
    "active_components",
    "compose",
    "default_reward_config",
    "jax_reward_scores",
    "normalise",
    "remote_components",
    "remote_components_for_step",
    "validate_reward_config",
]

GROUPS = ("gen", "judge", "task")  # the three terms of Eq. 22
MISSING_MODES = ("renormalise", "strict")


@dataclasses.dataclass(frozen=True)
class RewardComponent:
    """One named reward component.

    Attributes:
      name: registry key (also the component's name in the reward process).
      backend: ``"jax"`` (computed inside the jitted step by ``fn``) or ``"torch"`` (raw scores
        arrive from the reward process, :mod:`irpo_jax.rewards.remote`).
      raw: what the raw score is, for error messages and docs.
      fn: for JAX components, ``fn(degraded, restored, clean, task_ids) -> (B,)`` raw scores with
        images ``(B, H, W, 3)`` in [0, 1] and ``task_ids`` ``(B,)`` indices into ``irpo_jax.tasks.TASKS``.
    """

    name: str
    backend: str
    raw: str
    fn: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array] | None = None


# One signature for every JAX component: (degraded, restored, clean, task_ids) -> (B,).
def _psnr(degraded: jax.Array, restored: jax.Array, clean: jax.Array, task_ids: jax.Array):
    del degraded, task_ids
    # eps=0: identical images give +inf, which the window maps to 1 (gradient-free anyway).
    return metrics.psnr(restored, clean)


def _ssim(degraded: jax.Array, restored: jax.Array, clean: jax.Array, task_ids: jax.Array):
    del degraded, task_ids
    return metrics.ssim(restored, clean)


def _task(degraded: jax.Array, restored: jax.Array, clean: jax.Array, task_ids: jax.Array):
    del degraded
    return task_reward_by_id(task_ids, restored, clean)


REWARDS: dict[str, RewardComponent] = {
    "psnr": RewardComponent("psnr", "jax", "PSNR in dB", _psnr),
    "ssim": RewardComponent("ssim", "jax", "mean SSIM", _ssim),
    "task": RewardComponent("task", "jax", "R_task of the sample's degradation", _task),
    "lpips": RewardComponent("lpips", "torch", "1 - LPIPS distance"),
    "clip": RewardComponent("clip", "torch", "CLIP image-image cosine similarity"),
    "aesthetic": RewardComponent("aesthetic", "torch", "LAION aesthetic rating (~1..10)"),
    "qwen": RewardComponent("qwen", "torch", "Qwen2.5-VL judge score rescaled to [0, 1]"),
}


def _unknown(name: str, what: str = "reward component") -> ValueError:
    return ValueError(f"unknown {what} {name!r}; valid ones: {', '.join(REWARDS)}")


def default_reward_config() -> ml_collections.ConfigDict:
    """The paper's reward (Appendix B) plus the reward-process settings.

    Returns:
      A ConfigDict; every field is documented inline. Override on the command line as e.g.
      ``--config.reward.groups.gen.components.clip=0.3`` or ``--config.reward.missing=strict``.
    """
    cfg = ml_collections.ConfigDict()

    cfg.groups = ml_collections.ConfigDict()
    cfg.groups.gen = ml_collections.ConfigDict()
    cfg.groups.gen.weight = 0.6  # weight of R_gen in R (Eq. 22)
    cfg.groups.gen.components = ml_collections.ConfigDict()
    cfg.groups.gen.components.clip = 0.25  # CLIP image-image similarity in R_gen (B.1)
    cfg.groups.gen.components.lpips = 0.25  # 1 - LPIPS in R_gen (B.1)
    cfg.groups.gen.components.aesthetic = 0.15  # LAION aesthetic score in R_gen (B.1)
    cfg.groups.gen.components.psnr = 0.20  # windowed PSNR in R_gen (B.1)
    cfg.groups.gen.components.ssim = 0.15  # SSIM in R_gen (B.1)
    cfg.groups.judge = ml_collections.ConfigDict()
    cfg.groups.judge.weight = 0.1  # weight of R_qwen in R (Eq. 22); 0 turns the judge off
    cfg.groups.judge.components = ml_collections.ConfigDict()
    cfg.groups.judge.components.qwen = 1.0  # the Qwen2.5-VL judge (B.2)
    cfg.groups.task = ml_collections.ConfigDict()
    cfg.groups.task.weight = 0.3  # weight of R_task in R (Eq. 22)
    cfg.groups.task.components = ml_collections.ConfigDict()
    cfg.groups.task.components.task = 1.0  # the task-aware reward of the sample's degradation (B.3)

    # Normalisation windows (lo, hi): value = clip((raw - lo) / (hi - lo), 0, 1).
    cfg.windows = ml_collections.ConfigDict()
    cfg.windows.psnr = (15.0, 45.0)  # (tau_min, tau_max) in dB; the paper gives no values
    cfg.windows.ssim = (0.0, 1.0)  # SSIM is in [-1, 1]; negatives clip to 0
    cfg.windows.task = (0.0, 1.0)  # already in [0, 1] (low-light tops out at 0.3, as printed)
    cfg.windows.lpips = (0.0, 1.0)  # the reward process sends 1 - LPIPS
    cfg.windows.clip = (0.0, 1.0)  # cosine similarity; negatives clip to 0
    cfg.windows.aesthetic = (1.0, 10.0)  # the predictor's nominal 1..10 rating scale -> [0, 1]
    cfg.windows.qwen = (0.0, 1.0)  # the judge's 1..5 score, already rescaled to [0, 1]

    cfg.missing = "renormalise"  # a NaN component: "renormalise" over live ones or "strict" (NaN)
    cfg.judge_every = 1  # request the judge every k steps (0 = never: the judge is off); absent steps count as NaN

    cfg.bridge = ml_collections.ConfigDict()
    cfg.bridge.mode = "process"  # "process" (own torch process), "inprocess" (DLPack), or "off"
    cfg.bridge.address = ""  # "" spawns the process; "unix:/x.sock" / "tcp:127.0.0.1:PORT" connects
    cfg.bridge.device = "cpu"  # torch device of the reward process ("cuda:0": its first GPU)
    cfg.bridge.cuda_visible_devices = "inherit"  # its CUDA_VISIBLE_DEVICES; "" hides all GPUs
    cfg.bridge.transport = "socket"  # images inside the frames ("socket") or in shared memory
    cfg.bridge.start_timeout_s = 900.0  # seconds to load the models and answer the handshake
    cfg.bridge.request_timeout_s = 600.0  # seconds without an answer before the process is hung
    cfg.bridge.max_restarts = 2  # restarts tried for one request before training stops
    cfg.bridge.registry = "torch_bridge.reward_models:COMPONENTS"  # module:attr of the factories
    cfg.bridge.python = ""  # interpreter for the reward process ("" = the trainer's own)
    cfg.bridge.torch_threads = 0  # torch intra-op threads in the reward process (0 = torch default)

    # Per-component model settings (weight paths, model ids, ...), forwarded verbatim to the
    # reward process's component factories; the fields: default_reward_model_config in
    # torch_bridge/reward_models/base.py.
    cfg.models = ml_collections.ConfigDict()
    return cfg


def _component_weights(cfg: ml_collections.ConfigDict) -> dict[str, dict[str, float]]:
    """group -> {component: weight} with the config's values as floats.

    ``judge_every=0`` (never ask the judge) is the judge's weight 0: off, not a component that
    is missing at every step (which would load the judge model for nothing and fail every
    sample under ``missing="strict"``).
    """
    never_judge = int(cfg.get("judge_every", 1)) == 0
    return {
        group: {
            name: 0.0 if never_judge and name == "qwen" else float(w)
            for name, w in cfg.groups[group].components.items()
        }
        for group in GROUPS
        if group in cfg.groups
    }


def effective_weight(cfg: ml_collections.ConfigDict, name: str) -> float:
    """A component's weight in the total reward: its group's weight x its weight inside the group.

    0 for a component in no group and, with ``judge_every=0``, for the judge
    (:func:`_component_weights`). What :func:`compose` gives a component when its whole group is
    live, and what the ``normalize_then_sum`` advantages (``irpo_jax.training.steps``) weigh it by.
    """
    for group, weights in _component_weights(cfg).items():
        if name in weights:
            return float(cfg.groups[group].weight) * weights[name]
    return 0.0


def validate_reward_config(cfg: ml_collections.ConfigDict) -> None:
    """Checks names, weights, windows and the missing-value mode.

    Raises:
      ValueError: naming the offending field and what is allowed.
    """
    for group in cfg.groups.keys():
        if group not in GROUPS:
            raise ValueError(f"reward config: unknown group {group!r}; groups are {', '.join(GROUPS)}")
        if float(cfg.groups[group].weight) < 0:
            raise ValueError(f"reward config: groups.{group}.weight must be >= 0")
    seen: dict[str, str] = {}
    for group, weights in _component_weights(cfg).items():
        for name, w in weights.items():
            if name not in REWARDS:
                raise _unknown(name, f"reward component in groups.{group}.components:")
            if name in seen:
                raise ValueError(f"reward config: {name!r} is in groups {seen[name]!r} and {group!r}")
            if w < 0:
                raise ValueError(f"reward config: groups.{group}.components.{name} must be >= 0")
            seen[name] = group
            lo, hi = (float(v) for v in cfg.windows[name])
            if not hi > lo:
                raise ValueError(f"reward config: windows.{name} needs lo < hi, got ({lo}, {hi})")
    if cfg.missing not in MISSING_MODES:
        raise ValueError(f"reward config: missing={cfg.missing!r}; choose one of {MISSING_MODES}")


def active_components(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Components with a nonzero effective weight (group weight x component weight), in order.

    These are the components a run depends on; record them in the run's metadata.
    """
    out = []
    for group, weights in _component_weights(cfg).items():
        if float(cfg.groups[group].weight) > 0:
            out += [name for name, w in weights.items() if w > 0]
    return tuple(out)


def remote_components(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The active components computed by the torch reward process."""
    return tuple(n for n in active_components(cfg) if REWARDS[n].backend == "torch")


def remote_components_for_step(cfg: ml_collections.ConfigDict, step: int) -> tuple[str, ...]:
    """The remote components to request at ``step``: the judge only every ``judge_every`` steps.

    On the other steps ``qwen`` is absent, hence NaN in :func:`compose` (renormalised away;
    with ``missing="strict"`` keep ``judge_every=1``).
    """
    k = int(cfg.get("judge_every", 1))
    judge_due = k > 0 and step % k == 0
    return tuple(n for n in remote_components(cfg) if n != "qwen" or judge_due)


def jax_reward_scores(
    degraded: jax.Array,
    restored: jax.Array,
    clean: jax.Array,
    task_ids: jax.Array,
    names: tuple[str, ...] = ("psnr", "ssim", "task"),
) -> dict[str, jax.Array]:
    """Raw scores of the JAX components (jittable; ``names`` must be static).

    Args:
      degraded: ``(B, H, W, 3)`` inputs in [0, 1].
      restored: ``(B, H, W, 3)`` rollouts in [0, 1].
      clean: ``(B, H, W, 3)`` targets in [0, 1].
      task_ids: ``(B,)`` int, index into ``irpo_jax.tasks.TASKS``.
      names: JAX components to compute.

    Returns:
      name -> ``(B,)`` raw scores.

    Raises:
      ValueError: for an unknown name or a torch component.
    """
    out = {}
    for name in names:
        comp = REWARDS.get(name)
        if comp is None:
            raise _unknown(name)
        if comp.fn is None:
            raise ValueError(
                f"reward component {name!r} runs in the torch reward process, not in JAX; JAX "
                f"ones: {', '.join(n for n, c in REWARDS.items() if c.fn is not None)}"
            )
        out[name] = comp.fn(degraded, restored, clean, task_ids)
    return out


def normalise(name: str, raw: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    """Maps a raw score to [0, 1] with the component's window; NaN stays NaN.

    Args:
      name: component name.
      raw: raw scores.
      cfg: reward config (``windows``).

    Returns:
      ``clip((raw - lo) / (hi - lo), 0, 1)`` in float32.
    """
    if name not in REWARDS:
        raise _unknown(name)
    lo, hi = (float(v) for v in cfg.windows[name])
    # jnp.clip propagates NaN (failed stays failed) and maps +inf (identical images' PSNR) to 1.
    return jnp.clip((jnp.asarray(raw, jnp.float32) - lo) / (hi - lo), 0.0, 1.0)


def _weighted(values: list[jax.Array], weights: list[float], renormalise: bool) -> jax.Array:
    """``sum w x`` over one level; ``renormalise`` gives NaN entries' weight to the live ones."""
    x = jnp.stack(values, axis=-1)  # (B, n)
    w = jnp.asarray(weights, jnp.float32)  # (n,)
    if not renormalise:
        return jnp.sum(x * w, axis=-1)  # NaN propagates: strict
    live = ~jnp.isnan(x)
    live_w = jnp.sum(jnp.where(live, w, 0.0), axis=-1)  # (B,)
    num = jnp.sum(jnp.where(live, x * w, 0.0), axis=-1)
    total_w = float(sum(weights))
    return jnp.where(live_w > 0, num * (total_w / jnp.where(live_w > 0, live_w, 1.0)), jnp.nan)


def compose(
    jax_scores: Mapping[str, jax.Array],
    remote_scores: Mapping[str, jax.Array],
    cfg: ml_collections.ConfigDict,
    group_size: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The composite reward of Eq. 22 from raw per-component scores.

    Args:
      jax_scores: name -> ``(B,)`` raw scores computed in JAX (:func:`jax_reward_scores`).
      remote_scores: name -> ``(B,)`` raw scores from the reward process
        (``RewardResult.scores``); NaN = failed. An active component found in neither mapping is
        treated as NaN for every sample (unavailable this step).
      cfg: reward config (:func:`default_reward_config`); read at trace time.
      group_size: G when the B samples are B / G groups of G consecutive rollouts of one image
        (GRPO): with ``missing="renormalise"`` a component missing for any rollout of a group is
        left out of the whole group's totals (module docstring). ``None``: samples are
        independent.

    Returns:
      ``(total, per_component)``: ``total`` ``(B,)`` float32 (NaN where the composite failed, see
      the module docstring); ``per_component`` maps each active component to its normalised
      ``(B,)`` value (NaN where it failed for that sample; a sibling's failure does not hide a
      score here) and ``"group/gen"``, ``"group/judge"``, ``"group/task"`` to the group values
      that ``total`` combines, for logging.

    Raises:
      ValueError: unknown component names, a name in both mappings, mismatched shapes, no
        scores at all, or a ``group_size`` that does not divide B.
    """
    validate_reward_config(cfg)
    for name in (*jax_scores, *remote_scores):
        if name not in REWARDS:
            raise _unknown(name)
    both = set(jax_scores) & set(remote_scores)
    if both:
        raise ValueError(f"reward components {sorted(both)} are given both from JAX and remotely")
    given = {**jax_scores, **remote_scores}
    if not given:
        raise ValueError("compose: no reward scores given")
    shapes = {name: jnp.shape(v) for name, v in given.items()}
    batch_shape = next(iter(shapes.values()))
    if len(batch_shape) != 1 or any(s != batch_shape for s in shapes.values()):
        raise ValueError(f"compose: every score must have the same shape (B,), got {shapes}")
    if group_size is not None and (group_size < 1 or batch_shape[0] % group_size):
        raise ValueError(f"compose: group_size {group_size} does not divide the batch of {batch_shape[0]} scores")
    nan = jnp.full(batch_shape, jnp.nan, jnp.float32)
    renormalise = cfg.missing == "renormalise"

    def same_for_the_group(value: jax.Array) -> jax.Array:
        """NaN for every rollout of a group in which ``value`` is NaN for any (renormalise)."""
        if group_size is None or not renormalise:
            return value
        grouped = value.reshape(-1, group_size)
        failed = jnp.any(jnp.isnan(grouped), axis=1, keepdims=True)
        return jnp.where(failed, jnp.nan, grouped).reshape(value.shape)

    per_component: dict[str, jax.Array] = {}
    group_values, group_weights = [], []
    for group, weights in _component_weights(cfg).items():
        gw = float(cfg.groups[group].weight)
        live = {name: w for name, w in weights.items() if w > 0}
        if gw <= 0 or not live:
            continue
        values = []
        for name in live:
            value = normalise(name, given[name], cfg) if name in given else nan
            per_component[name] = value
            values.append(same_for_the_group(value))
        per_component[f"group/{group}"] = _weighted(values, list(live.values()), renormalise)
        group_values.append(per_component[f"group/{group}"])
        group_weights.append(gw)
    if not group_values:
        raise ValueError("reward config: every group or component weight is 0")
    total = _weighted(group_values, group_weights, renormalise)
    return total, per_component
