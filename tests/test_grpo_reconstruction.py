"""One GRPO update of the trainer against an independent reconstruction from the paper's equations.

``training.make_grpo_update`` composes the reward (Eq. 22), the advantages (Eq. 8), L_RL (Eq. 6,
9-11), L_sup and L_cons (Eq. 1, 2) with their annealed weights (Eq. 7, Appendix C) and takes one
Adam step with the policy heads at 6x the learning rate. This file rebuilds the same step from
the equations and the README's decisions alone:

* the composite reward, the advantages, g* and the scored mask in float64 numpy (the paper's
  weights and the README's windows written out here; ``reward.missing`` as documented: strict
  makes a rollout with a failed component NaN, renormalise leaves a component failed for any
  rollout of an image out of all G and spreads its weight over its group's live ones);
* the Beta log-density (Eq. 23), entropy and KL written by hand with ``gammaln``/``digamma`` on
  the concentrations the model's teacher-forced passes (``IRPOPolicy.given``) give;
* ``y_det`` found by iterating Beta means alpha / (alpha + beta) through teacher-forced passes
  (fre_k's heads read what fre_1..k-1 produced, so three passes fix all 12 means), not by
  ``IRPOPolicy.mean``;
* L_RL's gradient and L_sup/L_cons's gradient taken separately, so each switch's rule of which
  parameters a loss trains is applied here, not inherited.

Nothing from ``irpo_jax.grpo``, ``irpo_jax.rewards`` or the trainer's internals is used.

The set-up is chosen so that the usual bugs show: every head weight random (the last layers
non-zero, so the concentrations depend on the input and alpha != beta), ``head_lr_mult=6``, a
reference policy whose heads *and* backbone differ from the current ones, rewards with NaNs (one
rollout, and an image with no scored rollout), lambda_sup != lambda_cons half-way through the
annealing, KL and entropy coefficients that make their terms comparable to the surrogate's, and
stored log-probs that differ from the current ones (clipping active in both directions). Adam
with b1 = 0 and eps = 1e8 >> |g| moves each parameter by ``-lr_t/eps * mult * g``: the parameter
changes compare gradients by magnitude, per parameter group, not just their signs. ``lr_t`` is
the per-step cosine schedule's value at that step, written from its definition (a schedule that
decays over the wrong span moves every parameter by the wrong amount).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.scipy.special import digamma, gammaln

from irpo_jax import config_lib, training
from irpo_jax.models.policy import IRPOPolicy, PolicyConfig

B, G, SIDE = 3, 3, 32
TOTAL_STEPS, STEP = 9, 4  # the annealing half-way: frac = 4 / 8
LR, ADAM_EPS = 1e6, 1e8  # parameter change = -0.01 x (the schedule's factor) x mult x gradient
# optim.schedule="cosine": linear warm-up over WARMUP steps, then cosine to 0 at TOTAL_STEPS, per
# step; the updates run at STEP (and STEP + 1), past the warm-up.
WARMUP = 2
HEAD_LR_MULT = 6.0
# Every GRPO coefficient away from its config default (a code path that reads the default instead
# of the config would pass with the defaults): adv_eps large enough to move the advantages, the
# lambdas of Appendix C's shape (L_sup above L_cons, both decaying), not its values.
KL_COEF, ENTROPY_COEF, CLIP_EPS, ADV_EPS = 0.2, 0.05, 0.25, 1e-4
LAMBDA_SUP, LAMBDA_CONS = (0.45, 0.15), (0.3, 0.04)


def lr_at(step: int) -> float:
    """The cosine schedule's learning rate at ``step`` >= WARMUP, from its definition."""
    return LR * 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (TOTAL_STEPS - WARMUP)))


# Eq. 22 and Appendix B.1: R = 0.6 R_gen + 0.1 R_qwen + 0.3 R_task.
PAPER_GROUPS = {
    "gen": (0.6, {"clip": 0.25, "lpips": 0.25, "aesthetic": 0.15, "psnr": 0.20, "ssim": 0.15}),
    "judge": (0.1, {"qwen": 1.0}),
    "task": (0.3, {"task": 1.0}),
}
# README "Decisions": clip((raw - lo) / (hi - lo), 0, 1) with these windows.
WINDOWS = {"psnr": (15.0, 45.0), "ssim": (0.0, 1.0), "task": (0.0, 1.0), "lpips": (0.0, 1.0),
           "clip": (0.0, 1.0), "aesthetic": (1.0, 10.0), "qwen": (0.0, 1.0)}  # fmt: skip
JAX_NAMES = ("psnr", "ssim", "task")

# The switches that decide which parameters each loss trains, each value at least once.
# ``cons_target``: "both" (L_cons trains through y_g* and y_det) / "det_anchor" (y_det constant).
VARIANTS = {
    "default": dict(grpo={}, missing="strict"),
    # Two policy iterations on rollouts sampled by other parameters: the ratio uses the stored
    # log-probs. (grpo.one_step_stale makes the same difference to the update; test_train's
    # stale run checks that one.)
    "rl_backbone+all_rollouts+two_policy_iters+det_anchor+normalize_then_sum": dict(
        grpo=dict(rl_updates_backbone=True, supervise_best_only=False, policy_iters=2, cons_target="det_anchor",
                  aggregation="normalize_then_sum"),
        missing="renormalise", stale=True),
    "teacher_forced+analytic_kl+batch_scale+constant_reference": dict(
        grpo=dict(reuse_head_inputs=False, kl_estimator="analytic", adv_scale="batch"),
        missing="renormalise", constant_ref=True),
    # Fresh rollouts and the best-only supervision, where the head-input shortcut would apply,
    # but rl_updates_backbone: the shortcut must be off (L_RL reaches the backbone). And g*
    # chosen by the reward where the normalize_then_sum advantages rank an image otherwise.
    "fresh+best_only+rl_backbone+normalize_then_sum": dict(
        grpo=dict(rl_updates_backbone=True, aggregation="normalize_then_sum"), missing="strict",
        reward_vs_advantage=True),
}  # fmt: skip


# ----------------------------------------------------------------------------- the equations, by hand


def beta_log_density(conc: jax.Array, a: jax.Array) -> jax.Array:
    """Eq. 23 per action: (alpha - 1) log a + (beta - 1) log(1 - a) - log B(alpha, beta)."""
    al, be = conc[..., 0], conc[..., 1]
    log_b = gammaln(al) + gammaln(be) - gammaln(al + be)
    return (al - 1) * jnp.log(a) + (be - 1) * jnp.log1p(-a) - log_b


def beta_entropy(conc: jax.Array) -> jax.Array:
    al, be = conc[..., 0], conc[..., 1]
    log_b = gammaln(al) + gammaln(be) - gammaln(al + be)
    return log_b - (al - 1) * digamma(al) - (be - 1) * digamma(be) + (al + be - 2) * digamma(al + be)


def beta_kl(p: jax.Array, q: jax.Array) -> jax.Array:
    """KL(Beta(p) || Beta(q)) per action."""
    a1, b1, a2, b2 = p[..., 0], p[..., 1], q[..., 0], q[..., 1]
    log_b = lambda a, b: gammaln(a) + gammaln(b) - gammaln(a + b)  # noqa: E731
    return (log_b(a2, b2) - log_b(a1, b1) + (a1 - a2) * digamma(a1) + (b1 - b2) * digamma(b1)
            + (a2 - a1 + b2 - b1) * digamma(a1 + b1))  # fmt: skip


def beta_kl_float64(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``beta_kl`` in float64 (scipy): the KL of nearby Betas is a small difference of large
    log-Beta values, which float32 gammaln resolves to ~1e-3 of it."""
    from scipy.special import betaln
    from scipy.special import digamma as psi

    a1, b1, a2, b2 = (np.asarray(t, np.float64) for t in (p[..., 0], p[..., 1], q[..., 0], q[..., 1]))
    return (
        betaln(a2, b2) - betaln(a1, b1) + (a1 - a2) * psi(a1) + (b1 - b2) * psi(b1) + (a2 - a1 + b2 - b1) * psi(a1 + b1)
    )


def normalised(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.clip((v.astype(np.float64) - WINDOWS[k][0]) / (WINDOWS[k][1] - WINDOWS[k][0]), 0, 1)
            for k, v in raw.items()}  # fmt: skip


def composite_reward(norm: dict[str, np.ndarray], missing: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Eq. 22 per rollout, (B, G), with the README's rules for failed (NaN) components; and the
    three group values R_gen, R_qwen, R_task it combines."""
    if missing == "strict":
        groups = {name: sum(w * norm[k] for k, w in comps.items()) for name, (_, comps) in PAPER_GROUPS.items()}
        return sum(PAPER_GROUPS[name][0] * v for name, v in groups.items()), groups
    out = np.full((B, G), np.nan)
    groups = {name: np.full((B, G), np.nan) for name in PAPER_GROUPS}
    for b in range(B):
        live = {k: not np.isnan(v[b]).any() for k, v in norm.items()}  # one failure: out for all G
        for name, (_, comps) in PAPER_GROUPS.items():
            w_live = sum(w for k, w in comps.items() if live[k])
            if w_live > 0:
                groups[name][b] = (
                    sum(w * norm[k][b] for k, w in comps.items() if live[k]) * sum(comps.values()) / w_live
                )
        live_groups = [name for name in PAPER_GROUPS if not np.isnan(groups[name][b]).any()]
        if live_groups:
            w_all = sum(gw for gw, _ in PAPER_GROUPS.values())
            w_live = sum(PAPER_GROUPS[name][0] for name in live_groups)
            out[b] = sum(PAPER_GROUPS[name][0] * groups[name][b] for name in live_groups) * w_all / w_live
    return out, groups


def advantages(r: np.ndarray, scale: str) -> np.ndarray:
    """Eq. 8 over the scored rollouts of each group (population std, eps inside the sqrt); 0 for
    a NaN reward. ``scale="batch"``: one std pooled over every scored rollout's centred reward."""
    valid = ~np.isnan(r)
    centred = np.zeros_like(r)
    for b in range(B):
        if valid[b].any():
            centred[b, valid[b]] = r[b, valid[b]] - r[b, valid[b]].mean()
    if scale == "batch":
        return centred / math.sqrt(np.sum(centred[valid] ** 2) / valid.sum() + ADV_EPS)
    var = np.array([np.mean(centred[b, valid[b]] ** 2) if valid[b].any() else 0.0 for b in range(B)])
    return centred / np.sqrt(var + ADV_EPS)[:, None]


def component_weights() -> dict[str, float]:
    return {k: gw * w for gw, comps in PAPER_GROUPS.values() for k, w in comps.items()}


def expected_inputs(raw: dict[str, np.ndarray], variant: dict, step: int) -> dict:
    """Everything of the step that is not differentiated: rewards, advantages, g*, mask, lambdas."""
    g = variant["grpo"]
    norm = normalised(raw)
    rewards, groups = composite_reward(norm, variant["missing"])
    scale = g.get("adv_scale", "group")
    if g.get("aggregation") == "normalize_then_sum":  # each component normalised in its group, then weighted
        adv = sum(w * advantages(norm[k], scale) for k, w in component_weights().items())
    else:
        adv = advantages(rewards, scale)
    best = np.argmax(np.where(np.isnan(rewards), -np.inf, rewards), axis=1)
    frac = step / (TOTAL_STEPS - 1)
    valid = ~np.isnan(rewards)
    group_var = [np.var(rewards[b, valid[b]]) if valid[b].any() else 0.0 for b in range(B)]
    logged = {  # what the update logs about the rewards, as nan-means over the B x G rollouts
        "reward/total/mean": np.nanmean(rewards), "reward/total/std": np.nanstd(rewards),
        "reward/frac_nan": np.mean(~valid), "reward/frac_zero_std": np.mean(np.asarray(group_var) <= 1e-12),
    }  # fmt: skip
    for name, v in [*norm.items(), *((f"group_{k}", v) for k, v in groups.items())]:
        if not np.isnan(v).all():
            logged[f"reward/{name}/mean"], logged[f"reward/{name}/std"] = np.nanmean(v), np.nanstd(v)
    # Pearson's r of the reward with the raw PSNR within each group with no NaN and some spread in
    # both, averaged over those groups (a diagnostic, issue 23).
    psnr = raw["psnr"].astype(np.float64)
    ranked = [b for b in range(B) if valid[b].all() and not np.isnan(psnr[b]).any()
              and np.var(rewards[b]) > 1e-12 and np.var(psnr[b]) > 1e-12]  # fmt: skip
    logged["reward/corr_psnr"] = np.mean([np.corrcoef(rewards[b], psnr[b])[0, 1] for b in ranked]) if ranked else np.nan
    return {
        "logged": logged,
        "rewards": rewards,
        "adv": adv,
        "best": np.eye(G)[best],  # (B, G) one-hot
        "scored": (~np.isnan(rewards)).any(axis=1).astype(np.float64),  # any(), not all()
        "lam_sup": LAMBDA_SUP[0] + (LAMBDA_SUP[1] - LAMBDA_SUP[0]) * frac,
        "lam_cons": LAMBDA_CONS[0] + (LAMBDA_CONS[1] - LAMBDA_CONS[0]) * frac,
    }


def make_reconstruction(graphdef):
    """``rec(params, ref_params, batch, actions, old_log_prob, inputs) -> (values, grads)`` with
    ``grads = {"rl": dL_RL/dtheta, "sup": d(lam_sup L_sup + lam_cons L_cons)/dtheta}``."""

    @jax.jit
    def rec(params, ref_params, img, clean, actions, old_log_prob, x):
        b, g = actions.shape[:2]
        ref_conc = nnx.merge(graphdef, ref_params).given(img, actions).concentrations  # (B, G, 12, 2)

        # y_det's actions: the Beta means, fixed by three teacher-forced passes (fre_k's heads read
        # what fre_1..k-1 produced). One loop body: XLA compiles the decoder once.
        def means(_, a):
            c = nnx.merge(graphdef, params).given(img, a).concentrations
            return jnp.clip(c[..., 0] / (c[..., 0] + c[..., 1]), 1e-6, 1 - 1e-6)

        a_mean = jax.lax.stop_gradient(jax.lax.fori_loop(0, 3, means, jnp.full((b, 1, 12), 0.5, jnp.float32)))

        def losses(p):
            # The G rollouts and y_det as G + 1 teacher-forced rows of each image (one pass).
            out = nnx.merge(graphdef, p).given(img, jnp.concatenate([actions, a_mean], axis=1))
            conc, restored, y_det = out.concentrations[:, :g], out.restored[:, :g], out.restored[:, g]
            lp = jnp.sum(beta_log_density(conc, actions), -1)  # (B, G)
            lp_ref = jnp.sum(beta_log_density(ref_conc, actions), -1)
            entropy = jnp.sum(beta_entropy(conc), -1)
            kl_analytic = jnp.sum(beta_kl(conc, ref_conc), -1)
            old = jnp.where(x["fresh"], jax.lax.stop_gradient(lp), old_log_prob)
            rho = jnp.exp(lp - old)  # Eq. 9
            adv = x["adv"]
            surrogate = jnp.minimum(rho * adv, jnp.clip(rho, 1 - CLIP_EPS, 1 + CLIP_EPS) * adv)
            kl_paper = jnp.mean(rho * (lp - lp_ref))  # Eq. 11
            kl = jnp.where(x["kl_paper"], kl_paper, jnp.mean(kl_analytic))
            policy = -jnp.mean(surrogate)
            l_rl = policy + KL_COEF * kl - ENTROPY_COEF * jnp.mean(entropy)  # Eq. 6
            y_best = jnp.einsum("bg,bghwc->bhwc", x["best"], restored)
            anchor = jnp.where(x["det_anchor"], jax.lax.stop_gradient(y_det), y_det)
            per_image = lambda a, b: jnp.mean(jnp.abs(a - b), axis=(1, 2, 3))  # noqa: E731
            n_scored = jnp.maximum(jnp.sum(x["scored"]), 1.0)
            l_sup = jnp.sum(x["scored"] * per_image(y_best, clean)) / n_scored  # Eq. 1
            l_cons = jnp.sum(x["scored"] * per_image(y_best, anchor)) / n_scored  # Eq. 2
            sup = x["lam_sup"] * l_sup + x["lam_cons"] * l_cons
            clipped = ((rho > 1 + CLIP_EPS) & (adv > 0)) | ((rho < 1 - CLIP_EPS) & (adv < 0))
            values = {"per_image_sup": per_image(y_best, clean), "rl": l_rl, "sup": l_sup, "cons": l_cons,
                      "total": l_rl + sup, "policy": policy, "kl": kl, "entropy": jnp.mean(entropy),
                      "ratio_mean": jnp.mean(rho), "clipfrac": jnp.mean(clipped),
                      "approx_kl": jnp.mean((rho - 1) - (lp - old)), "rho": rho, "a_mean": a_mean[:, 0],
                      "y_det": y_det, "conc": conc, "ref_conc": ref_conc}  # fmt: skip
            return (l_rl, sup), values

        _, vjp, values = jax.vjp(losses, params, has_aux=True)
        # Two backward passes. (jax.vmap(vjp) over the two cotangents, one batched pass, gave a
        # backbone gradient 13 % off jax.grad here; test_policy saw the same with jacrev.)
        one, zero = jnp.ones(()), jnp.zeros(())
        return values, {"rl": vjp((one, zero))[0], "sup": vjp((zero, one))[0]}

    return rec


# ----------------------------------------------------------------------------- set-up


def _noise(tree, rng: np.random.Generator, scale: float):
    """A tree of numpy normal draws shaped like ``tree`` (numpy: eager jax.random would compile
    one program per parameter shape)."""
    return jax.tree.map(lambda x: (scale * rng.standard_normal(x.shape)).astype(np.float32), tree)


@pytest.fixture(scope="module")
def setup():
    cfg = config_lib.load_config("configs/allinone5.py:smoke")
    cfg.optim.update(name="adam", lr=LR, eps=ADAM_EPS, b1=0.0, schedule="cosine", warmup_steps=WARMUP,
                     head_lr_mult=HEAD_LR_MULT, grad_clip=0.0)  # fmt: skip
    cfg.grpo.update(group_size=G, kl_coef=KL_COEF, entropy_coef=ENTROPY_COEF, clip_eps=CLIP_EPS, adv_eps=ADV_EPS,
                    lambda_sup=LAMBDA_SUP, lambda_cons=LAMBDA_CONS)  # fmt: skip
    for name, (gw, comps) in PAPER_GROUPS.items():  # the config holds the paper's reward
        assert float(cfg.reward.groups[name].weight) == gw
        assert {k: float(v) for k, v in cfg.reward.groups[name].components.items()} == comps
    assert {k: tuple(map(float, v)) for k, v in cfg.reward.windows.items()} == WINDOWS
    model = IRPOPolicy(cfg.model.variant, PolicyConfig.from_dict(cfg.model.policy.to_dict()), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    params = jax.tree.map(np.asarray, params)
    rng = np.random.default_rng(3)
    # Trained-looking heads: every weight random (last layers non-zero), biases moved off alpha == beta.
    params["heads"] = jax.tree.map(np.add, params["heads"], _noise(params["heads"], rng, 0.3))
    # The reference: other heads and a moved backbone (the step-0 policy is not the current one).
    ref = {"heads": jax.tree.map(np.add, params["heads"], _noise(params["heads"], rng, 0.3)),
           "net": jax.tree.map(lambda p, n: p * (1 + n), params["net"], _noise(params["net"], rng, 0.05))}  # fmt: skip
    rng = np.random.default_rng(0)
    clean = rng.uniform(size=(B, SIDE, SIDE, 3)).astype(np.float32)
    sigma = np.asarray([0.05, 0.3, 0.15], np.float32)[:, None, None, None]  # images whose L1 differ
    degraded = np.clip(clean + sigma * rng.normal(size=clean.shape), 0, 1).astype(np.float32)
    batch = {
        "clean": jnp.asarray(clean),
        "degraded": jnp.asarray(degraded),
        "task_id": jnp.asarray([0, 3, 5], jnp.int32),
    }
    rollout = jax.jit(training.make_rollout_step(graphdef, cfg, ()))(params, batch, jax.random.key(1))
    rollout = jax.block_until_ready(rollout)
    assert "head_inputs" in rollout  # the default (fresh, heads only) reuses them
    raw = {  # raw scores, some outside their windows (clipped)
        "psnr": rng.uniform(12, 48, (B, G)), "ssim": rng.uniform(-0.1, 1.0, (B, G)), "task": rng.uniform(0, 1, (B, G)),
        "lpips": rng.uniform(0.3, 1, (B, G)), "clip": rng.uniform(-0.05, 1, (B, G)),
        "aesthetic": rng.uniform(2, 8, (B, G)), "qwen": rng.uniform(0, 1, (B, G)),
    }  # fmt: skip
    return dict(cfg=cfg, graphdef=graphdef, params=params, ref=ref, batch=batch, rollout=rollout, raw=raw,
                rec=make_reconstruction(graphdef))  # fmt: skip


def raw_scores(raw: dict[str, np.ndarray], missing: str) -> dict[str, np.ndarray]:
    """NaN patterns: strict -> rollout (0, 1) NaN (image 0 still scored) and image 1 unscored;
    renormalise -> LPIPS failed for one rollout of image 0 (left out for all three), the judge
    for all of image 2 (its group left out), everything for image 1 (unscored)."""
    raw = {k: v.copy() for k, v in raw.items()}
    if missing == "strict":
        raw["qwen"][0, 1] = np.nan
        raw["lpips"][1, :] = np.nan
    else:
        raw["lpips"][0, 2] = np.nan
        raw["qwen"][2, :] = np.nan
        for v in raw.values():
            v[1, :] = np.nan
    return raw


def rank_reward_and_advantage_apart(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Image 2's scores made so that its best rollout by the composite reward (0: far the best
    PSNR) is not its best by the normalize_then_sum advantage (1: slightly ahead on every other
    component, each of which normalisation inflates to the same size as the PSNR's)."""
    raw = {k: v.copy() for k, v in raw.items()}
    raw["psnr"][2] = [45.0, 15.0, 15.0]
    for k, (lo, hi) in WINDOWS.items():
        if k != "psnr":
            raw[k][2] = lo + (hi - lo) * np.asarray([0.5, 0.55, 0.5])
    return raw


def groups_of(tree) -> dict[str, np.ndarray]:
    """Raveled parameter groups: each head (rate/fuse per level) and the backbone."""
    out = {f"heads/{fre}/{head}": np.asarray(jax.flatten_util.ravel_pytree(sub)[0], np.float64)
           for fre, pair in tree["heads"].items() for head, sub in pair.items()}  # fmt: skip
    out["net"] = np.asarray(jax.flatten_util.ravel_pytree(tree["net"])[0], np.float64)
    return out


def check_step(before: dict, after: dict, grads: dict, rl_updates_backbone: bool, lr: float, what: str):
    """The parameter change of each group against -lr/eps * mult * (the reconstruction's gradient)."""
    g_rl, g_sup = groups_of(grads["rl"]), groups_of(grads["sup"])
    old, new = groups_of(before), groups_of(after)
    for name in old:
        heads = name.startswith("heads/")
        # L_RL trains the heads (the backbone only with rl_updates_backbone); L_sup/L_cons the backbone.
        grad = g_sup[name] + (g_rl[name] if heads or rl_updates_backbone else 0.0)
        if heads:
            assert np.abs(g_sup[name]).max() < 1e-7 * np.abs(g_rl[name]).max(), f"{what}: L_sup reaches {name}"
        mult = HEAD_LR_MULT if heads else 1.0
        want = -(lr / ADAM_EPS) * mult * grad
        step = new[name] - old[name]
        assert np.abs(want).max() > 1e-6, f"{what}: {name} has no gradient in the set-up"
        # The multiplier by magnitude (a 6x on the wrong group is off by 6).
        ratio = np.linalg.norm(step) / np.linalg.norm(want)
        assert abs(ratio - 1) < 2e-3, f"{what}: {name} moved {ratio:.4f} x the expected step (lr mult {mult})"
        # Elementwise, up to float32's rounding of the new parameter (a bias near 35 moves in 4e-6 steps).
        ulp = np.spacing(np.abs(old[name]).astype(np.float32)).astype(np.float64)
        assert np.all(np.abs(step - want) <= 2e-3 * np.abs(want).max() + 2 * ulp), f"{what}: {name}"


def check_terms(metrics: dict, values: dict, x: dict, what: str, analytic_kl: bool):
    values = dict(values)
    if analytic_kl:
        values["kl"] = np.mean(np.sum(beta_kl_float64(values["conc"], values["ref_conc"]), -1))
    pairs = {"loss/rl": "rl", "loss/sup": "sup", "loss/cons": "cons", "loss/total": "total", "loss/policy": "policy",
             "grpo/kl_ref": "kl", "grpo/entropy": "entropy", "grpo/ratio_mean": "ratio_mean",
             "grpo/approx_kl": "approx_kl", "grpo/clipfrac": "clipfrac"}  # fmt: skip
    for key, name in pairs.items():
        want = float(values[name])
        # distrax's float32 Beta KL is within 1.5e-3 of the float64 value here (0.0603 vs 0.06026).
        rel = 3e-3 if analytic_kl and key == "grpo/kl_ref" else 2e-4
        assert float(metrics[key]) == pytest.approx(want, rel=rel, abs=2e-6), f"{what}: {key}"
    assert float(metrics["grpo/lambda_sup"]) == pytest.approx(x["lam_sup"], rel=1e-6)
    assert float(metrics["grpo/lambda_cons"]) == pytest.approx(x["lam_cons"], rel=1e-6)
    np.testing.assert_allclose(np.asarray(metrics["rewards"]), x["rewards"], rtol=1e-5, atol=1e-6, err_msg=what)
    logged = {k: float(v) for k, v in metrics.items() if k.startswith("reward/")}
    assert set(logged) == set(x["logged"]), f"{what}: {sorted(set(logged) ^ set(x['logged']))}"
    for key, want in x["logged"].items():
        assert logged[key] == pytest.approx(want, rel=1e-5, abs=1e-6, nan_ok=True), f"{what}: {key}"
    assert float(metrics["ok"]) == 1.0


def to_jax(x: dict, fresh: bool, kl_paper: bool, det_anchor: bool) -> dict:
    out = {k: jnp.asarray(v, jnp.float32) for k, v in x.items() if k not in ("rewards", "logged")}
    return out | {"fresh": jnp.asarray(fresh), "kl_paper": jnp.asarray(kl_paper), "det_anchor": jnp.asarray(det_anchor)}


# ----------------------------------------------------------------------------- the tests


def prepared(setup, name: str) -> dict:
    """The variant's config, start state, inputs and jitted trainer update (built once per module)."""
    cache = setup.setdefault("variants", {})
    if name in cache:
        return cache[name]
    variant = VARIANTS[name]
    cfg = setup["cfg"].copy_and_resolve_references()
    cfg.grpo.update(**variant["grpo"])
    cfg.reward.missing = variant["missing"]
    params, ref = setup["params"], setup["ref"]
    if variant.get("constant_ref"):  # a step-0 reference: last layers zero, other biases and backbone
        ref = jax.tree.map(np.copy, ref)
        for pair in ref["heads"].values():
            for head in pair.values():
                head["fc2"]["kernel"] = np.zeros_like(head["fc2"]["kernel"])
    constant_ref = training.reference_is_constant(ref)
    assert constant_ref == bool(variant.get("constant_ref"))
    tx = training.build_optimizer(cfg, params, TOTAL_STEPS)
    state = training.TrainState.initial(params, tx, 0, with_ref=True)
    # The optimizer's own step counters at STEP too (the schedule reads them, not state.step).
    opt_state = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, STEP) if getattr(path[-1], "name", None) == "count" else x, state.opt_state
    )
    assert any(getattr(path[-1], "name", None) == "count" for path, _ in jax.tree_util.tree_leaves_with_path(opt_state))
    state = dataclasses.replace(state, step=jnp.asarray(STEP, jnp.int32), ref_params=ref, opt_state=opt_state)
    raw = raw_scores(setup["raw"], variant["missing"])
    if variant.get("reward_vs_advantage"):
        raw = rank_reward_and_advantage_apart(raw)
    rollout = dict(setup["rollout"])
    rollout["jax_scores"] = {k: jnp.asarray(raw[k], jnp.float32) for k in JAX_NAMES}
    remote = {k: jnp.asarray(v, jnp.float32) for k, v in raw.items() if k not in JAX_NAMES}
    if variant.get("stale"):  # sampled by other parameters: ratios away from 1, some clipped either way
        shift = np.tile([0.45, -0.1, -0.4], (B, 1))
        rollout["log_prob"] = rollout["log_prob"] + jnp.asarray(shift, jnp.float32)
    # The shortcut only when asked for: by default the update runs the reference pass (always right).
    shortcut = {"constant_ref": True} if constant_ref else {}
    update = jax.jit(training.make_grpo_update(setup["graphdef"], tx, cfg, TOTAL_STEPS, **shortcut))
    cache[name] = dict(cfg=cfg, ref=ref, state=state, raw=raw, rollout=rollout, remote=remote, update=update)
    return cache[name]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_update_equals_the_reconstruction_from_the_equations(setup, name):
    variant, p = VARIANTS[name], prepared(setup, name)
    g, state, rollout, batch = p["cfg"].grpo, p["state"], p["rollout"], setup["batch"]
    stale = bool(variant.get("stale"))
    fresh = not (g.one_step_stale or g.policy_iters > 1)
    # Two updates on the same rollouts in the stale case (grpo.policy_iters = 2, as the loop does): the
    # second from the moved parameters, at the next annealing step.
    for iteration in range(2 if stale else 1):
        x = expected_inputs(p["raw"], variant, STEP + iteration)
        what = f"{name} (update {iteration + 1})"
        values, grads = setup["rec"](
            state.params, p["ref"], batch["degraded"], batch["clean"], rollout["actions"], rollout["log_prob"],
            to_jax(x, fresh, g.kl_estimator == "paper", g.cons_target == "det_anchor"),
        )  # fmt: skip
        new_state, metrics = jax.block_until_ready(p["update"](state, batch, rollout, p["remote"]))
        # The set-up shows what it should: NaN rewards, an unscored image, both advantage signs,
        # images whose L1 differ (so a wrong mask changes L_sup), clipping active and inactive.
        assert np.isnan(x["rewards"]).any() and x["scored"].tolist() == [1.0, 0.0, 1.0]
        assert (x["adv"] > 0).any() and (x["adv"] < 0).any()
        if variant.get("reward_vs_advantage"):  # a scored image whose g* is not its highest advantage
            assert x["scored"][2] and x["best"][2].argmax() == 0 and x["adv"][2].argmax() == 1
        assert training.reuses_head_inputs(g) == (name == "default")
        per_image = np.asarray(values["per_image_sup"])
        assert (
            abs(per_image[0] - per_image[2]) > 0.05 * per_image[2]
            and abs(per_image[1] - per_image[2]) > 0.05 * per_image[2]
        )
        if stale and iteration == 0:
            rho, adv = np.asarray(values["rho"]), x["adv"]
            active = ((rho > 1 + CLIP_EPS) & (adv > 0)) | ((rho < 1 - CLIP_EPS) & (adv < 0))
            outside = (rho > 1 + CLIP_EPS) | (rho < 1 - CLIP_EPS)
            assert active.any() and (outside & ~active).any(), (rho, adv)
        check_terms(metrics, values, x, what, g.kl_estimator == "analytic")
        assert int(new_state.step) == STEP + iteration + 1
        check_step(state.params, new_state.params, grads, g.rl_updates_backbone, lr_at(STEP + iteration), what)
        state = new_state


def test_the_reference_is_constant_only_when_every_last_layer_is_zero(setup):
    """The shortcut's condition (a step-0 reference): all six heads' last kernels exactly zero.
    One non-zero entry anywhere, or no heads at all, means the full reference pass."""
    ref = jax.tree.map(np.copy, setup["ref"])
    heads = [head for pair in ref["heads"].values() for head in pair.values()]
    for head in heads:
        head["fc2"]["kernel"] = np.zeros_like(head["fc2"]["kernel"])
    assert training.reference_is_constant(ref)
    heads[-1]["fc2"]["kernel"][0, 1] = 1e-3
    assert not training.reference_is_constant(ref)
    assert not training.reference_is_constant({"net": ref["net"]}) and not training.reference_is_constant(None)


def test_without_the_kl_term_no_reference_is_needed(setup):
    """``kl_coef=0`` switches the reference off for either estimator: the update traces (shapes
    only, nothing compiled) with no reference parameters in the state."""
    cfg = setup["cfg"].copy_and_resolve_references()
    cfg.grpo.update(kl_coef=0.0, kl_estimator="analytic")
    tx = training.build_optimizer(cfg, setup["params"], TOTAL_STEPS)
    state = training.TrainState.initial(setup["params"], tx, 0, with_ref=False)
    raw = raw_scores(setup["raw"], "strict")
    rollout = dict(setup["rollout"])
    rollout["jax_scores"] = {k: jnp.asarray(raw[k], jnp.float32) for k in JAX_NAMES}
    remote = {k: jnp.asarray(v, jnp.float32) for k, v in raw.items() if k not in JAX_NAMES}
    update = training.make_grpo_update(setup["graphdef"], tx, cfg, TOTAL_STEPS)
    _, metrics = jax.eval_shape(update, state, setup["batch"], rollout, remote)
    assert metrics["loss/total"].shape == ()


def test_the_one_batch_backbone_pass_equals_the_separate_passes(setup):
    """``given_and_mean(one_batch=True)``, the accelerators' form of the update's backbone pass,
    equals ``given`` and ``mean`` with B != K (3 images, 2 action sets each), so that no mix-up of
    the (B, K) row layout can hide behind a square batch."""
    graphdef, params, img = setup["graphdef"], setup["params"], setup["batch"]["degraded"]
    actions = setup["rollout"]["actions"][:, :2]

    @jax.jit
    def both(p, x, a):
        model = nnx.merge(graphdef, p)
        given, det = model.given_and_mean(x, a, detach_actions=True, one_batch=True)
        alone_given, alone_det = model.given(x, a), model.mean(x, detach_actions=True)
        return (given.restored, given.log_prob, det.restored, det.actions), (
            alone_given.restored, alone_given.log_prob, alone_det.restored, alone_det.actions)  # fmt: skip

    together, alone = both(params, img, actions)
    for name, a, b in zip(("restored", "log_prob", "y_det", "mean actions"), together, alone, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=2e-5, err_msg=name)


def test_a_non_finite_step_keeps_the_state(setup):
    """The NaN guard inside the update: a NaN pixel in the target makes L_sup non-finite; the
    state (parameters, Adam's moments, step) comes back unchanged and ``ok`` is 0."""
    p = prepared(setup, "default")
    batch = dict(setup["batch"])
    batch["clean"] = batch["clean"].at[0, 3, 4, 1].set(jnp.nan)
    new_state, metrics = jax.block_until_ready(p["update"](p["state"], batch, p["rollout"], p["remote"]))
    assert float(metrics["ok"]) == 0.0 and float(metrics["finite/sup"]) == 0.0
    assert int(new_state.step) == STEP
    for a, b in zip(jax.tree.leaves(p["state"]), jax.tree.leaves(new_state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_deterministic_policy_is_the_beta_mean(setup):
    """``IRPOPolicy.mean`` takes alpha / (alpha + beta) (not the mode (alpha - 1) / (alpha + beta
    - 2)) with trained-looking heads, and its output is the teacher-forced pass of those means."""
    graphdef, params, batch, rollout = setup["graphdef"], setup["params"], setup["batch"], setup["rollout"]
    x = to_jax(expected_inputs(raw_scores(setup["raw"], "strict"), VARIANTS["default"], STEP), True, True, False)
    values, _ = setup["rec"](params, setup["ref"], batch["degraded"], batch["clean"], rollout["actions"],
                             rollout["log_prob"], x)  # fmt: skip
    out = jax.jit(lambda p, img: nnx.merge(graphdef, p).mean(img))(params, batch["degraded"])
    conc = np.asarray(out.concentrations, np.float64)
    assert np.abs(conc[..., 0] - conc[..., 1]).min() > 1e-3  # alpha != beta everywhere
    np.testing.assert_allclose(np.asarray(out.actions), conc[..., 0] / conc.sum(-1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out.actions), np.asarray(values["a_mean"]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out.restored), np.asarray(values["y_det"]), atol=1e-5)
