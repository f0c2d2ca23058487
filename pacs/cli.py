"""The ``pacs`` command line: serve, import, sample-data, db upgrade, ae add/list/remove, token
create/list/revoke, viewer install."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Callable

from .errors import PacsError
from .settings import Settings, load_settings


def _archive(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .archive import Archive

    return Archive(_settings(args))


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def cmd_serve(args: argparse.Namespace) -> int:
    overrides = {"host": args.host, "dimse_port": args.dimse_port, "http_port": args.http_port,
                 "workers": args.workers}
    settings = load_settings(args.config, **overrides)
    from .bind import InsecureBind, check_bind

    try:
        check_bind(settings)
    except InsecureBind as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.process_count > 1:
        from .supervisor import supervise

        return supervise(settings)
    from .server import serve

    serve(settings)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .importer import import_paths

    archive = _archive(args)
    try:
        summary = import_paths(archive, args.paths, workers=args.workers, progress=not args.quiet)
    finally:
        archive.close()
    print(f"stored {summary.stored}, duplicate {summary.duplicate}, failed {summary.failed}")
    for reason, count in summary.reasons.most_common():
        print(f"  failed: {count} x {reason}")
    return 1 if summary.failed and not summary.stored else 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    from sample_data.generator import generate_sample_studies, write_series

    from .importer import import_paths

    archive = _archive(args)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            write_series(generate_sample_studies(seed=args.seed), Path(tmp))
            summary = import_paths(archive, [tmp], progress=not args.quiet)
    finally:
        archive.close()
    print(f"sample data: stored {summary.stored}, duplicate {summary.duplicate}, failed {summary.failed}")
    return 0 if not summary.failed else 1


def cmd_delete(args: argparse.Namespace) -> int:
    archive = _archive(args)
    try:
        from .access import SYSTEM

        result = archive.delete(args.study, args.series, args.instance, caller=SYSTEM)  # the host's admin
    finally:
        archive.close()
    print(f"deleted {result.instances} instances"
          + (", the study" if result.study_removed else f", {len(result.series_removed)} series"))
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    archive = _archive(args)  # migrates on open
    archive.close()
    print("index schema is up to date")
    return 0


def cmd_ae(args: argparse.Namespace) -> int:
    from . import aes

    archive = _archive(args)
    try:
        if args.ae_command == "add":
            denied = aes.parse_operations(args.deny or "")
            if args.allow is not None:
                denied = frozenset(aes.OPERATIONS) - aes.parse_operations(args.allow)
            entry = aes.add_ae(archive.db, args.name, args.host, args.port, args.description, denied=denied)
            print(f"added {entry.ae_title} {entry.host}:{entry.port} {_allowed(entry)}")
        elif args.ae_command == "remove":
            aes.remove_ae(archive.db, args.name)
            print(f"removed {args.name}")
        else:
            for entry in aes.list_aes(archive.db):
                print(f"{entry.ae_title:<16} {entry.host}:{entry.port}  {_allowed(entry)}  {entry.description}")
    finally:
        archive.close()
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """``pacs token create|list|revoke``: API tokens (pacs/api_tokens.py); a new token is printed once."""
    from . import api_tokens

    archive = _archive(args)
    try:
        if args.token_command == "create":
            expires = api_tokens.parse_duration(args.expires) if args.expires else None
            token, info = api_tokens.create(archive.db, args.name, args.scopes, expires)
            print(token)
            print(f"id {info.id} name {info.name} scopes {','.join(sorted(info.scopes))} "
                  f"expires {_when(info.expires_at)}; the token is shown only now", file=sys.stderr)
        elif args.token_command == "revoke":
            info = api_tokens.revoke(archive.db, args.id)
            print(f"revoked {info.id} ({info.name})")
        else:
            for info in api_tokens.list_tokens(archive.db):
                state = "revoked" if info.revoked_at else "active"
                print(f"{info.id}  {info.name:<24} {','.join(sorted(info.scopes)):<32} "
                      f"expires {_when(info.expires_at)}  {state}")
    finally:
        archive.close()
    return 0


def _when(epoch: float | None) -> str:
    import datetime

    if epoch is None:
        return "never"
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_viewer(args: argparse.Namespace) -> int:
    """``pacs viewer install [--force] [--tarball PATH]``: fetch the pinned OHIF viewer."""
    from .viewer import OHIF_PACKAGE, install

    installed, fetched = install(_settings(args), force=args.force,
                                 tarball=Path(args.tarball) if args.tarball else None)
    state = "installed" if fetched else "already installed"
    print(f"{OHIF_PACKAGE}@{installed.version} {state} in {installed.root}; "
          "`pacs serve` hosts it at /viewer/")
    return 0


def _allowed(entry) -> str:  # type: ignore[no-untyped-def]
    """``allow=echo,store,...`` (or ``allow=all``) for an AE registry entry."""
    allowed = [op for op, ok in entry.allow.items() if ok]
    return "allow=" + ("all" if len(allowed) == len(entry.allow) else ",".join(allowed) or "none")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pacs", description="DICOM archive with DIMSE and DICOMweb")
    parser.add_argument("--config", help="TOML settings file (environment PACS_* overrides it)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (may include identifiers)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the DIMSE and HTTP servers")
    serve.add_argument("--config", default=argparse.SUPPRESS)
    serve.add_argument("--host")
    serve.add_argument("--dimse-port", type=int)
    serve.add_argument("--http-port", type=int)
    serve.add_argument("--workers", type=int, help="server processes (default 0: one per core)")
    serve.set_defaults(func=cmd_serve)

    imp = sub.add_parser("import", help="import files, folders and zip archives")
    imp.add_argument("paths", nargs="+")
    imp.add_argument("--workers", type=int, default=0)
    imp.add_argument("-q", "--quiet", action="store_true")
    imp.set_defaults(func=cmd_import)

    sample = sub.add_parser("sample-data", help="generate and import the demo studies")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("-q", "--quiet", action="store_true")
    sample.set_defaults(func=cmd_sample_data)

    rm = sub.add_parser("delete", help="delete a study, a series or an instance")
    rm.add_argument("study", help="StudyInstanceUID")
    rm.add_argument("series", nargs="?", help="SeriesInstanceUID")
    rm.add_argument("instance", nargs="?", help="SOPInstanceUID")
    rm.set_defaults(func=cmd_delete)

    db = sub.add_parser("db", help="index database")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply schema migrations").set_defaults(func=cmd_db_upgrade)

    ae = sub.add_parser("ae", help="registry of remote AEs")
    ae_sub = ae.add_subparsers(dest="ae_command", required=True)
    add = ae_sub.add_parser("add")
    add.add_argument("name")
    add.add_argument("host")
    add.add_argument("port", type=int)
    add.add_argument("--description", default="")
    flags = add.add_mutually_exclusive_group()
    flags.add_argument("--deny", metavar="OPS",
                       help="operations refused to this AE, comma-separated: echo,store,find,move,get,commitment")
    flags.add_argument("--allow", metavar="OPS", help="the only operations allowed (the others are refused)")
    remove = ae_sub.add_parser("remove")
    remove.add_argument("name")
    ae_sub.add_parser("list")
    ae.set_defaults(func=cmd_ae)

    tok = sub.add_parser("token", help="API tokens for the HTTP doors (Authorization: Bearer)")
    tok_sub = tok.add_subparsers(dest="token_command", required=True)
    tcreate = tok_sub.add_parser("create", help="create a token and print it (once)")
    tcreate.add_argument("--name", required=True)
    tcreate.add_argument("--scopes", required=True,
                         help="comma-separated: read,write,delete,admin,worklist,report,ai")
    tcreate.add_argument("--expires", help="lifetime such as 30d, 12h, 90m, 2w (default: never)")
    tok_sub.add_parser("list", help="list tokens (never their secrets)")
    trevoke = tok_sub.add_parser("revoke", help="revoke a token by id")
    trevoke.add_argument("id")
    tok.set_defaults(func=cmd_token)

    viewer = sub.add_parser("viewer", help="the OHIF web viewer served at /viewer")
    viewer_sub = viewer.add_subparsers(dest="viewer_command", required=True)
    vinst = viewer_sub.add_parser("install", help="fetch the pinned @ohif/app with npm and verify it")
    vinst.add_argument("--force", action="store_true", help="fetch and replace even if installed")
    vinst.add_argument("--tarball", help="install from this npm tarball instead of `npm pack`")
    viewer.set_defaults(func=cmd_viewer)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except PacsError as exc:
        print(f"error: {exc.reason}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
