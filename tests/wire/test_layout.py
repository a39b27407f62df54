"""The compiled core's header is generated from the Python wire declarations."""

from __future__ import annotations

from smbdirect_socket import constants, pdu
from smbdirect_socket._wire import gen_layout
from smbdirect_socket.rdma.soft import ddp


def test_the_header_in_the_tree_is_the_generated_one() -> None:
    assert gen_layout.HEADER.read_text() == gen_layout.render(), "run python -m smbdirect_socket._wire.gen_layout"


def test_layouts_have_the_sizes_of_the_spec() -> None:
    assert pdu.NEGOTIATE_REQUEST.size == constants.NEGOTIATE_REQUEST_SIZE
    assert pdu.NEGOTIATE_RESPONSE.size == constants.NEGOTIATE_RESPONSE_SIZE
    assert pdu.DATA_TRANSFER.size == constants.DATA_TRANSFER_HEADER_SIZE
    assert pdu.BUFFER_DESCRIPTOR_V1.size == constants.BUFFER_DESCRIPTOR_V1_SIZE
    assert ddp.TAGGED_LAYOUT.size == ddp.TAGGED_HEADER == 14
    assert ddp.UNTAGGED_LAYOUT.size == ddp.UNTAGGED_HEADER == 18
    assert pdu.DATA_TRANSFER.offsets["data_length"] == 16
