"""A guard against a race in pynetdicom's requestor associations, for every test client.

pynetdicom 3.0 (``Association._run_reactor`` against ``send_c_store`` / ``send_c_find`` /
...): ``send_*`` clears the reactor's checkpoint and goes on as soon as it reads
``_is_paused`` true, but the reactor sets that flag *before* waiting on the checkpoint
and clears it only after, so a reactor that has just passed a still-set checkpoint looks
paused while it is not. Descheduled there (many client threads, a busy machine) while
the answer comes back fast, its next ``get_msg`` takes the response off the queue, logs
"Received unexpected ... service message" and drops it; ``send_*`` then waits out its
DIMSE timeout and returns no status although the server answered (found by
bench/faults.py --checks pg, docs/reliability.md; pynetdicom issue #875 reports the
symptom). The guard puts such a response back on the queue while a ``send_*`` waits for
it, where that ``send_*`` finds it.

A second race, in ``ACSE._negotiate_as_requestor``: the requestor's thread checks that the
transport is connected only after the reactor has sent the A-ASSOCIATE-RQ. When the
acceptor answers with an A-ASSOCIATE-RJ fast and that thread is descheduled meanwhile, the
reactor has received the rejection and closed the connection (PS3.8 9.2, AE-4) before the
check, which then reads "not connected" and aborts: the association says aborted, not
rejected (1 in ~100 rejections under a busy machine, TLS or not). The guard records any
A-ASSOCIATE-RJ PDU received and, when the association ended aborted after one, reports it
rejected with that PDU's result, source and reason, as pynetdicom would have.

:func:`install` applies it to every association ``AE.associate`` makes (tests/conftest.py);
:data:`UNGUARDED_ASSOCIATE` is pynetdicom's own method, for the test that replays the race.
"""

from __future__ import annotations

from typing import Any

from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.pdu import A_ASSOCIATE_RJ

UNGUARDED_ASSOCIATE = ApplicationEntity.associate


def keep_responses(assoc: Any) -> Any:
    """Make a requestor association deliver every response to the ``send_*`` awaiting it."""
    serve = assoc._serve_request

    def serve_request(msg: Any, context_id: int) -> None:
        # A response is never the reactor's (it serves requests): back to the queue, where
        # the send_* awaiting it finds it, the reactor stopping at its checkpoint next turn.
        if getattr(msg, "MessageIDBeingRespondedTo", None) is not None:
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_request
    return assoc


def _note_rejection(event: Any) -> None:
    if isinstance(event.pdu, A_ASSOCIATE_RJ):
        event.assoc.received_rejection = event.pdu


def keep_rejection(assoc: Any) -> Any:
    """Report an association the acceptor rejected as rejected, whichever thread won."""
    rejection = getattr(assoc, "received_rejection", None)
    if rejection is not None and assoc.is_aborted and not assoc.is_established:
        assoc.acceptor.primitive = rejection.to_primitive()
        assoc.is_rejected, assoc.is_aborted = True, False
    return assoc


def _guarded_associate(self: ApplicationEntity, *args: Any, **kwargs: Any) -> Any:
    kwargs["evt_handlers"] = [*(kwargs.get("evt_handlers") or []), (evt.EVT_PDU_RECV, _note_rejection)]
    return keep_responses(keep_rejection(UNGUARDED_ASSOCIATE(self, *args, **kwargs)))


def install() -> None:
    """Guard every association made by ``AE.associate`` from now on (idempotent)."""
    ApplicationEntity.associate = _guarded_associate  # type: ignore[method-assign]
