"""smbdirect bench plot: the intervals of one or more ``smbdirect bench --json`` results, as a PNG.

    smbdirect bench plot RESULT.json [RESULT.json ...] -o FILE.png

Throughput runs are drawn as the rate of each interval (Gbit/s, 10^9 bits a
second) over time, latency runs as each interval's mean round trip with its
minimum and 99th percentile shaded (microseconds); one line per run and stream, named after
its file.  Needs matplotlib: ``pip install 'smbdirect-socket[plot]'``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from . import measure
from .common import CommandError, Parser, run_command

__all__ = ["main", "plot", "require_matplotlib"]

PROG = "smbdirect bench plot"


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CommandError("plotting needs matplotlib: pip install 'smbdirect-socket[plot]'") from None


def _describe(document: dict[str, Any]) -> str:
    test = document["test"]
    if test["mode"].startswith("rdma"):
        return f"{test['mode']}, {test['length_bytes']} B"
    framing = "byte stream" if test.get("bytestream") else "framed"
    return f"{test['mode']}, {test['length_bytes']} B {framing}"


def plot(runs: Sequence[tuple[str, dict[str, Any]]], path: str, title: str | None = None) -> None:
    """Draw ``runs`` (a label and a bench result each) into the PNG ``path``."""
    require_matplotlib()
    if not any(document["intervals"] for _, document in runs):
        raise CommandError("nothing to draw: no intervals (run smbdirect bench with -i above 0)")
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    from matplotlib import pyplot

    rates = [(label, d) for label, d in runs if d["test"]["mode"] != "latency"]
    latencies = [(label, d) for label, d in runs if d["test"]["mode"] == "latency"]
    rows = [kind for kind, chosen in (("rate", rates), ("latency", latencies)) if chosen]
    figure, axes = pyplot.subplots(len(rows), 1, figsize=(9, 3.6 * len(rows)), squeeze=False)
    for axis, kind in zip(axes[:, 0], rows, strict=True):
        for label, document in rates if kind == "rate" else latencies:
            streams: dict[str, list[dict[str, Any]]] = {}
            for record in document["intervals"]:
                streams.setdefault(record["stream"], []).append(record)
            for stream, records in streams.items():
                name = f"{label} ({_describe(document)}; {stream.replace('_', ' ')})"
                if kind == "rate":  # each interval's rate across its interval
                    edges = [records[0]["start_seconds"], *(r["end_seconds"] for r in records)]
                    axis.stairs([r["bits_per_second"] / 1e9 for r in records], edges, label=name, linewidth=2)
                    continue
                measured = [r for r in records if r.get("round_trips")]
                middles = [(r["start_seconds"] + r["end_seconds"]) / 2 for r in measured]
                (line,) = axis.plot(middles, [r["mean_microseconds"] for r in measured], marker="o", label=name)
                axis.fill_between(
                    middles,
                    [r["min_microseconds"] for r in measured],
                    [r["p99_microseconds"] for r in measured],
                    color=line.get_color(),
                    alpha=0.15,
                )
        axis.set_xlabel("time (s)")
        axis.set_ylabel("Gbit/s (10^9 bits a second)" if kind == "rate" else "round trip, mean (us; min to p99 shaded)")
        axis.set_xlim(left=0)
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    axes[0, 0].set_title(title or "smbdirect bench")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    pyplot.close(figure)


def _load(path: str) -> dict[str, Any]:
    try:
        with open(path) as file:
            document = json.load(file)
    except ValueError as exc:
        raise CommandError(f"{path}: not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("schema") != measure.SCHEMA or "intervals" not in document:
        raise CommandError(f"{path}: not an smbdirect bench --json result")
    return document


def _run(args: argparse.Namespace) -> None:
    require_matplotlib()
    runs = [(Path(path).stem, _load(path)) for path in args.results]
    plot(runs, args.output, args.title)


def main(argv: Sequence[str]) -> int:
    parser = Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", metavar="RESULT.json", help="results of smbdirect bench --json FILE")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.png", help="the PNG to write")
    parser.add_argument("--title", default=None, help="the figure's title (smbdirect bench)")
    args = parser.parse_args(argv)
    return run_command(PROG, partial(_run, args))
