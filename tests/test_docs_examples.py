"""The examples in README.md and docs/*.md run as written.

A fenced ```python block right after a line ``<!-- tested -->`` runs against
``smbdirect listen --echo``; one after ``<!-- tested with samba -->`` runs
through the README's ``smbdirect run`` line to the gateway in front of
``smbdirect samba -v``, whose log then shows the session.
The examples name port 5445; the servers here listen on free ports, which
replace it.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import COMMAND, TIMEOUT, listening, needs_samba, samba_with_gateway

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def examples(marker: str) -> list[Any]:
    found = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines):
            if line.strip() != marker:
                continue
            assert lines[number + 1] == "```python", f"{page.name}:{number + 1}: {marker} is not before a python block"
            end = lines.index("```", number + 2)
            found.append(pytest.param("\n".join(lines[number + 2 : end]) + "\n", id=f"{page.name}:{number + 3}"))
    return found


ECHO_EXAMPLES = examples("<!-- tested -->")
SAMBA_EXAMPLES = examples("<!-- tested with samba -->")


def test_the_first_examples_are_tested() -> None:
    pages = {str(example.id).split(":")[0] for example in ECHO_EXAMPLES + SAMBA_EXAMPLES}
    assert {"README.md", "index.md"} <= pages


@pytest.fixture(scope="module")
def echo_port() -> Iterator[str]:
    with listening("--echo", "127.0.0.1:0") as (_, address):
        yield address.rsplit(":", 1)[1]


@pytest.mark.parametrize("code", ECHO_EXAMPLES)
def test_example_against_the_echo_server(code: str, echo_port: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code.replace("5445", echo_port))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert "b'hello'" in result.stdout


def readme_run_line() -> list[str]:
    """The arguments of the README's ``smbdirect run`` line, as a user types them."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("smbdirect run "):
            return line.split("#")[0].split()[2:]
    raise AssertionError("README.md has no `smbdirect run` line")


def test_the_readme_runs_an_unmodified_script_mapped_to_the_gateway() -> None:
    args = readme_run_line()
    assert "--map" in args and "445=5445" in args and args[-1] == "smb_hello.py"


@needs_samba
@pytest.mark.parametrize("code", SAMBA_EXAMPLES)
def test_example_through_run_to_samba(code: str, tmp_path: Path) -> None:
    with samba_with_gateway("-v") as (samba, _, share, port):
        script = tmp_path / "smb_hello.py"
        script.write_text(code.replace("5445", str(port)))
        args = [arg.replace("5445", str(port)).replace("smb_hello.py", str(script)) for arg in readme_run_line()]
        result = subprocess.run([*COMMAND, "run", *args], capture_output=True, text=True, timeout=TIMEOUT)
        assert (result.returncode, result.stdout) == (0, "hello over SMB-Direct\n"), result.stderr
        assert (share / "hello.txt").read_text() == "hello over SMB-Direct\n"
        assert f"smbdirect run: 127.0.0.1:445: SMB-Direct (port 445 is routed; mapped to {port})" in result.stderr
        # The gateway's line for the session (8 MiB messages, as --large-messages asked),
        # logged once it sees the client's end: on a busy machine that may take a moment.
        assert samba.stderr is not None
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in samba.stderr], daemon=True).start()  # type: ignore[union-attr]
        log = ""
        ended = None
        deadline = time.monotonic() + TIMEOUT
        while ended is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            log += line
            ended = re.search(
                r"client 127\.0\.0\.1:\d+: session ended: closed by the client; after .* messages up to (\d+)", line
            )
        samba.send_signal(signal.SIGINT)
        samba.wait(timeout=TIMEOUT)
    assert ended and int(ended.group(1)) >= 8 << 20, log
