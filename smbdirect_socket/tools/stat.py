"""smbdirect stat: live SMB-Direct connections and their statistics, like `ss -i`.

Asks the statistics socket of every process that serves one (the gateway,
`smbdirect run --stat`, a program that called
smbdirect_socket.stats.serve()), or of the one named: a socket path or a
process id.  Prints a line per connection and its counters below it, or with
--json the processes' documents as they answered.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from .. import stats
from .common import CommandError, Parser, run_command

__all__ = ["add_stat", "format_table"]


def add_stat(commands: argparse._SubParsersAction[Parser]) -> None:
    parser = commands.add_parser(
        "stat",
        help="live SMB-Direct connections and their statistics (like ss -i)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "socket",
        nargs="?",
        metavar="SOCKET|PID",
        help=f"one process: its statistics socket, or its pid (default: every socket in {stats.runtime_dir()})",
    )
    parser.add_argument("--json", action="store_true", help="a JSON list of the processes' documents")
    parser.set_defaults(command=_stat)


def _nobody() -> CommandError:
    return CommandError(
        f"no process serves statistics in {stats.runtime_dir()} "
        "(start `smbdirect gateway`, or call smbdirect_socket.stats.serve())"
    )


def _paths(chosen: str | None) -> list[Path]:
    if chosen is None:
        found = sorted(stats.runtime_dir().glob("*.sock"), key=lambda path: path.name)
        if not found:
            raise _nobody()
        return found
    if chosen.isdigit():
        return [stats.runtime_dir() / f"{chosen}.sock"]
    return [Path(chosen)]


def _stat(args: argparse.Namespace) -> int:
    def body() -> int:
        documents = []
        for path in _paths(args.socket):
            try:
                documents.append(stats.query(path))
            except (ConnectionRefusedError, FileNotFoundError) as exc:
                if args.socket is not None:  # asked for this one: say so
                    raise CommandError(f"{path}: {os.strerror(exc.errno or 0)} (is the process running?)") from None
                path.unlink(missing_ok=True)  # left by a process that was killed: nobody answers there
        if not documents:  # every socket was stale
            raise _nobody()
        if args.json:
            print(json.dumps(documents, indent=2))
        else:
            print(format_table(documents), end="")
        return 0

    return run_command("smbdirect stat", body)


def format_table(documents: list[dict[str, Any]]) -> str:
    """The documents as ``ss -i`` shows sockets: a line each, its counters indented below."""
    lines = []
    for document in documents:
        lines.append(f"{document['name']} (pid {document['pid']})")
        for summary in document["summaries"]:
            lines.append(
                "  " + " ".join(str(value) if key == "gateway" else f"{key}:{value}" for key, value in summary.items())
            )
        connections = document["connections"]
        if not connections:
            lines.append("  no connections")
            continue
        width = max(len(c["local"]) for c in connections), max(len(c["peer"]) for c in connections)
        lines.append(f"  {'State':<8} {'Kind':<8} {'Local':<{width[0]}} {'Peer':<{width[1]}} Age")
        for connection in connections:
            lines.append(
                f"  {connection['state']:<8} {connection['kind']:<8} {connection['local']:<{width[0]}} "
                f"{connection['peer']:<{width[1]}} {connection['age']:.1f}s"
            )
            info = connection["info"]
            counters = [
                f"credits send {info['send_credits']}"
                f" receive {info['receive_credits']}/{info['receive_credit_target']}",
                f"sizes send {info['max_send_size']}/{info['max_fragmented_send_size']}"
                f" receive {info['max_receive_size']}/{info['max_fragmented_receive_size']}"
                f" rw {info['max_read_write_size']}",
                f"bytes_sent:{info['bytes_sent']} bytes_received:{info['bytes_received']}",
                f"messages_sent:{info['messages_sent']} messages_received:{info['messages_received']}",
                f"fragments_sent:{info['fragments_sent']} fragments_received:{info['fragments_received']}",
                f"keepalives_sent:{info['keepalives_sent']} credit_messages_sent:{info['credit_messages_sent']}",
                f"rdma_reads:{info['rdma_reads']} rdma_writes:{info['rdma_writes']} errors:{info['errors']}",
            ]
            extra = {key: value for key, value in connection.items() if key not in _COLUMNS}
            if extra:
                counters.append(" ".join(f"{key}:{value}" for key, value in extra.items()))
            lines.append("\t " + " ".join(counters))
    return "".join(line + "\n" for line in lines)


_COLUMNS = {"id", "kind", "local", "peer", "age", "state", "info"}
