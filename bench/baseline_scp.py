"""A bare pynetdicom C-STORE SCP: the floor that ``pacs serve`` is compared against.

It accepts every storage SOP class pynetdicom knows, with Explicit and Implicit VR Little
Endian, and only writes ``event.encoded_dataset()`` (a Part 10 file) to
``<out>/<SOP Instance UID>.dcm``: no parsing beyond what pynetdicom does, no index, no
events. Run::

    python bench/baseline_scp.py --port 11113 --out /tmp/baseline

It stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC000


def build_ae(ae_title: str, max_pdu: int) -> AE:
    """An AE accepting all storage SOP classes (explicit/implicit LE) and Verification."""
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu
    ae.maximum_associations = 64
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, SYNTAXES)
    ae.add_supported_context(Verification, SYNTAXES)
    return ae


def make_store_handler(out_dir: Path) -> Any:
    """A C-STORE handler that writes the received dataset as a Part 10 file."""

    def handle_store(event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if not uid or "/" in uid or uid.startswith("."):
            return CANNOT_UNDERSTAND
        tmp = out_dir / f".{uid}.part"
        with open(tmp, "wb") as fh:
            fh.write(event.encoded_dataset())
        os.replace(tmp, out_dir / f"{uid}.dcm")
        return SUCCESS

    return handle_store


def enable_nodelay(server: ThreadedAssociationServer) -> None:
    """Set TCP_NODELAY on every accepted socket, as ``pacs serve`` does (fair comparison)."""
    original = server.get_request

    def get_request() -> tuple[socket.socket, Any]:
        client, address = original()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    server.get_request = get_request  # type: ignore[method-assign]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="DIMSE port to listen on")
    parser.add_argument("--out", type=Path, required=True, help="folder for the received files")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--ae-title", default="PACS", help="our AE title (default PACS)")
    parser.add_argument("--max-pdu", type=int, default=4 * 1024 * 1024,
                        help="largest PDU we accept (default 4 MiB, as pacs serve)")
    parser.add_argument("--no-tcp-nodelay", action="store_true",
                        help="leave Nagle's algorithm on for accepted sockets")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    ae = build_ae(args.ae_title, args.max_pdu)
    handlers = [(evt.EVT_C_STORE, make_store_handler(args.out))]
    server = ae.start_server((args.host, args.port), block=False, evt_handlers=handlers)
    if not args.no_tcp_nodelay:
        enable_nodelay(server)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"baseline SCP {args.ae_title} listening on {args.host}:{args.port}", flush=True)
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
