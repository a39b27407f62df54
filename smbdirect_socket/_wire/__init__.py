"""The compiled wire core: CRC32C, iWARP FPDUs and SMB-Direct batches in C.

``core`` is the extension module, or None when the pure-Python path runs:
``SMBDIRECT_NO_EXTENSIONS=1`` in the environment, or a build without a C
compiler.  :data:`COMPILED` says which; one log line says why when it is off.
The C sources (``*.c``, ``*.h``) are plain C, fuzzed and sanitized on their own
(``fuzz/``); ``binding.c`` is the only file that includes Python.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

__all__ = ["COMPILED", "core"]

_log = logging.getLogger("smbdirect_socket")

core: ModuleType | None = None
if os.environ.get("SMBDIRECT_NO_EXTENSIONS"):
    _log.info("SMBDIRECT_NO_EXTENSIONS is set: the pure-Python wire path runs")
else:
    try:
        from . import _core as core
    except ImportError as exc:
        _log.warning("the compiled wire core is not built (%s): the pure-Python wire path runs", exc)

#: Whether the compiled wire core runs.
COMPILED = core is not None
