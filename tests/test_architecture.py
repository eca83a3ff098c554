"""The structure the design promises (docs/architecture.md), checked on the code itself: imports go one way
(``eval`` and ``bench`` may import the core, the core never imports them), no import circles anywhere, and no
module outside ``sdpo/families/`` names a model family (the tiny-model builders excepted: a family's tiny
config is its own file there)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from sdpo.families import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("sdpo", "eval", "bench") for p in (ROOT / d).rglob("*.py")) + [ROOT / "train.py"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SOURCES}


def imported_modules(path: Path) -> set[str]:
    """Every repository module ``path`` imports, at any depth of the file (lazy imports inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # `from pkg import module` names a module; `from m import f` a name
                name = name.rpartition(".")[0]
            if name and name != module_name(path):
                found.add(name)
    return found


GRAPH = {m: imported_modules(p) for m, p in MODULES.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert circles(GRAPH) == []


def test_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_never_imports_eval_or_bench():
    wrong = {m: sorted(i for i in deps if i.split(".")[0] in ("eval", "bench"))
             for m, deps in GRAPH.items() if m.split(".")[0] == "sdpo"}  # fmt: skip
    assert {m: d for m, d in wrong.items() if d} == {}


# --------------------------------------------------------------------------- family names

FAMILY_WORD = re.compile(r"\b(" + "|".join(map(re.escape, FAMILIES)) + r")\b")
EXEMPT = ("sdpo/families/", "sdpo/tiny/", "bench/")  # a family's module; its tiny config; benches of named models
TEXT_KEYWORDS = {"help", "description", "epilog", "title", "prog", "usage", "metavar"}


def _docstrings(tree) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _text_for_people(tree) -> set[int]:
    """String constants that are help texts or messages: argparse texts, and anything inside an exception or a
    log/print call (a message may name a family the user passed; code must not branch on one)."""
    ids = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            if kw.arg in TEXT_KEYWORDS:
                ids.update(id(n) for n in ast.walk(kw.value))
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in ("add_argument_group", "add_parser") or name.endswith("Error") or name in (
            "print", "info", "warning", "error", "debug", "exception"
        ):  # fmt: skip
            ids.update(id(n) for a in node.args for n in ast.walk(a))
    return ids


def family_names_in(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    skip = _docstrings(tree) | _text_for_people(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
        elif isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, ast.Attribute):
            text = node.attr
        elif isinstance(node, ast.arg):
            text = node.arg
        else:
            continue
        hits += [f"{rel}:{node.lineno}: {m}" for m in FAMILY_WORD.findall(text)]
    return hits


@pytest.mark.parametrize("path", [p for p in SOURCES if not str(p.relative_to(ROOT)).startswith(EXEMPT)],
                         ids=lambda p: str(p.relative_to(ROOT)))  # fmt: skip
def test_no_family_named_outside_the_families(path):
    assert family_names_in(path) == []


def test_family_name_finder_sees_code_but_not_text(tmp_path):
    f = tmp_path / "probe.py"
    f.write_text(
        '"""sdxl in a docstring is fine."""\nx = cfg.sdxl\nraise UserError("drop --sdxl")\nif f == "flux": pass\n'
    )
    assert [h.split(": ")[1] for h in family_names_in(f)] == ["sdxl", "flux"]
