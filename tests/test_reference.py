"""The API reference (docs/reference/) covers every public name, each with a docstring.

The pages render modules with mkdocstrings (``::: module``, optionally with a
``members:`` list); this reads them the same way, through griffe, and checks
what they show.  ``make docs`` checks that they build without a warning.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

griffe = pytest.importorskip("griffe")

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs" / "reference").glob("*.md"))


def rendered() -> dict[str, list[str] | None]:
    """Each module the reference renders, and its members (None: every public one)."""
    modules: dict[str, list[str] | None] = {}
    for page in PAGES:
        for block in re.split(r"(?m)^(?=::: )", page.read_text())[1:]:
            lines = block.splitlines()
            name = lines[0].removeprefix("::: ").strip()
            if "members: false" in block:
                modules[name] = []
            elif "members:" in block:
                modules[name] = re.findall(r"(?m)^ {8}- (\w+)$", block)
            else:
                modules[name] = None
    return modules


@pytest.fixture(scope="module")
def package() -> griffe.Module:
    loaded: griffe.Module = griffe.load(
        "smbdirect_socket",
        search_paths=[str(ROOT)],
        extensions=griffe.load_extensions("griffe_sphinx"),
        resolve_aliases=True,
        resolve_external=False,
    )
    return loaded


def shown(module: griffe.Object, members: list[str] | None) -> list[griffe.Object]:
    names = [name for name, member in module.members.items() if member.is_public] if members is None else members
    objects = []
    for name in names:
        member = module.members[name]
        objects.append(member.final_target if member.is_alias else member)
    return objects


def test_every_shown_name_has_a_docstring(package: griffe.Module) -> None:
    missing = []
    for name, members in rendered().items():
        module = package if name == "smbdirect_socket" else package[name.removeprefix("smbdirect_socket.")]
        if not module.docstring:
            missing.append(name)
        for obj in shown(module, members):
            if not obj.docstring:
                missing.append(obj.path)
            if obj.is_class:
                for member_name, member in obj.members.items():
                    if member_name.startswith("_") or member.is_alias or member.is_attribute:
                        continue  # fields: documented by the class (or a #: comment)
                    if not member.docstring:
                        missing.append(member.path)
    assert not missing, "public names without a docstring: " + ", ".join(missing)


def test_every_exported_name_is_in_the_reference() -> None:
    import smbdirect_socket

    modules = rendered()
    for name in smbdirect_socket.__all__:
        defined_in = getattr(smbdirect_socket, name).__module__ if callable(getattr(smbdirect_socket, name)) else None
        candidates = [m for m in modules if defined_in in (None, m)]
        assert any(
            (modules[m] is None and name in getattr(importlib.import_module(m), "__all__", [name]))
            or name in (modules[m] or [])
            for m in candidates
        ), f"{name} is not in docs/reference/"
    for front_door in ("smbdirect_socket.trio", "smbdirect_socket.asyncio", "smbdirect_socket.blocking"):
        assert modules.get(front_door, []) is None, f"{front_door} is not rendered whole"
