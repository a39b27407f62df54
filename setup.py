"""Builds the compiled wire core (smbdirect_socket/_wire) when a C compiler is there.

Without one, or with SMBDIRECT_NO_EXTENSIONS=1, the package installs without
it and runs the pure-Python path (it logs one line saying so).
"""

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

WIRE = Path("smbdirect_socket") / "_wire"


class OptionalBuildExt(build_ext):
    """A failed compile leaves the pure-Python package, with a warning."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # the compiler failed
            self._skip(exc)

    @staticmethod
    def _skip(exc: Exception) -> None:
        print(f"WARNING: the compiled wire core was not built ({exc}); the pure-Python path will run", file=sys.stderr)


extensions = []
if not os.environ.get("SMBDIRECT_NO_EXTENSIONS"):
    extensions.append(
        Extension(
            "smbdirect_socket._wire._core",
            sources=[str(WIRE / name) for name in ("binding.c", "crc32c.c", "fpdu.c", "smbd.c")],
            depends=[str(WIRE / name) for name in ("crc32c.h", "fpdu.h", "smbd.h", "layout.h")],
            extra_compile_args=["-O2", "-std=c11", "-Wall"],
        )
    )

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt})
