"""pacs/balancer.py: DIMSE connections spread by load over workers (real sockets, no processes)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from pacs.balancer import PLAIN, TLS, Balancer, Feed, bind_listener


class FakeWorker(threading.Thread):
    """A worker's feed loop: keeps every connection handed over, with its kind."""

    def __init__(self, channel: socket.socket) -> None:
        super().__init__(daemon=True)
        self.feed = Feed(channel)
        self.held: list[tuple[socket.socket, bytes]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                handed = self.feed.receive()
            except (EOFError, OSError):
                return
            if handed is not None:
                self.held.append(handed)

    def close(self) -> None:
        self.stop.set()
        self.join(5)

    def end_one(self) -> None:
        sock, _ = self.held.pop()
        sock.close()
        self.feed.ended()


def _shut(balancer: Balancer, workers: list[FakeWorker], clients: list[socket.socket]) -> None:
    balancer.stop()
    for worker in workers:
        worker.close()
    for client in clients:
        client.close()


def _wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


@pytest.fixture
def balanced():  # type: ignore[no-untyped-def]
    listeners = {PLAIN: bind_listener("127.0.0.1", 0), TLS: bind_listener("127.0.0.1", 0)}
    balancer = Balancer(listeners, expected=2)
    workers = [FakeWorker(balancer.attach(slot)) for slot in range(2)]
    for worker in workers:
        worker.start()
        worker.feed.ready()
    balancer.start()
    clients: list[socket.socket] = []

    def connect(kind: bytes = PLAIN) -> socket.socket:
        client = socket.create_connection(listeners[kind].getsockname()[:2])
        clients.append(client)
        return client

    yield balancer, workers, connect
    _shut(balancer, workers, clients)


def test_connections_alternate_between_workers(balanced) -> None:  # type: ignore[no-untyped-def]
    balancer, workers, connect = balanced
    for i in range(4):
        connect()
        _wait_for(lambda: sum(len(w.held) for w in workers) == i + 1)
    assert [len(w.held) for w in workers] == [2, 2]
    assert balancer.counts() == {0: 2, 1: 2}


def test_an_ended_association_makes_its_worker_the_next_choice(balanced) -> None:  # type: ignore[no-untyped-def]
    balancer, workers, connect = balanced
    for i in range(4):
        connect()
        _wait_for(lambda: sum(len(w.held) for w in workers) == i + 1)
    workers[1].end_one()
    _wait_for(lambda: balancer.counts() == {0: 2, 1: 1})
    connect()
    _wait_for(lambda: len(workers[1].held) == 2)
    assert len(workers[0].held) == 2


def test_the_handed_socket_is_the_clients_connection_and_keeps_its_kind(balanced) -> None:  # type: ignore[no-untyped-def]
    _, workers, connect = balanced
    client = connect(TLS)
    _wait_for(lambda: any(w.held for w in workers))
    sock, on_tls_port = next(w.held[0] for w in workers if w.held)
    assert on_tls_port == TLS
    sock.sendall(b"hello from the worker")
    assert client.recv(64) == b"hello from the worker"
    assert sock.getpeername() == client.getsockname()


def test_a_worker_that_is_gone_gets_nothing(balanced) -> None:  # type: ignore[no-untyped-def]
    balancer, workers, connect = balanced
    workers[0].close()
    workers[0].feed.close()
    _wait_for(lambda: 0 not in balancer.counts())
    for i in range(3):
        connect()
        _wait_for(lambda: len(workers[1].held) == i + 1)
    assert balancer.counts() == {1: 3}


def test_a_worker_not_ready_yet_is_chosen_last() -> None:
    listeners = {PLAIN: bind_listener("127.0.0.1", 0)}
    balancer = Balancer(listeners, expected=1)  # hands out once it has heard the ready one
    starting, ready = (FakeWorker(balancer.attach(slot)) for slot in range(2))
    ready.start()
    ready.feed.ready()
    balancer.start()
    clients = [socket.create_connection(listeners[PLAIN].getsockname()[:2]) for _ in range(2)]
    try:
        _wait_for(lambda: len(ready.held) == 2)
        assert balancer.counts() == {0: 0, 1: 2}
    finally:
        _shut(balancer, [ready], clients)
        starting.feed.close()


def test_connections_wait_until_every_worker_is_ready() -> None:
    listeners = {PLAIN: bind_listener("127.0.0.1", 0)}
    balancer = Balancer(listeners, expected=2)
    first, second = (FakeWorker(balancer.attach(slot)) for slot in range(2))
    first.start()
    second.start()
    first.feed.ready()
    balancer.start()
    clients = [socket.create_connection(listeners[PLAIN].getsockname()[:2]) for _ in range(2)]
    try:
        time.sleep(0.3)  # the balancer must not hand anything out meanwhile (no event to wait for)
        assert not first.held and not second.held
        second.feed.ready()
        _wait_for(lambda: len(first.held) == 1 and len(second.held) == 1)
    finally:
        _shut(balancer, [first, second], clients)


def test_a_slot_attached_again_while_running_keeps_connections_flowing(balanced) -> None:  # type: ignore[no-untyped-def]
    balancer, workers, connect = balanced
    replacement = FakeWorker(balancer.attach(0))  # closes the old channel under the running loop
    replacement.start()
    replacement.feed.ready()
    try:
        for i in range(3):
            connect()
            _wait_for(lambda: len(replacement.held) + len(workers[1].held) == i + 1)
        assert balancer.counts() == {0: len(replacement.held), 1: len(workers[1].held)}
        assert not workers[0].held
    finally:
        replacement.close()
