"""TLS for the DICOM port and the web server (docs/security.md "TLS").

* DICOM: the secure transport connection profiles of PS3.15 B.1 (TLS) and B.9 (BCP 195,
  RFC 7525 / RFC 9325): TLS 1.2 or later, server certificate, client certificates
  requested when a CA file is configured, required when ``PACS_TLS_REQUIRE_CLIENT_CERT``
  is on. The DIMSE server wraps each socket accepted on ``PACS_DIMSE_TLS_PORT`` with
  :func:`dimse_context`; the handshake runs in the association's thread.
* HTTP: ``PACS_HTTPS`` serves every HTTP door over TLS with the same certificate
  (:func:`http_context`); HTTP clients authenticate with tokens, not certificates.
* Client certificates bound to AE titles (``PACS_TLS_CLIENT_AES``,
  :func:`parse_client_aes`, :func:`binding_refused`): a certificate listed there may only
  call with its AE title, and that AE title may only be used with that certificate.

Only the standard library :mod:`ssl` and ``cryptography`` (certificate parsing) are used.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping

from cryptography import x509
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)

#: Loopback addresses: plain HTTP there is not warned about.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The verified client certificate of a TLS connection."""

    subject: str  # RFC 4514 string, e.g. "CN=ct1.hospital.org,O=Hospital"
    common_name: str
    sha256: str  # lower-case hex of the DER certificate's SHA-256 digest

    @classmethod
    def from_der(cls, der: bytes) -> "PeerCertificate":
        cert = x509.load_der_x509_certificate(der)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = str(names[0].value) if names else ""
        return cls(cert.subject.rfc4514_string(), common_name, hashlib.sha256(der).hexdigest())


def peer_certificate(sock: object) -> PeerCertificate | None:
    """The client certificate of an established TLS socket (None: plain socket, or no
    certificate sent). Only certificates verified against ``PACS_TLS_CA_FILE`` reach here:
    without a CA file none is requested."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    der = sock.getpeercert(binary_form=True)
    return PeerCertificate.from_der(der) if der else None


def _base_context(settings: Settings) -> ssl.SSLContext:
    """A server context with our certificate, TLS 1.2+ and the default (BCP 195) ciphers."""
    if not (settings.tls_cert_file and settings.tls_key_file):
        raise ValueError("PACS_TLS_CERT_FILE and PACS_TLS_KEY_FILE are needed for TLS")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


def dimse_context(settings: Settings) -> ssl.SSLContext:
    """The context of the DICOM TLS port (PS3.15 B.1, B.9): client certificates verified
    against ``tls_ca_file`` when one is set, and required with ``tls_require_client_cert``."""
    context = _base_context(settings)
    if settings.tls_ca_file:
        context.load_verify_locations(cafile=settings.tls_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED if settings.tls_require_client_cert else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def http_context(settings: Settings) -> ssl.SSLContext | None:
    """The context of the web server when ``PACS_HTTPS`` is on (no client certificates:
    HTTP callers authenticate with tokens), else None."""
    return _base_context(settings) if settings.https else None


def warn_plaintext(settings: Settings) -> None:
    """Log a warning when a non-loopback address is served without TLS (PS3.15 B.1: DICOM
    and health data should not cross a network in clear)."""
    if settings.host in LOOPBACK_HOSTS:
        return
    if not settings.https:
        log.warning("HTTP on %s is served WITHOUT TLS: set PACS_HTTPS with PACS_TLS_CERT_FILE/KEY_FILE",
                    settings.host)
    if not settings.dimse_tls_port:
        log.warning("DICOM on %s has no TLS port: set PACS_DIMSE_TLS_PORT (conventionally 2762)", settings.host)


# -- client certificates bound to AE titles ----------------------------------------------------
def _normalise_key(key: str) -> str:
    kind, sep, value = key.strip().partition("=")
    kind = kind.strip().upper()
    if not sep or not value.strip() or kind not in ("CN", "SHA256"):
        raise ValueError(f"tls_client_aes: {key!r} must be CN=<common name> or SHA256=<fingerprint>")
    if kind == "SHA256":
        digest = value.replace(":", "").strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"tls_client_aes: {key!r} is not a SHA-256 fingerprint")
        return "sha256:" + digest
    return "cn:" + value.strip()


def parse_client_aes(entries: Iterable[str]) -> dict[str, str]:
    """``["CN=ct1.hospital.org->CT1", "SHA256=ab:12:...->MR1"]`` -> ``{"cn:ct1.hospital.org":
    "CT1", "sha256:ab12...": "MR1"}``; raises ValueError on a malformed entry."""
    bindings: dict[str, str] = {}
    for entry in entries:
        key, sep, ae_title = entry.rpartition("->")
        ae_title = ae_title.strip()
        if not sep or not ae_title or len(ae_title) > 16:
            raise ValueError(f"tls_client_aes: {entry!r} must be <CN=name or SHA256=hex> -> <AE title>")
        bindings[_normalise_key(key)] = ae_title
    return bindings


def bound_ae(peer: PeerCertificate | None, bindings: Mapping[str, str]) -> str | None:
    """The AE title ``peer``'s certificate is bound to (fingerprint first, then CN)."""
    if peer is None:
        return None
    return bindings.get("sha256:" + peer.sha256) or bindings.get("cn:" + peer.common_name)


def binding_refused(calling_ae: str, peer: PeerCertificate | None, bindings: Mapping[str, str]) -> bool:
    """True when the association must be rejected (PS3.8 9.3.4, calling AE title not
    recognised): a bound certificate calling with another AE title, or a bound AE title
    calling without its certificate (on the plain port, or with another certificate)."""
    if not bindings:
        return False
    bound = bound_ae(peer, bindings)
    if bound is not None:
        return bound != calling_ae
    return calling_ae in bindings.values()

