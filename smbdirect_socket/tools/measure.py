"""The measuring code of ``smbdirect bench`` and of benchmarks/: one number, one meaning.

Everything is measured in bytes and seconds (``time.perf_counter``) and
recorded with the unit in the field's name: ``bytes``, ``seconds``,
``bytes_per_second``, ``bits_per_second``, ``microseconds``.  Printed
figures use fixed prefixes: ``MB/s`` is 10^6 bytes a second, ``Gbit/s`` 10^9
bits a second (as iperf3), ``MiB`` 2^20 bytes, ``us`` microseconds.

* :class:`Meter` counts bytes and operations, cut into intervals, for
  throughput;
* :class:`RoundTrips` keeps every round trip's time, cut into intervals, for
  latency (ib_send_lat's statistics: minimum, median, mean, percentiles,
  maximum);
* :class:`Comparison` is one benchmark case against its baseline measured in
  the same run, printed as a line and recorded with its unit in the field
  names;
* :func:`run_metadata` says what ran: versions, the compiled wire core, the host.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TextIO

import attrs

__all__ = [
    "BYTES_PER_SECOND",
    "MICROSECONDS",
    "MILLISECONDS",
    "SCHEMA",
    "Comparison",
    "Interval",
    "LatencyInterval",
    "Meter",
    "RoundTrips",
    "Unit",
    "benchmark_document",
    "dump_json",
    "format_bytes",
    "format_rate",
    "latency_statistics",
    "now",
    "run_metadata",
    "throughput_record",
    "write_json",
]

#: The ``schema`` field of every JSON document written here.
SCHEMA: Final = "smbdirect-measure/1"

now: Final[Callable[[], float]] = time.perf_counter


# ---- units -----------------------------------------------------------------------------------


@attrs.frozen
class Unit:
    """How a figure measured in SI units (bytes/s, seconds) is printed and recorded.

    ``field`` is the suffix of its JSON fields (``smbdirect_bytes_per_second``);
    ``record`` turns the measured value into that unit, ``show`` into ``label``.
    """

    field: str
    label: str
    record_scale: float
    show_scale: float
    higher_is_better: bool

    def record(self, value: float) -> float:
        return value * self.record_scale

    def show(self, value: float) -> float:
        return value * self.show_scale


#: A rate, measured in bytes a second, printed in MB/s (10^6 bytes a second).
BYTES_PER_SECOND: Final = Unit("bytes_per_second", "MB/s", 1.0, 1e-6, True)
#: A duration measured in seconds, recorded and printed in microseconds.
MICROSECONDS: Final = Unit("microseconds", "us", 1e6, 1e6, False)
#: A duration measured in seconds, recorded and printed in milliseconds.
MILLISECONDS: Final = Unit("milliseconds", "ms", 1e3, 1e3, False)


def format_bytes(count: float) -> str:
    """``count`` bytes with a binary prefix: ``512 B``, ``1.50 KiB``, ``123.4 MiB``."""
    for prefix, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            value = count / scale
            return f"{value:.2f} {prefix}" if value < 100 else f"{value:.1f} {prefix}"
    return f"{count:.0f} B"


def format_rate(bytes_per_second: float) -> str:
    """A rate in bits a second with a decimal prefix, as iperf3 prints it: ``941 Mbit/s``."""
    bits = bytes_per_second * 8
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if bits >= scale:
            value = bits / scale
            return f"{value:.2f} {prefix}bit/s" if value < 100 else f"{value:.1f} {prefix}bit/s"
    return f"{bits:.0f} bit/s"


def throughput_record(count: int, seconds: float, operations: int | None = None) -> dict[str, float | int]:
    """``count`` bytes in ``seconds`` as recorded: bytes, seconds, both rates (and operations)."""
    rate = count / seconds if seconds > 0 else 0.0
    record: dict[str, float | int] = {
        "bytes": count,
        "seconds": seconds,
        "bytes_per_second": rate,
        "bits_per_second": rate * 8,
    }
    if operations is not None:
        record["operations"] = operations
    return record


# ---- throughput ------------------------------------------------------------------------------


@attrs.frozen
class Interval:
    """Bytes and operations between two moments, seconds since the meter started."""

    start: float
    end: float
    bytes: int
    operations: int

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def record(self) -> dict[str, float | int]:
        return {"start_seconds": self.start, "end_seconds": self.end} | throughput_record(
            self.bytes, self.seconds, self.operations
        )

    def line(self, tag: str = "") -> str:
        """``  0.00-1.00   s   123.4 MiB   1.03 Gbit/s   129.4 MB/s``, then ``tag``."""
        text = (
            f"{self.start:6.2f}-{self.end:<6.2f} s  {format_bytes(self.bytes):>10}  "
            f"{format_rate(self.bytes_per_second):>13}  {BYTES_PER_SECOND.show(self.bytes_per_second):9.1f} MB/s"
        )
        return f"{text}  {tag}".rstrip()


class Meter:
    """Bytes moved since :meth:`start`, cut into intervals of ``interval`` seconds (0: none).

    :meth:`add` only adds, so it may sit in a hot loop; :meth:`cut` closes the
    current interval (an interval task calls it every ``interval`` seconds).
    """

    def __init__(self, interval: float = 0.0) -> None:
        self.interval = interval
        self.started = 0.0
        self.bytes = 0
        self.operations = 0
        self.intervals: list[Interval] = []
        self._cut_at = (0.0, 0, 0)  # when the current interval began: time, bytes, operations

    def start(self, at: float | None = None) -> None:
        self.started = now() if at is None else at
        self.bytes = self.operations = 0
        self.intervals = []
        self._cut_at = (self.started, 0, 0)

    def add(self, count: int, operations: int = 1) -> None:
        self.bytes += count
        self.operations += operations

    def elapsed(self, at: float | None = None) -> float:
        return (now() if at is None else at) - self.started

    def running(self, seconds: float) -> bool:
        """Whether less than ``seconds`` have passed since :meth:`start`."""
        return now() - self.started < seconds

    def cut(self, at: float | None = None) -> Interval:
        """Close the current interval at ``at`` (now) and begin the next."""
        at = now() if at is None else at
        began, count, operations = self._cut_at
        interval = Interval(began - self.started, at - self.started, self.bytes - count, self.operations - operations)
        self.intervals.append(interval)
        self._cut_at = (at, self.bytes, self.operations)
        return interval

    def total(self, at: float | None = None) -> Interval:
        """Everything from the start to ``at`` (now), as one interval."""
        return Interval(0.0, self.elapsed(at), self.bytes, self.operations)

    @property
    def bytes_per_second(self) -> float:
        return self.total().bytes_per_second


# ---- latency ---------------------------------------------------------------------------------


def _percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted values (as perftest reports them)."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def latency_statistics(samples: Iterable[float]) -> dict[str, float | int]:
    """Round-trip times in seconds as recorded: their count and statistics in microseconds."""
    ordered = sorted(samples)
    if not ordered:
        return {"round_trips": 0}
    mean = sum(ordered) / len(ordered)
    deviation = math.sqrt(sum((s - mean) ** 2 for s in ordered) / len(ordered))
    scale = MICROSECONDS.record_scale
    return {
        "round_trips": len(ordered),
        "min_microseconds": ordered[0] * scale,
        "median_microseconds": _percentile(ordered, 0.5) * scale,
        "mean_microseconds": mean * scale,
        "p99_microseconds": _percentile(ordered, 0.99) * scale,
        "p99_9_microseconds": _percentile(ordered, 0.999) * scale,
        "max_microseconds": ordered[-1] * scale,
        "stdev_microseconds": deviation * scale,
    }


@attrs.frozen
class LatencyInterval:
    """The round trips that ended between two moments, seconds since the start."""

    start: float
    end: float
    samples: tuple[float, ...]

    def record(self) -> dict[str, float | int]:
        return {"start_seconds": self.start, "end_seconds": self.end} | latency_statistics(self.samples)

    def line(self) -> str:
        stats = self.record()
        if not self.samples:
            return f"{self.start:6.2f}-{self.end:<6.2f} s  {0:>9} round trips"
        return (
            f"{self.start:6.2f}-{self.end:<6.2f} s  {stats['round_trips']:>9} round trips  "
            f"mean {stats['mean_microseconds']:8.1f} us  min {stats['min_microseconds']:8.1f} us  "
            f"max {stats['max_microseconds']:9.1f} us"
        )


class RoundTrips:
    """Every round trip's time in seconds, cut into intervals like :class:`Meter`."""

    def __init__(self, interval: float = 0.0) -> None:
        self.interval = interval
        self.started = 0.0
        self.samples = array("d")
        self.intervals: list[LatencyInterval] = []
        self._cut_at = (0.0, 0)

    def start(self, at: float | None = None) -> None:
        self.started = now() if at is None else at
        self.samples = array("d")
        self.intervals = []
        self._cut_at = (self.started, 0)

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)

    def running(self, seconds: float) -> bool:
        return now() - self.started < seconds

    def cut(self, at: float | None = None) -> LatencyInterval:
        at = now() if at is None else at
        began, index = self._cut_at
        interval = LatencyInterval(began - self.started, at - self.started, tuple(self.samples[index:]))
        self.intervals.append(interval)
        self._cut_at = (at, len(self.samples))
        return interval

    def statistics(self) -> dict[str, float | int]:
        return latency_statistics(self.samples)


# ---- a case against its baseline ------------------------------------------------------------


@attrs.frozen
class Comparison:
    """One benchmark case: our figure and the baseline's, measured in the same run.

    Values are in SI units (bytes a second, seconds); ``unit`` says how they
    are printed and recorded.  ``ratio`` is ours over the baseline's.
    """

    case: str
    ours: float
    baseline: float
    unit: Unit
    ours_name: str = "smbdirect"
    baseline_name: str = "tcp"
    target: str | None = None

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else math.nan

    def record(self) -> dict[str, Any]:
        field = self.unit.field
        record: dict[str, Any] = {
            "case": self.case,
            f"{self.ours_name}_{field}": self.unit.record(self.ours),
            f"{self.baseline_name}_{field}": self.unit.record(self.baseline),
            "ratio": self.ratio,
            "higher_is_better": self.unit.higher_is_better,
        }
        if self.target is not None:
            record["target"] = self.target
        return record

    def line(self, width: int = 30) -> str:
        unit = self.unit
        text = (
            f"{self.case:<{width}} {self.ours_name} {unit.show(self.ours):10.1f} {unit.label:<4}  "
            f"{self.baseline_name} {unit.show(self.baseline):10.1f} {unit.label:<4}  ratio {self.ratio:5.2f}x"
        )
        if self.target is not None:
            return f"{text}  (target {self.target})"
        return f"{text}  ({'higher' if unit.higher_is_better else 'lower'} is better)"


# ---- what ran -------------------------------------------------------------------------------


def run_metadata() -> dict[str, Any]:
    """Versions, the wire core and the host: what a figure was measured on."""
    import trio

    from .. import __version__
    from .._wire import COMPILED

    return {
        "package_version": __version__,
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "trio_version": trio.__version__,
        "compiled_wire_core": bool(COMPILED),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "time_unix_seconds": time.time(),
    }


def benchmark_document(name: str, results: Any, **fields: Any) -> dict[str, Any]:
    """A benchmark's JSON: its name, what it ran on, its own ``fields`` and its results."""
    return {"benchmark": name, "metadata": run_metadata(), **fields, "results": results}


def dump_json(document: Mapping[str, Any], file: TextIO) -> None:
    """``document`` with the schema name, as indented JSON."""
    file.write(json.dumps({"schema": SCHEMA, **document}, indent=2) + "\n")
    file.flush()


def write_json(path: str, document: Mapping[str, Any]) -> None:
    """``document`` with the schema name, to ``path`` (``-``: stdout)."""
    if path == "-":
        dump_json(document, sys.stdout)
        return
    with open(path, "w") as file:
        dump_json(document, file)
