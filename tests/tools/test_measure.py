"""The measuring code shared by ``smbdirect bench`` and benchmarks/: intervals,
statistics and records, each unit in its field's name."""

from __future__ import annotations

import io
import json
import math

import pytest

from smbdirect_socket import _wire
from smbdirect_socket.tools import measure


def test_meter_cuts_intervals_that_add_up() -> None:
    meter = measure.Meter(1.0)
    meter.start(at=100.0)
    meter.add(1000)
    meter.add(500)
    first = meter.cut(at=101.0)
    meter.add(3000, operations=3)
    second = meter.cut(at=102.5)
    assert (first.start, first.end, first.bytes, first.operations) == (0.0, 1.0, 1500, 2)
    assert (second.start, second.end, second.bytes, second.operations) == (1.0, 2.5, 3000, 3)
    assert second.bytes_per_second == 2000.0
    total = meter.total(at=102.5)
    assert (total.bytes, total.operations, total.seconds) == (4500, 5, 2.5)
    assert total.record() == {
        "start_seconds": 0.0,
        "end_seconds": 2.5,
        "bytes": 4500,
        "seconds": 2.5,
        "bytes_per_second": 1800.0,
        "bits_per_second": 14400.0,
        "operations": 5,
    }


def test_lines_use_fixed_prefixes() -> None:
    line = measure.Interval(0.0, 1.0, 125_000_000, 1).line("sender")
    # 125 * 10^6 bytes: 119.2 MiB (2^20), 1.00 Gbit/s (10^9 bits), 125.0 MB/s (10^6 bytes)
    assert line.split() == ["0.00-1.00", "s", "119.2", "MiB", "1.00", "Gbit/s", "125.0", "MB/s", "sender"]
    assert measure.format_bytes(512) == "512 B"
    assert measure.format_bytes(1536) == "1.50 KiB"
    assert measure.format_rate(1000) == "8.00 Kbit/s"


def test_latency_statistics_are_in_microseconds() -> None:
    samples = [i / 1e6 for i in range(1, 1001)]  # 1 us to 1000 us
    stats = measure.latency_statistics(samples)
    assert stats["round_trips"] == 1000
    assert stats["min_microseconds"] == pytest.approx(1)
    assert stats["median_microseconds"] == pytest.approx(500)
    assert stats["mean_microseconds"] == pytest.approx(500.5)
    assert stats["p99_microseconds"] == pytest.approx(990)
    assert stats["p99_9_microseconds"] == pytest.approx(999)
    assert stats["max_microseconds"] == pytest.approx(1000)
    assert stats["stdev_microseconds"] == pytest.approx(math.sqrt((1000**2 - 1) / 12))
    assert measure.latency_statistics([]) == {"round_trips": 0}


def test_round_trips_cut_into_intervals() -> None:
    trips = measure.RoundTrips(1.0)
    trips.start(at=10.0)
    trips.add(0.001)
    trips.add(0.003)
    first = trips.cut(at=11.0)
    second = trips.cut(at=12.0)
    assert first.record()["round_trips"] == 2 and first.record()["mean_microseconds"] == pytest.approx(2000)
    assert second.record() == {"start_seconds": 1.0, "end_seconds": 2.0, "round_trips": 0}
    assert "0 round trips" in second.line()


def test_comparison_names_its_unit() -> None:
    rate = measure.Comparison("framed", 50e6, 200e6, measure.BYTES_PER_SECOND, target=">= 0.7")
    assert rate.record() == {
        "case": "framed",
        "smbdirect_bytes_per_second": 50e6,
        "tcp_bytes_per_second": 200e6,
        "ratio": 0.25,
        "higher_is_better": True,
        "target": ">= 0.7",
    }
    assert "smbdirect       50.0 MB/s" in rate.line() and "ratio  0.25x" in rate.line()
    trip = measure.Comparison("round trip", 150e-6, 50e-6, measure.MICROSECONDS, ours_name="engine")
    assert trip.record()["engine_microseconds"] == pytest.approx(150)
    assert trip.record()["tcp_microseconds"] == pytest.approx(50)
    assert "(lower is better)" in trip.line()


def test_documents_carry_the_schema_and_what_ran() -> None:
    document = measure.benchmark_document("bench_x", [{"case": "a"}], parameters="kernel defaults")
    out = io.StringIO()
    measure.dump_json(document, out)
    written = json.loads(out.getvalue())
    assert written["schema"] == measure.SCHEMA and written["benchmark"] == "bench_x"
    assert written["metadata"]["compiled_wire_core"] is bool(_wire.COMPILED)
    assert {"package_version", "python_version", "trio_version", "host"} <= set(written["metadata"])
    assert written["results"] == [{"case": "a"}] and written["parameters"] == "kernel defaults"
