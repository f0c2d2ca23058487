"""Our DICOM upper layer (pacs/dimse/association.py) against peers that break the rules:
each gets an A-ABORT or a failure status, and every other client keeps being served."""

from __future__ import annotations

import socket
import struct

from pacs.dimse import command, pdu
from pacs.dimse.scu import StoreAssociation

from .servers import ThreadedServer, echo

VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _associate(server: ThreadedServer) -> StoreAssociation:
    assoc = StoreAssociation("RUDE", "PACS", [(VERIFICATION, [EXPLICIT_LE])], max_pdu=1 << 16,
                             connect_timeout=5, dimse_timeout=10, implementation_uid="1.2.3.4")
    assoc.connect("127.0.0.1", server.dimse_port)
    assert assoc.accepted and assoc.accepted[0].transfer_syntax == EXPLICIT_LE
    return assoc


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(10)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_unknown_pdu_before_association_is_aborted(server: ThreadedServer) -> None:
    with socket.create_connection(("127.0.0.1", server.dimse_port)) as sock:
        sock.sendall(struct.pack(">BBI", 9, 0, 2) + b"ab")
        answer = _answer(sock)
    assert answer[:1] == bytes([pdu.ABORT])  # A-ABORT, then the connection closes
    assert echo(server.dimse_port)


def test_oversized_pdu_is_aborted_without_reading_it(server: ThreadedServer) -> None:
    assoc = _associate(server)
    assert assoc._sock is not None
    assoc._sock.sendall(struct.pack(">BBI", pdu.P_DATA, 0, 0x7FFFFFFF))  # 2 GiB announced
    answer = _answer(assoc._sock)
    assert answer[:1] == bytes([pdu.ABORT]) and answer[9:10] == bytes([pdu.REASON_INVALID_PARAMETER])
    assert echo(server.dimse_port)


def test_unsupported_operation_gets_0211_and_the_association_goes_on(server: ThreadedServer) -> None:
    assoc = _associate(server)
    context = assoc.accepted[0].context_id
    n_get = command.encode_command({
        command.REQUESTED_SOP_CLASS: VERIFICATION, command.COMMAND_FIELD: command.N_GET_RQ,
        command.MESSAGE_ID: 5, command.REQUESTED_SOP_INSTANCE: "1.2.3", command.DATASET_TYPE: command.NO_DATASET,
    })
    assoc._send_pdvs(context, n_get, pdu.COMMAND | pdu.LAST)
    _, body = assoc._read_pdu()
    (_, flags, value), = list(pdu.iter_pdvs(body))
    answer = command.Command.decode(value)
    assert (flags, answer.field, answer.us(command.STATUS)) == (3, command.N_GET_RSP, 0x0211)
    assert answer.us(command.MESSAGE_ID_RESPONDED) == 5
    echo_rq = command.encode_command({
        command.AFFECTED_SOP_CLASS: VERIFICATION, command.COMMAND_FIELD: command.C_ECHO_RQ,
        command.MESSAGE_ID: 6, command.DATASET_TYPE: command.NO_DATASET,
    })
    assoc._send_pdvs(context, echo_rq, pdu.COMMAND | pdu.LAST)
    _, body = assoc._read_pdu()
    (_, _, value), = list(pdu.iter_pdvs(body))
    assert command.Command.decode(value).us(command.STATUS) == 0x0000
    assoc.release()


def test_message_on_a_context_never_accepted_is_aborted(server: ThreadedServer) -> None:
    assoc = _associate(server)
    echo_rq = command.encode_command({
        command.AFFECTED_SOP_CLASS: VERIFICATION, command.COMMAND_FIELD: command.C_ECHO_RQ,
        command.MESSAGE_ID: 1, command.DATASET_TYPE: command.NO_DATASET,
    })
    assoc._send_pdvs(99, echo_rq, pdu.COMMAND | pdu.LAST)
    assert assoc._sock is not None
    assert _answer(assoc._sock)[:1] == bytes([pdu.ABORT])
    assert echo(server.dimse_port)


def test_silent_connection_does_not_block_others(server: ThreadedServer) -> None:
    with socket.create_connection(("127.0.0.1", server.dimse_port)):
        assert echo(server.dimse_port)  # a load balancer's TCP probe holds no one up


def _echo_rq(message_id: int) -> bytes:
    return command.encode_command({
        command.AFFECTED_SOP_CLASS: VERIFICATION, command.COMMAND_FIELD: command.C_ECHO_RQ,
        command.MESSAGE_ID: message_id, command.DATASET_TYPE: command.NO_DATASET,
    })


def _echo_answers(assoc: StoreAssociation, count: int) -> list[tuple[int, int]]:
    """(message id responded, status) of the next ``count`` responses."""
    answers = []
    for _ in range(count):
        _, body = assoc._read_pdu()
        (_, _, value), = list(pdu.iter_pdvs(body))
        answer = command.Command.decode(value)
        answers.append((answer.us(command.MESSAGE_ID_RESPONDED), answer.us(command.STATUS)))
    return answers


def test_several_pdus_in_one_segment_are_each_answered(server: ThreadedServer) -> None:
    # The server receives up to 64 KiB at a time: PDUs that arrive together are taken
    # one after the other from what was received.
    assoc = _associate(server)
    context = assoc.accepted[0].context_id
    burst = b"".join(pdu.p_data_header(context, pdu.COMMAND | pdu.LAST, len(rq)) + rq
                     for rq in map(_echo_rq, (1, 2, 3)))
    assert assoc._sock is not None
    assoc._sock.sendall(burst)
    assert _echo_answers(assoc, 3) == [(1, 0), (2, 0), (3, 0)]
    assoc.release()


def test_pdus_split_at_every_byte_are_reassembled(server: ThreadedServer) -> None:
    assoc = _associate(server)
    context = assoc.accepted[0].context_id
    stream = b"".join(pdu.p_data_header(context, pdu.COMMAND | pdu.LAST, len(rq)) + rq
                      for rq in map(_echo_rq, (7, 8)))
    assert assoc._sock is not None
    assoc._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(stream)):
        assoc._sock.send(stream[i:i + 1])
    assert _echo_answers(assoc, 2) == [(7, 0), (8, 0)]
    assoc.release()
