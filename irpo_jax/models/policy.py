"""IRPO's GRPO-Driven Model: AdaIR as a stochastic policy with Beta-distributed frequency controls.

Each FreModule (``fre1..fre3``) gets two heads (IRPO section 3.3, Appendix D):

* **Policy Rate head**: input ``GAP(conv1(resize(img)))`` (the features AdaIR's ``rate_conv``
  reads), output Beta concentrations for ``(r_h, r_l)``: the low-pass mask's height and width
  (``mask_rule="fraction"``: half-size ``floor(r * (H // 2))``; ``"adair"``: the official rule).
* **Policy Fuse head**: input ``GAP(y)`` of the decoder feature, output Beta concentrations for
  ``(g_f, g_o)``: the fusion weights (``fuse_mode="modulate"``:
  ``y' = 2 g_f * para2 * y + 2 g_o * para1 * O``; ``"literal"``: Eq. 5 as printed).

That is 12 scalar actions per image, laid out ``[fre1: r_h, r_l, g_f, g_o, fre2: ..., fre3: ...]``;
the joint log-probability is the sum of the 12 Beta log-densities (Eq. 23).

Three modes of one forward pass (:meth:`IRPOPolicy.sample`, :meth:`IRPOPolicy.mean`,
:meth:`IRPOPolicy.given`). Sampled actions are clamped to ``[eps, 1 - eps]`` *before* they are
stored, so teacher-forcing the stored actions reproduces the sampled pass (its log-probs bit
for bit; its restorations up to how XLA fuses the two programs, ~1e-6).

Initialisation preserves the pretrained backbone: the heads' last layer starts with zero
weights, so the concentrations are the constants ``rate_init`` (default alpha=1, beta=35, mean
1/36) and ``fuse_init`` (alpha=beta=20, mean exactly 0.5 -> the fusion gates are exactly 1).
The ``mean`` mode then equals the plain AdaIR output *exactly* as long as every mask stays empty,
i.e. ``floor(mean_r * (H_f // 2)) == 0`` at every level. fre3 has the largest feature map
(``H_f = H / 2``), so under ``mask_rule="fraction"`` this holds for inputs with
``(H // 4) / 36 < 1`` and the same for W, i.e. sides up to 140 pixels (128x128 training crops
included); larger images get small non-empty masks, which is the intended, resolution-relative
behaviour of the policy. Under ``mask_rule="adair"`` the official rule (``H // 128`` scaling)
keeps the masks empty at any size below 128 * 36 pixels.

This is the only module that imports distrax.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import distrax
import jax
import jax.numpy as jnp
from flax import nnx

from irpo_jax.models import adair, layers

FUSE_MODES = ("modulate", "literal")
ACTION_NAMES = ("r_h", "r_l", "g_f", "g_o")
ACTIONS_PER_MODULE = 4


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """How the Beta policy is attached to AdaIR.

    Attributes:
      mask_rule: ``"fraction"`` (default; actions matter at 128 crops) or ``"adair"``.
      fuse_mode: ``"modulate"`` (default; Beta mean 0.5 == AdaIR) or ``"literal"`` (Eq. 5).
      rate_init: initial (alpha, beta) of the rate actions (mean 1/36: empty masks at 128 crops).
      fuse_init: initial (alpha, beta) of the fuse actions (alpha == beta: mean exactly 0.5).
      min_concentration: added after softplus, so concentrations stay positive.
      max_concentration: upper clip; float32 ``betaln`` loses ~1e-3 by 1e4 (cancellation).
      action_eps: actions are clamped to [eps, 1 - eps] before any log.
    """

    mask_rule: str = "fraction"
    fuse_mode: str = "modulate"
    rate_init: tuple[float, float] = (1.0, 35.0)
    fuse_init: tuple[float, float] = (20.0, 20.0)
    min_concentration: float = 1e-3
    max_concentration: float = 1e4
    action_eps: float = 1e-6

    def __post_init__(self):
        object.__setattr__(self, "rate_init", tuple(float(v) for v in self.rate_init))
        object.__setattr__(self, "fuse_init", tuple(float(v) for v in self.fuse_init))
        if self.mask_rule not in adair.MASK_RULES:
            raise ValueError(f"policy mask_rule must be one of {adair.MASK_RULES}, got {self.mask_rule!r}")
        if self.fuse_mode not in FUSE_MODES:
            raise ValueError(f"policy fuse_mode must be one of {FUSE_MODES}, got {self.fuse_mode!r}")
        for name in ("rate_init", "fuse_init"):
            if min(getattr(self, name)) <= self.min_concentration:
                raise ValueError(f"{name}={getattr(self, name)} must exceed min_concentration={self.min_concentration}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rate_init"], d["fuse_init"] = list(self.rate_init), list(self.fuse_init)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PolicyConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown policy config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**dict(d))


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class BetaHead(nnx.Module):
    """A small head: pooled features (B, C) -> Beta concentrations (B, 2 actions, 2) as (alpha, beta).

    Linear C -> max(C // 8, 4) -> exact GELU -> Linear -> 4 -> softplus + min, clipped at max.
    The last layer starts at zero weight, so at initialisation the concentrations are exactly
    ``init`` whatever the input.
    """

    def __init__(self, channels: int, init: tuple[float, float], cfg: PolicyConfig, *, rngs: nnx.Rngs):
        hidden = max(channels // 8, 4)
        self.min_concentration, self.max_concentration = cfg.min_concentration, cfg.max_concentration
        self.fc1 = nnx.Linear(
            channels, hidden, kernel_init=layers.torch_default_uniform(channels),
            bias_init=layers.torch_default_uniform(channels), rngs=rngs,
        )  # fmt: skip
        bias = jnp.asarray([_inverse_softplus(v - cfg.min_concentration) for v in init * 2], jnp.float32)
        self.fc2 = nnx.Linear(
            hidden, 4, kernel_init=nnx.initializers.zeros, bias_init=lambda *_: bias, rngs=rngs
        )

    def __call__(self, pooled: jax.Array) -> jax.Array:  # (B, C) -> (B, 2, 2)
        raw = self.fc2(layers.gelu(self.fc1(pooled)))
        conc = jax.nn.softplus(raw) + self.min_concentration
        conc = jnp.minimum(conc, self.max_concentration)
        return conc.reshape(pooled.shape[0], 2, 2)


class FreHeads(nnx.Module):
    """The Policy Rate and Policy Fuse heads of one FreModule."""

    def __init__(self, channels: int, cfg: PolicyConfig, *, rngs: nnx.Rngs):
        self.policy_rate = BetaHead(channels, cfg.rate_init, cfg, rngs=rngs)
        self.policy_fuse = BetaHead(channels, cfg.fuse_init, cfg, rngs=rngs)


@dataclasses.dataclass
class PolicyOutput:
    """One pass of the policy.

    Attributes:
      restored: (N, H, W, 3) restorations.
      actions: (N, 12) the actions used, ``[fre1: r_h, r_l, g_f, g_o, fre2: ..., fre3: ...]``.
      concentrations: (N, 12, 2) the (alpha, beta) each action was drawn from.
      log_prob: (N,) joint log-probability of ``actions`` (Eq. 23 summed over the 3 modules).
      entropy: (N,) sum of the 12 Beta entropies along this pass.
      head_inputs: ``{"fre1/rate": (N, C), "fre1/fuse": (N, C), ...}`` the pooled features each
        head read (gradient-stopped): with the actions they determine the log-probs given the
        heads' parameters (:meth:`IRPOPolicy.score_actions`).
    """

    restored: jax.Array
    actions: jax.Array
    concentrations: jax.Array
    log_prob: jax.Array
    entropy: jax.Array
    head_inputs: dict[str, jax.Array]


jax.tree_util.register_dataclass(
    PolicyOutput,
    data_fields=["restored", "actions", "concentrations", "log_prob", "entropy", "head_inputs"],
    meta_fields=[],
)


@dataclasses.dataclass
class ActionScores:
    """Concentrations (..., 12, 2), joint log-probs (...) and entropies (...) of given actions."""

    concentrations: jax.Array
    log_prob: jax.Array
    entropy: jax.Array


jax.tree_util.register_dataclass(ActionScores, data_fields=["concentrations", "log_prob", "entropy"], meta_fields=[])


def beta(concentrations: jax.Array) -> distrax.Beta:
    """``distrax.Beta`` from (..., 2) concentrations (alpha, beta)."""
    return distrax.Beta(concentrations[..., 0], concentrations[..., 1])


def log_prob(concentrations: jax.Array, actions: jax.Array) -> jax.Array:
    """Sum over the last axis of Beta log-densities: (N, K, 2), (N, K) -> (N,)."""
    return jnp.sum(beta(concentrations).log_prob(actions), axis=-1)


def kl_divergence(conc_p: jax.Array, conc_q: jax.Array) -> jax.Array:
    """Analytic KL(p || q) summed over the actions: (N, K, 2) x2 -> (N,)."""
    return jnp.sum(beta(conc_p).kl_divergence(beta(conc_q)), axis=-1)


class IRPOPolicy(nnx.Module):
    """AdaIR (``net``) plus six Beta heads (``heads[fre1..fre3]``).

    ``net`` is a plain :class:`~irpo_jax.models.adair.AdaIR` whose parameter paths are the
    converted checkpoint's, so a converted or supervised AdaIR loads into it unchanged; its
    ``mask_rule`` is the policy's.
    """

    def __init__(
        self,
        config: adair.AdaIRConfig | str = "base",
        policy: PolicyConfig | Mapping[str, Any] | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        pcfg = policy if isinstance(policy, PolicyConfig) else PolicyConfig.from_dict(policy or {})
        cfg = adair.get_config(config, mask_rule=pcfg.mask_rule)
        if not cfg.decoder:
            raise ValueError("the IRPO policy acts on the FreModules; AdaIR(decoder=False) has none")
        self.policy_config = pcfg
        self.net = adair.AdaIR(cfg, rngs=rngs)
        dim = cfg.dim
        self.heads = nnx.Dict(
            {name: FreHeads(dim * m, pcfg, rngs=rngs) for name, m in zip(adair.FRE_NAMES, (8, 4, 2))}
        )

    @property
    def config(self) -> adair.AdaIRConfig:
        return self.net.config

    # ------------------------------------------------------------------------- the three modes

    def _run(self, img: jax.Array, enc: adair.Encoding, choose, detach_head_inputs: bool = False) -> PolicyOutput:
        """Decode with ``choose(index, concentrations (N, 2, 2)) -> actions (N, 2)`` per head.

        ``detach_head_inputs`` stops gradients of the concentrations (hence of log-probs and
        entropies) from reaching the backbone through the heads' pooled inputs.
        """
        pcfg = self.policy_config
        actions, concs, inputs = [], [], {}
        detach = jax.lax.stop_gradient if detach_head_inputs else (lambda t: t)

        def hook(name: str, module: adair.FreModule, img: jax.Array, y: jax.Array) -> jax.Array:
            _, h, w, _ = y.shape
            features = module.image_features(img, h, w)
            heads = self.heads[name]
            k = 2 * adair.FRE_NAMES.index(name)
            pooled_features = jnp.mean(features, axis=(1, 2))
            rate_conc = heads.policy_rate(detach(pooled_features))
            rates = choose(k, rate_conc)
            pooled_y = jnp.mean(y, axis=(1, 2))
            fuse_conc = heads.policy_fuse(detach(pooled_y))
            gates = choose(k + 1, fuse_conc)
            inputs[f"{name}/rate"] = jax.lax.stop_gradient(pooled_features)
            inputs[f"{name}/fuse"] = jax.lax.stop_gradient(pooled_y)
            actions.extend([rates, gates])
            concs.extend([rate_conc, fuse_conc])
            return module.fuse(features, y, rates=rates, gates=gates, fuse_mode=pcfg.fuse_mode)

        restored = self.net.decode(img, enc, fre_hook=hook)
        actions = jnp.concatenate(actions, axis=-1)  # (N, 12)
        concs = jnp.concatenate(concs, axis=1)  # (N, 12, 2)
        dist = beta(concs)
        return PolicyOutput(
            restored=restored,
            actions=actions,
            concentrations=concs,
            log_prob=jnp.sum(dist.log_prob(actions), axis=-1),
            entropy=jnp.sum(dist.entropy(), axis=-1),
            head_inputs=inputs,
        )

    def _clamp(self, a: jax.Array) -> jax.Array:
        eps = self.policy_config.action_eps
        return jnp.clip(a, eps, 1.0 - eps)

    def mean(self, img: jax.Array, *, detach_actions: bool = False) -> PolicyOutput:
        """Deterministic policy: every action is its Beta mean (``y_det``; evaluation, load_model).

        ``detach_actions`` makes the output a function of the backbone only (the heads get no
        gradient through the means), as IRPO's L_cons is a backbone loss.
        """
        detach = jax.lax.stop_gradient if detach_actions else (lambda t: t)
        return self._run(
            img, self.net.encode(img), lambda k, c: detach(self._clamp(c[..., 0] / (c[..., 0] + c[..., 1])))
        )

    def sample(self, img: jax.Array, key: jax.Array, group_size: int) -> PolicyOutput:
        """``group_size`` rollouts per image from one encoder pass.

        The encoder does not depend on the actions, so it runs once on (B, ...) and its outputs
        are repeated ``group_size`` times along the batch before the decoder (rollout ``g`` of
        image ``b`` sits at row ``b * G + g``).

        Args:
          img: (B, H, W, 3) degraded images.
          key: one key for the whole batch, or (B,) keys, one per image: image ``b``'s actions
            are then those of ``sample(img[b:b+1], key[b], group_size)``, whatever the batch.
          group_size: rollouts per image (G).

        Returns:
          A :class:`PolicyOutput` whose arrays have leading shape (B, G).
        """
        b = img.shape[0]
        if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):  # raw uint32 key data
            key = jax.random.wrap_key_data(key)
        enc = self.net.encode(img)
        rep = lambda t: jnp.repeat(t, group_size, axis=0)  # noqa: E731
        n_keys = 2 * len(adair.FRE_NAMES)
        if key.ndim == 0:
            keys = jax.random.split(key, n_keys)
            draw = lambda k, conc: jax.random.beta(keys[k], conc[..., 0], conc[..., 1])  # noqa: E731
        elif key.shape == (b,):
            keys = jax.vmap(lambda one: jax.random.split(one, n_keys))(key)  # (B, n_keys)

            def draw(k: int, conc: jax.Array) -> jax.Array:  # conc (B*G, 2, 2) -> (B*G, 2)
                per_image = jax.vmap(lambda kb, c: jax.random.beta(kb, c[..., 0], c[..., 1]))
                drawn = per_image(keys[:, k], conc.reshape(b, group_size, *conc.shape[1:]))
                return drawn.reshape(b * group_size, -1)
        else:
            raise ValueError(f"key must be one key or one per image ({b},), got shape {key.shape}")

        def choose(k: int, conc: jax.Array) -> jax.Array:
            return self._clamp(jax.lax.stop_gradient(draw(k, conc)))

        out = self._run(rep(img), jax.tree.map(rep, enc), choose)
        return jax.tree.map(lambda t: t.reshape(b, group_size, *t.shape[1:]), out)

    def given(self, img: jax.Array, actions: jax.Array, *, detach_head_inputs: bool = False) -> PolicyOutput:
        """Teacher-forced pass: use stored ``actions`` (B, G, 12); log-probs under the current parameters.

        Same layout and result as :meth:`sample` for the same actions (see the module docstring). The
        restorations depend on the backbone only (the actions are constants); the log-probs depend
        on the heads and, unless ``detach_head_inputs``, on the backbone through the heads' inputs.
        """
        b, g = actions.shape[:2]
        enc = self.net.encode(img)
        rep = lambda t: jnp.repeat(t, g, axis=0)  # noqa: E731
        flat = jax.lax.stop_gradient(actions.reshape(b * g, -1))
        out = self._run(
            rep(img), jax.tree.map(rep, enc), lambda k, c: flat[:, 2 * k : 2 * k + 2], detach_head_inputs
        )
        return jax.tree.map(lambda t: t.reshape(b, g, *t.shape[1:]), out)

    def given_and_mean(
        self, img: jax.Array, actions: jax.Array, *, detach_actions: bool = False, one_batch: bool | None = None
    ) -> tuple[PolicyOutput, PolicyOutput]:
        """:meth:`given` (without detached head inputs) and :meth:`mean` from one encoder pass.

        The GRPO update's backbone losses need exactly these two: the best rollout re-decoded
        (``actions`` (B, K, 12), usually K = 1) and ``y_det``. Sharing the encoding makes the
        backward run through the encoder once, with the two cotangents summed.

        ``one_batch`` runs the two decodes as one batch of B*(K+1) rows, image b's K given
        action sets and then its Beta means at rows b*(K+1) ... b*(K+1)+K (the layout of
        :meth:`sample`, so a batch sharded over devices stays where it is): at the paper's one
        image, one batch of two instead of two batches of one, to keep a GPU busier (its
        one-image steps use it worst). The decoder treats every row on its own (per-sample
        LayerNorm, channel attention, FFT and pooling), so only the kernels' summation order
        can differ. ``None`` (default) picks it on accelerators and not on the CPU, where it
        measured slower (base, 64x64, forward and backward: 3.83 s against 3.32 s for the two
        passes on the 2-core development machine).
        """
        b, k = actions.shape[:2]
        enc = self.net.encode(img)
        flat = jax.lax.stop_gradient(actions.reshape(b * k, -1))
        detach = jax.lax.stop_gradient if detach_actions else (lambda t: t)
        means = lambda c: detach(self._clamp(c[..., 0] / (c[..., 0] + c[..., 1])))  # noqa: E731
        if one_batch is None:
            one_batch = jax.default_backend() != "cpu"
        if not one_batch:
            rep = lambda t: jnp.repeat(t, k, axis=0)  # noqa: E731
            given = self._run(rep(img), jax.tree.map(rep, enc), lambda i, c: flat[:, 2 * i : 2 * i + 2])
            mean = self._run(img, enc, lambda i, c: means(c))
            return jax.tree.map(lambda t: t.reshape(b, k, *t.shape[1:]), given), mean

        per_image = lambda t: t.reshape(b, k + 1, *t.shape[1:])  # noqa: E731
        given_actions = flat.reshape(b, k, -1)

        def choose(i: int, c: jax.Array) -> jax.Array:
            chosen = jnp.concatenate([given_actions[:, :, 2 * i : 2 * i + 2], means(per_image(c)[:, k:])], axis=1)
            return chosen.reshape(b * (k + 1), -1)

        rep = lambda t: jnp.repeat(t, k + 1, axis=0)  # noqa: E731
        out = jax.tree.map(per_image, self._run(rep(img), jax.tree.map(rep, enc), choose))
        return jax.tree.map(lambda t: t[:, :k], out), jax.tree.map(lambda t: t[:, k], out)

    def score_actions(self, head_inputs: Mapping[str, jax.Array], actions: jax.Array) -> ActionScores:
        """Log-probs and entropies of ``actions`` (..., 12) from the heads alone.

        ``head_inputs`` are a pass's :attr:`PolicyOutput.head_inputs` (leading shape ``...``).
        Given the same backbone parameters this equals :meth:`given` with
        ``detach_head_inputs=True`` in everything but the restorations, at the cost of six
        small MLPs instead of a decoder pass per action set: the GRPO update uses it on fresh
        rollouts, whose head inputs were computed with the current parameters.
        """
        lead = actions.shape[:-1]
        flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
        concs = []
        for name in adair.FRE_NAMES:
            heads = self.heads[name]
            concs.append(heads.policy_rate(flat(head_inputs[f"{name}/rate"])))
            concs.append(heads.policy_fuse(flat(head_inputs[f"{name}/fuse"])))
        concs = jnp.concatenate(concs, axis=1)  # (N, 12, 2)
        dist = beta(concs)
        return ActionScores(
            concentrations=concs.reshape(*lead, *concs.shape[1:]),
            log_prob=jnp.sum(dist.log_prob(flat(actions)), axis=-1).reshape(lead),
            entropy=jnp.sum(dist.entropy(), axis=-1).reshape(lead),
        )

    def __call__(self, img: jax.Array) -> jax.Array:
        """The deterministic restoration (what evaluation and :func:`irpo_jax.load_model` use)."""
        return self.mean(img).restored
