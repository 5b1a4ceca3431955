"""The shape the codebase keeps: short functions, modules of one job, thin scripts."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "featurenorm"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_longer_than_80_lines_and_no_module_longer_than_400():
    long_functions, long_modules = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(REPO)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{name}: {len(text.splitlines())} lines")
        for node in _functions(ast.parse(text)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                long_functions.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    assert long_modules == [] and long_functions == []


def test_the_three_tools_are_thin_wrappers():
    for script in ("train.py", "select_block.py", "eval_ood.py"):
        assert len((REPO / script).read_text().splitlines()) <= 15, script


def test_evaluation_names_no_method():
    from featurenorm.methods import method_names

    for path in sorted((PACKAGE / "evaluation").glob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                   and isinstance(node.value, str) and id(node) not in docstrings}
        assert not strings & set(method_names()), path.name


# The layers of the package, lowest first. A module may import its own layer and the layers below it, never
# one above; a module-level unit is a top-level module or subpackage of featurenorm.
LAYERS = (
    ("errors", "files"),                              # one-line errors, atomic writes
    ("core",),                                        # the FeatureNorm tap, layouts, candidate blocks, metrics
    ("models",),                                      # the architectures and their registry
    ("benchmarks", "arch_config", "config", "config_doc"),  # the OOD benchmark tables and the flat config
    ("runtime",),                                     # devices, precision, process groups
    ("data",),                                        # data sets and loaders
    ("methods",),                                     # the OOD scores
    ("training",),                                    # the training loop, checkpoints, weights files
    ("selection",),                                   # pseudo-OOD kinds, norm collection, criteria, select_block
    ("evaluation",),                                  # scoring, fits, the results schema, evaluate
    ("reporting",),                                   # tables, plots, multi-run summaries, paper and OpenOOD
    ("runs",),                                        # the config-driven runs that the command line calls
    ("tools", "gpu_check"),                           # throughput benchmark, GPU check
    ("integrations",),                                # adapters to other libraries
    ("cli",),                                         # the command-line entry points
)
# Modules whose function-local imports of featurenorm defer torch (and torchvision, timm) on purpose, so that the
# config is checked before they load; each such line says why in a "# lazy:" comment. Anywhere else a
# function-local import of featurenorm would only hide a cycle.
LAZY_IMPORTERS = {"featurenorm.cli", "featurenorm.arch_config"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_local(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


def _imports(path: Path, modules: set[str]):
    """``(target module, line, is function-local)`` of every featurenorm import in ``path``."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module or ""
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target.split(".")[0] == "featurenorm":
                yield target, node.lineno, _is_local(node, parents)


def _graph() -> dict[str, list[tuple[str, int, bool]]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(path) for path in paths}
    return {_module_name(path): list(_imports(path, modules)) for path in paths}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1:  # featurenorm/__init__.py: the lazy public surface, above everything
        return len(LAYERS)
    for number, units in enumerate(LAYERS):
        if parts[1] in units:
            return number
    return None


def test_every_module_has_a_layer():
    assert [module for module in _graph() if _layer(module) is None] == []


def test_no_module_imports_a_higher_layer():
    upward = [f"{module}:{line} imports {target}" for module, imports in _graph().items()
              for target, line, _ in imports if _layer(target) > _layer(module)]
    assert upward == []


def test_no_function_local_imports_of_featurenorm():
    lines = {}
    hidden = []
    for module, imports in _graph().items():
        for target, line, local in imports:
            if not local:
                continue
            if module in LAZY_IMPORTERS:
                path = REPO / (module.replace(".", "/") + ".py")
                text = lines.setdefault(path, path.read_text().splitlines())
                if "# lazy:" in text[line - 1]:
                    continue
            hidden.append(f"{module}:{line} imports {target} inside a function")
    assert hidden == []


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` (module -> imported modules), or []."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return []


def test_no_import_cycles():
    graph = {module: {target for target, _, _ in imports if target != module} for module, imports in _graph().items()}
    assert _cycle(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "d": {"a"}}) == []
