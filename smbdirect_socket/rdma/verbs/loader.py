"""Finding pyverbs: the environment's, or else the system's (it must match the system's rdma-core).

Distributions ship pyverbs for their own Python (Debian's python3-pyverbs);
a virtual environment does not see it, and PyPI's pyverbs builds its own
rdma-core, which does not load against an older system one.  So when the
environment has none that imports, only the ``pyverbs`` package is loaded
from the system's directory.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from ..base import RdmaError

__all__ = ["SYSTEM_PYVERBS", "load_pyverbs"]

#: Where distributions install pyverbs for their own Python (it matches their rdma-core).
SYSTEM_PYVERBS = (Path("/usr/lib/python3/dist-packages"), Path("/usr/lib64/python3/site-packages"))
_PYVERBS_HELP = (
    "pyverbs is not importable: install the one that matches your rdma-core, "
    "Debian/Ubuntu: apt install python3-pyverbs, Fedora/RHEL: dnf install python3-pyverbs"
)

_pyverbs: dict[str, ModuleType] = {}


def load_pyverbs() -> dict[str, ModuleType]:
    """pyverbs' modules; the system's copy if the environment has none that works."""
    if _pyverbs:
        return _pyverbs
    names = ("device", "pd", "cq", "qp", "mr", "wr", "addr", "pyverbs_error")
    try:
        modules = {name: importlib.import_module(f"pyverbs.{name}") for name in names}
    except ImportError as first:
        for directory in SYSTEM_PYVERBS:
            init = directory / "pyverbs" / "__init__.py"
            if not init.exists():
                continue
            for name in [n for n in sys.modules if n == "pyverbs" or n.startswith("pyverbs.")]:
                del sys.modules[name]
            spec = importlib.util.spec_from_file_location(
                "pyverbs", init, submodule_search_locations=[str(init.parent)]
            )
            assert spec is not None and spec.loader is not None
            package = importlib.util.module_from_spec(spec)
            sys.modules["pyverbs"] = package
            spec.loader.exec_module(package)
            try:
                modules = {name: importlib.import_module(f"pyverbs.{name}") for name in names}
            except ImportError as exc:
                raise RdmaError(errno.ENOPKG, f"{_PYVERBS_HELP} ({exc})") from None
            break
        else:
            raise RdmaError(errno.ENOPKG, f"{_PYVERBS_HELP} ({first})") from None
    _pyverbs.update(modules)
    return _pyverbs
