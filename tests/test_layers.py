"""The packages' layers, written down once (:data:`LAYERS`) and checked from the source's imports.

A module may import modules of its own layer or of a lower one, never of a higher one, and the
imports form no cycle. Every import counts, those inside functions too: a lazy import up the
layers is the same dependency, taken later. The package doors (``irpo_jax/__init__``,
``irpo_jax.rewards``, ``irpo_jax.training``) load their names on first use and are read as the
modules they name, not as modules of their own.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("irpo_jax", "torch_bridge")

# Lowest first. A module belongs to the longest prefix listed here; a new module must be placed.
LAYERS = {
    # 0, the ground floor: the vocabulary and the house rules (standard library and numpy only;
    # the reward server, a process without jax, imports these).
    "irpo_jax.tasks": 0,  # task names, ids, set names
    "irpo_jax.safe_files": 0,  # whole-or-nothing writes
    "irpo_jax.cli": 0,  # flags, config files, logging, errors, signals
    "irpo_jax.destinations": 0,  # output paths checked before work
    "irpo_jax.metrics_log": 0,  # metrics.jsonl and TensorBoard
    "irpo_jax.rewards.wire": 0,  # the reward process's frames
    "irpo_jax.rewards.bridge": 0,  # the interface of the two reward bridges
    "irpo_jax.training.errors": 0,  # what a CLI catches before jax is loaded
    # 1: the model, the mathematics and the data.
    "irpo_jax.models": 1,
    "irpo_jax.grpo": 1,
    "irpo_jax.metrics": 1,
    "irpo_jax.rewards.task": 1,
    "irpo_jax.rewards.compose": 1,
    "irpo_jax.data": 1,
    "torch_bridge.checkpoint_io": 1,
    "torch_bridge.reference_adair": 1,
    "torch_bridge.reward_models": 1,
    # 2: what is built from them: model directories, configs, the reward bridge.
    "irpo_jax.checkpointing": 2,
    "irpo_jax.config_lib": 2,
    "irpo_jax.mesh": 2,  # the device mesh and the multi-process helpers of training and evaluation
    "irpo_jax.rewards": 2,
    "irpo_jax.rewards.remote": 2,
    "torch_bridge.reward_server": 2,
    # 3: evaluation: the one inference engine, the protocol, the results, mining, tiles, the paper's numbers.
    "irpo_jax.evaluation": 3,
    # 4: the training library.
    "irpo_jax.training": 4,
    # 5: the command lines (short: flags, then a call into the layers below).
    "irpo_jax.train": 5,
    "irpo_jax.trainer": 5,  # the deprecated alias of irpo_jax.training
    "irpo_jax.evaluate": 5,
    "irpo_jax.mine": 5,
    "irpo_jax.restore": 5,
    "irpo_jax.compare": 5,
    "irpo_jax.reproduce": 5,
    "irpo_jax.demo_report": 5,
    "irpo_jax.data.prepare": 5,
    "torch_bridge.convert_adair": 5,
}


def find_modules(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, source: str, is_package: bool, modules) -> set[str]:
    """The package modules that ``source`` (module ``name``) imports, anywhere in it.

    ``from a import b`` is an import of ``a.b`` when that is a module, else of ``a``; an import of
    a package's door (``import irpo_jax``) is not counted: the doors import nothing themselves.
    """
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` where a.b is the module
                target = target.rpartition(".")[0]
            if target and target != name and target not in PACKAGES:
                out.add(target)
    return out


def import_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    modules = find_modules(root)
    return {n: imports_of(n, p.read_text(), p.name == "__init__.py", modules) for n, p in modules.items()}


def layer_of(name: str, layers: dict[str, int] = LAYERS) -> int:
    prefixes = [p for p in layers if name == p or name.startswith(p + ".")]
    if not prefixes:
        raise KeyError(f"{name} is in no layer: place it in LAYERS ({pathlib.Path(__file__).name})")
    return layers[max(prefixes, key=len)]


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int] = LAYERS) -> list[str]:
    return [f"{name} (layer {layer_of(name, layers)}) imports {target} (layer {layer_of(target, layers)})"
            for name in sorted(graph) if name not in PACKAGES
            for target in sorted(graph[name]) if layer_of(target, layers) > layer_of(name, layers)]  # fmt: skip


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan's algorithm)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


GRAPH = import_graph()


def test_every_module_is_in_a_layer():
    missing = []
    for name in GRAPH:
        if name not in PACKAGES:
            try:
                layer_of(name)
            except KeyError as e:
                missing.append(str(e))
    assert not missing, missing


def test_no_import_goes_up_the_layers():
    assert upward_imports(GRAPH) == []


def test_no_import_cycle():
    assert cycles(GRAPH) == []


def test_the_checks_see_an_upward_import_and_a_cycle(tmp_path):
    """The checks on a planted package: a lazy import up the layers, a two-module cycle."""
    pkg = tmp_path / "irpo_jax"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("x = 1\n")
    (pkg / "low" / "e.py").write_text("def f():\n    from irpo_jax.high import c\n")  # lazy, still counted
    (pkg / "low" / "b.py").write_text("from . import a\nfrom irpo_jax.low.d import x\n")
    (pkg / "low" / "d.py").write_text("import irpo_jax.low.b\nx = 1\n")  # b <-> d
    (pkg / "high.py").write_text("from irpo_jax.low import a, b\nimport irpo_jax\n")
    (tmp_path / "torch_bridge").mkdir()
    graph = import_graph(tmp_path)
    assert graph["irpo_jax.low.b"] == {"irpo_jax.low.a", "irpo_jax.low.d"}
    assert graph["irpo_jax.high"] == {"irpo_jax.low.a", "irpo_jax.low.b"}  # the door itself is not counted
    layers = {"irpo_jax.low": 0, "irpo_jax.high": 1}
    assert upward_imports(graph, layers) == ["irpo_jax.low.e (layer 0) imports irpo_jax.high (layer 1)"]
    assert cycles(graph) == [["irpo_jax.low.b", "irpo_jax.low.d"]]
    with pytest.raises(KeyError, match="irpo_jax.elsewhere is in no layer"):
        layer_of("irpo_jax.elsewhere", layers)
