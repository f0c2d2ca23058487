"""Export of audit events as DICOM audit messages (PS3.15 A.5, the RFC 3881 shape) to a
syslog collector over UDP (RFC 5424 message format, RFC 5426 transport), as IHE ATNA
audit record repositories receive them.

Set ``PACS_AUDIT_SYSLOG=host:port``. The audit writer (:mod:`pacs.audit`) sends every
event after writing its batch to the index; a lost datagram or an unreachable collector
never affects the index copy, which stays the record of reference.
"""

from __future__ import annotations

import logging
import socket
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING
from xml.etree import ElementTree as ET

if TYPE_CHECKING:
    from .audit import Record

log = logging.getLogger(__name__)

#: PRI of RFC 5424 6.2.1: facility 10 (security/authorization), severity 5 (notice).
PRI = 10 * 8 + 5
MSGID = "DICOM+RFC3881"
#: action -> (EventID code, its meaning (PS3.16 CID 400/DCM), EventActionCode (C R U D E)).
EVENTS: dict[str, tuple[str, str, str]] = {
    "query": ("110112", "Query", "E"), "worklist-query": ("110112", "Query", "E"),
    "reading-query": ("110112", "Query", "E"), "fhir-query": ("110112", "Query", "E"),
    "retrieve": ("110104", "DICOM Instances Transferred", "R"),
    "store": ("110104", "DICOM Instances Transferred", "C"),
    "delete": ("110105", "DICOM Study Deleted", "D"),
    "login-failure": ("110114", "User Authentication", "E"),
    "association-refused": ("110113", "Security Alert", "E"),
    "report-sign": ("110103", "DICOM Instances Accessed", "U"),
    "report-draft": ("110103", "DICOM Instances Accessed", "U"),
}
ACCESSED = ("110103", "DICOM Instances Accessed", "R")


def _outcome(record: Record) -> str:
    """EventOutcomeIndicator (RFC 3881 5.1.4): 0 success, 4 minor failure, 8 serious failure."""
    if record.outcome == "success":
        return "0"
    return "8" if record.door != "dimse" and record.status >= 500 else "4"


def _code(parent: ET.Element, tag: str, code: str, system: str, meaning: str) -> None:
    ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": meaning})


def audit_message(record: Record, source_id: str) -> bytes:
    """The ``AuditMessage`` XML of one event (PS3.15 A.5.1 schema)."""
    code, meaning, action = EVENTS.get(record.action, ACCESSED)
    stamp = datetime.fromtimestamp(record.time, timezone.utc).isoformat(timespec="milliseconds")
    root = ET.Element("AuditMessage")
    event = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": action, "EventDateTime": stamp, "EventOutcomeIndicator": _outcome(record)})
    _code(event, "EventID", code, "DCM", meaning)
    if record.reason:
        ET.SubElement(event, "EventOutcomeDescription").text = record.reason
    requestor = {"UserID": record.actor or "unknown", "UserIsRequestor": "true"}
    if record.ae_title:
        requestor["AlternativeUserID"] = f"AETITLES={record.ae_title}"
    if record.source:
        requestor.update(NetworkAccessPointID=record.source, NetworkAccessPointTypeCode="2")
    ET.SubElement(root, "ActiveParticipant", requestor)
    ET.SubElement(root, "ActiveParticipant", {"UserID": source_id, "UserIsRequestor": "false"})
    ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    if record.patient_id:
        patient = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": record.patient_id, "ParticipantObjectTypeCode": "1",
            "ParticipantObjectTypeCodeRole": "1"})
        _code(patient, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
    if record.study_uid:
        study = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": record.study_uid, "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3"})
        _code(study, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)


def syslog_frame(message: bytes, hostname: str, app: str = "pacs", when: float | None = None) -> bytes:
    """RFC 5424 6: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM MSG``."""
    stamp = datetime.fromtimestamp(time.time() if when is None else when, timezone.utc)
    header = f"<{PRI}>1 {stamp.isoformat(timespec='milliseconds').replace('+00:00', 'Z')} {hostname or '-'} " \
             f"{app} - {MSGID} - "
    return header.encode("ascii", "replace") + b"\xef\xbb\xbf" + message


class SyslogExporter:
    """Sends audit messages as UDP datagrams to ``host:port`` (never raises)."""

    def __init__(self, target: str, source_id: str) -> None:
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError("audit_syslog must be host:port")
        self.address = (host.strip("[]"), int(port))
        self.source_id = source_id
        self.hostname = socket.gethostname()[:255]
        self._sock = socket.socket(socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, records: list[Record]) -> None:
        for record in records:
            try:
                frame = syslog_frame(audit_message(record, self.source_id), self.hostname, when=record.time)
                self._sock.sendto(frame, self.address)
            except OSError as exc:
                log.warning("audit syslog export failed: %s", type(exc).__name__)
                return

    def close(self) -> None:
        self._sock.close()
