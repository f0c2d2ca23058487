"""The AE policy: registry flags, open/closed mode, the cache, and its use by C-ECHO/C-STORE."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import func, select, update

from pacs import aes
from pacs.archive import Archive
from pacs.cli import main
from pacs.dimse.policy import AEPolicy
from pacs.index.models import Instance, RemoteAE
from pacs.settings import Settings

from .factory import make_ct
from .servers import ThreadedServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _count(archive: Archive) -> int:
    with archive.db.read() as conn:
        return int(conn.execute(select(func.count(Instance.id))).scalar())


def _store_and_echo(port: int, ae_title: str) -> tuple[object, object]:
    """(C-STORE response, C-ECHO response) for one CT sent as ``ae_title``."""
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    store = assoc.send_c_store(make_ct())
    echo = assoc.send_c_echo()
    assoc.release()
    return store, echo


@pytest.fixture
def closed_server(settings: Settings) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(settings.replace(open_mode=False)).start()
    yield srv
    srv.stop()


def test_open_mode_rules(archive: Archive) -> None:
    aes.add_ae(archive.db, "CT1", "10.0.0.1", 104, denied=["store", "find"])
    policy = AEPolicy(archive.db, open_mode=True)
    assert policy.is_allowed("STRANGER", "10.9.9.9", "store")
    assert policy.is_allowed("STRANGER", "10.9.9.9", "commitment")
    assert not policy.is_allowed("CT1", "10.0.0.1", "store")
    assert not policy.is_allowed("CT1", "10.0.0.1", "find")
    assert policy.is_allowed("CT1", "10.0.0.1", "echo")
    assert policy.is_allowed("CT1 ", "10.0.0.1", "move")  # trailing padding is not significant
    with pytest.raises(ValueError):
        policy.is_allowed("CT1", "10.0.0.1", "delete")


def test_closed_mode_rules(archive: Archive) -> None:
    aes.add_ae(archive.db, "CT1", "10.0.0.1", 104, denied=["get"])
    policy = AEPolicy(archive.db, open_mode=False)
    assert not policy.is_allowed("STRANGER", "10.9.9.9", "echo")
    assert policy.is_allowed("CT1", "10.0.0.1", "store")
    assert not policy.is_allowed("CT1", "10.0.0.1", "get")


def test_registry_reads_are_cached_briefly(archive: Archive) -> None:
    aes.add_ae(archive.db, "CT1", "10.0.0.1", 104)
    clock = Clock()
    policy = AEPolicy(archive.db, clock=clock)
    assert policy.is_allowed("CT1", "", "store")
    # Another process (here: a bare UPDATE) denies store: seen only when the cache expires.
    with archive.db.write() as conn:
        conn.execute(update(RemoteAE).where(RemoteAE.ae_title == "CT1").values(allow_store=False))
    clock.now += 1.0
    assert policy.is_allowed("CT1", "", "store")
    clock.now += 1.5
    assert not policy.is_allowed("CT1", "", "store")
    # A change made through pacs.aes in this process applies at once.
    aes.update_ae(archive.db, "CT1", "10.0.0.1", 104, denied=[])
    assert policy.is_allowed("CT1", "", "store")


def test_store_denied_gets_0124_and_nothing_stored(server: ThreadedServer) -> None:
    aes.add_ae(server.archive.db, "NOSTORE", "127.0.0.1", 104, denied=["store"])
    store, echo = _store_and_echo(server.dimse_port, "NOSTORE")
    assert store.Status == 0x0124
    assert store.ErrorComment == "calling AE not allowed to store"
    assert echo.Status == 0x0000
    assert _count(server.archive) == 0


def test_allowed_registered_ae_stores(server: ThreadedServer) -> None:
    aes.add_ae(server.archive.db, "CT1", "127.0.0.1", 104, denied=["find", "move"])
    store, echo = _store_and_echo(server.dimse_port, "CT1")
    assert (store.Status, echo.Status) == (0x0000, 0x0000)
    assert _count(server.archive) == 1


def test_echo_denied(server: ThreadedServer) -> None:
    aes.add_ae(server.archive.db, "NOECHO", "127.0.0.1", 104, denied=["echo"])
    store, echo = _store_and_echo(server.dimse_port, "NOECHO")
    assert store.Status == 0x0000
    assert echo.Status == 0x0124


def test_closed_mode_refuses_unknown_and_serves_registered(closed_server: ThreadedServer) -> None:
    store, echo = _store_and_echo(closed_server.dimse_port, "STRANGER")
    assert (store.Status, echo.Status) == (0x0124, 0x0124)
    assert _count(closed_server.archive) == 0
    aes.add_ae(closed_server.archive.db, "CT1", "127.0.0.1", 104)
    store, echo = _store_and_echo(closed_server.dimse_port, "CT1")
    assert (store.Status, echo.Status) == (0x0000, 0x0000)
    assert _count(closed_server.archive) == 1


def test_open_mode_setting_from_environment() -> None:
    from pacs.settings import load_settings

    assert load_settings(env={}).open_mode is True
    assert load_settings(env={"PACS_OPEN_MODE": "false"}).open_mode is False


@pytest.fixture
def cli_env(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PACS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PACS_DATABASE_URL", database_url)
    return tmp_path / "data"


def test_cli_deny_and_allow(cli_env: Path, settings: Settings, capsys) -> None:
    assert main(["ae", "add", "CT1", "10.0.0.1", "104", "--deny", "store,find"]) == 0
    assert main(["ae", "add", "WS1", "10.0.0.2", "104", "--allow", "echo,move"]) == 0
    assert main(["ae", "add", "ALL", "10.0.0.3", "104"]) == 0
    assert main(["ae", "add", "BAD", "10.0.0.4", "104", "--deny", "store,delete"]) == 2
    assert "unknown operation(s) delete" in capsys.readouterr().err
    archive = Archive(settings, migrate=False)
    try:
        assert aes.get_ae(archive.db, "CT1").denied == {"store", "find"}  # type: ignore[union-attr]
        assert aes.get_ae(archive.db, "WS1").denied == {"store", "find", "get", "commitment", "mwl", "mpps"}  # type: ignore[union-attr]
        assert aes.get_ae(archive.db, "BAD") is None
    finally:
        archive.close()
    assert main(["ae", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("CT1") and "allow=echo,move,get,commitment,mwl,mpps" in line for line in lines)
    assert any(line.startswith("WS1") and "allow=echo,move" in line for line in lines)
    assert any(line.startswith("ALL") and "allow=all" in line for line in lines)


def test_registry_outage_keeps_last_copy(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    from pacs.errors import StorageUnavailable

    aes.add_ae(archive.db, "CT1", "10.0.0.1", 104, denied=["store"])
    clock = Clock()
    policy = AEPolicy(archive.db, clock=clock)
    assert not policy.is_allowed("CT1", "", "store")

    def down() -> dict:
        raise StorageUnavailable("index database unavailable")

    monkeypatch.setattr(policy, "_load", down)
    clock.now += 5
    assert not policy.is_allowed("CT1", "", "store")  # decided from the last copy
    assert policy.is_allowed("CT1", "", "echo")
    fresh = AEPolicy(archive.db, clock=clock)
    monkeypatch.setattr(fresh, "_load", down)
    with pytest.raises(StorageUnavailable):
        fresh.is_allowed("CT1", "", "echo")
