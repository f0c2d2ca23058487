"""The DIMSE server: Verification and every Storage SOP class pynetdicom knows.

Each storage SOP class is offered with every transfer syntax pynetdicom knows
(uncompressed, deflate, RLE, JPEG family, JPEG-LS, JPEG 2000, HTJ2K, MPEG, HEVC); the
bytes are stored as received, pixel data never decoded. Received datasets are streamed
to a file on the blob folder's filesystem (``STORE_RECV_CHUNKED_DATASET``), so memory
stays flat whatever the object size, and storing the object is a rename.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

from pynetdicom import (
    ALL_TRANSFER_SYNTAXES,
    AE,
    AllStoragePresentationContexts,
    _config,
    evt,
)
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
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from . import commitment, handlers
from .find import handle_find
from .get import handle_get
from .move import RetrieveAE, handle_move

if TYPE_CHECKING:
    from ..archive import Archive

log = logging.getLogger(__name__)


def configure_pynetdicom() -> None:
    """Process-wide pynetdicom settings: no identifiers in logs, stream received data."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.LOG_HANDLER_LEVEL = "none"
    _config.STORE_RECV_CHUNKED_DATASET = True
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class FastAssociationSocket(AssociationSocket):
    """pynetdicom's socket with a faster receive path.

    pynetdicom reads a PDU in 4 KiB ``recv()`` calls appended to a growing bytearray
    (128 calls and copies for a 512 KiB CT slice). This reads straight into one buffer of
    the PDU's size. It also re-arms TCP_QUICKACK (Linux) after each read: a peer whose
    socket has Nagle on sends a message's second PDU only once the first is ACKed, and a
    delayed ACK stalls every request by ~40 ms.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        assert sock is not None
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        while received < nr_bytes:
            count = sock.recv_into(view[received:], nr_bytes - received)
            if not count:  # connection closed: return what arrived, as pynetdicom does
                del view
                return buffer[:received]
            received += count
        if _QUICKACK is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                pass
        return buffer


class PacsRequestHandler(RequestHandler):
    """pynetdicom's request handler, giving each association a :class:`FastAssociationSocket`."""

    def _create_association(self):  # type: ignore[no-untyped-def]
        assoc = super()._create_association()
        assoc.dul.socket.__class__ = FastAssociationSocket
        return assoc


class PacsAssociationServer(ThreadedAssociationServer):
    """Sets TCP_NODELAY on every accepted socket (without it each DIMSE message can stall
    ~40 ms on delayed ACKs) and optionally SO_REUSEPORT so several processes share a port."""

    reuse_port = False

    def server_bind(self) -> None:
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


def preferred_transfer_syntaxes() -> list[str]:
    """Every transfer syntax pynetdicom knows, in the order we accept them.

    pynetdicom accepts, per presentation context, the first of *our* syntaxes that the
    requestor proposed. Explicit VR Little Endian comes first (no information lost, no
    transcoding by the sender), then the encapsulated syntaxes so a compressed object is
    kept as the modality holds it, then Deflate, Implicit VR and Big Endian.
    """
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    tail = [DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
    middle = [ts for ts in ALL_TRANSFER_SYNTAXES if ts not in tail and ts != ExplicitVRLittleEndian]
    return [ExplicitVRLittleEndian, *middle, *[ts for ts in tail if ts in ALL_TRANSFER_SYNTAXES]]


def build_ae(archive: Archive) -> AE:
    """An AE with our AE title, limits and presentation contexts."""
    settings = archive.settings
    ae = RetrieveAE(ae_title=settings.ae_title)  # pynetdicom's AE + our C-MOVE sub-association
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.maximum_associations = settings.max_associations
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.acse_timeout = 30
    ae.require_called_aet = settings.require_called_ae
    syntaxes = preferred_transfer_syntaxes()
    ae.add_supported_context(Verification, syntaxes)
    # Role selection proposals are accepted as proposed (PS3.7 D.3.3.4): a C-GET requestor
    # takes the SCP role so that we can send it the C-STORE sub-operations.
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, syntaxes, scu_role=True, scp_role=True)
    for model in (PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind,
                  PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove,
                  PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet):
        ae.add_supported_context(model, syntaxes)
    # Storage Commitment (PS3.4 J.2.1, J.3.2): we are the SCP, the requestor the SCU; a role
    # selection proposal is answered "SCU yes, SCP no" (reports go on a new association).
    ae.add_supported_context(StorageCommitmentPushModel, commitment.TRANSFER_SYNTAXES,
                             scu_role=True, scp_role=False)
    return ae


class DimseServer:
    """Runs the DIMSE acceptor in background threads next to the HTTP server."""

    def __init__(self, archive: Archive, *, reuse_port: bool = False) -> None:
        configure_pynetdicom()
        # pynetdicom spools received datasets with NamedTemporaryFile(): put them on the
        # blob folder's filesystem so ingest can rename instead of copy.
        tempfile.tempdir = archive.incoming_dir
        self.archive = archive
        self.ae = build_ae(archive)
        self.reuse_port = reuse_port
        self.server: PacsAssociationServer | None = None
        self._thread: threading.Thread | None = None
        self.commitment = commitment.CommitmentWorker(archive)

    def _handlers(self) -> list:
        return [
            (evt.EVT_C_ECHO, handlers.handle_echo, [self.archive]),
            (evt.EVT_C_STORE, handlers.handle_store, [self.archive]),
            (evt.EVT_C_FIND, handle_find, [self.archive]),
            (evt.EVT_C_MOVE, handle_move, [self.archive]),
            (evt.EVT_C_GET, handle_get, [self.archive]),
            (evt.EVT_N_ACTION, commitment.handle_n_action, [self.archive, self.commitment]),
            (evt.EVT_ACCEPTED, handlers.handle_association_accepted),
            (evt.EVT_RELEASED, handlers.handle_association_closed),
            (evt.EVT_ABORTED, handlers.handle_association_closed),
            (evt.EVT_REJECTED, handlers.handle_association_rejected),
        ]

    def start(self, host: str | None = None, port: int | None = None) -> tuple[str, int]:
        """Start listening; returns the bound (host, port) (port 0 picks a free one)."""
        settings = self.archive.settings
        address = (host or settings.host, settings.dimse_port if port is None else port)
        server_class = type("Server", (PacsAssociationServer,), {"reuse_port": self.reuse_port})
        self.server = self.ae.make_server(
            address, evt_handlers=self._handlers(), server_class=server_class, request_handler=PacsRequestHandler
        )
        self._thread = threading.Thread(target=self.server.serve_forever, name="dimse-acceptor", daemon=True)
        self._thread.start()
        self.ae._servers.append(self.server)
        self.commitment.start()
        bound = self.server.server_address
        log.info("DIMSE %s listening on %s:%d", settings.ae_title, bound[0], bound[1])
        return bound[0], bound[1]

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def active_associations(self) -> int:
        """Established associations (a bare TCP connection that never sent an
        A-ASSOCIATE-RQ, such as a load balancer's probe, does not count)."""
        return sum(1 for assoc in self.ae.active_associations if assoc.is_established)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let in-flight associations finish for ``timeout`` s, then abort."""
        if self.server is None:
            return
        self.server.shutdown()
        self.commitment.stop()
        deadline = time.monotonic() + timeout
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.active_associations():
            log.warning("aborting %d associations still open at shutdown", self.active_associations())
        self.ae.shutdown()
        self.server = None
