"""smbdirect bench: throughput and latency over SMB-Direct between two hosts, like iperf3.

    smbdirect bench --server [HOST] [-p PORT]          # one end (until Ctrl-C; -1: one test)
    smbdirect bench HOST [-p PORT] [options]           # the other: it chooses the test

Tests (the client chooses; the server follows):
  (default)     the client sends messages of -l bytes for -t seconds
  -R            the server sends (reverse)
  --bidir       both send at once, on one connection
  --latency     64-byte round trips, one at a time (ib_send_lat's ping-pong)
  --rdma write  the client registers a -l byte buffer; the server RDMA-writes it
  --rdma read   ... the server RDMA-reads it (as SMB2 READ and WRITE move data)

Messages are framed (a 4-byte length, then the message) unless --bytestream.
Counted bytes are payload: the 4-byte length is not on the wire.
Printed: a line every -i seconds (MiB = 2^20 bytes, Gbit/s = 10^9 bits a
second, MB/s = 10^6 bytes a second), then the sender's and the receiver's
totals.  --json FILE writes the results with units in the field names
(``-`` for stdout, the lines then go to stderr); --plot FILE.png draws the
intervals (``pip install 'smbdirect-socket[plot]'``);
``smbdirect bench plot RESULT.json... -o FILE.png`` draws several runs.

How the two ends talk: the client opens a control connection (framed, one
JSON object a message) and sends the test; the server answers with its
settings; the client opens the data connection, which names the test by a
random cookie in its first message; the server says "go"; the client says
"stop" after -t seconds with the bytes it sent; the server answers with its
totals (and the bytes it sent, which the client then waits to receive).

Both ends run on the trio socket, not the blocking one: the blocking socket
hands every call to the engine thread (tens of microseconds a call), which
a round trip would measure instead of SMB-Direct; and the lines, both
directions and the control connection are tasks of one event loop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import socket
import struct
import sys
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TextIO

import trio

from .. import trio as sdtrio
from ..constants import SMBDIRECT_IWARP_PORT
from ..parameters import Parameters
from ..pdu import BufferDescriptorV1
from ..rdma import get_provider
from . import measure
from .common import CommandError, Parser, address_type, describe, format_address, port, run_command

__all__ = ["DEFAULT_PORT", "add_bench"]

#: Beside the SMB-Direct port, so a gateway or ``smbdirect listen`` may run on 5445.
DEFAULT_PORT = SMBDIRECT_IWARP_PORT + 1
PROTOCOL_VERSION = 1
MODES = ("send", "reverse", "bidir", "latency", "rdma-read", "rdma-write")
DEFAULT_LENGTH = {"latency": 64, "rdma-read": 1 << 20, "rdma-write": 1 << 20}
DEFAULT_THROUGHPUT_LENGTH = 128 * 1024
MAX_LENGTH = 1 << 30
HANDSHAKE_SECONDS = 30.0

_LENGTH = struct.Struct(">I")
_RULE = "- " * 35 + "-"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


# ---- the command line -----------------------------------------------------------------


def _length(text: str) -> int:
    """Bytes, with an optional K, M or G (powers of 1024), from 1 to 1 GiB."""
    stripped = text.rstrip("KMGkmg")
    unit = text[len(stripped) :].upper()
    if not stripped.isdigit() or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"expected a length such as 64, 64K or 1M, got {text!r}")
    value = int(stripped) * _UNITS[unit]
    if not 1 <= value <= MAX_LENGTH:
        raise argparse.ArgumentTypeError(f"length {value} is out of range (1 byte to 1G)")
    return value


def _seconds(lowest: float, inclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
        if not (value >= lowest if inclusive else value > lowest) or value != value or value == float("inf"):
            bound = f"at least {lowest:g}" if inclusive else f"more than {lowest:g}"
            raise argparse.ArgumentTypeError(f"{text} seconds: must be {bound}")
        return value

    return parse


def add_bench(commands: argparse._SubParsersAction[Parser]) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure throughput and latency between two hosts (like iperf3, ib_send_bw)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "address",
        nargs="?",
        metavar="HOST",
        help="client: the server (HOST, HOST:PORT, [IPV6]:PORT); server: the address to listen on (0.0.0.0)",
    )
    parser.add_argument("-s", "--server", action="store_true", help="be the server")
    parser.add_argument(
        "-p",
        "--port",
        type=partial(port, lowest=0),
        default=None,
        help=f"the server's port ({DEFAULT_PORT}; server: 0 picks one)",
    )
    test = parser.add_argument_group("the test (client)")
    modes = test.add_mutually_exclusive_group()
    modes.add_argument("-R", "--reverse", action="store_true", help="the server sends, the client receives")
    modes.add_argument("--bidir", action="store_true", help="both send at once")
    modes.add_argument("--latency", action="store_true", help="round trips of one message at a time")
    modes.add_argument(
        "--rdma", choices=["read", "write"], help="the server RDMA-reads or RDMA-writes the client's buffer"
    )
    test.add_argument(
        "-l",
        "--length",
        type=_length,
        default=None,
        metavar="BYTES",
        help="message (or RDMA buffer) size, K/M/G allowed (128K; --latency 64; --rdma 1M)",
    )
    test.add_argument("-t", "--time", type=_seconds(0, False), default=10.0, metavar="SECONDS", help="duration (10)")
    test.add_argument(
        "-i",
        "--interval",
        type=_seconds(0, True),
        default=1.0,
        metavar="SECONDS",
        help="a line every SECONDS while it runs (1; 0: none)",
    )
    test.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE (-: stdout)")
    test.add_argument("--plot", metavar="FILE.png", help="draw the intervals into a PNG (needs matplotlib)")
    both = parser.add_argument_group("both ends")
    both.add_argument("--bytestream", action="store_true", help="a byte stream instead of framed messages (client)")
    both.add_argument(
        "--large-messages",
        action="store_true",
        help="offer 8 MiB messages in 64 KiB fragments instead of Linux's sizes (both ends must)",
    )
    both.add_argument("--provider", default=None, help="RDMA provider (default: $SMBDIRECT_PROVIDER or softiwarp)")
    both.add_argument("-1", "--one-off", action="store_true", help="server: serve one test, then exit")
    parser.set_defaults(command=partial(_bench, parser))


def _mode(args: argparse.Namespace) -> str:
    if args.reverse:
        return "reverse"
    if args.bidir:
        return "bidir"
    if args.latency:
        return "latency"
    if args.rdma:
        return f"rdma-{args.rdma}"
    return "send"


def _address(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, int]:
    """The address from HOST and -p (a port given twice is a usage error)."""
    default_host = "0.0.0.0" if args.server else ""
    if args.address is None:
        if not args.server:
            parser.error("a client needs the server's HOST (or --server to be one)")
        return (default_host, DEFAULT_PORT if args.port is None else args.port)
    text = args.address
    # Whether HOST names a port too, as address_type reads it.
    has_port = (
        (text.startswith("[") and "]:" in text)
        or (not text.startswith("[") and text.count(":") == 1)
        or (args.server and text.isdigit())
    )
    try:
        host, given = address_type(default_host, DEFAULT_PORT, listening=args.server)(text)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"argument HOST: {exc}")
    if has_port and args.port is not None and given != args.port:
        parser.error(f"two ports: {given} in HOST and {args.port} in -p")
    chosen = args.port if args.port is not None else given
    if chosen == 0 and not args.server:
        parser.error("argument -p/--port: port 0 is out of range (1-65535)")
    return (host, chosen)


def _parameters(large: bool) -> Parameters:
    return Parameters().with_large_messages() if large else Parameters()


def _provider_name(name: str | None) -> str:
    return name or os.environ.get("SMBDIRECT_PROVIDER") or "softiwarp"


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


# ---- control messages: one JSON object in one framed message ---------------------------


class _Control:
    """The control connection: JSON objects, one a framed message; sends in turn."""

    def __init__(self, sock: sdtrio.SMBDirectSocket) -> None:
        self.sock = sock
        self._lock = trio.Lock()

    async def send(self, message: Mapping[str, Any]) -> None:
        async with self._lock:  # the interval task and the test's own messages
            await _send_object(self.sock, message)

    async def receive(self) -> dict[str, Any] | None:
        """The next object; None when the peer closed."""
        return await _receive_object(self.sock)


async def _receive_object(sock: sdtrio.SMBDirectSocket) -> dict[str, Any] | None:
    header = await sock.recv(_LENGTH.size)
    if not header:
        return None
    (length,) = _LENGTH.unpack(header)
    body = await sock.recv(length) if length else b""
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        message = None
    if not isinstance(message, dict):
        raise CommandError(f"the peer is not an smbdirect bench peer (it sent {body[:40]!r})")
    return message


async def _send_object(sock: sdtrio.SMBDirectSocket, message: Mapping[str, Any]) -> None:
    data = json.dumps(message).encode()
    await sock.send(_LENGTH.pack(len(data)) + data)


# ---- moving data ------------------------------------------------------------------------


class _Stop:
    """Set when the sender should stop after the message it is sending."""

    def __init__(self) -> None:
        self.requested = False


async def _send_for(sock: sdtrio.SMBDirectSocket, length: int, meter: measure.Meter, stop: _Stop) -> None:
    """Send ``length``-byte messages (or writes) until ``stop``; count them in ``meter``."""
    if sock.bytestream:
        chunk = memoryview(bytes(length))
        while not stop.requested:
            view = chunk
            while view:
                view = view[await sock.send(view) :]
            meter.add(length)
    else:
        message = _LENGTH.pack(length) + bytes(length)
        while not stop.requested:
            await sock.send(message)
            meter.add(length)


async def _receive_until(sock: sdtrio.SMBDirectSocket, meter: measure.Meter, expected: list[int | None]) -> None:
    """Receive and count until ``expected[0]`` (set once the sender told) bytes have arrived."""
    framed = not sock.bytestream
    while expected[0] is None or meter.bytes < expected[0]:
        if framed:
            header = await sock.recv(_LENGTH.size)
            if not header:
                break
            (length,) = _LENGTH.unpack(header)
            data = await sock.recv(length)
        else:
            data = await sock.recv(1 << 20)
            if not data:
                break
        meter.add(len(data))
    if expected[0] is not None and meter.bytes < expected[0]:
        raise CommandError(f"the data connection ended after {meter.bytes} of {expected[0]} bytes")


async def _receive_exactly(sock: sdtrio.SMBDirectSocket, length: int) -> None:
    """One message's body (framed) or ``length`` bytes (byte stream)."""
    if not sock.bytestream:
        header = await sock.recv(_LENGTH.size)
        if not header:
            raise CommandError("the data connection ended")
        await sock.recv(_LENGTH.unpack(header)[0])
        return
    left = length
    while left:
        data = await sock.recv(left)
        if not data:
            raise CommandError("the data connection ended")
        left -= len(data)


async def _send_one(sock: sdtrio.SMBDirectSocket, message: bytes) -> None:
    if not sock.bytestream:
        await sock.send(message)
        return
    view = memoryview(message)
    while view:
        view = view[await sock.send(view) :]


def _ping_message(sock: sdtrio.SMBDirectSocket, length: int) -> bytes:
    return bytes(length) if sock.bytestream else _LENGTH.pack(length) + bytes(length)


def _connection_metadata(sock: sdtrio.SMBDirectSocket, provider: str) -> dict[str, Any]:
    """What one end's data connection negotiated, and what it runs on."""
    info = sock.info()
    return {
        "provider": provider,
        "compiled_wire_core": bool(info.compiled),
        "local_address": format_address(sock.getsockname()),
        "remote_address": format_address(sock.getpeername()),
        "negotiated": {
            "max_send_size_bytes": info.max_send_size,
            "max_receive_size_bytes": info.max_receive_size,
            "max_fragmented_send_size_bytes": info.max_fragmented_send_size,
            "max_fragmented_receive_size_bytes": info.max_fragmented_receive_size,
            "max_read_write_size_bytes": info.max_read_write_size,
            "send_credits": info.send_credits,
            "receive_credit_target": info.receive_credit_target,
        },
    }


def _check_sizes(sock: sdtrio.SMBDirectSocket, mode: str, length: int, sends: bool) -> str | None:
    """Why this end cannot run the test on this connection, or None."""
    info = sock.info()
    if mode.startswith("rdma"):
        if info.max_read_write_size and length > info.max_read_write_size:
            return (
                f"an RDMA transfer of {length} bytes exceeds the negotiated max read/write size "
                f"{info.max_read_write_size}; use a smaller -l"
            )
        return None
    if sends and not sock.bytestream and length > info.max_fragmented_send_size:
        hint = "" if info.max_fragmented_send_size > 1 << 20 else " or --large-messages on both ends"
        return (
            f"a {length}-byte message exceeds the negotiated max message size "
            f"{info.max_fragmented_send_size}; use a smaller -l, --bytestream{hint}"
        )
    return None


async def _every(interval: float, started: float, duration: float, tick: Callable[[float], Any]) -> None:
    """Call ``tick(now)`` every ``interval`` seconds after ``started`` (without drift), until cancelled.

    No tick falls in the last tenth of an interval of the test's ``duration``:
    the end of the test closes that interval, so no sliver of one is shown.
    """
    count = 1
    while interval > 0 and count * interval < duration - interval / 10:
        await trio.sleep(max(0.0, started + count * interval - measure.now()))
        result = tick(measure.now())
        if result is not None:
            await result
        count += 1
    await trio.sleep_forever()


def _tail(meter: measure.Meter | measure.RoundTrips, at: float) -> bool:
    """Whether the last, partial interval is worth a line (lines asked for, and over 1 ms of it)."""
    began = meter.intervals[-1].end if meter.intervals else 0.0
    return meter.interval > 0 and at - meter.started - began > 1e-3


# ---- the server -----------------------------------------------------------------------


class _Server:
    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.args = args
        self.out = out
        self.provider = get_provider(args.provider)
        self.provider_name = _provider_name(args.provider)
        self.parameters = _parameters(args.large_messages)
        self.busy = False
        self.data: dict[str, trio.MemorySendChannel[sdtrio.SMBDirectSocket]] = {}

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def serve(self, address: tuple[str, int]) -> None:
        listener = sdtrio.socket(_family(address[0]), provider=self.provider, parameters=self.parameters)
        try:
            await listener.bind(address)
            listener.listen()
        except OSError as exc:
            listener.close()
            raise CommandError(f"cannot listen on {format_address(address)}: {describe(exc)}") from None
        sizes = "8 MiB messages" if self.args.large_messages else "Linux's message sizes"
        self.say(f"smbdirect bench: server listening on {format_address(listener.getsockname())} ({sizes})")
        with listener:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                while True:
                    sock, peer = await listener.accept()
                    nursery.start_soon(self.handle, sock, format_address(peer))

    async def handle(self, sock: sdtrio.SMBDirectSocket, peer: str) -> None:
        keep = False
        try:
            with trio.fail_after(HANDSHAKE_SECONDS):
                hello = await _receive_object(sock)
            if hello is None:
                return
            if hello.get("hello") == "data" and str(hello.get("cookie")) in self.data:
                self.data.pop(str(hello["cookie"])).send_nowait(sock)
                keep = True  # the test owns it now
                return
            if hello.get("hello") != "control":
                return
            control = _Control(sock)
            if self.busy:
                await control.send({"error": "the server is busy running a test; try again later"})
                return
            self.busy = True
            try:
                await self.run_test(control, hello, peer)
            finally:
                self.busy = False
            if self.args.one_off:
                self.nursery.cancel_scope.cancel()
        except BaseException as exc:
            what = _expected_problem(exc)
            if what is None:
                raise
            if self.args.one_off:
                raise CommandError(f"{peer}: {what}") from None
            print(f"smbdirect bench: {peer}: {what}", file=sys.stderr, flush=True)
        finally:
            if not keep:
                sock.close()

    async def run_test(self, control: _Control, hello: dict[str, Any], peer: str) -> None:
        test = hello.get("test", {})
        mode, length = test.get("mode"), test.get("length_bytes")
        interval = test.get("interval_seconds")  # the client's: its lines and ours match
        duration = test.get("duration_seconds")
        if (
            hello.get("version") != PROTOCOL_VERSION
            or mode not in MODES
            or not isinstance(length, int)
            or not isinstance(interval, int | float)
            or not isinstance(duration, int | float)
        ):
            await control.send({"error": f"unknown test {test!r} (protocol {hello.get('version')!r})"})
            return
        if bool(test.get("large_messages")) != self.args.large_messages:
            need = "with" if test.get("large_messages") else "without"
            await control.send(
                {"error": f"the client asks for {'8 MiB' if test.get('large_messages') else 'Linux'} message sizes; "
                 f"start the server {need} --large-messages (both ends must offer the same)"}
            )  # fmt: skip
            return
        cookie = str(hello.get("cookie"))
        send_channel, receive_channel = trio.open_memory_channel[sdtrio.SMBDirectSocket](1)
        self.data[cookie] = send_channel
        await control.send({"accepted": True, "server": measure.run_metadata()})
        try:
            with trio.fail_after(HANDSHAKE_SECONDS):
                data = await receive_channel.receive()
        except trio.TooSlowError:
            raise CommandError("no data connection in time") from None
        finally:
            self.data.pop(cookie, None)
        with data:
            data.bytestream = bool(test.get("bytestream"))
            framing = "writes (byte stream)" if data.bytestream else "framed messages"
            what = f"RDMA {mode[5:]}s" if mode.startswith("rdma") else framing
            self.say(f"smbdirect bench: {mode} test from {peer}: {length}-byte {what}")
            await self.run_data(control, data, mode, length, interval, duration)

    async def run_data(
        self,
        control: _Control,
        data: sdtrio.SMBDirectSocket,
        mode: str,
        length: int,
        interval: float,
        duration: float,
    ) -> None:
        problem = _check_sizes(data, mode, length, sends=mode in ("reverse", "bidir"))
        descriptors: list[BufferDescriptorV1] = []
        if problem is None and mode.startswith("rdma"):
            message = await control.receive()
            descriptors = BufferDescriptorV1.unpack_list(bytes.fromhex(str((message or {}).get("descriptors", ""))))
            if sum(d.length for d in descriptors) != length:
                problem = f"the client's descriptors cover {sum(d.length for d in descriptors)} of {length} bytes"
        if problem is not None:
            await control.send({"error": problem})
            return
        tx, rx = measure.Meter(interval), measure.Meter(interval)
        stop = _Stop()
        expected: list[int | None] = [None]
        received = trio.Event()
        # What this end measures: the receiver's side of "send", the sender's of "reverse", ...
        stream = {"send": "received", "reverse": "sent", "latency": "echoed"}.get(mode, mode.replace("-", "_"))
        shown = [("sent", tx), ("received", rx)] if mode == "bidir" else [(stream, tx if mode == "reverse" else rx)]

        async def tick(at: float) -> None:
            for name, meter in shown:
                part = meter.cut(at)
                self.say(part.line(name))
                await control.send({"interval": {"stream": name, "measured_by": "server"} | part.record()})

        async def receive() -> None:
            await _receive_until(data, rx, expected)
            received.set()

        await control.send({"go": True, "connection": _connection_metadata(data, self.provider_name)})
        started = measure.now()
        tx.start(started)
        rx.start(started)
        ticker = trio.CancelScope()

        async def ticks() -> None:
            with ticker:
                await _every(interval, started, duration, tick)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticks)
            if mode in ("send", "bidir"):
                nursery.start_soon(receive)
            async with trio.open_nursery() as work:
                if mode in ("reverse", "bidir"):
                    work.start_soon(_send_for, data, length, tx, stop)
                if mode == "latency":
                    work.start_soon(self.echo, data, length, rx)
                if mode.startswith("rdma"):
                    work.start_soon(self.rdma, data, mode == "rdma-read", length, descriptors, rx, stop)
                message = await control.receive()
                if message is None or "stop" not in message:
                    raise CommandError("the client left before the end of the test")
                stop.requested = True
                ticker.cancel()
                if mode == "latency":
                    work.cancel_scope.cancel()  # the echo waits for a message that will not come
            stopped = measure.now()
            if mode in ("send", "bidir"):
                expected[0] = sent = int(message.get("sent_bytes", 0))
                if rx.bytes < sent:
                    await received.wait()
            ended = measure.now()
            nursery.cancel_scope.cancel()
        # A receiver's time ends with the last byte, the others' when they stopped.
        until = {name: ended if name == "received" else stopped for name, _ in shown}
        for name, meter in shown:
            if _tail(meter, until[name]):
                last = meter.cut(until[name])
                self.say(last.line(name))
                await control.send({"interval": {"stream": name, "measured_by": "server"} | last.record()})
        end: dict[str, Any] = {name: meter.total(until[name]).record() for name, meter in shown}
        if mode in ("reverse", "bidir"):
            end["sent_bytes"] = tx.bytes
        self.say(_RULE)
        for name, meter in shown:
            self.say(meter.total(until[name]).line(name))
        await control.send({"end": end})
        # The client closes first, once it has all we sent: closing now could lose the last messages.
        with trio.move_on_after(HANDSHAKE_SECONDS):
            try:
                while await control.receive() is not None:
                    pass
            except OSError:
                pass

    @staticmethod
    async def echo(data: sdtrio.SMBDirectSocket, length: int, meter: measure.Meter) -> None:
        message = _ping_message(data, length)
        while True:
            await _receive_exactly(data, length)
            await _send_one(data, message)
            meter.add(length)

    @staticmethod
    async def rdma(
        data: sdtrio.SMBDirectSocket,
        read: bool,
        length: int,
        descriptors: list[BufferDescriptorV1],
        meter: measure.Meter,
        stop: _Stop,
    ) -> None:
        buffer = bytearray(length)
        while not stop.requested:
            if read:
                await data.rdma_read(buffer, descriptors)
            else:
                await data.rdma_write(buffer, descriptors)
            meter.add(length)


# ---- the client ---------------------------------------------------------------------------


class _Client:
    def __init__(self, args: argparse.Namespace, address: tuple[str, int], out: TextIO) -> None:
        self.args = args
        self.address = address
        self.out = out
        self.mode = _mode(args)
        self.length = args.length or DEFAULT_LENGTH.get(self.mode, DEFAULT_THROUGHPUT_LENGTH)
        self.provider = get_provider(args.provider)
        self.provider_name = _provider_name(args.provider)
        self.parameters = _parameters(args.large_messages)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def connect(self) -> sdtrio.SMBDirectSocket:
        host, port = self.address
        shown = format_address(self.address)
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise CommandError(f"{shown}: {describe(exc)}") from None
        error: OSError | None = None
        for family, _, _, _, resolved in infos:
            sock = sdtrio.socket(family, provider=self.provider, parameters=self.parameters)
            try:
                await sock.connect(resolved)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            self.resolved = resolved
            return sock
        assert error is not None
        raise CommandError(f"cannot connect to {shown}: {describe(error)}")

    def test(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "length_bytes": self.length,
            "duration_seconds": self.args.time,
            "interval_seconds": self.args.interval,
            "bytestream": self.args.bytestream,
            "large_messages": self.args.large_messages,
        }

    async def run(self) -> dict[str, Any]:
        cookie = secrets.token_hex(16)
        with await self.connect() as control_sock:
            control = _Control(control_sock)
            await control.send({"hello": "control", "version": PROTOCOL_VERSION, "cookie": cookie, "test": self.test()})
            reply = await self.expect(control, "accepted")
            data = sdtrio.socket(_family(str(self.resolved[0])), provider=self.provider, parameters=self.parameters)
            with data:
                try:
                    await data.connect(self.resolved)
                except OSError as exc:
                    raise CommandError(
                        f"cannot open the data connection to {format_address(self.address)}: {describe(exc)}"
                    ) from None
                await _send_object(data, {"hello": "data", "cookie": cookie})
                data.bytestream = self.args.bytestream
                return await self.run_data(control, data, reply["server"])

    async def expect(self, control: _Control, key: str) -> dict[str, Any]:
        try:
            with trio.fail_after(HANDSHAKE_SECONDS):
                message = await control.receive()
        except trio.TooSlowError:
            raise CommandError(f"the server did not answer within {HANDSHAKE_SECONDS:g} s") from None
        if message is None:
            raise CommandError("the server closed the connection")
        if "error" in message:
            raise CommandError(f"the server refused the test: {message['error']}")
        if key not in message:
            raise CommandError(f"the peer is not an smbdirect bench server (it sent {json.dumps(message)[:60]})")
        return message

    async def run_data(self, control: _Control, data: sdtrio.SMBDirectSocket, server: Any) -> dict[str, Any]:
        mode, length, args = self.mode, self.length, self.args
        problem = _check_sizes(data, mode, length, sends=mode in ("send", "bidir", "latency"))
        if problem is not None:
            raise CommandError(problem)
        buffer = bytearray(length)
        if mode.startswith("rdma"):
            registration = data.register_buffer(buffer, writable=mode == "rdma-write")
            await control.send({"descriptors": registration.pack().hex()})
        go = await self.expect(control, "go")
        connection = _connection_metadata(data, self.provider_name)
        core = "compiled wire core" if connection["compiled_wire_core"] else "pure-Python wire path"
        info = data.info()
        if mode.startswith("rdma"):
            what = f"{length}-byte RDMA {mode[5:]}s; max read/write size {info.max_read_write_size or 'unbounded'}"
        else:
            unit = "writes (byte stream)" if data.bytestream else "framed messages"
            what = f"{length}-byte {unit}; max message {info.max_fragmented_send_size} bytes"
        self.say(
            f"smbdirect bench: {mode} with {format_address(self.resolved)} for {args.time:g} s: {what}; "
            f"{self.provider_name}, {core}"
        )
        tx, rx = measure.Meter(args.interval), measure.Meter(args.interval)
        trips = measure.RoundTrips(args.interval)
        stop = _Stop()
        expected: list[int | None] = [None]
        received, finished = trio.Event(), trio.Event()
        intervals: list[dict[str, Any]] = []
        server_intervals: list[dict[str, Any]] = []
        end: dict[str, Any] = {}
        local: list[tuple[str, measure.Meter | measure.RoundTrips]] = []
        if mode in ("send", "bidir"):
            local.append(("sent", tx))
        if mode in ("reverse", "bidir"):
            local.append(("received", rx))
        if mode == "latency":
            local.append(("round_trip", trips))

        def show(name: str, interval: measure.Interval | measure.LatencyInterval, by: str) -> None:
            intervals.append({"stream": name, "measured_by": by} | interval.record())
            if isinstance(interval, measure.LatencyInterval):
                self.say(interval.line())
            else:
                self.say(interval.line(name if mode == "bidir" else ""))

        def tick(at: float) -> None:
            for name, meter in local:
                show(name, meter.cut(at), "client")

        async def from_server() -> None:
            while (message := await control.receive()) is not None:
                if "error" in message:
                    raise CommandError(f"the server: {message['error']}")
                if "interval" in message:
                    record = message["interval"]
                    server_intervals.append(record)
                    if mode.startswith("rdma"):  # the server does the work: its lines are the ones to show
                        interval = measure.Interval(
                            record["start_seconds"], record["end_seconds"], record["bytes"], record["operations"]
                        )
                        show(record["stream"], interval, "server")
                if "end" in message:
                    end.update(message["end"])
                    expected[0] = int(end.get("sent_bytes", 0))
                    finished.set()
                    return
            raise CommandError("the server closed the control connection before the end of the test")

        async def receive() -> None:
            await _receive_until(data, rx, expected)
            received.set()

        if args.interval == 0:
            pass
        elif mode == "latency":
            self.say(f"{'interval':>15}  {'count':>9}")
        else:
            self.say(f"{'interval':>15}  {'transfer':>10}  {'bitrate':>13}  {'rate':>14}")
        started = measure.now()
        for meter in (tx, rx, trips):
            meter.start(started)
        ticker = trio.CancelScope()

        async def ticks() -> None:
            with ticker:
                await _every(args.interval, started, args.time, tick)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(from_server)
            nursery.start_soon(ticks)
            if mode in ("reverse", "bidir"):
                nursery.start_soon(receive)
            async with trio.open_nursery() as work:
                if mode in ("send", "bidir"):
                    work.start_soon(_send_for, data, length, tx, stop)
                if mode == "latency":
                    work.start_soon(self.ping, data, length, trips, stop)
                await trio.sleep(max(0.0, started + args.time - measure.now()))
                stop.requested = True
                ticker.cancel()
            stopped = measure.now()
            await control.send({"stop": True, "sent_bytes": tx.bytes})
            await finished.wait()
            if mode in ("reverse", "bidir") and rx.bytes < (expected[0] or 0):
                await received.wait()
            ended = measure.now()
            nursery.cancel_scope.cancel()
        for name, meter in local:
            at = ended if name == "received" else stopped  # a sender's time ends when it stops
            if _tail(meter, at):
                show(name, meter.cut(at), "client")
        summary = self.summarise(end, tx.total(stopped), rx.total(ended), trips, stopped)
        return {
            "tool": "smbdirect bench",
            "test": self.test(),
            "client": measure.run_metadata() | {"connection": connection},
            "server": dict(server) | {"connection": go.get("connection")},
            "intervals": intervals,
            "server_intervals": server_intervals,
            "end": summary,
        }

    def summarise(
        self,
        end: dict[str, Any],
        sent: measure.Interval,
        received: measure.Interval,
        trips: measure.RoundTrips,
        stopped: float,
    ) -> dict[str, Any]:
        """The end of the test: printed, and as recorded."""
        mode = self.mode
        self.say(_RULE)
        if mode == "latency":
            stats = trips.statistics() | {"seconds": stopped - trips.started, "message_bytes": self.length}
            if stats["round_trips"]:
                self.say(
                    f"{stats['round_trips']} round trips of {self.length} bytes in {stats['seconds']:.2f} s: "
                    f"min {stats['min_microseconds']:.1f} us, median {stats['median_microseconds']:.1f} us, "
                    f"mean {stats['mean_microseconds']:.1f} us, p99 {stats['p99_microseconds']:.1f} us, "
                    f"max {stats['max_microseconds']:.1f} us, stdev {stats['stdev_microseconds']:.1f} us"
                )
            else:
                self.say("no round trip completed")
            return {"round_trip": stats, "server_echoed": end.get("echoed")}
        if mode.startswith("rdma"):
            name = mode.replace("-", "_")
            record = end[name]
            line = measure.Interval(0.0, record["seconds"], record["bytes"], record["operations"]).line()
            self.say(f"{line}  {mode.replace('-', ' ')} by the server")
            return {name: record}
        streams: dict[str, dict[str, Any]] = {}
        if mode in ("send", "bidir"):
            streams["client_to_server"] = {"sender": sent.record(), "receiver": end["received"]}
        if mode in ("reverse", "bidir"):
            streams["server_to_client"] = {"sender": end["sent"], "receiver": received.record()}
        for stream, ends in streams.items():
            for side, record in ends.items():
                line = measure.Interval(0.0, record["seconds"], record["bytes"], record["operations"]).line()
                tag = f"{stream.replace('_', ' ')}, {side}" if mode == "bidir" else side
                self.say(f"{line}  {tag}")
        return {"streams": streams}

    async def ping(self, data: sdtrio.SMBDirectSocket, length: int, trips: measure.RoundTrips, stop: _Stop) -> None:
        message = _ping_message(data, length)
        clock = measure.now
        while not stop.requested:
            start = clock()
            await _send_one(data, message)
            await _receive_exactly(data, length)
            trips.add(clock() - start)


def _expected_problem(exc: BaseException) -> str | None:
    """The one line for an error that ends one test (also inside trio's groups), else None."""
    group = exc if isinstance(exc, BaseExceptionGroup) else BaseExceptionGroup("", [exc])
    expected, unexpected = group.split((OSError, CommandError, trio.TooSlowError))
    if expected is None or unexpected is not None:
        return None
    first: BaseException = expected
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    if isinstance(first, OSError):
        return describe(first)
    return str(first) or "no answer in time"


def _bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    address = _address(parser, args)
    if args.server:
        if args.json or args.plot:
            parser.error("--json and --plot are the client's (the server prints its side)")
        server = _Server(args, sys.stdout)
        return run_command("smbdirect bench", partial(trio.run, server.serve, address))
    if args.plot and args.interval == 0:
        parser.error("--plot draws the intervals: give -i above 0")
    out = sys.stderr if args.json == "-" else sys.stdout
    client = _Client(args, address, out)

    def body() -> None:
        if args.plot:
            from .bench_plot import require_matplotlib

            require_matplotlib()
        with contextlib.ExitStack() as stack:
            # Opened first: a path that cannot be written fails before the test, not after it.
            output = None if args.json in (None, "-") else stack.enter_context(open(args.json, "w"))
            document = trio.run(client.run)
            if args.json == "-":
                measure.dump_json(document, sys.stdout)
            elif output is not None:
                measure.dump_json(document, output)
        if args.plot:
            from .bench_plot import plot

            plot([(f"{client.mode} {client.length} B", document)], args.plot)

    return run_command("smbdirect bench", body)
