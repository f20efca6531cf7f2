"""The package's modules form layers that only point down (README "Layout").

Parses every module of the source tree's sparsekit/ (no import is executed) and fails on an
import of a module in the same or a higher layer, on a module missing from the map, and on a
function-level import of a sparsekit module that is not an optional dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sparsekit"

# bottom to top; a module may import only from layers below its own
LAYERS = [
    ("errors", ["errors"]),
    ("tensors on disk", ["external"]),
    ("base", ["io", "timing", "version", "_native", "models"]),
    ("model facts", ["graph", "patterns", "format", "calibration"]),
    ("reading weights", ["weights", "detect", "fuse", "recipe", "fold_bn", "permute"]),
    ("ops", ["pack", "sequence"]),
    ("selection", ["selection"]),
    ("onnxruntime", ["sessions"]),
    ("algorithms", ["reconstruct", "predict", "torch_graph", "training_data"]),
    ("algorithms on the torch graph", ["inversion"]),
    ("convert: report", ["convert.report"]),
    ("convert: choice", ["convert.choice"]),
    ("convert: plan", ["convert.plan"]),
    ("convert: autotune, recurrent, layout", ["convert.autotune", "convert.recurrent",
                                             "convert.layout"]),
    ("stages", ["prune", "convert", "finetune"]),
    ("reports", ["analyze", "bench", "inspection", "plot"]),
    ("command line", ["cli"]),
    ("entry points", ["__main__", "__init__"]),
]
LAYER_OF = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}
# modules whose import needs an optional extra (torch, matplotlib): imported inside functions
OPTIONAL = {"torch_graph", "training_data", "inversion", "plot"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if "models" in path.relative_to(PACKAGE).parts[:1]:
            continue  # the zoo (a symlink in a source checkout) sits in the base layer whole
        yield _module_name(path), path


def _imports(name: str, path: Path):
    """(imported sparsekit module, line, at function level) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    if name == "__init__":
        package = []
    nested = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested.update(id(n) for n in ast.walk(fn) if n is not fn)
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level == 0 and \
                not (node.module or "").startswith("sparsekit"):
            continue
        if node.level:
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            target = base + (node.module.split(".") if node.module else [])
        else:
            target = node.module.split(".")[1:]
        if node.module is None or not target:
            # `from . import x, y`: each x is a module of that package
            for alias in node.names:
                yield ".".join(target + [alias.name]), node.lineno, id(node) in nested
        else:
            yield ".".join(target), node.lineno, id(node) in nested


def _layer(module: str):
    while module and module not in LAYER_OF:
        module = module.rpartition(".")[0]
    return LAYER_OF.get(module), module


def test_every_module_has_a_layer():
    missing = [name for name, _ in _modules() if _layer(name)[0] is None]
    assert not missing, f"modules missing from tests/test_layering.py LAYERS: {missing}"


@pytest.mark.parametrize("name,path", list(_modules()), ids=lambda v: str(v) if isinstance(v, str) else "")
def test_imports_point_down(name, path):
    mine, _ = _layer(name)
    problems = []
    for target, line, in_function in _imports(name, path):
        theirs, resolved = _layer(target)
        if theirs is None:
            problems.append(f"line {line}: {target} is not in the layer map")
            continue
        if theirs >= mine and resolved != name:
            problems.append(f"line {line}: imports {resolved} ({LAYERS[theirs][0]}), not below "
                            f"{name} ({LAYERS[mine][0]})")
        if in_function and resolved not in OPTIONAL:
            problems.append(f"line {line}: function-level import of {resolved} (only optional "
                            "dependencies are imported inside functions)")
    assert not problems, f"{name}: " + "; ".join(problems)


def test_the_check_sees_an_upward_import(tmp_path):
    """The parser resolves relative imports (a check that finds nothing must be able to)."""
    found = list(_imports("graph", PACKAGE / "graph.py"))
    assert ("errors", ) == tuple(t for t, _, _ in found if t == "errors")
    fake = tmp_path / "detect.py"
    fake.write_text("from .convert.plan import Plan\n\ndef f():\n    from . import prune\n")
    got = list(_imports("detect", fake))
    assert got == [("convert.plan", 1, False), ("prune", 4, True)]
    assert _layer("convert.plan")[0] > _layer("detect")[0]
