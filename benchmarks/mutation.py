"""Mutation testing of the training math: how many single-point changes does the test suite catch?

Each mutant is one small change to one module (an operator, a constant, a comparison, a removed
term, swapped arguments, a negated condition, a jnp function swapped for its twin, a dropped
``stop_gradient``; and the kinds of bug issue 28 found: one operand of a switch combination or a
recovery condition dropped, a variable passed where another was meant (the wrong selection
key), a config value replaced by its default constant, a step or size one off), chosen by rules
from the module's syntax tree and sampled deterministically from ``--seed``. For each mutant the
tests that import the module (directly, or through the training library for the modules it uses)
run in a throw-away copy of the repository, fastest file first, stopping at the first failure
(``pytest -x``) or at ``--timeout``. A mutant is *killed* when a test fails (or the mutated
module no longer imports), *survives* when every selected test passes. The script prints the
kill rate per module and each survivor's diff.

    python benchmarks/mutation.py --list                      # the mutants, nothing run
    nice -n 10 python benchmarks/mutation.py                  # the default modules (an hour or more on 2 cores)
    python benchmarks/mutation.py --module irpo_jax/grpo/losses.py --max-mutants 5
    python benchmarks/mutation.py --bugs                      # issue 17's hand-written bugs instead
    python benchmarks/mutation.py --bugs 28                   # issue 28's
    nice -n 10 python benchmarks/mutation.py --module irpo_jax/training/ \
        --tests-for irpo_jax/training/=tests/test_train.py,...

Never touches the checkout it is run from: the copy lives under ``--workdir`` (a temporary
folder by default), its package is the one imported (``PYTHONPATH``; checked by an import probe
and by a sanity mutant that must be killed before anything else runs), and the checkout's
compilation cache is copied into it so unmutated programs need not recompile. Not a test: the
name has no ``test_`` prefix and the file is outside pytest's ``testpaths``.
"""

from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import difflib
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_MODULES = (
    "irpo_jax/training/steps.py",
    "irpo_jax/training/optimizer.py",
    "irpo_jax/models/policy.py",
    "irpo_jax/grpo/advantages.py",
    "irpo_jax/grpo/losses.py",
    "irpo_jax/rewards/compose.py",
    "irpo_jax/metrics.py",
)
# The modules whose importers count for every module they use: a test of the training library
# exercises the GRPO losses, the reward composition and the policy without importing them itself.
FACADES = ("irpo_jax.training",)
# End-to-end files left out unless --include-slow: minutes each, and a survivor runs every
# selected file (their runs also load the shared machine for a long time).
SLOW_FILES = ("tests/test_train.py", "tests/test_multihost.py", "tests/test_gpu_check.py", "tests/test_mine.py",
              "tests/test_evaluate.py", "tests/test_restore.py", "tests/test_reward_process.py")  # fmt: skip
# Top-level names not copied into the throw-away repository.
NOT_COPIED = {".venv", ".git", "runs", "demo_data", ".pytest_cache", ".cache", "build", "checkpoints", "weights",
              "data", "__pycache__"}  # fmt: skip
# Calls whose arguments are messages, not computation.
LOG_CALLS = re.compile(r"^(log|logging|logger|warnings|print|tqdm|bar)\b|\.(debug|info|warning|error|exception|write)$")

# (rule, node type) -> replacements
BINOPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
          ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.Mod: ast.FloorDiv}  # fmt: skip
COMPARES = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}  # fmt: skip
TWINS = {"minimum": "maximum", "maximum": "minimum", "any": "all", "all": "any", "mean": "sum", "sum": "mean",
         "max": "min", "min": "max", "argmax": "argmin", "argmin": "argmax", "nanmean": "nanstd", "log": "log1p",
         "sqrt": "abs", "exp": "expm1", "square": "abs", "clip": None}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One change: ``source[start:end]`` of ``path`` becomes ``replacement``."""

    path: str  # relative to the repository root
    line: int
    col: int
    rule: str
    start: int  # character offsets into the file's text
    end: int
    original: str
    replacement: str
    name: str = ""  # hand-written bugs (--bugs) carry a name

    @property
    def id(self) -> str:
        return self.name or f"{self.path}:{self.line}:{self.col}:{self.rule}"

    def apply(self, text: str) -> str:
        assert text[self.start : self.end] == self.original, f"{self.id}: the source changed under the mutant"
        return text[: self.start] + self.replacement + text[self.end :]

    def diff(self, text: str) -> str:
        before, after = text.splitlines(keepends=True), self.apply(text).splitlines(keepends=True)
        lines = difflib.unified_diff(before, after, f"a/{self.path}", f"b/{self.path}", n=0)
        return "".join(list(lines)[2:]).rstrip()


# ----------------------------------------------------------------------------- generating mutants


def _offsets(text: str) -> list[int]:
    starts, pos = [], 0
    for line in text.splitlines(keepends=True):
        starts.append(pos)
        pos += len(line)
    starts.append(pos)
    return starts


def _skipped_spans(tree: ast.AST) -> list[ast.AST]:
    """Nodes whose subtrees are not mutated: docstrings, f-strings, raise statements, log/print
    calls, annotations, decorators, imports, ``__all__``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                out.append(body[0])
            if not isinstance(node, ast.Module):
                out.extend(node.decorator_list)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.returns is not None:
                    out.append(node.returns)
                out.extend(a.annotation for a in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]
                           if a.annotation is not None)  # fmt: skip
        elif isinstance(node, (ast.JoinedStr, ast.Raise, ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.AnnAssign):
            out.append(node.annotation)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            out.append(node)
        elif isinstance(node, ast.Call) and LOG_CALLS.search(ast.unparse(node.func)):
            out.append(node)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            out.append(node)
    return out


def _span(node: ast.AST, offsets: list[int]) -> tuple[int, int]:
    return offsets[node.lineno - 1] + node.col_offset, offsets[node.end_lineno - 1] + node.end_col_offset


def _constant_variants(value) -> list:
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1] if value == 0 else [value + 1, 0] if value != 1 else [0, 2]
    if isinstance(value, float):
        return [1.0] if value == 0.0 else [value * 2, 0.0] if value != 1.0 else [0.0, 2.0]
    return []


# Builtins with a twin (bare names: any(...) -> all(...)).
BUILTIN_TWINS = {"any": "all", "all": "any"}
# Config sections whose values a mutant may replace by their default (config_default), and the
# local names the code reads them through (g = cfg.grpo, t = cfg.train, ...).
CONFIG_SECTIONS = ("grpo", "train", "mining", "optim")
CONFIG_ALIASES = {"g": "grpo", "t": "train", "m": "mining", "o": "optim"}
# Identifiers that count steps, epochs, sizes or positions: off_by_one moves them by 1.
COUNTING = re.compile(r"step|epoch|iter|count|index|total|size|batch|keep|latest", re.I)


def config_defaults(root: pathlib.Path = ROOT) -> dict[str, dict[str, object]]:
    """``{section: {key: default}}`` of the literal defaults ``config_lib.base_config`` assigns
    (``c.grpo.clip_eps = 0.2``), read from its syntax tree (nothing imported)."""
    tree = ast.parse((root / "irpo_jax" / "config_lib.py").read_text())
    base = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "base_config")
    out: dict[str, dict[str, object]] = collections.defaultdict(dict)
    for node in ast.walk(base):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target = node.targets[0]
        chain = ast.unparse(target).split(".")
        if len(chain) == 3 and chain[1] in CONFIG_SECTIONS:
            try:
                out[chain[1]][chain[2]] = ast.literal_eval(node.value)
            except ValueError:  # not a literal (a variable, a call): no constant to put instead
                pass
    return dict(out)


# Calls whose first two arguments commute: swapping them is an equivalent mutant, never generated.
SYMMETRIC = ("max", "min", "maximum", "minimum", "fmax", "fmin", "add", "multiply", "logaddexp", "hypot")


def generate(path: str, root: pathlib.Path = ROOT) -> list[Mutant]:
    """Every candidate mutant of one file, in source order (deterministic)."""
    text = (root / path).read_text()
    tree = ast.parse(text)
    offsets = _offsets(text)
    skipped = set()
    for node in _skipped_spans(tree):
        skipped.update(id(n) for n in ast.walk(node))
    out: list[Mutant] = []

    seen: set[tuple[int, int, str]] = set()

    def add(node: ast.AST, rule: str, replacement: str, span_node: ast.AST | None = None):
        span_node = span_node or node
        start, end = _span(span_node, offsets)
        original = text[start:end]
        if replacement == original or (start, end, replacement) in seen:
            return
        seen.add((start, end, replacement))
        try:  # a replacement must parse in place (the unparse of a sub-expression is parenthesised as needed)
            ast.parse(text[:start] + replacement + text[end:])
        except SyntaxError:
            return
        out.append(Mutant(path, span_node.lineno, span_node.col_offset, rule, start, end, original, replacement))

    def paren(node: ast.AST) -> str:
        return f"({ast.unparse(node)})"

    for node in ast.walk(tree):
        if id(node) in skipped or not hasattr(node, "lineno"):
            continue
        if isinstance(node, ast.BinOp):
            new_op = BINOPS.get(type(node.op))
            if new_op is not None:
                add(node, f"binop:{type(node.op).__name__}->{new_op.__name__}", paren(_copy_with(node, op=new_op())))
            if isinstance(node.op, (ast.Add, ast.Sub)):
                add(node, "drop_term:right", paren(node.left))
            if isinstance(node.op, ast.Mult):
                add(node, "drop_factor:right", paren(node.left))
        elif isinstance(node, ast.Compare) and len(node.ops) == 1:
            new_op = COMPARES.get(type(node.ops[0]))
            if new_op is not None:
                add(node, f"compare:{type(node.ops[0]).__name__}->{new_op.__name__}",
                    paren(_copy_with(node, ops=[new_op()])))  # fmt: skip
        elif isinstance(node, ast.BoolOp):
            other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            add(node, f"boolop:{type(node.op).__name__}->{type(other).__name__}", paren(_copy_with(node, op=other)))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert, ast.USub)):
            if not (isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)):
                add(node, f"unary:drop_{type(node.op).__name__}", paren(node.operand))
        elif isinstance(node, (ast.If, ast.While, ast.IfExp)) and id(node.test) not in skipped:
            add(node.test, "negate_condition", f"(not {paren(node.test)})", node.test)
        elif isinstance(node, ast.Constant) and not isinstance(node.value, (str, bytes)) and node.value is not None:
            for value in _constant_variants(node.value):
                add(node, f"constant:{node.value!r}->{value!r}", repr(value))
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            leaf = func.rsplit(".", 1)[-1]
            if func.endswith("stop_gradient") and len(node.args) == 1:
                add(node, "drop_stop_gradient", paren(node.args[0]))
            elif leaf == "where" and len(node.args) == 3:
                add(
                    node,
                    "where:swap_branches",
                    ast.unparse(_copy_with(node, args=[node.args[0], node.args[2], node.args[1]])),
                )
            elif func.startswith(("jnp.", "np.", "jax.nn.", "jax.numpy.")) and TWINS.get(leaf):
                twin = func[: -len(leaf)] + TWINS[leaf]
                add(
                    node,
                    f"twin:{leaf}->{TWINS[leaf]}",
                    ast.unparse(_copy_with(node, func=ast.parse(twin, mode="eval").body)),
                )
            positional = [a for a in node.args if not isinstance(a, ast.Starred)]
            # (Not for the symmetric functions: max(a, b) -> max(b, a) is the same program.)
            if len(positional) >= 2 and len(positional) == len(node.args) and leaf not in ("where", *SYMMETRIC):
                a, b = node.args[0], node.args[1]
                if ast.unparse(a) != ast.unparse(b):
                    add(node, "swap_args:0,1", ast.unparse(_copy_with(node, args=[b, a, *node.args[2:]])))
    _issue28_rules(tree, skipped, add, config_defaults(root))
    out.sort(key=lambda m: (m.line, m.col, m.rule, m.replacement))
    return out


def _issue28_rules(tree: ast.AST, skipped: set[int], add, defaults: dict[str, dict[str, object]]) -> None:
    """The kinds of bug issue 28 found, as rules (each site's mutants go through ``add``):

    * ``drop_operand``: one operand of an ``and``/``or`` removed (a switch combination that
      forgets one switch; a recovery condition narrowed or widened);
    * ``swap_name``: a variable passed to a call replaced by another local variable of the
      same function that is passed to a call too (``best_rollout(rewards)`` ->
      ``best_rollout(advantages)``: the wrong selection key);
    * ``config_default``: ``<...>.grpo.clip_eps`` (or ``g.clip_eps``, ``t.steps``, ...) replaced
      by ``base_config``'s default (a config value the code path ignores);
    * ``off_by_one``: a counting name (steps, epochs, sizes, indices) passed to a call or used
      as an index moved by one (a plan computed one step off);
    * ``twin:any->all`` for the builtins.
    """

    def live(node: ast.AST) -> bool:
        return id(node) not in skipped and hasattr(node, "lineno")

    for node in ast.walk(tree):
        if not live(node):
            continue
        if isinstance(node, ast.BoolOp):
            kind = "and" if isinstance(node.op, ast.And) else "or"
            for i in range(len(node.values)):
                rest = node.values[:i] + node.values[i + 1 :]
                kept = rest[0] if len(rest) == 1 else _copy_with(node, values=rest)
                add(node, f"drop_operand:{kind}[{i}]", f"({ast.unparse(kept)})")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in BUILTIN_TWINS:
            twin = BUILTIN_TWINS[node.func.id]
            add(node, f"twin:{node.func.id}->{twin}", ast.unparse(_copy_with(node, func=ast.Name(twin, ast.Load()))))
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            chain = ast.unparse(node).split(".")
            section = chain[-2] if len(chain) >= 2 and chain[-2] in CONFIG_SECTIONS else None
            if section is None and len(chain) == 2:
                section = CONFIG_ALIASES.get(chain[0])
            if section is not None and node.attr in defaults.get(section, {}):
                add(node, f"config_default:{section}.{node.attr}", repr(defaults[section][node.attr]))

    # Function-scoped rules. swap_name: a variable a call receives replaced by one of the two
    # local variables bound nearest before it (in its function or an enclosing one): the
    # plausible mix-up (``advantages`` is computed just after ``rewards``), not every name.
    statement_of = {}  # node -> the statement it belongs to (a name is bound once its statement ends)
    for stmt in ast.walk(tree):
        if isinstance(stmt, ast.stmt):
            for sub in ast.walk(stmt):
                statement_of.setdefault(id(sub), stmt) if sub is stmt else statement_of.__setitem__(id(sub), stmt)

    def visit(node: ast.AST, bindings: list[tuple[tuple[int, int], str]]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            bound = [((node.lineno, node.col_offset), a.arg) for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]
                     if a.arg not in ("self", "cls")]  # fmt: skip
            for n in _own_nodes(node):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    stmt = statement_of.get(id(n), n)
                    bound.append(((stmt.end_lineno, stmt.end_col_offset), n.id))
            bindings = bindings + bound
            for call in _own_nodes(node):
                if not isinstance(call, ast.Call):
                    continue
                for arg in [*call.args, *(k.value for k in call.keywords)]:
                    if isinstance(arg, ast.Name) and live(arg):
                        if arg.id not in {name for _, name in bindings}:
                            continue  # a global or a builtin
                        here = (arg.lineno, arg.col_offset)
                        before = sorted((pos for pos in bindings if pos[0] <= here and pos[1] != arg.id), reverse=True)
                        nearest = list(dict.fromkeys(name for _, name in before))[:2]
                        for other in nearest:
                            add(arg, f"swap_name:{arg.id}->{other}", other)
                    if isinstance(arg, (ast.Name, ast.Attribute)) and live(arg):
                        _off_by_one(arg, add)
            for sub in _own_nodes(node):
                if (
                    isinstance(sub, ast.Subscript)
                    and isinstance(sub.slice, (ast.Name, ast.Attribute))
                    and live(sub.slice)
                ):
                    _off_by_one(sub.slice, add)
        for child in ast.iter_child_nodes(node):
            visit(child, bindings)

    visit(tree, [])


def _own_nodes(fn: ast.AST) -> list[ast.AST]:
    """The nodes of a function's body outside the functions nested in it."""
    out, todo = [], list(ast.iter_child_nodes(fn))
    while todo:
        node = todo.pop()
        out.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(node))
    return out


def _off_by_one(node: ast.AST, add) -> None:
    name = node.id if isinstance(node, ast.Name) else node.attr
    if isinstance(getattr(node, "ctx", None), ast.Load) and COUNTING.search(name):
        for delta in ("- 1", "+ 1"):
            add(node, f"off_by_one:{delta.replace(' ', '')}", f"({ast.unparse(node)} {delta})")


def _copy_with(node: ast.AST, **changes) -> ast.AST:
    import copy

    new = copy.copy(node)
    for k, v in changes.items():
        setattr(new, k, v)
    return new


def sample(candidates: list[Mutant], count: int, rng: random.Random) -> list[Mutant]:
    """Up to ``count`` mutants, spread over the rules (round-robin over rule families in a
    shuffled order, each family's mutants shuffled), returned in source order."""
    families: dict[str, list[Mutant]] = collections.defaultdict(list)
    for m in candidates:
        families[m.rule.split(":")[0]].append(m)
    order = sorted(families)
    rng.shuffle(order)
    for name in order:
        rng.shuffle(families[name])
    chosen: list[Mutant] = []
    while len(chosen) < count and any(families.values()):
        for name in order:
            if families[name] and len(chosen) < count:
                chosen.append(families[name].pop())
    return sorted(chosen, key=lambda m: (m.line, m.col, m.rule))


# ----------------------------------------------------------------------------- issue 17's bugs

# (name, file, old, new): the deliberate bugs issue 17 lists (each the smallest edit that makes it).
BUGS = (
    ("lambda_sup and lambda_cons swapped", "irpo_jax/training/steps.py",
     "total_loss = l_rl + lam_sup * l_sup + lam_cons * l_cons",
     "total_loss = l_rl + lam_cons * l_sup + lam_sup * l_cons"),
    ("6x on the backbone, not the heads", "irpo_jax/training/optimizer.py",
     "jnp.where(index < self.n_heads, self.head_lr_mult, 1.0)",
     "jnp.where(index < self.n_heads, 1.0, self.head_lr_mult)"),
    ("KL against the current parameters", "irpo_jax/training/steps.py",
     "ref_model = nnx.merge(graphdef, state.ref_params)", "ref_model = nnx.merge(graphdef, state.params)"),
    ("a non-finite update applied anyway", "irpo_jax/training/optimizer.py",
     "params=unravel(jnp.where(ok, new_flat, flat_params))", "params=unravel(new_flat)"),
    ("rl_updates_backbone inverted", "irpo_jax/training/steps.py",
     "detach_head_inputs=not g.rl_updates_backbone", "detach_head_inputs=g.rl_updates_backbone"),
    ("scored mask all() instead of any()", "irpo_jax/training/steps.py",
     "scored=jnp.any(~jnp.isnan(rewards), axis=1)", "scored=jnp.all(~jnp.isnan(rewards), axis=1)"),
    ("normalize_then_sum's group weight dropped", "irpo_jax/rewards/compose.py",
     "return float(cfg.groups[group].weight) * weights[name]", "return weights[name]"),
    ("cosine decays over half the run", "irpo_jax/training/optimizer.py",
     "max(total_steps, o.warmup_steps + 1)", "max(total_steps // 2, o.warmup_steps + 1)"),
    ("Beta mode instead of mean (mean())", "irpo_jax/models/policy.py",
     "lambda k, c: detach(self._clamp(c[..., 0] / (c[..., 0] + c[..., 1])))",
     "lambda k, c: detach(self._clamp((c[..., 0] - 1) / (c[..., 0] + c[..., 1] - 2)))"),
    ("concentration floor removed", "irpo_jax/models/policy.py",
     "conc = jax.nn.softplus(raw) + self.min_concentration", "conc = jax.nn.softplus(raw)"),
    ("adv_scale='batch' counts NaN slots", "irpo_jax/grpo/advantages.py",
     "var = jnp.sum(centred**2) / jnp.maximum(jnp.sum(valid), 1)", "var = jnp.sum(centred**2) / centred.size"),
    ("demo low-light gamma inverted", "irpo_jax/data/degradations.py",
     "np.power(img, np.float32(gamma))", "np.power(img, np.float32(1.0 / gamma))"),
    ("CLIP normalisation constants changed", "torch_bridge/reward_models/clip.py",
     "_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)", "_OPENAI_CLIP_MEAN = (0.485, 0.456, 0.406)"),
)  # fmt: skip


# Issue 28's: behaviours that changed with every test passing, each now guarded by a test.
BUGS_28 = (
    ("head-input shortcut kept with rl_updates_backbone", "irpo_jax/training/steps.py",
     "return bool(g.reuse_head_inputs and fresh and not g.rl_updates_backbone and g.supervise_best_only)",
     "return bool(g.reuse_head_inputs and fresh and g.supervise_best_only)"),
    ("g* chosen by the advantage", "irpo_jax/training/steps.py",
     "best = losses.best_rollout(rewards)", "best = losses.best_rollout(advantages)"),
    ("NaN guard blind to gradients", "irpo_jax/training/optimizer.py",
     "ok = jnp.all(jnp.isfinite(flat_grads)) & jnp.all(jnp.asarray(list(finite.values())))",
     "ok = jnp.all(jnp.asarray(list(finite.values())))"),
    ("planned epochs ignore policy_iters", "irpo_jax/training/run_length.py",
     "epochs = total_steps / per_batch * t.batch_size / epoch_size",
     "epochs = total_steps * t.batch_size / epoch_size"),
    ("plan's last learning rate one step late", "irpo_jax/training/run_length.py",
     "float(schedule(max(total_steps - 1, 0)))", "float(schedule(total_steps))"),
    ("the run's mining keeps 30 % whatever mining.fraction", "irpo_jax/training/hard_set.py",
     'kwargs = dict(fraction=s["fraction"],', "kwargs = dict(fraction=0.3,"),
    ("mining crops the top-left corner", "irpo_jax/evaluation/mining.py",
     "top, left = (h - ch) // 2, (w - cw) // 2", "top, left = 0, 0"),
    ("denoise noise stream without the seed", "irpo_jax/evaluation/mining.py",
     "rng = np.random.default_rng([int(seed), _id_seed(record.id)])",
     "rng = np.random.default_rng(_id_seed(record.id))"),
    ("an empty checkpoints/ is a saved run", "irpo_jax/training/workdir.py",
     "saved = checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())",
     "saved = checkpoints.is_dir()"),
    ("a resumed run keeps the records logged after its checkpoint", "irpo_jax/training/loop.py",
     "keep_through_step=-1 if latest is None else latest)", "keep_through_step=None)"),
    ("a stale model/ is rewritten only when missing", "irpo_jax/training/checkpoints.py",
     "if found == step:\n            return False", "if found is not None:\n            return False"),
    ("clip_eps read as its default", "irpo_jax/training/steps.py", "clip_eps=g.clip_eps,", "clip_eps=0.2,"),
)  # fmt: skip
BUG_SETS = {"17": BUGS, "28": BUGS_28}


def hand_bugs(root: pathlib.Path = ROOT, which: str = "17") -> list[Mutant]:
    out = []
    for name, path, old, new in BUG_SETS[which]:
        text = (root / path).read_text()
        count = text.count(old)
        if count != 1:
            raise SystemExit(f"--bugs: {path} holds {count} copies of {old!r} (the source moved on; update BUGS)")
        start = text.index(old)
        line = text.count("\n", 0, start) + 1
        out.append(Mutant(path, line, 0, "bug", start, start + len(old), old, new, name=name))
    return out


# ----------------------------------------------------------------------------- which tests


def _module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _imports(path: pathlib.Path, root: pathlib.Path) -> set[str]:
    """Dotted names of the repository modules ``path`` imports (anywhere in the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    known = set()
    for name in names:
        rel = name.replace(".", "/")
        if (root / f"{rel}.py").is_file() or (root / rel / "__init__.py").is_file():
            known.add(name)
    return known


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
    graph = {}
    for pkg in ("irpo_jax", "torch_bridge"):
        for file in (root / pkg).rglob("*.py"):
            graph[_module_name(file.relative_to(root).as_posix())] = _imports(file, root)
    return graph


def _uses(graph: dict[str, set[str]], start: str, target: str) -> bool:
    """Whether module ``start`` imports ``target``, transitively within the repository."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name == target:
            return True
        if name in seen:
            continue
        seen.add(name)
        todo.extend(graph.get(name, ()))
        todo.extend(m for m in graph if m.startswith(name + "."))  # a package: its modules
    return False


def tests_for(path: str, root: pathlib.Path, include_slow: bool) -> list[str]:
    """The test files that import ``path``'s module directly, or import the training library
    (FACADES) when it uses the module."""
    target = _module_name(path)
    graph = import_graph(root)
    out = []
    for test in sorted((root / "tests").glob("test_*.py")):
        rel = test.relative_to(root).as_posix()
        if not include_slow and rel in SLOW_FILES:
            continue
        imported = _imports(test, root)
        direct = target in imported
        # A test of any module of the training library counts as a test of the library (its loop runs them all).
        facades = {f for f in FACADES for name in imported if name == f or name.startswith(f + ".")}
        via_facade = any(_uses(graph, f, target) for f in facades)
        if direct or via_facade:
            out.append(rel)
    return out


# ----------------------------------------------------------------------------- the throw-away copy


class Sandbox:
    """A copy of the repository whose package the tests import; mutates one file at a time."""

    def __init__(self, workdir: pathlib.Path, python: str, test_timeout: float):
        self.repo = workdir / "repo"
        self.python = python
        self.test_timeout = test_timeout
        if self.repo.exists():
            shutil.rmtree(self.repo)

        def ignore(directory: str, names: list[str]) -> set[str]:
            top = pathlib.Path(directory).resolve() == ROOT
            return {
                n
                for n in names
                if n == "__pycache__" or (top and (n in NOT_COPIED or n.endswith((".egg-info", ".whl"))))
            }

        shutil.copytree(ROOT, self.repo, ignore=ignore)
        if (ROOT / ".cache" / "jax").is_dir():  # unmutated programs load instead of compiling
            shutil.copytree(ROOT / ".cache" / "jax", self.repo / ".cache" / "jax")
        self.env = dict(os.environ, PYTHONPATH=str(self.repo), PYTHONDONTWRITEBYTECODE="1")
        self.env.pop("PYTEST_ADDOPTS", None)

    def check_imports_itself(self) -> str:
        probe = subprocess.run([self.python, "-c", "import irpo_jax, torch_bridge; print(irpo_jax.__file__); "
                                "print(torch_bridge.__file__)"], cwd=self.repo, env=self.env, capture_output=True,
                               text=True, timeout=300)  # fmt: skip
        files = probe.stdout.split()
        if probe.returncode or len(files) != 2 or not all(pathlib.Path(f).is_relative_to(self.repo) for f in files):
            raise SystemExit(f"the copy's packages are not the ones imported: {probe.stdout} {probe.stderr[-2000:]}")
        return files[0]

    def pytest(self, files: list[str], timeout: float, extra: list[str] = ()) -> tuple[str, str, float]:
        """Runs ``files`` in order, stopping at the first failure. Returns (status, detail, seconds)
        with status ``passed``, ``failed`` (detail: the first failing test), ``error`` or ``timeout``."""
        # A per-test timeout (pytest-timeout) as well: a mutant that stops a training loop from
        # advancing would otherwise hang its first end-to-end test until the mutant's timeout.
        cmd = [self.python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               "-o", f"timeout={self.test_timeout:.0f}", "-rfE", *extra, *files]  # fmt: skip
        t0 = time.monotonic()
        # Its own session, so that a timeout ends the whole group (pytest and anything it started).
        proc = subprocess.Popen(cmd, cwd=self.repo, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)  # fmt: skip
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return "timeout", f"after {timeout:.0f} s", time.monotonic() - t0
        seconds = time.monotonic() - t0
        failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
        if proc.returncode == 0:
            return "passed", "", seconds
        if proc.returncode == 1 and failed:
            return "failed", failed[0], seconds
        if proc.returncode == 2:  # interrupted by collection errors: the mutated module does not import
            return "failed", (failed[0] if failed else "collection error") + " (does not import)", seconds
        return "error", f"pytest exit {proc.returncode}: {out[-600:]}", seconds

    def mutate(self, mutant: Mutant) -> str:
        file = self.repo / mutant.path
        original = file.read_text()
        file.write_text(mutant.apply(original))
        return original

    def restore(self, mutant: Mutant, original: str) -> None:
        (self.repo / mutant.path).write_text(original)


# ----------------------------------------------------------------------------- running


@dataclasses.dataclass
class Result:
    mutant: Mutant
    status: str  # killed | survived | timeout | error
    detail: str
    seconds: float


def baseline_durations(box: Sandbox, files: list[str], timeout: float, max_seconds: float) -> dict[str, float]:
    """Each selected file run once unmutated: its time (to order files fastest first). A file
    that does not pass unmutated is left out with a warning (its failures would count as
    kills), and so is one slower than ``max_seconds`` (every survivor would run it)."""
    durations = {}
    for file in files:
        status, detail, seconds = box.pytest([file], timeout)
        if status == "passed" and seconds <= max_seconds:
            durations[file] = seconds
            print(f"  baseline {file}: {seconds:.0f} s", flush=True)
        elif status == "passed":
            print(f"  baseline {file}: {seconds:.0f} s, over --max-file-seconds -- left out", flush=True)
        else:
            print(f"  baseline {file}: {status} {detail} -- left out", flush=True)
    return durations


def run_mutants(mutants: list[Mutant], selection: dict[str, list[str]], durations: dict[str, float],
                boxes: list[Sandbox], timeout: float) -> list[Result]:  # fmt: skip
    """Runs the mutants over the sandboxes (one worker thread per sandbox)."""
    queue = list(enumerate(mutants))
    results: dict[int, Result] = {}
    lock = threading.Lock()

    def worker(box: Sandbox):
        while True:
            with lock:
                if not queue:
                    return
                index, mutant = queue.pop(0)
            files = sorted((f for f in selection[mutant.path] if f in durations), key=lambda f: durations[f])
            original = box.mutate(mutant)
            try:
                status, detail, seconds = box.pytest(files, timeout) if files else ("error", "no tests", 0.0)
            finally:
                box.restore(mutant, original)
            verdict = {"failed": "killed", "passed": "survived"}.get(status, status)
            result = Result(mutant, verdict, detail, seconds)
            with lock:
                results[index] = result
                done = len(results)
                print(
                    f"[{done}/{len(mutants)}] {verdict:8s} {seconds:6.0f} s  {mutant.id}  "
                    f"{mutant.original.strip()[:60]!r} -> {mutant.replacement.strip()[:60]!r}  {detail}",
                    flush=True,
                )

    threads = [threading.Thread(target=worker, args=(box,)) for box in boxes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[i] for i in range(len(mutants))]


def report(results: list[Result], root: pathlib.Path = ROOT, sources: dict[str, str] | None = None) -> str:
    """The kill rate per module and each survivor's diff, against ``sources`` (path -> the text the
    mutants were made from; read from ``root`` when absent): a checkout edited during a long run
    does not spoil its report."""
    lines = ["", "module                               mutants  killed  survived  timeout/error  kill rate"]
    by_module: dict[str, list[Result]] = collections.defaultdict(list)
    for r in results:
        by_module[r.mutant.path].append(r)
    for path, rs in by_module.items():
        killed = sum(r.status == "killed" for r in rs)
        survived = sum(r.status == "survived" for r in rs)
        other = len(rs) - killed - survived
        decided = killed + survived
        rate = f"{100 * killed / decided:.0f} %" if decided else "-"
        lines.append(f"{path:36s} {len(rs):7d} {killed:7d} {survived:9d} {other:14d}  {rate:>9s}")
    killed = sum(r.status == "killed" for r in results)
    decided = sum(r.status in ("killed", "survived") for r in results)
    lines.append(f"{'all':36s} {len(results):7d} {killed:7d} {decided - killed:9d} {len(results) - decided:14d}  "
                 f"{100 * killed / max(decided, 1):8.0f} %")  # fmt: skip
    survivors = [r for r in results if r.status != "killed"]
    if survivors:
        lines += ["", "Survivors (and undecided):"]
        for r in survivors:
            text = (
                sources[r.mutant.path] if sources and r.mutant.path in sources else (root / r.mutant.path).read_text()
            )
            lines += [f"--- {r.mutant.id} [{r.status}] {r.detail}", r.mutant.diff(text)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--module", action="append", help="a module to mutate (repeatable; default: the training math)")
    parser.add_argument("--max-mutants", type=int, default=8, help="mutants sampled per module (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--list", action="store_true", help="print the mutants and their tests, run nothing")
    parser.add_argument(
        "--bugs",
        nargs="?",
        const="17",
        choices=sorted(BUG_SETS),
        help="run an issue's hand-written bugs instead of sampled mutants (default: 17)",
    )
    parser.add_argument(
        "--tests-for",
        action="append",
        default=[],
        metavar="PREFIX=FILE[,FILE...]",
        help="the test files for the modules whose path starts with PREFIX (repeatable; "
        "overrides --tests and the importers for those modules)",
    )
    parser.add_argument("--match", help="only the mutants whose id (or bug name) contains this text")
    parser.add_argument(
        "--survivors-of",
        type=pathlib.Path,
        metavar="JSON",
        help="only the mutants that were not killed in an earlier run's --json (same seed and sources)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at a time, each in its own copy (default 1)")
    parser.add_argument("--timeout", type=float, default=1500.0, help="seconds per mutant (default 1500)")
    parser.add_argument("--test-timeout", type=float, default=300.0, help="seconds per test (default 300)")
    parser.add_argument(
        "--max-file-seconds",
        type=float,
        default=300.0,
        help="leave out test files whose unmutated run takes longer (default 300)",
    )
    parser.add_argument("--include-slow", action="store_true", help=f"also run {', '.join(SLOW_FILES)}")
    parser.add_argument("--tests", nargs="+", help="run these test files for every mutant instead of the importers")
    parser.add_argument("--workdir", type=pathlib.Path, help="where the copies go (default: a temporary folder)")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results as JSON here")
    parser.add_argument(
        "--python", default=str(ROOT / ".venv" / "bin" / "python"), help="interpreter with the test deps"
    )
    args = parser.parse_args(argv)

    if args.bugs:
        mutants = hand_bugs(which=args.bugs)
    else:
        modules = args.module or list(DEFAULT_MODULES)
        rng = random.Random(args.seed)
        mutants = []
        files = []
        for path in modules:  # a folder: its modules
            folder = ROOT / path
            files += sorted(p.relative_to(ROOT).as_posix() for p in folder.glob("*.py")) if folder.is_dir() else [path]
        for path in files:
            path = str(pathlib.Path(path).as_posix())
            if not (ROOT / path).is_file():
                parser.error(f"--module {path}: no such file under {ROOT}")
            candidates = generate(path)
            chosen = sample(candidates, args.max_mutants, rng)
            print(f"{path}: {len(candidates)} candidates, {len(chosen)} sampled", flush=True)
            mutants += chosen
    if args.match:
        mutants = [m for m in mutants if args.match in m.id]
    if args.survivors_of:
        earlier = json.loads(args.survivors_of.read_text())
        wanted = {r["id"] for r in earlier if r["status"] != "killed"}
        mutants = [m for m in mutants if m.id in wanted]
    sources = {m.path: (ROOT / m.path).read_text() for m in mutants}  # what the mutants were made from
    selection = {}
    for path in sorted({m.path for m in mutants}):
        chosen = [
            spec.partition("=")[2].split(",") for spec in args.tests_for if path.startswith(spec.partition("=")[0])
        ]
        if chosen:
            selection[path] = chosen[-1]
        else:
            selection[path] = list(args.tests) if args.tests else tests_for(path, ROOT, args.include_slow)
    if args.list:
        for m in mutants:
            text = (ROOT / m.path).read_text()
            print(f"{m.id}\n{m.diff(text)}")
        for path, files in selection.items():
            print(f"tests for {path}: {' '.join(files) or '(none)'}")
        print(f"{len(mutants)} mutants")
        return 0

    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="irpo-mutation-"))
    print(f"copies under {workdir}", flush=True)
    boxes = [Sandbox(workdir / f"job{j}", args.python, args.test_timeout) for j in range(max(1, args.jobs))]
    for box in boxes:
        print(f"copy {box.repo}: imports {box.check_imports_itself()}", flush=True)
    files = sorted({f for fs in selection.values() for f in fs})
    print(f"baseline over {len(files)} test files", flush=True)
    durations = baseline_durations(boxes[0], files, args.timeout, args.max_file_seconds)

    # Sanity: a mutant that breaks the package (its __init__) must be killed by the first
    # module's tests, or the copy is not what they import.
    first = next(path for path in sorted(selection) if any(f in durations for f in selection[path]))
    package = "irpo_jax/__init__.py"
    end = len((ROOT / package).read_text())
    sanity = Mutant(package, 0, 0, "sanity", end, end, "",
                    "\nraise RuntimeError('mutation sanity check: this copy is the one imported')\n",
                    name="sanity")  # fmt: skip
    (check,) = run_mutants([sanity], {package: selection[first]}, durations, boxes[:1], args.timeout)
    if check.status != "killed":
        raise SystemExit(f"the sanity mutant was not killed ({check.status}): the tests do not import the copy")

    t0 = time.monotonic()
    results = run_mutants(mutants, selection, durations, boxes, args.timeout)
    print(report(results, sources=sources))
    print(f"\n{len(results)} mutants in {(time.monotonic() - t0) / 60:.1f} min (seed {args.seed}, "
          f"{args.max_mutants} per module; tests: {'given' if args.tests else 'importers'}"
          f"{', slow files included' if args.include_slow else ''})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps([{**dataclasses.asdict(r.mutant), "id": r.mutant.id, "status": r.status,
                                          "detail": r.detail, "seconds": r.seconds} for r in results],
                                        indent=1))  # fmt: skip
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
