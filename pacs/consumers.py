"""Event consumers: code that reacts to the event log (a study became stable, an MPPS
completed) with effects in the index, exactly once across processes and nodes.

A consumer has a name, the event types it wants and ``handle(conn, event)``. Its position
in the log is a row of ``event_cursor``. :func:`consume` reads the events after the
cursor, then, in ONE write transaction, moves the cursor with a compare-and-set
(``UPDATE ... SET last_id = new WHERE name = ? AND last_id = old``) and runs ``handle``
for each event. Effects and the cursor commit together: a crash loses neither, and of
several processes that read the same batch only the one whose compare-and-set succeeds
applies it (the others roll back and read again). Events are read in id order, which is
commit order (see "A counter row orders the change feed" in docs/architecture.md).

Effects outside the index (HTTP messages) are enqueued in the outbox (:mod:`pacs.outbox`)
by ``handle``, so they too happen once per event.

A window with nothing for a consumer (nearly every window while studies arrive: they are
``InstanceStored`` events, which no consumer wants) need not be written: with a
:class:`Progress` a process remembers how far it has read and stores the cursor only with
events to apply, or every :data:`SAVE_EVERY` seconds. Otherwise each poll of each consumer
was a write transaction (and a disk flush) competing with ingest for the index's writer.
Forgetting that position (a restart) only means reading those windows again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from .events import ChangeEvent, EventType, read_window
from .index.db import Database
from .index.models import EventCursor

log = logging.getLogger(__name__)

#: Events read per transaction.
BATCH = 200
#: Seconds a process may keep a consumer's position in memory only (see the module doc).
SAVE_EVERY = 10.0


@dataclass(frozen=True)
class Consumer:
    """``handle(conn, event)`` runs in the transaction that moves ``name``'s cursor past
    ``event``; only events whose type is in ``types`` reach it."""

    name: str
    types: frozenset[EventType]
    handle: Callable[[Connection, ChangeEvent], None]


def _cursor(db: Database, name: str) -> int:
    with db.read() as conn:
        last = conn.execute(select(EventCursor.last_id).where(EventCursor.name == name)).scalar()
    if last is not None:
        return int(last)
    try:
        with db.write() as conn:
            conn.execute(insert(EventCursor).values(name=name, last_id=0, updated_at=time.time()))
    except IntegrityError:  # another process created it first
        pass
    return 0


@dataclass
class Progress:
    """Where one process has read to, past each consumer's stored cursor, finding nothing
    for it; and when it last stored the cursor (monotonic seconds)."""

    read_to: dict[str, int] = field(default_factory=dict)
    saved_at: dict[str, float] = field(default_factory=dict)


def consume(db: Database, consumer: Consumer, batch: int = BATCH, progress: Progress | None = None) -> int:
    """Apply the events after ``consumer``'s cursor, one batch; the number of events the
    cursor moved past (0: nothing new, or another process applied this batch first).
    With ``progress``, a batch with nothing to apply may move only the remembered position."""
    return _consume(db, consumer, batch, progress)[0]


def _consume(db: Database, consumer: Consumer, batch: int, progress: Progress | None) -> tuple[int, int]:
    """:func:`consume`: (events moved past, events handed to the consumer)."""
    name = consumer.name
    old = _cursor(db, name)
    since = max(old, progress.read_to.get(name, 0)) if progress is not None else old
    # Only the consumer's own types are loaded: nearly every event is an InstanceStored,
    # which no consumer wants, and every process polls every consumer.
    count, last, events = read_window(db, since, batch, {t.value for t in consumer.types})
    if not count:
        return 0, 0
    now = time.monotonic()
    if progress is not None and not events and now - progress.saved_at.setdefault(name, now) < SAVE_EVERY:
        progress.read_to[name] = last
        return count, 0
    with db.write() as conn:
        moved = conn.execute(
            update(EventCursor).where(EventCursor.name == name, EventCursor.last_id == old)
            .values(last_id=last, updated_at=time.time())
        ).rowcount
        if moved != 1:  # another process moved it: what it applied is unknown here
            return 0, 0
        for event in events:
            consumer.handle(conn, event)
    if progress is not None:
        progress.read_to[name], progress.saved_at[name] = last, now
    return count, len(events)


def consume_all(db: Database, consumers: Iterable[Consumer], progress: Progress | None = None) -> int:
    """Run each consumer until it has caught up; the number of events handed to them (the
    server wakes the outbox sender only then: their messages are due). A consumer whose
    handler fails is logged and retried at the next call (its cursor did not move)."""
    total = 0
    for consumer in consumers:
        while True:
            try:
                moved, applied = _consume(db, consumer, BATCH, progress)
            except Exception:
                log.exception("event consumer %s failed; it will retry", consumer.name)
                break
            total += applied
            if moved < BATCH:
                break
    return total
