"""The package's shape: one direction of flow, checked on the source (no import cycles, no
function-local imports of zeta_fx modules); and the tests' oracle, independent of the
analysis it judges. (That the plan holds nothing live is in ``test_plan.py``.)"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import zeta_fx

PACKAGE = Path(zeta_fx.__file__).parent
TESTS = Path(__file__).resolve().parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.Module) -> tuple[set[str], list[tuple[int, str]]]:
    """(zeta_fx modules imported at module level outside TYPE_CHECKING, function-local ones)."""
    top: set[str] = set()
    local: list[tuple[int, str]] = []

    def names(node: ast.AST) -> list[str]:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zeta_fx"):
            return [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        if isinstance(node, ast.Import):
            return [a.name for a in node.names if a.name.startswith("zeta_fx")]
        return []

    for stmt in tree.body:
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
            continue
        for node in ast.walk(stmt):
            found = names(node)
            if not found:
                continue
            inside_def = isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if inside_def:
                local.append((node.lineno, found[0]))
            else:
                top.update(found)
    return top, local


def _graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[int, str]]]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    locals_: dict[str, list[tuple[int, str]]] = {}
    for name, path in modules.items():
        top, local = _imports(ast.parse(path.read_text()))
        edges[name] = {m for m in top if m in modules and m != name}
        locals_[name] = local
    return edges, locals_


def test_no_import_cycles():
    edges, _ = _graph()
    # a package's __init__ re-exports its modules: the edge from a module up to its package
    # __init__ is an import of that __init__, which is what a cycle would need
    graph = {m: {d for d in deps if d != "zeta_fx"} for m, deps in edges.items()}
    graphlib.TopologicalSorter(graph).static_order()  # raises CycleError on a cycle


def test_no_function_local_imports_of_the_package():
    _, locals_ = _graph()
    found = {m: hits for m, hits in locals_.items() if hits}
    assert found == {}, f"function-local zeta_fx imports (a hidden cycle?): {found}"


@pytest.mark.parametrize("lower,higher", [
    ("zeta_fx.rules.selection", "zeta_fx.rules"), ("zeta_fx.analysis.facts", "zeta_fx.analysis"),
    ("zeta_fx.apply", "zeta_fx.plan"), ("zeta_fx.apply.verify", "zeta_fx.apply"),
    ("zeta_fx.report", "zeta_fx.api"), ("zeta_fx.report.picture.model", "zeta_fx.report"),
    ("zeta_fx.plan.planner", "zeta_fx.api"), ("zeta_fx.tensors", "zeta_fx.apply"),
])
def test_a_lower_stage_never_imports_a_higher_one(lower, higher):
    edges, _ = _graph()
    seen, todo = set(), [lower]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(edges.get(m, ()))
    assert higher not in seen


def test_the_oracle_never_asks_the_analysis():
    """``tests/claims.py`` judges the pass by running the model: of zeta_fx it may use the
    verb and the capture (the graph the pass saw), nothing that decides what to zero."""
    top, local = _imports(ast.parse((TESTS / "claims.py").read_text()))
    assert local == []
    assert top <= {"zeta_fx", "zeta_fx.zero_init_pass", "zeta_fx.capture",
                   "zeta_fx.capture.capture"}, top


def _op_keys() -> frozenset[str]:
    """Every op key the semantics tables name."""
    from zeta_fx.semantics import tables
    keys: set[str] = set()
    for name in tables.__all__:
        value = getattr(tables, name)
        keys.update(value if isinstance(value, (frozenset, set)) else value.keys())
    return frozenset(keys)


def test_op_sets_live_only_in_semantics():
    """One home for op knowledge: outside ``zeta_fx/semantics/`` no module builds a set,
    tuple or dict of op names (a table of its own); it asks the semantics tables."""
    keys = _op_keys()
    # names that are op keys by coincidence: the CLI's dtype names, an action's fields
    not_ops = {"zeta_fx.cli": {"float", "half", "bfloat16", "double"},
               "zeta_fx.plan.records": {"mean", "std"}}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "semantics":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.Set, ast.Tuple, ast.List, ast.Dict)):
                continue
            items = node.keys if isinstance(node, ast.Dict) else node.elts
            named = {i.value for i in items if isinstance(i, ast.Constant) and
                     isinstance(i.value, str) and i.value in keys}
            named -= not_ops.get(_module_name(path), set())
            if len(named) >= 2:
                offenders.append(f"{_module_name(path)}:{node.lineno} {sorted(named)[:4]}")
    assert not offenders, "op sets outside zeta_fx/semantics:\n" + "\n".join(offenders)
