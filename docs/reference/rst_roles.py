"""A griffe extension for the API reference: the docstrings' reST roles as Markdown.

The docstrings are written for the reader of the source, with Sphinx roles
(:func:`name`, :class:`~package.module.Name`); mkdocstrings renders Markdown,
so each role becomes inline code of the name (its last part after ``~``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|exc|data|obj|const):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    name = match.group(2)
    return f"`{name.rsplit('.', 1)[-1] if match.group(1) else name}`"


def _rewrite(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        obj.docstring.value = _ROLE.sub(_code, obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _rewrite(member)  # type: ignore[arg-type]


class RstRoles(griffe.Extension):
    # Once the package is loaded: other extensions (griffe-sphinx) add docstrings too.
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _rewrite(pkg)
