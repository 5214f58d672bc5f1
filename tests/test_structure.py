"""The package's shape: one direction of dependency, no import circles, short functions.

LAYERS is THE layer order (docs/design.md describes it): a module may import modules of its own
layer or of a lower one, never of a higher one, and no chain of imports may lead back to where
it started. Every import counts, at the top of a module or inside a function.
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "crema_jax"

LAYERS = (                         # bottom to top
    ("runtime", ("crema_jax.runtime",)),
    ("data", ("crema_jax.data",)),
    ("models", ("crema_jax.models",)),
    ("losses", ("crema_jax.losses",)),
    ("config", ("crema_jax.config", "crema_jax.config_checks")),
    ("train", ("crema_jax.train",)),
    ("inference", ("crema_jax.inference",)),
    ("evaluate", ("crema_jax.evaluate",)),
    ("export", ("crema_jax.export",)),
    ("commands", ("crema_jax.cli", "crema_jax.main")),
)
MAX_FUNCTION_LINES = 80
# Functions that are one config literal (a dict of defaults, each field commented) may be longer.
CONFIG_LITERALS = {"crema_jax/data/config.py:default_data_config"}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """Every crema_jax module `name` imports (a `from package import x` names the submodule x
    when there is one, else the package)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in MODULES else base)
    return {m for m in out if m in MODULES and m != name}


GRAPH = {name: _imports(name) for name in MODULES}


def _layer(name: str) -> int:
    if name == "crema_jax":
        return -1
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{name}: in no layer of LAYERS; add its package there")


def test_every_module_has_a_layer():
    for name in MODULES:
        _layer(name)


def test_no_import_goes_up_a_layer():
    upward = sorted(f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})"
                    for a, targets in GRAPH.items() for b in targets if _layer(b) > _layer(a))
    assert not upward, "\n".join(upward)


def _cycles(graph: dict) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a circle."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert _cycles(GRAPH) == []


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_functions_are_short(path):
    rel = path.relative_to(PACKAGE.parent).as_posix()
    long = [f"{rel}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
            and f"{rel}:{node.name}" not in CONFIG_LITERALS]
    assert not long, long


def test_every_package_folder_is_a_regular_package():
    """setuptools.find_packages (setup.py) ships only folders with an __init__.py: a folder of
    modules without one works from a checkout and is missing from the installed wheel."""
    folders = {p.parent for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(PACKAGE.parent)) for f in folders
                     if not (f / "__init__.py").is_file())
    assert not missing, missing


def test_no_module_imports_another_modules_private_name():
    """A name with a leading underscore is its module's own: another module that needs it
    asks for it under a public name (staging.py had imported storage's _is and _reach)."""
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("crema_jax"):
                found += [f"{name}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found
