"""SeriesStable / StudyStable after the quiet period, emitted once across processes."""

from __future__ import annotations

import threading
import time

from pacs.archive import Archive

from .factory import make_ct, short_uid, to_bytes


def _store_study(archive: Archive, series_count: int = 2) -> str:
    study = short_uid()
    for s in range(series_count):
        series = f"{study}.{s + 1}"
        for i in range(2):
            archive.ingest_bytes(to_bytes(make_ct(study=study, series=series, seed=s * 10 + i)), source="test")
    return study


def test_stable_events_after_quiet_period(archive: Archive) -> None:
    study = _store_study(archive)
    assert archive.sweep_stable(now=time.time()) == 0  # not quiet yet (60 s)
    emitted = archive.sweep_stable(now=time.time() + 61)
    assert emitted == 3
    changes = [c for c in archive.changes(0, 100) if c.type != "InstanceStored"]
    assert [c.type for c in changes] == ["SeriesStable", "SeriesStable", "StudyStable"]
    assert changes[-1].study_uid == study
    assert changes[-1].payload == {"series": 2, "instances": 4, "modalities": ["CT"]}
    assert archive.sweep_stable(now=time.time() + 120) == 0  # once only


def test_new_instance_makes_study_unstable_again(archive: Archive) -> None:
    study = _store_study(archive, 1)
    archive.sweep_stable(now=time.time() + 61)
    archive.ingest_bytes(to_bytes(make_ct(study=study, series=f"{study}.1", seed=99)), source="test")
    assert archive.sweep_stable(now=time.time() + 61) == 2
    stable = [c for c in archive.changes(0, 100) if c.type == "StudyStable"]
    assert [c.payload["instances"] for c in stable] == [2, 3]


def test_several_processes_emit_each_event_once(settings) -> None:
    """Four archive instances on one database (as four server processes) sweep at once."""
    archives = [Archive(settings) for _ in range(4)]
    for i in range(5):
        _store_study(archives[i % 4], 2)
    later = time.time() + 61
    barrier = threading.Barrier(4)
    counts = [0] * 4

    def sweep(index: int) -> None:
        barrier.wait()
        counts[index] = archives[index].sweep_stable(now=later)

    threads = [threading.Thread(target=sweep, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 15  # 10 series + 5 studies
    events = [c for c in archives[0].changes(0, 1000) if c.type.endswith("Stable")]
    assert len(events) == 15
    assert len({(c.type, c.series_uid, c.study_uid) for c in events}) == 15
    for arc in archives:
        arc.close()


def test_concurrent_ingest_keeps_feed_ordered_and_counts_exact(settings) -> None:
    archive = Archive(settings)
    study = short_uid()
    errors = []

    def worker(w: int) -> None:
        try:
            for i in range(10):
                ds = make_ct(study=study, series=f"{study}.{w}", seed=w * 100 + i)
                archive.ingest_bytes(to_bytes(ds), source="test")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    changes = archive.changes(0, 1000)
    assert [c.id for c in changes] == list(range(1, 41))
    from sqlalchemy import select

    from pacs.index.models import Study

    with archive.db.read() as conn:
        row = conn.execute(select(Study.num_series, Study.num_instances).where(Study.study_uid == study)).one()
    assert tuple(row) == (4, 40)
    archive.close()


def test_consumer_reads_its_types_and_moves_past_the_others(archive: Archive) -> None:
    """A consumer's batch: its cursor moves past every event of the window, InstanceStored
    included, while only its own types reach it (read in SQL, not decoded and dropped)."""
    from pacs.consumers import BATCH, Consumer, _cursor, consume
    from pacs.events import EventType

    study = _store_study(archive, 1)  # 2 InstanceStored
    archive.sweep_stable(now=time.time() + 61)  # SeriesStable, StudyStable
    seen: list[tuple[str, str]] = []
    consumer = Consumer("test-studies", frozenset({EventType.STUDY_STABLE}),
                        lambda conn, event: seen.append((event.type, event.study_uid)))
    ids = [c.id for c in archive.changes(0, 100)]
    assert consume(archive.db, consumer, batch=3) == 3  # a window of 3: no StudyStable in it
    assert seen == [] and _cursor(archive.db, consumer.name) == ids[2]
    assert consume(archive.db, consumer, batch=BATCH) == 1
    assert seen == [("StudyStable", study)] and _cursor(archive.db, consumer.name) == ids[3]
    assert consume(archive.db, consumer) == 0  # caught up


def test_consumer_progress_stores_the_cursor_only_with_events_to_apply(archive: Archive) -> None:
    """With a Progress, windows with nothing for the consumer move only the position the
    process remembers; the cursor is stored with the next events applied, or when
    SAVE_EVERY has passed. A second process's stale memory applies nothing twice."""
    from pacs.consumers import Consumer, Progress, _cursor, consume, consume_all
    from pacs.events import EventType

    seen: list[str] = []
    consumer = Consumer("test-progress", frozenset({EventType.STUDY_STABLE}),
                        lambda conn, event: seen.append(event.study_uid))
    first, second = Progress(), Progress()
    study = _store_study(archive, 1)  # 2 InstanceStored: nothing for the consumer
    ids = [c.id for c in archive.changes(0, 100)]
    assert consume(archive.db, consumer, progress=first) == 2
    assert _cursor(archive.db, consumer.name) == 0 and first.read_to[consumer.name] == ids[-1]
    assert consume(archive.db, consumer, progress=first) == 0  # read from memory: caught up
    archive.sweep_stable(now=time.time() + 61)  # SeriesStable, StudyStable
    stable_ids = [c.id for c in archive.changes(ids[-1], 100)]
    assert consume(archive.db, consumer, progress=first) == 2  # from its memory: 2 events
    assert seen == [study] and _cursor(archive.db, consumer.name) == stable_ids[-1]
    # The other process read nothing yet: it starts from the stored cursor, applies nothing.
    assert consume_all(archive.db, [consumer], second) == 0 and seen == [study]
    other = _store_study(archive, 1)
    assert consume_all(archive.db, [consumer], first) == 0  # read, nothing for it: no wake-up
    assert first.read_to[consumer.name] == archive.changes(0, 1000)[-1].id
    assert _cursor(archive.db, consumer.name) == stable_ids[-1]  # not stored yet
    first.saved_at[consumer.name] -= 11  # SAVE_EVERY has passed: the next window stores it
    third = _store_study(archive, 1)
    assert consume(archive.db, consumer, progress=first) == 2
    assert _cursor(archive.db, consumer.name) == archive.changes(0, 1000)[-1].id
    assert consume(archive.db, consumer, progress=second) == 0 and seen == [study]
    archive.sweep_stable(now=time.time() + 61)
    # 4 events read (a SeriesStable and a StudyStable a study), 2 handed to the consumer
    assert consume_all(archive.db, [consumer], first) == 2 and sorted(seen) == sorted([study, other, third])
    assert consume_all(archive.db, [consumer], second) == 0 and len(seen) == 3
