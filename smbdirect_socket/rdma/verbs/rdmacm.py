"""rdma_cm connection management for trio, through librdmacm with ctypes.

pyverbs' own ``CMID`` holds the GIL while it waits for an event, has no
file descriptor for its event channel and does not show an event's IRD/ORD
or the peer's address.  This module calls librdmacm directly instead: every
event channel is made non-blocking and waited for with
:func:`trio.lowlevel.wait_readable`, every call returns at once (the kernel
does the work and reports it as an event), and ctypes releases the GIL for
the length of each call.  So rdma_cm never stalls the event loop.

Events are copied and acknowledged as soon as they are read, so
``rdma_destroy_id`` never waits for one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import enum
import errno
import fcntl
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

import trio

from ..base import RdmaError

__all__ = ["CmError", "CmEvent", "CmId", "EventChannel", "EventType", "QpAttributes"]

RDMA_PS_TCP = 0x0106
_SOCKADDR_SIZE = 128  # sockaddr_storage
_ROUTE_OFFSET = 32  # rdma_cm_id: verbs, channel, context, qp, then the route
_MAX_PRIVATE_DATA = 196  # what rdma_accept may carry on any transport


class CmError(RdmaError):
    """A librdmacm call failed."""


class EventType(enum.IntEnum):
    """``enum rdma_cm_event_type``."""

    ADDR_RESOLVED = 0
    ADDR_ERROR = 1
    ROUTE_RESOLVED = 2
    ROUTE_ERROR = 3
    CONNECT_REQUEST = 4
    CONNECT_RESPONSE = 5
    CONNECT_ERROR = 6
    UNREACHABLE = 7
    REJECTED = 8
    ESTABLISHED = 9
    DISCONNECTED = 10
    DEVICE_REMOVAL = 11
    MULTICAST_JOIN = 12
    MULTICAST_ERROR = 13
    ADDR_CHANGE = 14
    TIMEWAIT_EXIT = 15


class _ConnParam(ctypes.Structure):
    _fields_ = (
        ("private_data", ctypes.c_void_p),
        ("private_data_len", ctypes.c_uint8),
        ("responder_resources", ctypes.c_uint8),
        ("initiator_depth", ctypes.c_uint8),
        ("flow_control", ctypes.c_uint8),
        ("retry_count", ctypes.c_uint8),
        ("rnr_retry_count", ctypes.c_uint8),
        ("srq", ctypes.c_uint8),
        ("qp_num", ctypes.c_uint32),
    )


class _Event(ctypes.Structure):
    _fields_ = (
        ("id", ctypes.c_void_p),
        ("listen_id", ctypes.c_void_p),
        ("event", ctypes.c_int),
        ("status", ctypes.c_int),
        ("conn", _ConnParam),
        ("_rest_of_param_union", ctypes.c_uint8 * (56 - ctypes.sizeof(_ConnParam))),
    )


class _GlobalRoute(ctypes.Structure):
    _fields_ = (
        ("dgid", ctypes.c_uint8 * 16),
        ("flow_label", ctypes.c_uint32),
        ("sgid_index", ctypes.c_uint8),
        ("hop_limit", ctypes.c_uint8),
        ("traffic_class", ctypes.c_uint8),
    )


class _AhAttr(ctypes.Structure):
    _fields_ = (
        ("grh", _GlobalRoute),
        ("dlid", ctypes.c_uint16),
        ("sl", ctypes.c_uint8),
        ("src_path_bits", ctypes.c_uint8),
        ("static_rate", ctypes.c_uint8),
        ("is_global", ctypes.c_uint8),
        ("port_num", ctypes.c_uint8),
    )


class QpAttributes(ctypes.Structure):
    """``struct ibv_qp_attr``, as ``rdma_init_qp_attr`` fills it."""

    _fields_ = (
        ("qp_state", ctypes.c_int),
        ("cur_qp_state", ctypes.c_int),
        ("path_mtu", ctypes.c_int),
        ("path_mig_state", ctypes.c_int),
        ("qkey", ctypes.c_uint32),
        ("rq_psn", ctypes.c_uint32),
        ("sq_psn", ctypes.c_uint32),
        ("dest_qp_num", ctypes.c_uint32),
        ("qp_access_flags", ctypes.c_uint),
        ("cap", ctypes.c_uint32 * 5),
        ("ah_attr", _AhAttr),
        ("alt_ah_attr", _AhAttr),
        ("pkey_index", ctypes.c_uint16),
        ("alt_pkey_index", ctypes.c_uint16),
        ("en_sqd_async_notify", ctypes.c_uint8),
        ("sq_draining", ctypes.c_uint8),
        ("max_rd_atomic", ctypes.c_uint8),
        ("max_dest_rd_atomic", ctypes.c_uint8),
        ("min_rnr_timer", ctypes.c_uint8),
        ("port_num", ctypes.c_uint8),
        ("timeout", ctypes.c_uint8),
        ("retry_cnt", ctypes.c_uint8),
        ("rnr_retry", ctypes.c_uint8),
        ("alt_port_num", ctypes.c_uint8),
        ("alt_timeout", ctypes.c_uint8),
        ("rate_limit", ctypes.c_uint32),
    )


def _load(name: str, package: str) -> ctypes.CDLL:
    path = ctypes.util.find_library(name) or f"lib{name}.so.1"
    try:
        return ctypes.CDLL(path, use_errno=True)
    except OSError:
        raise CmError(
            errno.ENOPKG, f"lib{name} is not installed: install rdma-core's {package} (Debian: apt install {package})"
        ) from None


_cm: ctypes.CDLL | None = None
_verbs: ctypes.CDLL | None = None


def _libraries() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    global _cm, _verbs
    if _cm is None or _verbs is None:
        cm = _load("rdmacm", "librdmacm1")
        verbs = _load("ibverbs", "libibverbs1")
        p, i, u8 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint8
        signatures: dict[str, tuple[type, list[type]]] = {
            "rdma_create_event_channel": (p, []),
            "rdma_destroy_event_channel": (None, [p]),  # type: ignore[dict-item]
            "rdma_create_id": (i, [p, ctypes.POINTER(p), p, i]),
            "rdma_destroy_id": (i, [p]),
            "rdma_migrate_id": (i, [p, p]),
            "rdma_bind_addr": (i, [p, p]),
            "rdma_resolve_addr": (i, [p, p, p, i]),
            "rdma_resolve_route": (i, [p, i]),
            "rdma_connect": (i, [p, ctypes.POINTER(_ConnParam)]),
            "rdma_listen": (i, [p, i]),
            "rdma_accept": (i, [p, ctypes.POINTER(_ConnParam)]),
            "rdma_reject": (i, [p, p, u8]),
            "rdma_disconnect": (i, [p]),
            "rdma_establish": (i, [p]),
            "rdma_get_cm_event": (i, [p, ctypes.POINTER(ctypes.POINTER(_Event))]),
            "rdma_ack_cm_event": (i, [ctypes.POINTER(_Event)]),
            "rdma_init_qp_attr": (i, [p, ctypes.POINTER(QpAttributes), ctypes.POINTER(i)]),
            "rdma_get_devices": (p, [ctypes.POINTER(i)]),
            "rdma_free_devices": (None, [p]),  # type: ignore[dict-item]
        }
        for name, (restype, argtypes) in signatures.items():
            function = getattr(cm, name)
            function.restype, function.argtypes = restype, argtypes
        verbs.ibv_get_device_name.restype, verbs.ibv_get_device_name.argtypes = ctypes.c_char_p, [p]
        _cm, _verbs = cm, verbs
    return _cm, _verbs


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno() or errno.EIO
        raise CmError(code, f"{what}: {os.strerror(code)}")


def pack_sockaddr(address: tuple[str, int]) -> ctypes.Array[ctypes.c_char]:
    """A ``sockaddr_in``/``sockaddr_in6`` in a ``sockaddr_storage``-sized buffer."""
    host, port = address[0], address[1]
    ip = ipaddress.ip_address(socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_STREAM)[0][4][0])
    if ip.version == 4:
        raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + ip.packed
    else:
        raw = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + ip.packed + struct.pack("=I", 0)
    return ctypes.create_string_buffer(raw, _SOCKADDR_SIZE)


def unpack_sockaddr(raw: bytes) -> tuple[str, int]:
    (family,) = struct.unpack_from("=H", raw)
    (port,) = struct.unpack_from("!H", raw, 2)
    if family == socket.AF_INET:
        return (str(ipaddress.IPv4Address(raw[4:8])), port)
    if family == socket.AF_INET6:
        return (str(ipaddress.IPv6Address(raw[8:24])), port)
    return ("", 0)


def route_address(pointer: int, *, peer: bool) -> tuple[str, int]:
    """An ``rdma_cm_id``'s source or destination address (``rdma_get_local/peer_addr``)."""
    offset = _ROUTE_OFFSET + (_SOCKADDR_SIZE if peer else 0)
    return unpack_sockaddr(ctypes.string_at(pointer + offset, _SOCKADDR_SIZE))


@dataclass(frozen=True)
class CmEvent:
    """A copy of one ``rdma_cm_event`` (the original is acknowledged at once)."""

    type: EventType
    status: int
    id: int
    listen_id: int
    private_data: bytes
    #: The peer's ORD and IRD, as rdma_cm maps them (CONNECT_REQUEST, ESTABLISHED).
    initiator_depth: int
    responder_resources: int

    def error(self, what: str) -> CmError:
        """This event as the error a socket would report."""
        code = -self.status if self.status < 0 else 0
        if self.type is EventType.REJECTED:
            code = errno.ECONNREFUSED
        elif self.type in (EventType.ADDR_ERROR, EventType.ROUTE_ERROR):
            code = code or errno.EHOSTUNREACH
        elif self.type is EventType.UNREACHABLE:
            code = code if code in (errno.ETIMEDOUT, errno.ECONNREFUSED) else errno.ETIMEDOUT
        elif self.type is EventType.DEVICE_REMOVAL:
            code = errno.ENODEV
        detail = f"status {self.status}" + (f", {os.strerror(-self.status)}" if self.status < 0 else "")
        return CmError(code or errno.ECONNABORTED, f"{what}: {self.type.name.lower()} ({detail})")


class EventChannel:
    """An ``rdma_event_channel`` whose descriptor trio waits on."""

    def __init__(self) -> None:
        cm, _ = _libraries()
        self._cm = cm
        pointer = cm.rdma_create_event_channel()
        if not pointer:
            code = ctypes.get_errno() or errno.ENODEV
            raise CmError(code, f"cannot open the rdma_cm event channel: {os.strerror(code)}")
        self.pointer: int = pointer
        self.fd: int = ctypes.c_int.from_address(pointer).value
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)

    def poll(self) -> CmEvent | None:
        """The next event if one is ready."""
        if not self.pointer:
            return None
        event = ctypes.POINTER(_Event)()
        if self._cm.rdma_get_cm_event(self.pointer, ctypes.byref(event)) != 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                return None
            raise CmError(code, f"rdma_get_cm_event: {os.strerror(code)}")
        e = event.contents
        conn = e.conn
        private = ctypes.string_at(conn.private_data, conn.private_data_len) if conn.private_data else b""
        copy = CmEvent(
            type=EventType(e.event),
            status=e.status,
            id=e.id or 0,
            listen_id=e.listen_id or 0,
            private_data=private,
            initiator_depth=conn.initiator_depth,
            responder_resources=conn.responder_resources,
        )
        self._cm.rdma_ack_cm_event(event)
        return copy

    async def next(self) -> CmEvent:
        while True:
            event = self.poll()
            if event is not None:
                return event
            if not self.pointer:
                raise CmError(errno.EBADF, "event channel is closed")
            await trio.lowlevel.wait_readable(self.fd)

    def close(self) -> None:
        if self.pointer:
            with contextlib.suppress(RuntimeError):  # outside trio nobody waits
                trio.lowlevel.notify_closing(self.fd)
            self._cm.rdma_destroy_event_channel(self.pointer)
            self.pointer = 0


class CmId:
    """One ``rdma_cm_id`` (RDMA_PS_TCP: reliable connected) on its own event channel."""

    def __init__(self, channel: EventChannel | None = None, *, pointer: int = 0) -> None:
        self._cm, self._verbs = _libraries()
        self.channel = channel or EventChannel()
        if pointer:
            self.pointer = pointer
            _check(self._cm.rdma_migrate_id(pointer, self.channel.pointer), "rdma_migrate_id")
        else:
            out = ctypes.c_void_p()
            _check(
                self._cm.rdma_create_id(self.channel.pointer, ctypes.byref(out), None, RDMA_PS_TCP), "rdma_create_id"
            )
            assert out.value is not None
            self.pointer = out.value

    # ---- addresses and the device -------------------------------------------------

    @property
    def local_address(self) -> tuple[str, int]:
        return route_address(self.pointer, peer=False)

    @property
    def peer_address(self) -> tuple[str, int]:
        return route_address(self.pointer, peer=True)

    @property
    def device_name(self) -> str | None:
        """The RDMA device rdma_cm chose for this id (after bind or address resolution)."""
        context = ctypes.c_void_p.from_address(self.pointer).value
        if not context:
            return None
        device = ctypes.c_void_p.from_address(context).value
        name = self._verbs.ibv_get_device_name(device)
        return name.decode() if name else None

    # ---- calls ----------------------------------------------------------------------

    def bind(self, address: tuple[str, int]) -> None:
        _check(self._cm.rdma_bind_addr(self.pointer, pack_sockaddr(address)), f"rdma_bind_addr {address}")

    def listen(self, backlog: int) -> None:
        _check(self._cm.rdma_listen(self.pointer, backlog), "rdma_listen")

    async def resolve(self, address: tuple[str, int], source: tuple[str, int] | None, timeout_ms: int) -> None:
        """Resolve the address and the route (picks the device and port)."""
        src = pack_sockaddr(source) if source is not None else None
        _check(
            self._cm.rdma_resolve_addr(self.pointer, src, pack_sockaddr(address), timeout_ms),
            f"rdma_resolve_addr {address[0]}",
        )
        await self.expect(EventType.ADDR_RESOLVED, f"resolving {address[0]}")
        _check(self._cm.rdma_resolve_route(self.pointer, timeout_ms), "rdma_resolve_route")
        await self.expect(EventType.ROUTE_RESOLVED, f"resolving the route to {address[0]}")

    async def expect(self, wanted: EventType, what: str) -> CmEvent:
        event = await self.channel.next()
        if event.type is not wanted:
            raise event.error(what)
        return event

    def qp_attributes(self, state: int) -> tuple[QpAttributes, int]:
        """What a QP of this id needs to reach ``state`` (``rdma_init_qp_attr``)."""
        attributes = QpAttributes(qp_state=state)
        mask = ctypes.c_int()
        _check(self._cm.rdma_init_qp_attr(self.pointer, ctypes.byref(attributes), ctypes.byref(mask)), "init_qp_attr")
        return attributes, mask.value

    @staticmethod
    def _param(private_data: bytes, qp_num: int, initiator_depth: int, responder_resources: int) -> _ConnParam:
        if len(private_data) > _MAX_PRIVATE_DATA:
            raise CmError(errno.EINVAL, f"private data of {len(private_data)} bytes exceeds {_MAX_PRIVATE_DATA}")
        buffer = ctypes.create_string_buffer(private_data, max(len(private_data), 1))
        param = _ConnParam(
            private_data=ctypes.cast(buffer, ctypes.c_void_p) if private_data else None,
            private_data_len=len(private_data),
            responder_resources=min(responder_resources, 0xFF),
            initiator_depth=min(initiator_depth, 0xFF),
            retry_count=7,
            rnr_retry_count=7,  # retry forever, as the kernel's SMB-Direct does
            qp_num=qp_num,
        )
        param._keep = buffer  # the private data lives as long as the parameters
        return param

    def connect(self, private_data: bytes, qp_num: int, initiator_depth: int, responder_resources: int) -> None:
        param = self._param(private_data, qp_num, initiator_depth, responder_resources)
        _check(self._cm.rdma_connect(self.pointer, ctypes.byref(param)), "rdma_connect")

    def establish(self) -> None:
        _check(self._cm.rdma_establish(self.pointer), "rdma_establish")

    def accept(self, private_data: bytes, qp_num: int, initiator_depth: int, responder_resources: int) -> None:
        param = self._param(private_data, qp_num, initiator_depth, responder_resources)
        _check(self._cm.rdma_accept(self.pointer, ctypes.byref(param)), "rdma_accept")

    def reject(self, private_data: bytes = b"") -> None:
        _check(_reject(self.pointer, private_data), "rdma_reject")

    def disconnect(self) -> None:
        """Start a disconnect; harmless if the connection is already down."""
        self._cm.rdma_disconnect(self.pointer)

    def close(self) -> None:
        if self.pointer:
            self._cm.rdma_destroy_id(self.pointer)
            self.pointer = 0
            self.channel.close()


def forget_removed_devices() -> None:
    """Let librdmacm close its own handle on devices that are gone.

    It notices only when asked for its device list, and the kernel finishes a
    removal (``rdma link delete``) only once every handle is closed.
    """
    cm, _ = _libraries()
    count = ctypes.c_int()
    devices = cm.rdma_get_devices(ctypes.byref(count))
    if devices:
        cm.rdma_free_devices(devices)


def _reject(pointer: int, private_data: bytes) -> int:
    cm, _ = _libraries()
    data = ctypes.create_string_buffer(private_data, max(len(private_data), 1))
    result: int = cm.rdma_reject(pointer, data if private_data else None, len(private_data))
    return result


def reject_request(pointer: int, private_data: bytes = b"") -> None:
    """Reject and destroy a connection request's id still on the listener's channel."""
    _reject(pointer, private_data)
    _libraries()[0].rdma_destroy_id(pointer)
