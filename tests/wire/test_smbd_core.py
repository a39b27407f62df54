"""SMB-Direct batches: the compiled core and the pure-Python twin give the same
bytes, the same state and payloads, and the same error as today's parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smbdirect_socket import pdu
from smbdirect_socket._wire import core
from smbdirect_socket.errors import PDUError, RemoteProtocolError
from smbdirect_socket.pdu import (
    ReceiveLimits,
    ReceiveState,
    check_data_transfers,
    encode_data_transfer_list,
    encode_data_transfers,
)

compiled_only = pytest.mark.skipif(core is None, reason="the compiled wire core is not built")


def python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdu, "_core", None)


@compiled_only
@given(st.binary(min_size=1, max_size=5000), st.integers(0, 4999), st.integers(1, 8), st.integers(1, 2000))
def test_encoding_a_message_gives_the_python_bytes(message: bytes, start: int, count: int, chunk: int) -> None:
    start %= len(message)
    compiled = encode_data_transfers(255, 7, 0, message, start, count, chunk)
    saved = pdu._core
    pdu._core = None
    try:
        python = encode_data_transfers(255, 7, 0, message, start, count, chunk)
    finally:
        pdu._core = saved
    assert compiled == python


@given(st.binary(min_size=1, max_size=5000), st.integers(0, 4999), st.integers(1, 8), st.integers(1, 2000))
def test_the_list_form_is_the_one_buffer_split(message: bytes, start: int, count: int, chunk: int) -> None:
    """Each path: one bytes a fragment, the same bytes as the one buffer."""
    start %= len(message)
    data = encode_data_transfers(255, 7, 0, message, start, count, chunk)
    pdus = encode_data_transfer_list(255, 7, 0, message, start, count, chunk)
    assert all(type(p) is bytes for p in pdus) and b"".join(pdus) == data
    assert [len(p) - 24 for p in pdus[:-1]] == [chunk] * (len(pdus) - 1)
    saved = pdu._core
    pdu._core = None
    try:
        assert encode_data_transfer_list(255, 7, 0, message, start, count, chunk) == pdus
    finally:
        pdu._core = saved


def test_the_list_form_refuses_what_the_buffer_form_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    for path in ("compiled", "python"):
        if path == "python":
            python_path(monkeypatch)
        for args in ((0x10000, 0, 0, b"x", 0, 1, 10), (1, 0, 0, b"x", 1, 1, 10), (1, 0, 0, b"x", 0, 0, 10)):
            with pytest.raises(ValueError):
                encode_data_transfer_list(*args)
    if core is not None:
        with pytest.raises(TypeError):
            core.encode_data_transfer_list(1, 0, 0, b"x", 0, 1, 10, dict)


def test_a_message_encoded_in_fragments_decodes_to_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    message = bytes(range(256)) * 20
    for path in ("compiled", "python"):
        if path == "python":
            python_path(monkeypatch)
        data = encode_data_transfers(255, 3, 0, message, 0, 10, 1340)
        pdus = [data[i : i + 1364] for i in range(0, len(data), 1364)]
        state = ReceiveState(granted=4, send_credits=0)
        into = bytearray(len(data))
        batch = check_data_transfers(pdus, into, state, ReceiveLimits(1 << 20, 1364, 255))
        assert batch.error is None and batch.applied == 4
        assert bytes(into[: batch.gathered]) == message
        assert batch.pieces[0] == (1340, len(message)) and all(total == 0 for _, total in batch.pieces[1:])
        assert state.send_credits == 3 and state.granted == 0 and state.messages == 1 and state.fragments == 4


HEADER = st.tuples(
    st.integers(0, 3), st.integers(0, 0xFFFF), st.integers(0, 1), st.integers(0, 5000),
    st.sampled_from([0, 20, 24, 25, 32, 4000]), st.integers(0, 200),
)  # fmt: skip


def forge(fields: tuple[int, int, int, int, int, int], payload: int) -> bytes:
    requested, granted, flags, remaining, offset, length = fields
    body = pdu.DATA_TRANSFER.pack(requested, granted, flags, 0, remaining, offset, length)
    return body + bytes(range(256))[: payload % 256] * 2


@compiled_only
@settings(max_examples=400)
@given(
    st.lists(st.tuples(HEADER, st.integers(0, 300)), max_size=6),
    st.integers(0, 6),
    st.integers(0, 0xFFFF),
    st.integers(0, 300),
    st.sampled_from([100, 1 << 20]),
)
def test_received_batches_check_identically(
    messages: list[tuple[tuple[int, int, int, int, int, int], int]],
    granted: int,
    send_credits: int,
    remaining: int,
    max_fragmented: int,
) -> None:
    pdus = [forge(fields, payload) for fields, payload in messages]
    limits = ReceiveLimits(max_fragmented, 300, 255)
    results = []
    for path in ("compiled", "python"):
        saved = pdu._core
        if path == "python":
            pdu._core = None
        try:
            state = ReceiveState(granted=granted, send_credits=send_credits, message_remaining=remaining)
            into = bytearray(sum(map(len, pdus)))
            batch = check_data_transfers(pdus, into, state, limits)
        finally:
            pdu._core = saved
        error = (type(batch.error), str(batch.error)) if batch.error else None
        results.append((batch.applied, batch.gathered, batch.pieces, error, state, bytes(into)))
        # Kept in place (no gather buffer): the same state, pieces and error, and
        # views of the same payloads.
        saved = pdu._core
        if path == "python":
            pdu._core = None
        try:
            state = ReceiveState(granted=granted, send_credits=send_credits, message_remaining=remaining)
            kept = check_data_transfers(pdus, None, state, limits)
        finally:
            pdu._core = saved
        assert kept.gathered == 0 and kept.payloads is not None
        kept_error = (type(kept.error), str(kept.error)) if kept.error else None
        assert (kept.applied, kept.pieces, kept_error, state) == results[-1][:1] + results[-1][2:5]
        assert b"".join(kept.payloads) == bytes(into[: batch.gathered])
        assert [len(p) for p in kept.payloads] == [length for length, _ in kept.pieces]
    assert results[0] == results[1]


@pytest.mark.parametrize("path", ["compiled", "python"])
def test_faults_are_todays_errors(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "python":
        python_path(monkeypatch)
    elif core is None:
        pytest.skip("the compiled wire core is not built")
    limits = ReceiveLimits(1 << 20, 1364, 255)

    def first_error(message: bytes, granted: int = 1) -> Exception | None:
        return check_data_transfers([message], bytearray(len(message)), ReceiveState(granted, 0), limits).error

    with pytest.raises(PDUError) as short:
        pdu.DataTransferMessage.unpack(b"\0" * 19)
    error = first_error(b"\0" * 19)
    assert isinstance(error, PDUError) and (error.field, error.rule) == (short.value.field, short.value.rule)
    error = first_error(pdu.DATA_TRANSFER.pack(1, 0, 0, 0, 0, 24, 100) + bytes(4))
    assert isinstance(error, PDUError) and error.field == "data_length"
    error = first_error(pdu.encode_data_transfer(1, 0, 0, 0, b"x"), granted=0)
    assert isinstance(error, RemoteProtocolError) and str(error) == "peer sent a message without holding a credit"
    error = first_error(pdu.encode_data_transfer(0, 0, 0, 0, b"x"))
    assert str(error) == "DataTransferMessage.credits_requested: must not be 0"
