"""The DIMSE acceptor: Verification, every Storage SOP class, Query/Retrieve, Storage Commitment.

Our own upper layer (:mod:`pacs.dimse.association`): one thread per association, a
blocking socket, each message handled and answered in that thread. pynetdicom supplies
the SOP class and transfer syntax tables and the association negotiation; it stays the
requestor for storage commitment reports. Each storage SOP class is offered with every
transfer syntax pynetdicom knows (uncompressed, deflate, RLE, JPEG family, JPEG-LS,
JPEG 2000, HTJ2K, MPEG, HEVC); the bytes are stored as received, pixel data never
decoded. Received data sets are streamed to a file on the blob folder's filesystem, so
memory stays flat whatever the object size, and storing the object is a rename.

Other packages add SOP classes through the ``pacs.dimse`` entry-point group
(:func:`plugin_services`): ``worklist/`` serves the Modality Worklist C-FIND and MPPS
N-CREATE/N-SET that way; the dispatcher picks their handlers by SOP class.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Mapping

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from .. import metrics, tls
from ..balancer import Feed, bind_listener
from . import command as cmd
from . import audit, commitment, handlers, pdu
from .association import Association, AssociationClosed, ProtocolError
from .negotiation import supported_contexts
from .find import handle_find
from .get import handle_get
from .move import handle_move
from .service import Dispatcher, ServiceBinding

if TYPE_CHECKING:
    from ..archive import Archive

log = logging.getLogger(__name__)

#: Transfer syntaxes of the non-storage services: their data sets are small identifiers.
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
#: Entry-point group of SOP classes served by other packages (:func:`plugin_services`).
DIMSE_ENTRY_POINTS = "pacs.dimse"
#: Largest identifier or action information accepted in memory.
MAX_IDENTIFIER_SIZE = 16 << 20


def configure_logging() -> None:
    """pynetdicom (used as a requestor) must not log identifiers: WARNING and above only."""
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def preferred_transfer_syntaxes() -> list[str]:
    """Every transfer syntax pynetdicom knows, in the order we accept them.

    Per presentation context the first of *our* syntaxes that the requestor proposed is
    accepted. Explicit VR Little Endian comes first (no information lost, no transcoding
    by the sender), then the encapsulated syntaxes so a compressed object is kept as the
    modality holds it, then Deflate, Implicit VR and Big Endian.
    """
    tail = [DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
    middle = [ts for ts in ALL_TRANSFER_SYNTAXES if ts not in tail and ts != ExplicitVRLittleEndian]
    return [ExplicitVRLittleEndian, *middle, *[ts for ts in tail if ts in ALL_TRANSFER_SYNTAXES]]


def context_table() -> list[tuple[str, list[str], bool, bool]]:
    """(abstract syntax, transfer syntaxes, SCU role, SCP role) of every context we accept.

    Role selection proposals on storage contexts are accepted as proposed (PS3.7 D.3.3.4):
    a C-GET requestor takes the SCP role so that we can send it the C-STORE
    sub-operations. Storage Commitment: we are the SCP; a role proposal is answered
    "SCU yes, SCP no" (reports go on a new association, PS3.4 J.3.3).
    """
    storage = preferred_transfer_syntaxes()
    table = [(str(Verification), UNCOMPRESSED, False, False)]
    table += [(str(c.abstract_syntax), storage, True, True) for c in AllStoragePresentationContexts]
    for model in (PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind,
                  PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove,
                  PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet):
        table.append((str(model), UNCOMPRESSED, False, False))
    table.append((str(StorageCommitmentPushModel), list(commitment.TRANSFER_SYNTAXES), True, False))
    table += [(b.sop_class, list(b.transfer_syntaxes), False, False) for b in plugin_services()]
    return table


@lru_cache(maxsize=1)
def plugin_services() -> tuple[ServiceBinding, ...]:
    """SOP classes served by installed packages: each ``pacs.dimse`` entry point is a
    callable returning :class:`ServiceBinding` objects (by entry-point name, so ``pacs/``
    composes e.g. ``worklist/`` without importing it)."""
    bindings: list[ServiceBinding] = []
    for entry in sorted(entry_points(group=DIMSE_ENTRY_POINTS), key=lambda e: e.name):
        bindings += list(entry.load()())
    return tuple(bindings)


@dataclass(frozen=True)
class AcceptorConfig:
    """What every association of one server shares."""

    ae_title: str
    max_pdu: int
    max_associations: int
    acse_timeout: float
    dimse_timeout: float
    network_timeout: float
    require_called_ae: bool
    incoming_dir: str
    supported_contexts: list[PresentationContext] = field(repr=False)
    max_identifier_size: int = MAX_IDENTIFIER_SIZE
    #: Client certificates bound to AE titles (:func:`pacs.tls.parse_client_aes`).
    tls_client_aes: Mapping[str, str] = field(default_factory=dict)


class DimseServer:
    """Listens for associations and serves each in a thread of its own."""

    def __init__(self, archive: Archive, *, feed: Feed | None = None) -> None:
        """``feed``: the channel to the supervisor of ``pacs serve`` workers
        (:mod:`pacs.balancer`), which owns the listening sockets: none are bound here, the
        worker passes connections to :meth:`admit`, and each that ends is reported."""
        configure_logging()
        settings = archive.settings
        self.archive = archive
        self.feed = feed
        self.config = AcceptorConfig(
            ae_title=settings.ae_title, max_pdu=settings.max_pdu_size,
            max_associations=settings.max_associations, acse_timeout=30.0,
            dimse_timeout=settings.dimse_timeout, network_timeout=settings.network_timeout,
            require_called_ae=settings.require_called_ae, incoming_dir=archive.incoming_dir,
            supported_contexts=supported_contexts(context_table()),
            tls_client_aes=tls.parse_client_aes(settings.tls_client_aes),
        )
        self.commitment = commitment.CommitmentWorker(archive)
        self.dispatcher = self._dispatcher()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        #: The DICOM TLS port (PS3.15 B.1): its own listener and acceptor thread.
        self._tls_listener: socket.socket | None = None
        self._tls_thread: threading.Thread | None = None
        self._tls_context: ssl.SSLContext | None = None
        self._fed = False
        self._lock = threading.Lock()
        self._associations: set[Association] = set()
        self._stopping = threading.Event()

    def _dispatcher(self) -> Dispatcher:
        dispatcher = Dispatcher(self.archive)
        dispatcher.register(cmd.C_ECHO_RQ, handlers.handle_echo)
        dispatcher.register(cmd.C_STORE_RQ, handlers.handle_store)
        dispatcher.register(cmd.C_FIND_RQ, handle_find)
        dispatcher.register(cmd.C_MOVE_RQ, handle_move)
        dispatcher.register(cmd.C_GET_RQ, handle_get)
        dispatcher.register(cmd.N_ACTION_RQ, lambda request: commitment.handle_n_action(request, self.commitment))
        for binding in plugin_services():
            for command_field, handler in binding.handlers.items():
                dispatcher.register(command_field, handler, sop_class=binding.sop_class)
        return dispatcher

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, host: str | None = None, port: int | None = None,
              tls_port: int | None = None) -> tuple[str, int]:
        """Start listening; returns the bound (host, port) (port 0 picks a free one).

        ``tls_port``: the DICOM TLS port to bind (0 picks a free one); None takes
        ``dimse_tls_port`` from the settings, where 0 means no TLS port.
        """
        settings = self.archive.settings
        self._stopping.clear()
        if tls_port is None and settings.dimse_tls_port:
            tls_port = settings.dimse_tls_port
        if tls_port is not None:
            self._tls_context = tls.dimse_context(settings)
        self.commitment.start()
        if self.feed is not None:
            return self._start_fed(host or settings.host, tls_port)
        address = (host or settings.host, settings.dimse_port if port is None else port)
        self._listener, self._thread = self._listen(address, None)
        if tls_port is not None:
            self._tls_listener, self._tls_thread = self._listen((address[0], tls_port), self._tls_context)
            log.info("DICOM TLS listening on %s:%d", address[0], self.tls_port)
        bound = self._listener.getsockname()
        log.info("DIMSE %s listening on %s:%d", settings.ae_title, bound[0], bound[1])
        return bound[0], bound[1]

    def _start_fed(self, host: str, tls_port: int | None) -> tuple[str, int]:
        """Serve what the supervisor hands over (:meth:`admit`); it bound the ports of
        the settings."""
        settings = self.archive.settings
        self._fed = True
        if tls_port is not None:
            log.info("DICOM TLS listening on %s:%d", host, tls_port)
        log.info("DIMSE %s listening on %s:%d", settings.ae_title, host, settings.dimse_port)
        return host, settings.dimse_port

    def _listen(self, address: tuple[str, int],
                context: ssl.SSLContext | None) -> tuple[socket.socket, threading.Thread]:
        """A bound listening socket and its running acceptor thread."""
        listener = bind_listener(address[0], address[1])
        listener.settimeout(0.2)
        thread = threading.Thread(target=self._accept_loop, args=(listener, context),
                                  name="dimse-tls-acceptor" if context else "dimse-acceptor", daemon=True)
        thread.start()
        return listener, thread

    @property
    def port(self) -> int:
        if self.feed is not None:
            return self.archive.settings.dimse_port
        assert self._listener is not None
        return int(self._listener.getsockname()[1])

    @property
    def tls_port(self) -> int | None:
        """The bound DICOM TLS port (None when there is none)."""
        if self.feed is not None:
            return self.archive.settings.dimse_tls_port if self._tls_context is not None else None
        return int(self._tls_listener.getsockname()[1]) if self._tls_listener is not None else None

    def active_associations(self) -> int:
        """Established associations (a bare TCP connection that never sent an
        A-ASSOCIATE-RQ, such as a load balancer's probe, does not count)."""
        with self._lock:
            return sum(1 for assoc in self._associations if assoc.is_established)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let established associations finish for ``timeout`` s, then abort."""
        if self._listener is None and not self._fed:
            return
        self._stopping.set()
        for thread in (self._thread, self._tls_thread):
            if thread is not None:
                thread.join()
        for listener in (self._listener, self._tls_listener):
            if listener is not None:
                listener.close()
        self._listener = self._tls_listener = None
        self._fed = False
        self.commitment.stop()
        deadline = time.monotonic() + timeout
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            remaining = list(self._associations)
        if any(assoc.is_established for assoc in remaining):
            log.warning("aborting %d associations still open at shutdown", self.active_associations())
        for assoc in remaining:
            assoc.abort()

    # -- associations ------------------------------------------------------------------------
    def _accept_loop(self, listener: socket.socket, context: ssl.SSLContext | None) -> None:
        """Accept connections until stopped."""
        while not self._stopping.is_set():
            try:
                sock, address = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                log.warning("accept failed", exc_info=True)
                continue
            self._admit(sock, address[:2], context)

    def admit(self, sock: socket.socket, on_tls_port: bool) -> None:
        """Serve a connection the supervisor accepted (``pacs serve`` workers); closed
        instead once stopping, or when the peer left while it was handed over."""
        try:
            address = None if self._stopping.is_set() else sock.getpeername()[:2]
        except OSError:
            address = None
        if address is None:
            sock.close()
            if self.feed is not None:
                self.feed.ended()
            return
        self._admit(sock, address, self._tls_context if on_tls_port else None)

    def _admit(self, sock: socket.socket, address: tuple[str, int], context: ssl.SSLContext | None) -> None:
        """Serve an accepted connection in a thread of its own; on the TLS port wrap the
        socket (no I/O here: the handshake runs in the association's thread, so a slow
        client blocks only itself)."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        assoc = Association(sock, address, self.config)
        with self._lock:
            self._associations.add(assoc)
        threading.Thread(target=self._serve, args=(assoc,), name="dimse-association", daemon=True).start()

    def _serve(self, assoc: Association) -> None:
        try:
            assoc.handshake()  # TLS port only (PS3.15 B.1)
            if not assoc.negotiate(self.active_associations()):
                metrics.ASSOCIATIONS_REJECTED.inc()
                audit.record_refusal(self.archive, assoc.requestor, assoc.rejection)  # audit trail
                return
            metrics.ASSOCIATIONS_TOTAL.inc()
            metrics.ASSOCIATIONS_ACTIVE.inc()
            try:
                while not self._stopping.is_set() or assoc.is_established:
                    self.dispatcher.dispatch(assoc, assoc.receive())
            finally:
                metrics.ASSOCIATIONS_ACTIVE.dec()
        except AssociationClosed:
            pass
        except ProtocolError as exc:
            log.info("association from %s aborted: %s", assoc.requestor.ae_title or assoc.address[0], exc)
            assoc.abort(exc.reason)
        except ssl.SSLError as exc:  # a failed TLS handshake: no certificate, plain DICOM, old TLS
            log.info("TLS connection from %s failed: %s", assoc.address[0], exc.reason or type(exc).__name__)
        except (OSError, ValueError) as exc:  # timeouts, resets, undecodable negotiation PDUs
            log.info("association from %s ended: %s", assoc.requestor.ae_title or assoc.address[0],
                     type(exc).__name__)
            assoc.abort(pdu.REASON_NOT_SPECIFIED)
        except Exception:
            log.exception("association from %s failed", assoc.requestor.ae_title or assoc.address[0])
            assoc.abort(pdu.REASON_NOT_SPECIFIED)
        finally:
            assoc.is_established = False
            assoc.close()
            with self._lock:
                self._associations.discard(assoc)
            if self.feed is not None:
                self.feed.ended()
