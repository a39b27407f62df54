"""Which path runs is chosen once, at import, and said in one log line when it is the pure-Python one."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import logging
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
from smbdirect_socket._wire import COMPILED, core
print("COMPILED", COMPILED, core is None)
"""


def run(**env: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return (result.stdout + result.stderr).splitlines()


def test_no_extensions_gives_the_pure_python_path_with_one_line() -> None:
    lines = run(SMBDIRECT_NO_EXTENSIONS="1")
    assert "COMPILED False True" in lines
    assert [line for line in lines if "pure-Python" in line] == [
        "INFO SMBDIRECT_NO_EXTENSIONS is set: the pure-Python wire path runs"
    ]


def test_without_the_variable_the_built_core_runs_or_a_warning_says_why() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SMBDIRECT_NO_EXTENSIONS"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    if result.stdout.startswith("COMPILED True"):
        assert "pure-Python" not in result.stderr
    else:
        assert "WARNING the compiled wire core is not built" in result.stderr
