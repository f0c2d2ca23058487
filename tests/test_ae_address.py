"""The AE policy's source-address check (``PACS_CHECK_AE_ADDRESS``): a registered AE title
calling from another address than its registered host is refused (0x0124)."""

from __future__ import annotations

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import func, select

from pacs import aes
from pacs.archive import Archive
from pacs.dimse.policy import AEPolicy
from pacs.index.models import Instance
from pacs.settings import Settings

from .factory import make_ct
from .servers import ThreadedServer


def test_address_rules(archive: Archive) -> None:
    aes.add_ae(archive.db, "CT1", "10.0.0.1", 104)
    aes.add_ae(archive.db, "WS1", "localhost", 104)
    policy = AEPolicy(archive.db, check_address=True)
    assert policy.is_allowed("CT1", "10.0.0.1", "store")
    assert policy.is_allowed("CT1", "::ffff:10.0.0.1", "store")  # IPv4-mapped on a dual-stack socket
    assert not policy.is_allowed("CT1", "10.0.0.2", "store")
    assert not policy.is_allowed("CT1", "10.0.0.2", "echo")
    assert policy.address_refused("CT1", "10.0.0.2") and not policy.address_refused("CT1", "10.0.0.1")
    assert policy.is_allowed("WS1", "127.0.0.1", "find")  # a name, resolved
    assert not policy.is_allowed("WS1", "10.0.0.1", "find")
    assert policy.is_allowed("STRANGER", "10.9.9.9", "store")  # open mode: unregistered AEs as before
    assert AEPolicy(archive.db).is_allowed("CT1", "10.0.0.2", "store")  # check off: addresses ignored


def _count(archive: Archive) -> int:
    with archive.db.read() as conn:
        return int(conn.execute(select(func.count(Instance.id))).scalar())


def test_association_from_wrong_address_refused(settings: Settings) -> None:
    server = ThreadedServer(settings.replace(check_ae_address=True)).start()
    try:
        assert server.archive is not None
        aes.add_ae(server.archive.db, "CT1", "10.0.0.1", 104)
        aes.add_ae(server.archive.db, "CT2", "127.0.0.1", 104)
        server.archive.policy.invalidate()
        results = {}
        for title in ("CT1", "CT2"):
            ae = AE(ae_title=title)
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS")
            assert assoc.is_established
            results[title] = (assoc.send_c_store(make_ct()), assoc.send_c_echo())
            assoc.release()
        store, echo = results["CT1"]
        assert (store.Status, echo.Status) == (0x0124, 0x0124)
        assert store.ErrorComment == "calling AE not allowed to store from this address"
        store, echo = results["CT2"]
        assert (store.Status, echo.Status) == (0x0000, 0x0000)
        assert _count(server.archive) == 1
    finally:
        server.stop()
