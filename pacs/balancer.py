"""Spreading connections evenly over the worker processes of ``pacs serve``.

With more than one worker the supervisor owns the listening sockets (DIMSE, DICOM TLS,
HTTP), accepts every connection and hands it (the file descriptor, over a Unix
``SOCK_SEQPACKET`` pair, ``SCM_RIGHTS``) to the worker holding the fewest open
connections; the worker reports each connection that ends with one byte back.

Why not ``SO_REUSEPORT``, which the workers used before: the kernel picks a worker by a
hash of the connection's addresses, so four modalities land 2/2 on two workers only
three times in eight (3/1 half the time, 4/0 once in eight), and one process's
interpreter lock then serves three or four associations while the other core idles;
the same holds for STOW-RS clients on kept-alive HTTP connections. Counting is exact
here, and the cost is one descriptor passed per connection, not per message or request.
Hand-written because neither the standard library nor aiohttp spreads long-lived
connections by load.

This module imports nothing of the DICOM, database or HTTP stacks: the supervisor stays
light.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Connection kinds, the one byte sent with each descriptor: DIMSE, DICOM TLS, HTTP(S).
PLAIN, TLS, HTTP = b"D", b"T", b"H"
#: Worker -> supervisor: ready to serve; an association ended.
READY, ENDED = b"R", b"-"
POLL_SECONDS = 0.2
#: Longest wait at start for every worker to be ready before connections are handed out.
STARTUP_GRACE_SECONDS = 30.0


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket listening on (host, port); port 0 picks a free one."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    return listener


@dataclass(eq=False)
class _Worker:
    channel: socket.socket
    active: int = 0
    ready: bool = False


class Balancer:
    """The supervisor's side: accepts on ``listeners`` (kind -> socket) in a thread of its
    own and hands each connection to the least busy worker (ready ones first).

    It starts accepting once ``expected`` workers are ready, or ``grace`` seconds after
    :meth:`start`: a modality that connects while the workers start waits in the listen
    backlog instead of all landing on the first worker up."""

    def __init__(self, listeners: dict[bytes, socket.socket], *, expected: int = 1,
                 grace: float = STARTUP_GRACE_SECONDS) -> None:
        self.listeners = listeners
        self.expected = expected
        self.grace = grace
        self._accepting = False
        self._workers: dict[int, _Worker] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="connection-balancer", daemon=True)

    def attach(self, slot: int) -> socket.socket:
        """A fresh channel for the worker in ``slot`` (replacing a dead one's); the
        returned end goes to the worker process (:class:`Feed`)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with self._lock:
            old = self._workers.pop(slot, None)
            self._workers[slot] = _Worker(ours)
        if old is not None:
            old.channel.close()
        self._wake_w.send(b"w")
        return theirs

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and close the listeners; the workers finish what they hold."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake_w.send(b"s")
        if self._thread.is_alive():
            self._thread.join()
        for listener in self.listeners.values():
            listener.close()

    def counts(self) -> dict[int, int]:
        """Open connections each worker slot holds now (tests, logs)."""
        with self._lock:
            return {slot: worker.active for slot, worker in self._workers.items()}

    def _run(self) -> None:
        kinds = {listener: kind for kind, listener in self.listeners.items()}
        give_up_waiting = time.monotonic() + self.grace
        while not self._stopping.is_set():
            with self._lock:
                channels = {w.channel: w for w in self._workers.values()}
                ready = sum(1 for w in self._workers.values() if w.ready)
            self._accepting = self._accepting or ready >= self.expected or time.monotonic() >= give_up_waiting
            listening = list(kinds) if self._accepting else []
            timeout = None if self._accepting else max(0.0, give_up_waiting - time.monotonic())
            try:
                readable, _, _ = select.select([*listening, *channels, self._wake_r], [], [], timeout)
            except (OSError, ValueError):  # a channel closed meanwhile (attach replaced it)
                continue
            for sock in readable:
                if sock is self._wake_r:
                    self._wake_r.recv(64)
                elif sock in kinds:
                    self._accept(sock, kinds[sock])
                else:
                    self._hear(channels[sock])

    def _accept(self, listener: socket.socket, kind: bytes) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:  # our copy closes once the worker holds its own
            for worker in self._by_load():
                try:
                    socket.send_fds(worker.channel, [kind], [conn.fileno()])
                except OSError:  # that worker is gone; its slot is being restarted
                    continue
                with self._lock:
                    worker.active += 1
                return
            log.warning("no worker to take a connection; closed")

    def _by_load(self) -> list[_Worker]:
        with self._lock:
            return sorted(self._workers.values(), key=lambda w: (not w.ready, w.active))

    def _hear(self, worker: _Worker) -> None:
        try:
            news = worker.channel.recv(4096)
        except OSError:
            news = b""
        with self._lock:
            if not news:  # the worker exited: forget it until its slot is attached again
                for slot, known in list(self._workers.items()):
                    if known is worker:
                        del self._workers[slot]
                worker.channel.close()
                return
            worker.ready = worker.ready or READY in news
            worker.active = max(0, worker.active - news.count(ENDED))


class Feed:
    """The worker's side: connections handed over by the supervisor's :class:`Balancer`."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self._send_lock = threading.Lock()
        channel.settimeout(POLL_SECONDS)

    def ready(self) -> None:
        self._tell(READY)

    def ended(self) -> None:
        """One association handed to us is over."""
        self._tell(ENDED)

    def receive(self) -> tuple[socket.socket, bytes] | None:
        """The next connection and its kind (:data:`PLAIN`, :data:`TLS`, :data:`HTTP`);
        None when nothing came within the poll interval. Raises EOFError when the
        supervisor is gone."""
        try:
            kind, fds, _flags, _addr = socket.recv_fds(self.channel, 1, 1)
        except TimeoutError:
            return None
        if not kind:
            raise EOFError("the supervisor closed the channel")
        if not fds:
            return None
        return socket.socket(fileno=fds[0]), kind

    def close(self) -> None:
        self.channel.close()

    def _tell(self, message: bytes) -> None:
        try:
            with self._send_lock:
                self.channel.send(message)
        except OSError:  # the supervisor is gone; nothing to tell
            pass
