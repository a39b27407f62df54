"""No module imports a layer above its own (docs/architecture.md).

Every module under ``smbdirect_socket/`` is parsed with :mod:`ast` and given a
layer by :data:`MODULES`; every import in it, at the top or inside a function,
must reach its own layer or one :data:`MAY_IMPORT` lists for it.  A lazy
import that breaks the rule is allowed only where :data:`OPT_INS` names it.
A module missing from the table fails the test: a new module gets its layer
here, where a reviewer sees it.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

import smbdirect_socket

# The layers from the bottom up.
ORDER = ["foundation", "protocol", "runtime", "engine", "connection", "sockets", "programs", "smb", "commands"]

# What each layer may import besides itself.  The protocol and the engine sit
# side by side: neither imports the other (nor does the protocol import trio);
# the connection joins them.  smb/ sits beside the sockets: the core imports
# none of it, it uses the core as any program would.
MAY_IMPORT: dict[str, set[str]] = {
    "foundation": set(),
    "protocol": {"foundation"},
    "runtime": {"foundation"},
    "engine": {"foundation", "runtime"},
    "connection": {"foundation", "protocol", "runtime", "engine"},
    "sockets": {"foundation", "protocol", "runtime", "engine", "connection"},
    "programs": {"foundation", "protocol", "runtime", "engine", "connection", "sockets"},
    "smb": {"foundation", "protocol", "runtime", "engine", "connection", "sockets", "programs"},
    "commands": {"foundation", "protocol", "runtime", "engine", "connection", "sockets", "programs", "smb"},
}

# Module (relative to the package; a package covers its submodules) -> layer.
# "" is the package's own __init__, which loads its names lazily.
MODULES = {
    "constants": "foundation",
    "errors": "foundation",
    "layout": "foundation",
    "_wire": "foundation",
    "_wire.gen_layout": "commands",
    "parameters": "protocol",
    "pdu": "protocol",
    "reassembly": "protocol",
    "credits": "protocol",
    "protocol": "protocol",
    "testing": "protocol",
    "lifecycle": "protocol",  # the socket's state machine: sans-IO
    "_tasks": "runtime",
    "engine_thread": "runtime",
    "readiness": "runtime",
    "_addresses": "runtime",
    "_event_loops": "runtime",  # which event loop runs, for errors that name the right front door
    "rdma": "engine",
    "connection": "connection",
    "options": "connection",  # option codes and the statistics a connection reports
    "trio": "sockets",
    "blocking": "sockets",
    "asyncio": "sockets",  # the asyncio front door, over the trio socket on the engine thread
    "patching": "programs",
    "run": "programs",
    "routing": "programs",
    "stats": "programs",  # the statistics socket: what smbdirect stat asks
    "": "programs",
    "smb": "smb",
    "cli": "commands",
    "tools": "commands",
    "tools.common": "programs",  # argument parsing and one-line errors, shared with run
    "demo": "commands",
}

# Outside packages that belong to a layer (the others, like attrs, any layer may use).
EXTERNAL = {"trio": "runtime"}

# Lazy imports (inside a function) allowed across the rule, and why.
OPT_INS = {
    ("trio", "routing"): "trio.SMBDirectSocketFactory, a documented name, lives with the rest of the routing",
    ("patching", "smb.clients"): "patch(fit_smb_clients=True) fits the SMB clients' sizes, its documented opt-in",
}


def layer_of(name: str, internal: bool) -> str | None:
    """The layer of module ``name`` (relative when ``internal``), None if it has none."""
    if not internal:
        return EXTERNAL.get(name.partition(".")[0])
    if not name:
        return MODULES[""]
    parts = name.split(".")
    while parts:
        if (layer := MODULES.get(".".join(parts))) is not None:
            return layer
        parts.pop()
    return None


class _Imports(ast.NodeVisitor):
    """Each import of one module: (target, internal, line, lazy)."""

    def __init__(self, package: str, module: str, is_package: bool, modules: set[str]) -> None:
        self.package = package
        # The package the module's relative imports start from.
        parts = module.split(".") if module else []
        self.base = parts if is_package else parts[:-1]
        self.modules = modules
        self.depth = 0
        self.found: list[tuple[str, bool, int, bool]] = []

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def _add(self, absolute: list[str], line: int) -> None:
        if absolute[:1] == [self.package]:
            self.found.append((".".join(absolute[1:]), True, line, self.depth > 0))
        else:
            self.found.append((".".join(absolute), False, line, self.depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name.split("."), node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            start = self.base[: len(self.base) - (node.level - 1)]
            source = [self.package, *start, *(node.module.split(".") if node.module else [])]
        else:
            source = (node.module or "").split(".")
        for alias in node.names:
            # "from . import x" may name a submodule; otherwise it is an attribute of the source.
            submodule = [*source, alias.name]
            internal = submodule[:1] == [self.package] and ".".join(submodule[1:]) in self.modules
            self._add(submodule if internal else source, node.lineno)


def modules_of(root: Path) -> dict[str, tuple[Path, bool]]:
    """Every module under the package folder ``root``: relative name -> (file, is a package)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def violations(root: Path) -> list[str]:
    """Every import under the package folder ``root`` that breaks the layering, as readable lines."""
    package = root.name
    modules = modules_of(root)
    problems = []
    for module, (path, is_package) in modules.items():
        layer = layer_of(module, internal=True)
        shown = f"{package}.{module}" if module else package
        if layer is None:
            problems.append(f"{shown}: not in the layer table")
            continue
        visitor = _Imports(package, module, is_package, set(modules))
        visitor.visit(ast.parse(path.read_text(), str(path)))
        for target, internal, line, lazy in visitor.found:
            target_layer = layer_of(target, internal)
            if target_layer is None or target_layer == layer or target_layer in MAY_IMPORT[layer]:
                continue
            if internal and lazy and (module, target) in OPT_INS:
                continue
            name = f"{package}.{target}" if internal and target else package if internal else target
            how = "lazily " if lazy else ""
            problems.append(f"{shown}:{line} {how}imports {name}: {layer} may not import {target_layer}")
    return problems


def test_the_package_follows_its_layers() -> None:
    assert violations(Path(smbdirect_socket.__file__).parent) == []


def test_the_table_only_looks_down() -> None:
    for layer, allowed in MAY_IMPORT.items():
        assert allowed <= set(ORDER[: ORDER.index(layer)]), layer
    assert set(MODULES.values()) | set(EXTERNAL.values()) <= set(ORDER)
    assert "smb" not in set().union(*(MAY_IMPORT[layer] for layer in ORDER[: ORDER.index("smb")]))


def test_opt_ins_name_real_lazy_imports() -> None:
    """An opt-in that no longer matches an import is stale: remove it."""
    root = Path(smbdirect_socket.__file__).parent
    modules = modules_of(root)
    for module, target in OPT_INS:
        path, is_package = modules[module]
        visitor = _Imports(root.name, module, is_package, set(modules))
        visitor.visit(ast.parse(path.read_text()))
        assert any(found == target and lazy for found, _, _, lazy in visitor.found), (module, target)


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def bad_package(tmp_path: Path) -> Path:
    """A package that breaks each rule once, and keeps it once."""
    return write_package(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "constants.py": "",
            "connection.py": "",
            "smb/__init__.py": "",
            "smb/clients.py": "",
            "protocol.py": """
                from . import constants
                def later():
                    import trio.lowlevel
            """,
            "pdu.py": "from .connection import Connection\n",
            "credits.py": "from pkg.smb import clients\n",
            "patching.py": """
                from .smb.clients import fit_sizes
                def patch():
                    from .smb.clients import fit_sizes
            """,
            "rdma/__init__.py": "",
            "rdma/soft/provider.py": "from ...protocol import later\n",
            "newthing.py": "",
        },
    )


def test_a_violation_fails(bad_package: Path) -> None:
    assert sorted(violations(bad_package)) == [
        "pkg.credits:1 imports pkg.smb.clients: protocol may not import smb",
        "pkg.newthing: not in the layer table",
        "pkg.patching:2 imports pkg.smb.clients: programs may not import smb",  # the opt-in is lazy only
        "pkg.pdu:1 imports pkg.connection: protocol may not import connection",
        "pkg.protocol:4 lazily imports trio.lowlevel: protocol may not import runtime",
        "pkg.rdma.soft.provider:1 imports pkg.protocol: engine may not import protocol",
    ]
