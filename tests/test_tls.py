"""DICOM TLS (PS3.15 B.1/B.9) and HTTPS against the real server, with pynetdicom, dcmtk and
aiohttp as clients. Certificates (a CA, the server, two clients) are made with
``cryptography`` for each test session."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.acse import ACSE
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind, Verification

from pacs.settings import Settings, load_settings
from pacs.tls import PeerCertificate, binding_refused, parse_client_aes

from .dcmtk import dcmtk_tool, needs_dcmtk
from .factory import make_ct
from .pynetdicom_guard import UNGUARDED_ASSOCIATE
from .servers import ProcessServer, ThreadedServer, free_port


# -- certificates -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path  # CN=ct1.hospital.org
    client_key: Path
    other_cert: Path  # CN=ws1.hospital.org
    other_key: Path
    stranger_cert: Path  # CN=ct1.hospital.org, from another CA
    stranger_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Hospital"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, *,
           server: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1)))
    if issuer is None:  # the CA
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = _issue("Test Hospital CA", None)
    ca_path, _ = _write(folder, "ca", ca_cert, ca_key)
    issuer = (ca_cert.subject, ca_key)
    server = _write(folder, "server", *_issue("pacs.hospital.org", issuer, server=True))
    client = _write(folder, "ct1", *_issue("ct1.hospital.org", issuer))
    other = _write(folder, "ws1", *_issue("ws1.hospital.org", issuer))
    rogue_cert, rogue_key = _issue("Rogue CA", None)
    stranger = _write(folder, "stranger", *_issue("ct1.hospital.org", (rogue_cert.subject, rogue_key)))
    return Pki(ca_path, *server, *client, *other, *stranger)


def _tls_settings(settings: Settings, pki: Pki, **changes: object) -> Settings:
    return settings.replace(dimse_tls_port=2762, tls_cert_file=str(pki.server_cert),
                            tls_key_file=str(pki.server_key), tls_ca_file=str(pki.ca), **changes)


def _client_context(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


@pytest.fixture
def tls_server(settings: Settings, pki: Pki) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(_tls_settings(settings, pki)).start()
    yield srv
    srv.stop()


def _associate(port: int, context: ssl.SSLContext | None, calling: str = "MODALITY", contexts=None):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    for cx in contexts or [(Verification,)]:
        ae.add_requested_context(*cx)
    return ae.associate("127.0.0.1", port, ae_title="PACS",
                        tls_args=(context, "localhost") if context is not None else None)


def _refused(port: int, context: ssl.SSLContext | None, calling: str) -> bool:
    """Rejected with "calling AE title not recognised" (PS3.8 9.3.4)."""
    assoc = _associate(port, context, calling)
    return assoc.is_rejected and (assoc.acceptor.primitive.result_source,
                                  assoc.acceptor.primitive.diagnostic) == (1, 3)


def _echo_ok(port: int, context: ssl.SSLContext | None, calling: str = "MODALITY") -> bool:
    assoc = _associate(port, context, calling)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return status.Status == 0x0000


# -- DICOM TLS ----------------------------------------------------------------------------------
def test_echo_store_find_over_tls(tls_server: ThreadedServer, pki: Pki) -> None:
    assert tls_server.dimse_tls_port and tls_server.dimse_tls_port != tls_server.dimse_port
    context = _client_context(pki, pki.client_cert, pki.client_key)
    assert _echo_ok(tls_server.dimse_tls_port, context)
    ds = make_ct(rows=256, columns=256, patient_id="TLS1")  # 128 KiB of pixels: many TLS records
    assoc = _associate(tls_server.dimse_tls_port, context, contexts=[
        (CTImageStorage, [ExplicitVRLittleEndian]), (StudyRootQueryRetrieveInformationModelFind,)])
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0x0000
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID, query.PatientID = "STUDY", "", "TLS1"
    answers = [identifier for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
               if status.Status in (0xFF00, 0xFF01)]
    assoc.release()
    assert [a.StudyInstanceUID for a in answers] == [ds.StudyInstanceUID]
    assert _echo_ok(tls_server.dimse_port, None)  # the plain port still serves


def test_client_certificate_required(settings: Settings, pki: Pki) -> None:
    server = ThreadedServer(_tls_settings(settings, pki, tls_require_client_cert=True)).start()
    try:
        port = server.dimse_tls_port
        assert port is not None
        assert not _associate(port, _client_context(pki)).is_established  # handshake refused
        assert _echo_ok(port, _client_context(pki, pki.client_cert, pki.client_key))
        # A certificate from another CA is refused too.
        stranger = _client_context(pki, pki.stranger_cert, pki.stranger_key)
        assert not _associate(port, stranger).is_established
        assert _echo_ok(port, _client_context(pki, pki.other_cert, pki.other_key))
    finally:
        server.stop()


def test_plain_client_on_tls_port_fails_cleanly(tls_server: ThreadedServer, pki: Pki) -> None:
    port = tls_server.dimse_tls_port
    assert port is not None
    silent = socket.create_connection(("127.0.0.1", port))  # never starts its handshake
    try:
        assert not _associate(port, None).is_established
        assert _echo_ok(port, _client_context(pki))  # the silent one blocks nobody
    finally:
        silent.close()
    assert tls_server.archive is not None
    assert _echo_ok(port, _client_context(pki))  # a client certificate is optional here
    assert _echo_ok(tls_server.dimse_port, None)
    assert tls_server.archive.settings.tls_require_client_cert is False


def test_stop_with_tls_connections_open(settings: Settings, pki: Pki) -> None:
    """Shutdown ends an established TLS association and a silent TLS connection."""
    server = ThreadedServer(_tls_settings(settings, pki, shutdown_timeout=1)).start()
    port = server.dimse_tls_port
    assert port is not None
    silent = socket.create_connection(("127.0.0.1", port))
    assoc = _associate(port, _client_context(pki))
    try:
        assert assoc.is_established
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 15
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)  # polling interval
        assert not assoc.is_established
        silent.settimeout(10)
        assert silent.recv(1) == b""  # closed by the server
    finally:
        silent.close()


def test_certificates_bound_to_ae_titles(settings: Settings, pki: Pki) -> None:
    server = ThreadedServer(_tls_settings(settings, pki, tls_client_aes=("CN=ct1.hospital.org->CT1",))).start()
    try:
        port = server.dimse_tls_port
        assert port is not None
        ct1 = _client_context(pki, pki.client_cert, pki.client_key)
        ws1 = _client_context(pki, pki.other_cert, pki.other_key)
        assert _echo_ok(port, ct1, "CT1")
        assert _refused(port, ct1, "IMPOSTOR")
        assert _refused(port, ws1, "CT1")  # another certificate
        assert _refused(server.dimse_port, None, "CT1")  # the plain port
        assert _echo_ok(port, ws1, "WS1")  # unbound certificates and titles are unaffected
        assert _echo_ok(server.dimse_port, None, "WS1")
    finally:
        server.stop()


def test_rejection_is_reported_when_pynetdicoms_reactor_wins(settings: Settings, pki: Pki,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The race tests/pynetdicom_guard.py works around, replayed deterministically: the
    requestor's thread checks the connection only after the reactor has received our
    A-ASSOCIATE-RJ and closed it. Plain pynetdicom then says aborted (if this fails,
    pynetdicom fixed it); every test client says rejected, with the server's reason."""
    server = ThreadedServer(_tls_settings(settings, pki, tls_client_aes=("CN=ct1.hospital.org->CT1",))).start()
    closed = threading.Event()
    send_request = ACSE.send_request

    def late_send_request(self: ACSE) -> None:
        send_request(self)
        assert closed.wait(10), "the reactor never closed the connection"

    monkeypatch.setattr(ACSE, "send_request", late_send_request)
    try:
        for associate, reported in ((UNGUARDED_ASSOCIATE, "aborted"), (AE.associate, "rejected")):
            closed.clear()
            ae = AE(ae_title="CT1")
            ae.acse_timeout = ae.network_timeout = 10
            ae.add_requested_context(Verification)
            assoc = associate(ae, "127.0.0.1", server.dimse_port, ae_title="PACS",
                              evt_handlers=[(evt.EVT_CONN_CLOSE, lambda event: closed.set())])
            assert closed.is_set() and not assoc.is_established
            assert (assoc.is_aborted, assoc.is_rejected) == (reported == "aborted", reported == "rejected")
        primitive = assoc.acceptor.primitive
        assert (primitive.result, primitive.result_source, primitive.diagnostic) == (1, 1, 3)
    finally:
        server.stop()


@needs_dcmtk("echoscu")
def test_dcmtk_echoscu_over_tls(tls_server: ThreadedServer, pki: Pki) -> None:
    echoscu = dcmtk_tool("echoscu")
    assert echoscu is not None
    result = subprocess.run(
        [echoscu, "+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca), "-aec", "PACS",
         "-aet", "DCMTK", "127.0.0.1", str(tls_server.dimse_tls_port)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    plain = subprocess.run([echoscu, "-to", "5", "-aec", "PACS", "127.0.0.1", str(tls_server.dimse_tls_port)],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0


# -- HTTPS --------------------------------------------------------------------------------------
async def test_https(settings: Settings, pki: Pki) -> None:
    server = ThreadedServer(settings.replace(https=True, tls_cert_file=str(pki.server_cert),
                                             tls_key_file=str(pki.server_key))).start()
    try:
        assert server.base_url.startswith("https://")
        ds = make_ct(patient_id="HTTPS1")
        assoc = _associate(server.dimse_port, None, contexts=[(CTImageStorage, [ExplicitVRLittleEndian])])
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
        context = _client_context(pki)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.base_url}/healthz", ssl=context) as response:
                assert response.status == 200
            async with session.get(f"{server.base_url}/dicom-web/studies", params={"PatientID": "HTTPS1"},
                                   headers={"Accept": "application/dicom+json"}, ssl=context) as response:
                assert response.status == 200
                body = await response.json()
            assert [study["0020000D"]["Value"][0] for study in body] == [ds.StudyInstanceUID]
            with pytest.raises(aiohttp.ClientError):  # plain HTTP to the HTTPS port
                async with session.get(f"http://127.0.0.1:{server.http_port}/healthz") as response:
                    await response.read()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # an unknown CA
                async with session.get(f"{server.base_url}/healthz", ssl=ssl.create_default_context()):
                    pass
    finally:
        server.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_pacs_serve_with_tls(tmp_path: Path, pki: Pki, database_url: str, workers: str) -> None:
    """``pacs serve`` as deployed: HTTPS and the DICOM TLS port from the environment; with
    two workers the supervisor owns both DIMSE ports and hands connections over."""
    server = ProcessServer({"PACS_DATA_DIR": str(tmp_path / "data"), "PACS_DATABASE_URL": database_url,
                            "PACS_WORKERS": workers,
                            "PACS_HTTPS": "true", "PACS_DIMSE_TLS_PORT": str(free_port()),
                            "PACS_TLS_CERT_FILE": str(pki.server_cert), "PACS_TLS_KEY_FILE": str(pki.server_key),
                            "PACS_TLS_CA_FILE": str(pki.ca), "PACS_TLS_REQUIRE_CLIENT_CERT": "true"}, tmp_path)
    context = _client_context(pki)
    server.proc = subprocess.Popen([sys.executable, "-m", "pacs.cli", "serve"], env=server.env, cwd=tmp_path,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tls_port = int(server.env["PACS_DIMSE_TLS_PORT"])
        deadline = time.monotonic() + 60
        while True:  # poll readiness
            assert server.proc.poll() is None and time.monotonic() < deadline
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{server.http_port}/healthz", context=context,
                                            timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.05)  # polling interval
        assert _echo_ok(tls_port, _client_context(pki, pki.client_cert, pki.client_key))
        assert not _associate(tls_port, context).is_established  # no client certificate
        assert _echo_ok(server.dimse_port, None)
    finally:
        assert server.terminate() == 0


# -- settings and bindings ----------------------------------------------------------------------
@pytest.mark.parametrize("env", [
    {"PACS_DIMSE_TLS_PORT": "2762"},
    {"PACS_HTTPS": "true", "PACS_TLS_CERT_FILE": "server.crt"},
    {"PACS_TLS_REQUIRE_CLIENT_CERT": "true"},
    {"PACS_TLS_CLIENT_AES": "ct1->CT1"},
    {"PACS_TLS_CLIENT_AES": "SHA256=abcd->CT1"},
    {"PACS_TLS_CLIENT_AES": "CN=ct1->"},
])
def test_tls_settings_rejected(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        load_settings(env=env)


def test_client_ae_bindings() -> None:
    digest = "ab" * 32
    bindings = parse_client_aes(["CN=ct1.hospital.org -> CT1", f"SHA256={':'.join(['AB'] * 32)}->MR1"])
    assert bindings == {"cn:ct1.hospital.org": "CT1", f"sha256:{digest}": "MR1"}
    ct1 = PeerCertificate("CN=ct1.hospital.org", "ct1.hospital.org", "00" * 32)
    mr1 = PeerCertificate("CN=mr", "mr", digest)
    assert not binding_refused("CT1", ct1, bindings)
    assert binding_refused("MR1", ct1, bindings)
    assert not binding_refused("MR1", mr1, bindings)
    assert binding_refused("CT1", None, bindings)
    assert not binding_refused("OTHER", None, bindings)
    assert not binding_refused("CT1", None, {})
