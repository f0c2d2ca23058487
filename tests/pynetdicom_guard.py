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

:func:`install` applies it to every association ``AE.associate`` makes (tests/conftest.py);
:data:`UNGUARDED_ASSOCIATE` is pynetdicom's own method, for the test that replays the race.
"""

from __future__ import annotations

from typing import Any

from pynetdicom.ae import ApplicationEntity

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


def _guarded_associate(self: ApplicationEntity, *args: Any, **kwargs: Any) -> Any:
    return keep_responses(UNGUARDED_ASSOCIATE(self, *args, **kwargs))


def install() -> None:
    """Guard every association made by ``AE.associate`` from now on (idempotent)."""
    ApplicationEntity.associate = _guarded_associate  # type: ignore[method-assign]
