"""One typed settings object, read from environment variables and an optional TOML file.

Precedence: explicit keyword arguments > environment (``PACS_*``) > TOML file > defaults.
The environment variable names are a public contract; ``docs/configuration.md`` lists
every field with its default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

#: Server processes at most when ``workers`` is 0 (one per core).
MAX_AUTO_WORKERS = 8

DUPLICATE_POLICIES = ("reject", "overwrite", "keep")


def _doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field carrying its documentation in metadata."""
    return field(metadata={"doc": text}, **kwargs)


@dataclass(frozen=True)
class Settings:
    """Every setting of the archive. Field ``x`` is read from ``PACS_X``."""

    ae_title: str = _doc("AE title of the DIMSE server.", default="PACS")
    host: str = _doc("Address the DIMSE and HTTP servers bind to.", default="127.0.0.1")
    dimse_port: int = _doc("DIMSE (DICOM upper layer) port.", default=11112)
    http_port: int = _doc("HTTP port (DICOMweb, /healthz, /metrics, /api).", default=8080)
    data_dir: Path = _doc("Folder for the embedded database and object store.", default=Path("./data"))
    database_url: str = _doc(
        "SQLAlchemy URL of the index. Default: SQLite file `index.sqlite` in the data dir. "
        "A `postgresql://` URL uses PostgreSQL (psycopg 3).",
        default="",
    )
    storage_url: str = _doc(
        "Where objects go: a folder path or `file://` URL (default: `objects/` in the data dir), "
        "or `s3://bucket/prefix`.",
        default="",
    )
    s3_endpoint_url: str = _doc("Endpoint of any S3-compatible store (empty: AWS).", default="")
    s3_region: str = _doc("S3 region.", default="us-east-1")
    s3_multipart_threshold: int = _doc(
        "Objects larger than this many bytes go to S3 by multipart upload.", default=16 * 1024 * 1024
    )
    s3_connect_timeout: float = _doc("Seconds to wait for a TCP connection to S3 (per try).", default=5.0)
    s3_read_timeout: float = _doc(
        "Seconds S3 may stay silent on an open connection (per socket read, not per request: "
        "a long multipart upload or download is not cut short while data flows).",
        default=10.0,
    )
    s3_max_attempts: int = _doc(
        "Tries per S3 request, the first included (boto3 standard retries, with back-off). "
        "An S3 that accepts connections and never answers is reported (C-STORE 0xA700) "
        "after about attempts x read timeout.",
        default=3,
    )
    max_pdu_size: int = _doc(
        "Largest PDU we accept, in bytes (0: unlimited). Larger PDUs mean fewer "
        "round trips per object.",
        default=4 * 1024 * 1024,
    )
    workers: int = _doc(
        "Server processes of `pacs serve`. 0: one per core this process may run on (at most 8). "
        "With more than one, a supervisor owns the ports and hands each connection (DIMSE "
        "association or HTTP) to the worker holding the fewest.",
        default=0,
    )
    pin_workers: bool = _doc(
        "With several workers and at least as many cores this process may run on, keep worker "
        "N on the Nth of those cores (CPU affinity): its threads stop migrating between cores "
        "(tiny C-STOREs over four associations on two cores: +6 %, docs/performance.md).",
        default=True,
    )
    max_associations: int = _doc(
        "Concurrent DIMSE associations accepted by each worker process (connections go to the "
        "least busy worker, so a node takes workers x this many).", default=32)
    dimse_timeout: float = _doc("Seconds to wait for a DIMSE message.", default=60.0)
    network_timeout: float = _doc("Seconds of network silence before an association is aborted.", default=120.0)
    require_called_ae: bool = _doc("Refuse associations whose Called AE is not ours.", default=False)
    dimse_tls_port: int = _doc(
        "DICOM TLS port (PS3.15 B.1/B.9 secure transport, TLS 1.2+; conventionally 2762), served "
        "beside `dimse_port`. 0: off. Needs `tls_cert_file` and `tls_key_file`.",
        default=0,
    )
    https: bool = _doc("Serve HTTP over TLS (HTTPS) with `tls_cert_file` and `tls_key_file`.", default=False)
    tls_cert_file: str = _doc("PEM certificate (chain) of the server, for the DICOM TLS port and HTTPS.", default="")
    tls_key_file: str = _doc("PEM private key of `tls_cert_file` (unencrypted).", default="")
    tls_ca_file: str = _doc(
        "PEM CA certificates that sign client certificates. When set, the DICOM TLS port asks "
        "for a client certificate and verifies it.",
        default="",
    )
    tls_require_client_cert: bool = _doc(
        "DICOM TLS port: refuse the handshake of a client without a valid certificate (needs `tls_ca_file`).",
        default=False,
    )
    tls_client_aes: tuple[str, ...] = _doc(
        "Client certificates bound to AE titles: comma-separated `CN=<common name>-><AE>` or "
        "`SHA256=<fingerprint>-><AE>`. A bound certificate may only call as its AE, and a bound AE "
        "title only with its certificate (else A-ASSOCIATE-RJ, calling AE title not recognised).",
        default=(),
    )
    open_mode: bool = _doc(
        "AEs not in the registry (`pacs ae`) may echo, store, query, retrieve and request storage "
        "commitment. Registered AEs are limited by their allow flags either way; with `false`, "
        "unregistered AEs are refused (status 0x0124).",
        default=True,
    )
    check_ae_address: bool = _doc(
        "A registered AE title calling from an address other than its registered host (an address, "
        "or a name resolved every minute) is refused everything (status 0x0124).",
        default=False,
    )
    commitment_max_attempts: int = _doc(
        "Attempts to deliver a storage commitment report (N-EVENT-REPORT) before it is marked failed. "
        "With the default back-off the 12th is made 8675 s (2.4 h) after the first.",
        default=12,
    )
    commitment_retry_seconds: float = _doc(
        "Delay before the second delivery attempt of a storage commitment report; doubles after "
        "each failure, at most one hour.",
        default=5.0,
    )
    emr_fhir_url: str = _doc(
        "Base URL of the EMR's FHIR R4 endpoint (e.g. `https://emr.example/fhir`): signed reports go "
        "there as DiagnosticReport and stable studies as ImagingStudy (PUT, through the outbox). "
        "Empty: nothing is sent.",
        default="",
    )
    outbox_max_attempts: int = _doc(
        "Attempts to deliver an outgoing HTTP message (EMR FHIR, AI webhooks) before it is dead "
        "(listed in `GET /api/outbox`, redelivered on demand).",
        default=15,
    )
    outbox_retry_seconds: float = _doc(
        "Wait after the first failed delivery attempt; doubles after each failure (at most one hour), "
        "with ±20 % jitter.",
        default=5.0,
    )
    outbox_timeout_seconds: float = _doc("Seconds one delivery attempt may take.", default=30.0)
    outbox_poll_seconds: float = _doc("How often each server process looks for due messages.", default=1.0)
    duplicate_policy: str = _doc(
        "A different object sent under a SOP Instance UID already held: `reject` "
        "(refuse it, keep the first), `overwrite` (replace the stored one), "
        "`keep` (answer success, keep the first). An identical re-send always succeeds.",
        default="reject",
    )
    sqlite_synchronous: str = _doc(
        "SQLite index only: `full` (every index commit reaches the disk before the C-STORE is "
        "answered: an acknowledged instance survives a power loss; the WAL is flushed after the "
        "commit, outside the write lock) or `normal` (no flush per commit; a power loss, not a "
        "process crash, can lose the last acknowledged instances).",
        default="full",
    )
    stable_seconds: float = _doc(
        "Quiet period after the last instance of a series/study before SeriesStable/StudyStable.",
        default=60.0,
    )
    stability_check_interval: float = _doc("How often the stability sweep runs, in seconds.", default=1.0)
    orphan_grace_seconds: float = _doc(
        "An object write older than this that never reached the index is an orphan and is removed.",
        default=600.0,
    )
    shutdown_timeout: float = _doc(
        "On SIGTERM, seconds to let in-flight associations and requests finish.", default=30.0
    )
    log_level: str = _doc("Log level. Patient identifiers are never logged at INFO or above.", default="INFO")
    allow_delete: bool = _doc(
        "DICOMweb `DELETE` of studies, series and instances (`dicomweb/delete.py`). With `false` "
        "(the default) every DELETE is answered 405 Method Not Allowed and nothing is deleted.",
        default=False,
    )
    cors_allowed_origins: tuple[str, ...] = _doc(
        "Origins whose browser code may read DICOMweb answers (CORS): a comma-separated list of "
        "origins such as `https://viewer.example.org`, or `*` for any origin. Other origins get "
        "no CORS headers.",
        default=("*",),
    )
    public_base_url: str = _doc(
        "The DICOMweb root as clients reach it, e.g. `https://pacs.example.org/dicom-web`, used in "
        "RetrieveURL and BulkDataURI values behind a reverse proxy. Empty: built from the request "
        "(scheme, Host header, `/dicom-web`).",
        default="",
    )
    stow_max_part_bytes: int = _doc(
        "STOW-RS: largest instance (one body part) accepted, in bytes; a larger part is answered "
        "413 and not stored. Default 4 GiB, the largest defined-length Pixel Data value.",
        default=4 * 1024**3,
    )
    stow_max_request_bytes: int = _doc(
        "STOW-RS: largest request body, in bytes (all parts together); beyond it the request is "
        "answered 413 (parts stored before the limit stay stored and are listed).",
        default=20 * 1024**3,
    )
    viewer_dir: str = _doc(
        "Folder of the OHIF viewer that `pacs viewer install` fetches and `/viewer` serves "
        "(empty: `viewer/` in the data dir).",
        default="",
    )
    ai_token_ttl_seconds: float = _doc(
        "Lifetime of the study-scoped access token an AI notification carries (ai_hooks/tokens.py), "
        "counted from the event that triggered the notification.",
        default=3600.0,
    )
    ai_require_token: bool = _doc(
        "`POST /api/ai/results` needs `Authorization: Bearer <token>` with a study-scoped token of the "
        "study it posts to (401/403 otherwise). With `false` (until the security issue brings general "
        "authentication) a token is checked only when one is sent.",
        default=False,
    )
    deidentify_secret: str = _doc(
        "Key (at least 16 characters) of the UID remapping of de-identified exports "
        "(docs/deidentification.md): the same UID always maps to the same new UID under one key. "
        "Empty: a random key created on first use and kept in the index.",
        default="",
    )
    auth_required: bool = _doc(
        "Every HTTP route except `/healthz`, the viewer and reading-page code and CORS preflights "
        "needs `Authorization: Bearer <token>` (an API token, an OIDC JWT or a study-scoped AI token) "
        "with the route's scope (docs/security.md); 401/403 otherwise. With `false` requests without "
        "a token are served with all scopes (a loud warning is logged at start).",
        default=False,
    )
    allow_unauthenticated: bool = _doc(
        "Allow `auth_required = false` on an address other than 127.0.0.1, localhost or ::1. "
        "Without it such a server refuses to start.",
        default=False,
    )
    oidc_issuer: str = _doc("OIDC: the `iss` every JWT must carry (RFC 7519 4.1.1).", default="")
    oidc_audience: str = _doc("OIDC: the `aud` every JWT must contain, e.g. the PACS's client id.", default="")
    oidc_jwks_url: str = _doc(
        "OIDC: the issuer's JWKS URL (`jwks_uri`); signing keys are fetched by key id and cached.",
        default="",
    )
    oidc_public_key: str = _doc(
        "OIDC without JWKS: a PEM public key (RS/PS/ES/EdDSA), a file holding one, or an HMAC "
        "secret (HS256/384/512) that verifies JWT signatures.",
        default="",
    )
    audit_enabled: bool = _doc(
        "Record every access to patient data in the audit trail (`audit_event`, `GET /api/audit`).",
        default=True,
    )
    audit_queue_size: int = _doc(
        "Audit events waiting to be written at most; beyond it events are dropped, counted in "
        "`pacs_audit_dropped` and logged.",
        default=10000,
    )
    audit_syslog: str = _doc(
        "`host:port` of a syslog collector (UDP, RFC 5424) that receives every audit event as a "
        "DICOM audit message (PS3.15 A.5, RFC 3881 XML). Empty: the index only.",
        default="",
    )
    max_decoded_bytes: int = _doc(
        "Decompression-bomb guard: most bytes the decoded pixels of one frame (frames, rendered, "
        "thumbnails) or of one whole object (transcoding on retrieve, C-MOVE, C-GET, push) may take, "
        "judged from the Image Pixel attributes and the codestream header before decoding; above it "
        "the answer is 406 (a failed sub-operation over DIMSE). 0: no limit.",
        default=1024**3,
    )
    render_max_pixels: int = _doc(
        "Most pixels (rows x columns) of a frame rendered to JPEG or PNG (rendered, thumbnails, "
        "WADO-URI); above it the answer is 406. Default: Pillow's own decompression-bomb threshold.",
        default=89_478_485,
    )
    rate_limit_per_second: float = _doc(
        "HTTP requests per second one client (its network address) may make on average; "
        "beyond the burst the answer is 429 with `Retry-After`. 0: no limit.",
        default=300.0,
    )
    query_cache_entries: int = _doc(
        "Matches whose requested attributes a process keeps parsed (QIDO-RS, C-FIND) and, as many "
        "again, encoded C-FIND answers; least recently used go first. Each is a few kB: the default "
        "bounds both caches to some tens of MB. 0: no cache.",
        default=20_000,
    )
    rate_limit_burst: int = _doc(
        "HTTP requests one client may make at once before `rate_limit_per_second` applies "
        "(a viewer opening a large study fetches many frames together).",
        default=3000,
    )

    def __post_init__(self) -> None:
        if min(self.max_decoded_bytes, self.render_max_pixels, self.rate_limit_per_second,
               self.query_cache_entries) < 0:
            raise ValueError("max_decoded_bytes, render_max_pixels, rate_limit_per_second and "
                             "query_cache_entries must not be negative")
        if self.deidentify_secret and len(self.deidentify_secret.encode("utf-8")) < 16:
            raise ValueError("deidentify_secret must be at least 16 characters")
        if self.rate_limit_per_second and self.rate_limit_burst < 1:
            raise ValueError("rate_limit_burst must be at least 1 when rate_limit_per_second is set")
        if (self.oidc_jwks_url or self.oidc_public_key) and not (self.oidc_issuer and self.oidc_audience):
            raise ValueError("oidc_issuer and oidc_audience must be set with oidc_jwks_url or oidc_public_key")
        if self.duplicate_policy not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicate_policy must be one of {DUPLICATE_POLICIES}")
        if self.sqlite_synchronous not in ("full", "normal"):
            raise ValueError("sqlite_synchronous must be full or normal")
        if self.public_base_url and not self.public_base_url.startswith(("http://", "https://")):
            raise ValueError("public_base_url must be an http:// or https:// URL")
        if (self.dimse_tls_port or self.https) and not (self.tls_cert_file and self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file must be set with dimse_tls_port or https")
        if self.tls_require_client_cert and not self.tls_ca_file:
            raise ValueError("tls_require_client_cert needs tls_ca_file")
        from .tls import parse_client_aes  # raises ValueError on a malformed binding

        parse_client_aes(self.tls_client_aes)
        if self.workers < 0:
            raise ValueError("workers must be 0 (one per core) or more")
        if self.s3_connect_timeout <= 0 or self.s3_read_timeout <= 0:
            raise ValueError("s3_connect_timeout and s3_read_timeout must be positive")
        if self.s3_max_attempts < 1:
            raise ValueError("s3_max_attempts must be at least 1")
        if self.commitment_max_attempts < 1:
            raise ValueError("commitment_max_attempts must be at least 1")
        if self.outbox_max_attempts < 1 or self.outbox_poll_seconds <= 0 or self.outbox_timeout_seconds <= 0:
            raise ValueError("outbox_max_attempts must be at least 1, outbox poll and timeout positive")
        if len(self.ae_title) > 16 or not self.ae_title.strip():
            raise ValueError("ae_title must be 1 to 16 characters")
        if self.audit_syslog and not self.audit_syslog.rpartition(":")[2].isdigit():
            raise ValueError("audit_syslog must be host:port")

    def worker_cpus(self) -> list[int | None]:
        """The core each worker runs on (None: wherever the kernel puts it)."""
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        count = self.process_count
        if not self.pin_workers or count < 2 or count > len(cpus):
            return [None] * count
        return cpus[:count]

    @property
    def process_count(self) -> int:
        """Server processes to run: ``workers``, or for 0 one per usable core, at most 8."""
        if self.workers:
            return self.workers
        return max(1, min(MAX_AUTO_WORKERS, len(os.sched_getaffinity(0))))

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite in the data dir."""
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            return url
        return f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        """The storage URL, defaulting to a folder in the data dir."""
        if self.storage_url:
            return self.storage_url
        return str((self.data_dir / "objects").resolve())

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def _coerce(raw: Any, target: Any) -> Any:
    kind = target if isinstance(target, type) else type(target)
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        return str(raw).strip().lower() in ("1", "true", "yes", "on")
    if kind is Path:
        return Path(raw)
    if kind is tuple:  # a list: TOML array, or comma-separated text from the environment
        items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
        return tuple(str(item).strip() for item in items if str(item).strip())
    return kind(raw)


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build :class:`Settings` from defaults, a TOML file, the environment and overrides.

    The TOML file holds the same names as the fields (``ae_title = "PACS"``), at top
    level or under a ``[pacs]`` table.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if config_file:
        data = tomllib.loads(Path(config_file).read_text())
        data = data.get("pacs", data)
        values.update(data)
    defaults = Settings()
    for f in fields(Settings):
        name = f"PACS_{f.name.upper()}"
        if name in env:
            values[f.name] = env[name]
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - {f.name for f in fields(Settings)}
    if unknown:
        raise ValueError(f"unknown settings: {sorted(unknown)}")
    typed = {k: _coerce(v, getattr(defaults, k)) for k, v in values.items()}
    return Settings(**typed)


def settings_reference() -> list[tuple[str, str, str]]:
    """(environment variable, default, description) for every field: used by the docs."""
    rows = []
    for f in fields(Settings):
        default = f.default if f.default is not dataclasses.MISSING else ""
        rows.append((f"PACS_{f.name.upper()}", str(default), f.metadata.get("doc", "")))
    return rows
