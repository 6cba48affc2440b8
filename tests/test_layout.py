"""The architecture, checked on the source: layers point one way, steps stand alone, no cycles.

gan <- pipelines (library) <- pipelines.steps <- tune <- pipelines.steps.cli (``dcgan``,
which dispatches to every step and to the sweep). Imports inside functions count:
they are how heavy modules load late, and they are dependencies all the same; so do
modules loaded by name through ``importlib``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gan", "pipelines", "tune")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Command plumbing beside the steps: the `dcgan` dispatcher and what every step's parser shares.
PLUMBING = {"pipelines.steps.cli", "pipelines.steps.entrypoint", "pipelines.steps.id_ranges"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``path`` imports, anywhere in it (``from a import b`` counts a.b
    when b is a module). A module that uses ``importlib`` imports every project module
    that one of its string constants names: that is how it would load them."""
    found = set()
    tree = ast.parse(path.read_text())
    uses_importlib = any(isinstance(n, (ast.Import, ast.ImportFrom)) and "importlib" in
                         ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""])
                         for n in ast.walk(tree))
    for node in ast.walk(tree):
        if uses_importlib and isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in modules:
                found.add(node.value)
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def test_no_step_imports_another_step(graph):
    steps = {m for m in graph if m.startswith("pipelines.steps.")} - PLUMBING | {"tune.sweep"}
    offenders = {m: sorted(graph[m] & (steps - {m})) for m in steps if graph[m] & (steps - {m})}
    assert not offenders, f"steps import other steps (move the helper below the steps): {offenders}"
    plumbing = {m: sorted(graph[m] & steps) for m in PLUMBING - {"pipelines.steps.cli"} if graph[m] & steps}
    assert not plumbing, f"only the dispatcher may import steps: {plumbing}"
    assert steps - {"tune.sweep"} <= graph["pipelines.steps.cli"] | {"pipelines.steps.__init__"}, \
        "every step is a dcgan subcommand: pipelines.steps.cli must import it"


def test_one_name_per_module():
    """No two modules of gan/ and pipelines/ (the steps aside) share a file name, and no
    module shares its name with a folder beside it."""
    names: dict[str, list[str]] = {}
    clashes = []
    for pkg in ("gan", "pipelines"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.name == "__init__.py" or "steps" in path.relative_to(ROOT).parts:
                continue
            names.setdefault(path.stem, []).append(str(path.relative_to(ROOT)))
            if (path.parent / path.stem).is_dir():
                clashes.append(str(path.relative_to(ROOT)))
    shared = {name: paths for name, paths in names.items() if len(paths) > 1}
    assert not shared, f"one name, several modules: {shared}"
    assert not clashes, f"modules named like the folder beside them: {clashes}"


def test_layers_point_one_way(graph):
    upward = []
    for module, targets in graph.items():
        for target in targets:
            if module.startswith("gan") and not target.startswith("gan"):
                upward.append((module, target))
            elif target == "pipelines.steps.cli":  # the dispatcher is the top: nothing imports it
                upward.append((module, target))
            elif module.startswith("pipelines") and target.startswith("tune") and module != "pipelines.steps.cli":
                upward.append((module, target))
            elif (module.startswith("pipelines") and not module.startswith("pipelines.steps")
                  and target.startswith("pipelines.steps")):
                upward.append((module, target))
    assert not upward, f"imports that point up a layer: {upward}"


def test_gan_is_free_of_ray_and_mlflow():
    for path in (ROOT / "gan").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] in ("ray", "mlflow")], f"{path} imports {names}"


def test_no_import_cycle(graph):
    # Tarjan's strongly connected components: a component of more than one module is a cycle.
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_modules_and_functions_stay_small():
    too_long = []
    for name, path in project_modules().items():
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, f"split these (at most {MAX_MODULE_LINES} lines a module, {MAX_FUNCTION_LINES} a function): {too_long}"


def test_the_checker_finds_a_cycle(tmp_path):
    modules = {"pipelines.a": tmp_path / "a.py", "pipelines.b": tmp_path / "b.py"}
    modules["pipelines.a"].write_text("from pipelines.b import x\n")
    modules["pipelines.b"].write_text("def f():\n    import pipelines.a\n")
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycle({name: imports_of(path, modules) for name, path in modules.items()})


def test_the_checker_sees_a_step_importing_a_step(tmp_path):
    """The ast walk finds imports inside functions too (the habit of every step here)."""
    modules = {"pipelines.steps.a": tmp_path / "a.py", "pipelines.steps.b": tmp_path / "b.py"}
    modules["pipelines.steps.a"].write_text("def main():\n    from pipelines.steps.b import helper\n")
    assert imports_of(modules["pipelines.steps.a"], modules) == {"pipelines.steps.b"}


def test_the_checker_sees_modules_loaded_through_importlib(tmp_path):
    modules = {"pipelines.steps.cli": tmp_path / "cli.py", "pipelines.steps.b": tmp_path / "b.py"}
    modules["pipelines.steps.cli"].write_text("import importlib\nTABLE = {'b': 'pipelines.steps.b'}\n"
                                              "def main(n):\n    return importlib.import_module(TABLE[n])\n")
    assert imports_of(modules["pipelines.steps.cli"], modules) == {"pipelines.steps.b"}
