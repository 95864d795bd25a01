"""The architecture as the tree shows it: the planning layer (``autolora.planning``) imports no
torch and nothing outside itself but the shared torch-free modules; the reporting layer
(``autolora.reporting``) imports no training or evaluation code; no module imports itself back
through others."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import autolora

PACKAGE = Path(autolora.__path__[0])
MODULES = sorted(
    {"autolora"} | {m.name for m in pkgutil.walk_packages(autolora.__path__, "autolora.")}
)
PLANNING = [m for m in MODULES if m.startswith("autolora.planning")]
REPORTING = [m for m in MODULES if m.startswith("autolora.reporting")]
# What the planning layer may import besides itself: torch-free modules shared by every layer.
SHARED = ("autolora", "autolora.errors", "autolora.files", "autolora.autoattack_variants")
# Training and evaluation code: the reporting layer reads records, it never runs these.
TRAINING = (
    "autolora.train",
    "autolora.evaluate",
    "autolora.recompute",
    "autolora.bench",
    "autolora.pretrain",
    "autolora.methods",
    "autolora.models",
    "autolora.attacks",
    "autolora.fastpath",
    "autolora.schedules",
    "autolora.diagnostics",
    "autolora.checkpoints",
    "autolora.cellfolder",
    "autolora.data.loaders",
    "autolora.data.gpu_augment",
    "autolora.data.transforms",
    "autolora.gpucheck",
    "autolora.commands",
)


def _source(module: str) -> Path:
    path = PACKAGE.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _module_of(name: str) -> str | None:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in MODULES:
            return ".".join(parts[:end])
    return None


def _imports(module: str, *, top_level_only: bool) -> set[str]:
    """The autolora modules ``module`` imports (not its own parent packages)."""
    tree = ast.parse(_source(module).read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            target = _module_of(name)
            if target and target != module and not module.startswith(target + "."):
                found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def test_no_module_imports_itself_back():
    graph = {m: _imports(m, top_level_only=True) for m in MODULES}
    assert _cycles(graph) == []
    deferred = {m: _imports(m, top_level_only=False) for m in MODULES}
    assert _cycles(deferred) == []  # imports inside functions included


@pytest.mark.parametrize("module", PLANNING)
def test_the_planning_layer_imports_only_itself_and_shared_modules(module):
    outside = {
        m
        for m in _imports(module, top_level_only=False)
        if not m.startswith("autolora.planning") and m not in SHARED
    }
    assert not outside, f"{module} imports {sorted(outside)}"


@pytest.mark.parametrize("module", REPORTING)
def test_the_reporting_layer_imports_no_training_code(module):
    training = {
        m
        for m in _imports(module, top_level_only=False)
        if any(m == t or m.startswith(t + ".") for t in TRAINING)
    }
    assert not training, f"{module} imports {sorted(training)}"


@pytest.mark.parametrize("module", PLANNING + REPORTING)
def test_a_layer_module_imported_alone_loads_no_torch(module):
    forbidden = ("torch", "numpy") if module in PLANNING else ("torch",)
    code = f"import sys, {module}; print(' '.join(m for m in {forbidden!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"{module} loads {done.stdout.strip()}"


def test_train_and_evaluate_do_not_import_each_other():
    train = [m for m in MODULES if m == "autolora.train" or m.startswith("autolora.train.")]
    for module in train:
        assert "autolora.evaluate" not in _imports(module, top_level_only=False), module
    assert not {m for m in _imports("autolora.evaluate", top_level_only=False) if m in train}, (
        "autolora.evaluate imports training code"
    )


# What takes a training step: the method's loss, its backward and the optimizer's update.
STEP_CALLS = {"training_step", "backward", "zero_grad"}
TRAINS = ("autolora.bench.timing", "autolora.bench.equivalence", "autolora.pretrain")


@pytest.mark.parametrize(
    "module",
    [m for m in MODULES if m.startswith("autolora.bench")] + ["autolora.pretrain"],
)
def test_the_bench_and_pretraining_take_the_training_loops_step(module):
    """No training loop of their own: every step goes through ``autolora.train.step``."""
    tree = ast.parse(_source(module).read_text())
    calls = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert not calls & STEP_CALLS, f"{module} calls {sorted(calls & STEP_CALLS)} itself"
    if module in TRAINS:
        assert "autolora.train.step" in _imports(module, top_level_only=False), module
