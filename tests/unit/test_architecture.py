"""The package's shape, read from the source with `ast`: its layers and its edges.

Each rule is checked by a small function that is first tried on a synthetic example written here,
so a rule that passes on the real package passes because the package obeys it, not because the
check sees nothing.

Which imports count:
* For import cycles, the imports that run when a module loads (module body, class bodies, ``try``
  and ``if`` blocks) and those under ``if TYPE_CHECKING:``: a circle that only type checking
  closes is still two modules that cannot be understood apart. An import inside a function body
  is deferred to the call and is not an import-time circle, so it is left out of that rule.
* For the layer rules (who may import the server, click, the generated protobuf), every import,
  function-local ones included: deferring an import does not remove the dependency.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "splitnn"
GENERATED = "splitnn.proto"  # protoc's output: not read for names

TOPOLOGY_NAMES = ("shared-head", "round-robin", "splitfed")
TOPOLOGY_REGISTRY = "splitnn.common.topology"

PARTIES = ("client", "attacker", "sim", "experiments", "certs")
# Generated protobuf types stay at the edge, where bytes become domain objects and back.
PROTO_EDGE = frozenset(
    {
        "splitnn.common.codec",  # the to/from pairs
        "splitnn.server.servicer",  # the server's gRPC methods
        "splitnn.server.handlers",  # decode, call the domain, encode
        "splitnn.server.tap",  # publishes TapRecord messages to a colluder
        "splitnn.client.transport",  # the data holder's gRPC calls
        # The wire log is a file of serialized TapRecord frames: reading and writing it is an edge.
        "splitnn.common.wirelog",
        # The attacker's TapStub subscription: its one gRPC client, the attacker's edge.
        "splitnn.attacker.intercept",
    }
)


# --- reading the source --------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One imported `splitnn` module; `on_load`: it runs when the importing module loads."""

    target: str
    on_load: bool


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for __init__)."""
    files = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = path
    return files


def _walk_imports(body: Iterable[ast.stmt], on_load: bool) -> Iterator[tuple[ast.stmt, bool]]:
    """Import statements in `body` with whether each runs on load (TYPE_CHECKING blocks count)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, on_load
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _walk_imports(node.body, False)
        else:  # class bodies, if/try/with/for blocks, except handlers, match cases
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    yield from _walk_imports([child], on_load)
                elif isinstance(child, ast.ExceptHandler | ast.match_case):
                    yield from _walk_imports(child.body, on_load)


def imports_of(source: str, module: str, *, is_package: bool, known: set[str]) -> list[Import]:
    """The `splitnn` modules that `source` (module `module`) imports, resolved against `known`."""
    found = []
    for node, on_load in _walk_imports(ast.parse(source).body, True):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            assert isinstance(node, ast.ImportFrom)
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        found += [
            Import(t, on_load) for t in targets if t == PACKAGE or t.startswith(PACKAGE + ".")
        ]
    return found


def import_graph(root: Path = ROOT) -> dict[str, list[Import]]:
    """Module -> the package modules it imports."""
    files = module_files(root)
    known = set(files)
    return {
        name: imports_of(path.read_text(), name, is_package=path.name == "__init__.py", known=known)
        for name, path in files.items()
    }


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules, or one importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while (top := stack.pop()) != node:
                group.append(top)
            group.append(node)
            if len(group) > 1 or node in graph.get(node, ()):
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def load_time_edges(graph: Mapping[str, list[Import]]) -> dict[str, set[str]]:
    return {
        m: {i.target for i in imports if i.on_load and i.target != m}
        for m, imports in graph.items()
    }


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer_violations(graph: Mapping[str, list[Import]]) -> list[str]:
    """Parties and orchestrators that import the server, and a server that imports a party."""
    found = []
    for module, imports in graph.items():
        for target in {i.target for i in imports}:
            party = any(_under(module, f"{PACKAGE}.{p}") for p in PARTIES)
            if party and _under(target, f"{PACKAGE}.server"):
                found.append(f"{module} imports {target}")
            server = _under(module, f"{PACKAGE}.server")
            if server and any(_under(target, f"{PACKAGE}.{p}") for p in ("client", "attacker")):
                found.append(f"{module} imports {target}")
    return sorted(found)


def click_in_common(sources: Mapping[str, str]) -> list[str]:
    """Modules of splitnn.common whose source imports click (anywhere in the module)."""
    found = []
    for module, source in sources.items():
        if not _under(module, f"{PACKAGE}.common"):
            continue
        for node in ast.walk(ast.parse(source)):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            if any(n == "click" or n.startswith("click.") for n in names):
                found.append(module)
                break
    return sorted(found)


def proto_outside_edge(graph: Mapping[str, list[Import]], edge: frozenset[str]) -> list[str]:
    """Modules outside `edge` (and outside the generated code) that import the generated code."""
    return sorted(
        module
        for module, imports in graph.items()
        if not _under(module, GENERATED)
        and module not in edge
        and any(_under(i.target, GENERATED) for i in imports)
    )


def _docstring_ids(tree: ast.Module) -> set[int]:
    owners = [
        tree,
        *(
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        ),
    ]
    ids = set()
    for owner in owners:
        first = owner.body[0] if owner.body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            ids.add(id(first.value))
    return ids


def topology_spellings(source: str, names: Iterable[str] = TOPOLOGY_NAMES) -> list[str]:
    """String literals (f-string parts included, docstrings not) that spell a topology name."""
    patterns = [re.compile(rf"(?<![\w-]){re.escape(n)}(?![\w-])") for n in names]
    tree = ast.parse(source)
    docstrings = _docstring_ids(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or id(node) in docstrings:
            continue
        text = node.value
        if isinstance(text, str) and any(p.search(text) for p in patterns):
            found.append((node.lineno, f"line {node.lineno}: {text!r}"))
    return [line for _, line in sorted(found)]


# --- the rules, each tried on a made-up case first -----------------------------------------------


def _sources() -> dict[str, str]:
    return {m: p.read_text() for m, p in module_files().items() if not _under(m, GENERATED)}


def test_the_cycle_finder_finds_circles_and_only_circles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": set(), "f": {"f"}}

    assert find_cycles(graph) == [["a", "b", "c"], ["f"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) == []


def test_imports_are_resolved_and_type_checking_ones_count_on_load() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "from . import head\n"
        "from .config import Config\n"
        "from splitnn.common import codec, models\n"
        "if TYPE_CHECKING:\n"
        "    from splitnn.client.group import Member\n"
        "try:\n"
        "    import splitnn.attacker.app\n"
        "except ImportError:\n"
        "    pass\n"
        "def later():\n"
        "    from splitnn.sim import app\n"
    )
    known = {"splitnn.server.head", "splitnn.server.config", "splitnn.common.codec"}

    found = imports_of(source, "splitnn.server.sessions", is_package=False, known=known)

    assert found == [
        Import("splitnn.server.head", True),
        Import("splitnn.server.config", True),
        Import("splitnn.common.codec", True),
        Import("splitnn.common", True),  # `models` is not a module: a name of the package
        Import("splitnn.client.group", True),
        Import("splitnn.attacker.app", True),
        Import("splitnn.sim", False),
    ]
    from_init = imports_of("from .x import y", "splitnn.server", is_package=True, known=set())
    assert from_init == [Import("splitnn.server.x", True)]


def test_the_layer_rules_catch_a_party_that_imports_the_server() -> None:
    graph = {
        "splitnn.sim.cli": [Import("splitnn.server.groups", False)],
        "splitnn.server.app": [Import("splitnn.client.config", True)],
        "splitnn.client.app": [Import("splitnn.common.codec", True)],
        "splitnn.serverless": [Import("splitnn.server", True)],  # not a party: a prefix only
    }

    assert layer_violations(graph) == [
        "splitnn.server.app imports splitnn.client.config",
        "splitnn.sim.cli imports splitnn.server.groups",
    ]
    assert click_in_common(
        {"splitnn.common.a": "def f():\n    import click\n", "splitnn.common.b": "import os",
         "splitnn.common.c": "from click.types import IntRange", "splitnn.sim.cli": "import click"}
    ) == ["splitnn.common.a", "splitnn.common.c"]  # fmt: skip
    assert proto_outside_edge(
        {"splitnn.common.weights": [Import("splitnn.proto.splitnn_pb2", True)],
         "splitnn.common.codec": [Import("splitnn.proto", True)],
         "splitnn.proto.splitnn_pb2_grpc": [Import("splitnn.proto.splitnn_pb2", True)]},
        frozenset({"splitnn.common.codec"}),
    ) == ["splitnn.common.weights"]  # fmt: skip


def test_topology_spellings_are_found_in_strings_but_not_in_docstrings_or_comments() -> None:
    source = (
        '"""A module about splitfed."""\n'
        "# shared-head in a comment\n"
        "def f(topology, k):\n"
        '    """Docstring: round-robin."""\n'
        '    if topology == "splitfed":\n'
        '        return f"{k} holders, round-robin"\n'
        '    return "round-robin-ish is another word", "splitfedx"\n'
    )

    assert topology_spellings(source) == ["line 5: 'splitfed'", "line 6: ' holders, round-robin'"]


def _listed(items: Iterable[str]) -> str:
    return "\n".join(["", *items])


def test_no_import_cycle_in_the_package() -> None:
    cycles = find_cycles(load_time_edges(import_graph()))

    assert cycles == [], "import circles:" + _listed(" <-> ".join(c) for c in cycles)


def test_only_the_topology_registry_spells_a_topology_name() -> None:
    found = [
        f"{module} {spelled}"
        for module, source in _sources().items()
        if module != TOPOLOGY_REGISTRY
        for spelled in topology_spellings(source)
    ]

    assert found == [], f"spelled outside {TOPOLOGY_REGISTRY}:" + _listed(found)


def test_parties_never_import_the_server_nor_the_server_a_party() -> None:
    found = layer_violations(import_graph())

    assert found == [], _listed(found)


def test_common_imports_no_click() -> None:
    found = click_in_common(_sources())

    assert found == [], "import click:" + _listed(found)


def test_generated_protobuf_is_imported_only_at_the_edge() -> None:
    found = proto_outside_edge(import_graph(), PROTO_EDGE)

    assert found == [], "import splitnn.proto outside the edge:" + _listed(found)


@pytest.mark.parametrize("module", sorted(PROTO_EDGE))
def test_every_proto_edge_module_exists(module: str) -> None:
    # A renamed edge module must be renamed here too, not left as a stale allowance.
    assert module in module_files()
