"""The package's layers import only downwards, in the order ``LAYERS`` states (the one line
of involution_d2/__init__.py's docstring): a module imports its own subpackage and the
layers below it, never a sibling of its layer or one above. The package root alone imports
upwards (it registers the models and datasets on import)."""
import ast
import os

import pytest

from helpers import REPO

PACKAGE = os.path.join(REPO, "involution_d2")
# Bottom to top; the names in one tuple are siblings, which do not import each other.
LAYERS = (
    ("environment", "utils"),
    ("ops",),
    ("layers",),
    ("config",),
    ("modeling",),
    ("checkpoint", "data", "evaluation", "solver", "analysis", "export"),
    ("engine",),
    ("model_zoo",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                yield path, parts


def _imported(path, parts):
    """The involution_d2 modules (as name lists) that a module imports, nested imports too."""
    package = parts if path.endswith("__init__.py") else parts[:-1]
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")
        elif isinstance(node, ast.ImportFrom):
            base = (package[:len(package) - node.level + 1] if node.level else [])
            target = base + (node.module.split(".") if node.module else [])
            for alias in node.names:  # a name may be a module: from involution_d2 import ops
                yield node.lineno, target + [alias.name]


def _layer(parts):
    return parts[1] if len(parts) > 1 else None


def test_every_subpackage_has_a_layer():
    tops = {parts[1] for _, parts in _modules() if len(parts) > 1}
    assert tops == set(RANK), f"give each top-level module of involution_d2 a layer: {tops ^ set(RANK)}"


def _violations(path, parts):
    """What a module imports against the layer order, one line each."""
    own, where = _layer(parts), os.path.relpath(path, REPO)
    if own is None:
        return []  # the package root registers everything on import
    found = []
    for line, target in _imported(path, parts):
        if target[0] in ("benchmarking", "tests", "helpers", "seeded"):
            found.append(f"{where}:{line} imports {target[0]} (tools and tests are outside "
                         "the package)")
        if target[0] != "involution_d2":
            continue
        other = _layer(target)
        if other == own:
            continue
        if other not in RANK or RANK[other] >= RANK[own]:
            found.append(f"{where}:{line} ({own}) imports {'.'.join(target)} "
                         f"({other or 'the package root'}: "
                         f"{'the same layer' if RANK.get(other) == RANK[own] else 'above'})")
    return found


def test_modules_import_only_downwards():
    upward = [v for path, parts in _modules() for v in _violations(path, parts)]
    assert not upward, "\n".join(upward)


def test_the_layers_are_stated_in_the_package_docstring():
    import involution_d2

    line = " -> ".join(", ".join(names) for names in LAYERS)
    assert line in " ".join(involution_d2.__doc__.split()), line


@pytest.mark.parametrize("path, source", [
    ("involution_d2/ops/x.py", "from ..engine import launch"),
    ("involution_d2/data/x.py", "from ..checkpoint import AtomicCheckpointer"),
    ("involution_d2/config/x.py", "from involution_d2 import modeling"),
    ("involution_d2/layers/x.py", "def f():\n    import involution_d2.modeling.backbone"),
    ("involution_d2/engine/x.py", "from benchmarking.models import count_saved_bytes"),
])
def test_an_upward_import_is_found(tmp_path, path, source):
    """The check itself: each of these is reported."""
    file = tmp_path / "x.py"
    file.write_text(source + "\n")
    assert _violations(str(file), path[:-3].split("/"))
