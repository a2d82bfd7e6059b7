"""The package's folders follow the pipeline, and imports only point downstream along it.

A hook call goes web → service → record (gather the patient's data) → clinical (read it as facts) →
engine (the rules) → cards. Imports follow the same order, from what starts a call to what it relies on;
LAYERS below writes that order down. A module may import its own folder's modules and anything in a
later layer, never an earlier one nor a sibling in its own layer; and no chain of imports, even inside
one folder or inside a function, comes back to where it started (app.py and server.py included).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cds_service"

# Each layer's units: a subpackage or a top-level module. Earlier layers may import later ones only.
LAYERS: list[tuple[str, ...]] = [
    ("cli",),  # the commands
    ("web",),  # HTTP: app, gunicorn server, auth, CORS, body, admin, health and metrics
    ("population",),  # replay of a whole population's export, through the service
    ("feedback",),  # the feedback database, its report, the JWT replay cache
    ("service",),  # one hook call, start to finish
    ("shadow",),  # cards of rules in shadow mode, set aside
    ("cards",),  # findings → cards
    ("markup",),  # record text made inert in cards
    ("clinical",),  # the record as facts: labs, units, code systems, products, the order and dose history
    ("record",),  # prefetch, fetching from fhirServer, only this patient's data, references
    ("engine",),  # rules/ loaded, durable-rules, the rule catalogue
    ("hooks", "config", "logs", "deadline", "metrics"),  # shared by all, importing nothing of the package
]
RANK = {unit: n for n, layer in enumerate(LAYERS) for unit in layer}


def _modules() -> dict[str, Path]:
    return {".".join(("cds_service", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__"): path
            for path in PACKAGE.rglob("*.py")}


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports, anywhere in it (functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_is_in_a_layer():
    units = {_unit(m) for m in MODULES} - {""}
    assert units - set(RANK) == set(), "add new folders and top-level modules to LAYERS"
    assert set(RANK) - units == set(), "LAYERS names a folder or module that no longer exists"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _unit(m)))
def test_imports_point_only_downstream(module):
    upstream = sorted(target for target in GRAPH[module]
                      if _unit(target) and _unit(target) != _unit(module) and RANK[_unit(target)] <= RANK[_unit(module)])
    assert upstream == [], f"{module} imports from its own layer or an earlier one (see LAYERS)"


def test_no_module_imports_itself_round_a_cycle():
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [module, target] if target in path else [module, target]
            if target not in state:
                cycle = visit(target, path + [module])
                if cycle:
                    return cycle
        state[module] = "done"
        return None

    for module in sorted(MODULES):
        cycle = visit(module, []) if module not in state else None
        assert cycle is None, " → ".join(cycle)


def test_the_graph_sees_the_imports_it_checks():
    """The checks above would pass on an empty graph: these edges are known to exist."""
    assert "cds_service.web.app" in GRAPH["cds_service.web.server"]
    assert "cds_service.service" in GRAPH["cds_service.web.app"]
    assert "cds_service.engine.rulebook" in GRAPH["cds_service.clinical.facts"]
    assert "cds_service.deadline" in GRAPH["cds_service.engine.durable_rules"]
