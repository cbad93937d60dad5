"""The architecture holds: no import cycles, a method-blind shared pipeline, one folder per method.

Imports are read from the source (every `import`, function-level ones included), so a lazy import that only
hides a cycle is caught as a cycle.
"""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import networkx as nx
import pytest

import surgery
from surgery.facade.tuner import TunerModel
from surgery.methods.registry import get_method, implemented_types

PACKAGE = Path(surgery.__file__).resolve().parent
SHARED = ("plan", "rewrite", "matching", "graph", "checkpoint", "facade", "config", "api.py", "tasks.py",
          "naming.py", "errors.py")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in MODULES and c != name)
    return found


def test_no_import_cycles():
    graph = nx.DiGraph()
    for name, path in MODULES.items():
        graph.add_node(name)
        graph.add_edges_from((name, target) for target in _imports(name, path))
    assert list(nx.simple_cycles(graph)) == []


def _method_tokens() -> set[str]:
    """Names that belong to one method: its peft_type, config/tuner/layer class names, container names."""
    tokens = set()
    for peft_type in implemented_types():
        spec = get_method(peft_type)
        tokens |= {peft_type.value.lower(), spec.config_cls.__name__.lower()}
        if spec.tuner_cls is not TunerModel:
            tokens.add(spec.tuner_cls.__name__.lower())
        for handler in spec.handlers:
            tokens |= {name.lower() for name in handler.layer.adapter_layer_names}
        if spec.injector is not None:
            tokens.add(spec.injector.attribute.lower())
    return tokens


def _code_words(path: Path) -> list[tuple[int, str]]:
    """Identifiers and string literals of a module (docstrings and comments are prose, not code)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            words.append((node.lineno, node.attr))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            words.append((node.lineno, node.name))
        elif isinstance(node, ast.alias):
            words.append((getattr(node, "lineno", 0), node.name))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.append((node.lineno, node.value))
    return words


def _shared_files() -> list[Path]:
    files = []
    for entry in SHARED:
        path = PACKAGE / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    # PEFT's PeftType enum is the one list of every method name: the registry is keyed by it
    return [f for f in files if f != PACKAGE / "config" / "enums.py"]


@pytest.mark.parametrize("path", _shared_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_shared_pipeline_names_no_method(path):
    tokens = _method_tokens()
    pattern = re.compile(r"(?<![a-z0-9])(" + "|".join(map(re.escape, sorted(tokens, key=len, reverse=True)))
                         + r")(?![a-z0-9])")
    hits = [(line, word) for line, word in _code_words(path) if pattern.search(word.lower())]
    assert hits == [], f"{path.name} names a method: {hits[:5]}"


@pytest.mark.parametrize("peft_type", implemented_types(), ids=lambda t: t.value)
def test_a_method_is_one_folder(peft_type):
    spec = get_method(peft_type)
    package = spec.config_cls.__module__.rpartition(".")[0]
    assert package.startswith("surgery.methods.") and package.count(".") == 2, package
    owned = [spec.config_cls] + [h.layer for h in spec.handlers]
    owned += [spec.tuner_cls] if spec.tuner_cls is not TunerModel else []
    owned += [spec.injector] if spec.injector is not None else []
    assert all(cls.__module__.startswith(package + ".") for cls in owned), [c.__module__ for c in owned]
    doc = importlib.import_module(package).__doc__ or ""
    assert len(doc) > 200 and ("=" in doc or "\u2248" in doc), f"{package} needs a docstring with the method's math"
    public = set(importlib.import_module(package).__all__)
    assert spec.config_cls.__name__ in public and all(name in surgery.__all__ for name in public)
