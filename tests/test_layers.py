"""The layers' dependencies point down: no module imports a higher layer.

Every ``import`` in ``aicn/`` (module level or inside a function) is read
with :mod:`ast` and checked against the layer table below.  Modules of one
layer may import each other; a layer that is not in the table fails the
test, so that a new package has to be placed deliberately.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial import unittest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "aicn"

#: Lowest first.  A module belongs to the longest matching prefix.
LAYERS: tuple[tuple[str, ...], ...] = (
    # 0: no aicn dependencies but each other: the domain error, wire types, helpers
    ("aicn", "aicn.errors", "aicn.wire", "aicn.log", "aicn.duration", "aicn.tcp", "aicn.files",
     "aicn.stats", "aicn.jsontext"),
    # 1: libp2p
    ("aicn.p2p",),
    # 2: settings, identity, storage and the data directory's lock
    ("aicn.config", "aicn.identity", "aicn.storage", "aicn.datadir"),
    # 3: calls to model servers and IPFS; facts about the host
    ("aicn.models", "aicn.hostinfo"),
    # 4: the network application
    ("aicn.node",),
    # 5: the HTTP API
    ("aicn.api",),
    # 6: wiring and the command line
    ("aicn.service", "aicn.cli"),
)


def layer_of(module: str) -> int | None:
    """The index in :data:`LAYERS` of ``module`` (None if no layer claims it)."""
    best, best_len = None, -1
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = rank, len(prefix)
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every aicn import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from aicn.node import protocol_pb2``: the names may be modules.
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name == "aicn" or name.startswith("aicn.")]


def violations() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        rank = layer_of(module)
        if rank is None:
            out.append(f"{module}: in no layer (add it to tests/test_layers.py)")
            continue
        for line, imported in imports_of(path, module):
            other = layer_of(imported)
            if other is not None and other > rank:
                out.append(f"{path.relative_to(ROOT)}:{line}: {module} (layer {rank}) imports "
                           f"{imported} (layer {other})")
    return out


def component(module: str) -> str:
    """``aicn.config.reader`` → ``aicn.config``: the unit that must not be in a cycle."""
    return ".".join(module.split(".")[:2])


def component_cycles() -> list[list[str]]:
    """Cycles among top-level components (``aicn.config`` ↔ ``aicn.identity``, say)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        here = component(module)
        for _, imported in imports_of(path, module):
            there = component(imported)
            if there not in (here, "aicn") and here != "aicn":
                graph.setdefault(here, set()).add(there)
    cycles, done = [], set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            cycles.append(trail[trail.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, trail + [node])
        done.add(node)

    for start in sorted(graph):
        visit(start, [])
    return cycles


#: The HTTP server side: only aicn.api may use it (models call model servers
#: with twisted.web's client, which is not a request object).
SERVER_SIDE = ("twisted.web.server", "twisted.web.resource", "twisted.web.static", "klein", "werkzeug")


def server_side_imports() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        if component(module) == "aicn.api":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                if any(name == s or name.startswith(s + ".") for s in SERVER_SIDE):
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    return out


class LayerTests(unittest.TestCase):
    def test_only_the_api_touches_the_http_server(self):
        self.assertEqual(server_side_imports(), [])

    def test_no_upward_imports(self):
        self.assertEqual(violations(), [])

    def test_no_component_imports_another_that_imports_it(self):
        # Same-layer components may use each other, but only one way round.
        self.assertEqual(component_cycles(), [])

    def test_the_check_sees_an_upward_import(self):
        # The walker itself: an upward import in a module is reported.
        self.assertEqual(layer_of("aicn.node.application"), 4)
        self.assertEqual(layer_of("aicn.p2p.pubsub.floodsub"), 1)
        self.assertGreater(layer_of("aicn.api.app"), layer_of("aicn.node"))
        tmp = Path(self.mktemp())
        tmp.mkdir()
        sample = tmp / "sample.py"
        sample.write_text("def f():\n    from aicn.api import app\nfrom . import keys\n")
        found = imports_of(sample, "aicn.p2p.sample")
        self.assertIn((2, "aicn.api.app"), found)
        self.assertIn((3, "aicn.p2p.keys"), found)
