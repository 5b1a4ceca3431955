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
    ("arch_config",),                                 # torch-free: what a timm/ or torchvision/ arch adds to the config
    ("core",),                                        # the FeatureNorm tap, layouts, candidate blocks, metrics
    ("models",),                                      # the architectures and their registry
    ("benchmarks", "config", "config_doc"),  # the OOD benchmark tables and the flat config
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
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_local(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


def _dispatched(tree: ast.AST):
    """``(module name, line)`` of every ``importlib.import_module(NAME)`` whose NAME is a string literal or a
    module-level constant: a command table's import counts like an import statement."""
    constants = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                 for target in node.targets if isinstance(target, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module" \
                and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield arg.value, node.lineno
            elif isinstance(arg, ast.Name) and arg.id in constants:
                yield constants[arg.id], node.lineno


def _imports(path: Path, modules: set[str]):
    """``(target module, line, is function-local)`` of every featurenorm import in ``path``; an import by name
    through :func:`_dispatched` counts as a module-level one (it is declared, not hidden)."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for target, line in _dispatched(tree):
        if target.split(".")[0] == "featurenorm":
            yield target, line, False
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
    hidden = [f"{module}:{line} imports {target} inside a function" for module, imports in _graph().items()
              for target, line, local in imports if local]
    assert hidden == []


def test_importing_the_config_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, featurenorm.cli, featurenorm.config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def _local_imports(path: Path):
    """``(line number, line)`` of every import inside a function of ``path``."""
    text = path.read_text()
    tree = ast.parse(text)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    lines = text.splitlines()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and _is_local(node, parents):
            yield node.lineno, lines[node.lineno - 1]


def test_every_function_local_import_is_a_lazy_heavy_library_and_says_so():
    """Only optional or heavy libraries (scipy, matplotlib, timm, torchvision, ...) load inside a function, and each
    such line says why in a "# lazy:" comment; the standard library and torch are imported at the top."""
    unexplained = [f"{path.relative_to(REPO)}:{number}: {line.strip()}" for path in sorted(PACKAGE.rglob("*.py"))
                   for number, line in _local_imports(path)
                   if "# lazy:" not in line or line.split()[1].split(".")[0] in {"torch", *STDLIB}
                   or line.split()[1].startswith(".")]
    assert unexplained == []


STDLIB = frozenset(__import__("sys").stdlib_module_names)


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
