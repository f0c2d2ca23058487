"""HTTP authentication and authorisation (pacs/auth.py, pacs/scopes.py, pacs/api_tokens.py):
every route of the real server in enforced mode, API tokens, OIDC JWTs (static key and
JWKS), study-scoped AI tokens, the dicomweb-client flow of a viewer, the `pacs token` CLI
and the refusal to serve a network without authentication."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import jwt
import pytest
import requests
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dicomweb_client.api import DICOMwebClient

from ai_hooks import tokens as ai_tokens
from pacs import api_tokens
from pacs.archive import Archive
from pacs.bind import InsecureBind
from pacs.cli import main
from pacs.scopes import PUBLIC, SCOPES, required_scope
from pacs.server import build_application
from pacs.settings import Settings, load_settings

from .factory import make_ct, to_bytes
from .servers import ThreadedServer

ISSUER, AUDIENCE = "https://idp.example.test/realms/pacs", "pacs"
#: Routes answered without credentials (see docs/security.md); everything else needs a token.
PUBLIC_ROUTES = {"/healthz", "/", "/viewer", "/viewer/app-config.js", "/viewer/{tail}", "/reading", "/reading/static"}
PARAMS = {"study": "1.2.3", "series": "1.2.3.4", "sop": "1.2.3.4.5", "frames": "1", "bulk": "1", "id": "1",
          "ae_title": "NOBODY", "item_id": "1", "tail": "index.html"}


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _jwt(key: Any, scope: str = "read", *, aud: str = AUDIENCE, iss: str = ISSUER, exp: float | None = None,
         kid: str | None = None, algorithm: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": iss, "aud": aud, "sub": "dr.who", "iat": now, "exp": int(exp if exp is not None else now + 300),
            "scope": scope, **claims}
    return jwt.encode(body, key, algorithm=algorithm, headers={"kid": kid} if kid else None)


def _forged_hs256(secret: str) -> str:
    """The algorithm-confusion attack: HS256 keyed with the public key (PyJWT refuses to
    sign it, so it is built by hand, RFC 7515 3.1)."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    now = int(time.time())
    signed = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 300, "scope": "read"}).encode())
    return signed + "." + b64(hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest())


@pytest.fixture(scope="module")
def idp_key() -> rsa.RSAPrivateKey:
    return _rsa()


@pytest.fixture
def enforced(settings: Settings, idp_key: rsa.RSAPrivateKey) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(settings.replace(auth_required=True, oidc_issuer=ISSUER, oidc_audience=AUDIENCE,
                                          oidc_public_key=_pem(idp_key))).start()
    yield srv
    srv.stop()


def _token(srv: ThreadedServer, *scopes: str, **kwargs: Any) -> str:
    assert srv.archive is not None
    return api_tokens.create(srv.archive.db, "test", list(scopes), **kwargs)[0]


def _url(pattern: str) -> str:
    path = pattern + "/app.js" if pattern == "/reading/static" else pattern
    for name, value in PARAMS.items():
        path = path.replace("{" + name + "}", value)
    return path


def _routes(srv: ThreadedServer) -> list[tuple[str, str]]:
    app = srv._runner.app  # type: ignore[union-attr]
    found = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    return sorted((m, p) for m, p in found if m != "OPTIONS" and p not in PUBLIC_ROUTES)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_every_route_needs_a_token_with_its_scope(enforced: ThreadedServer) -> None:
    routes = _routes(enforced)
    assert len(routes) > 80 and ("DELETE", "/dicom-web/studies/{study}") in routes
    tokens = {scope: _token(enforced, scope) for scope in SCOPES}
    all_but = {scope: _token(enforced, *(set(SCOPES) - {scope})) for scope in SCOPES}
    async with aiohttp.ClientSession(enforced.base_url) as s:
        for method, pattern in routes:
            scope = required_scope(method, pattern)
            assert scope in SCOPES, (method, pattern)
            url = _url(pattern)
            async with s.request(method, url) as resp:
                assert resp.status == 401, (method, url)
                assert resp.headers["WWW-Authenticate"] == 'Bearer realm="pacs"'
            async with s.request(method, url, headers=_auth(all_but[scope])) as resp:
                assert resp.status == 403, (method, url, scope)
                assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="pacs", error="insufficient_scope"')
            async with s.request(method, url, headers=_auth(tokens[scope])) as resp:
                assert resp.status not in (401, 403) and resp.status < 500, (method, url, resp.status)
        for method, pattern in [("GET", p) for p in sorted(PUBLIC_ROUTES)] + [("OPTIONS", "/dicom-web/studies")]:
            async with s.request(method, _url(pattern)) as resp:
                assert resp.status not in (401, 403) and resp.status < 500, (method, pattern)
        async with s.get("/no/such/route") as resp:  # unknown paths: no answer without a token
            assert resp.status == 401


def test_scope_table() -> None:
    assert required_scope("GET", "/dicom-web/studies/{study}/metadata") == "read"
    assert required_scope("POST", "/dicom-web/studies") == "write"
    assert required_scope("DELETE", "/dicom-web/studies/{study}") == "delete"
    assert required_scope("DELETE", "/api/worklist/items/{item_id}") == "worklist"
    assert required_scope("GET", "/api/tokens") == required_scope("GET", "/metrics") == "admin"
    assert required_scope("POST", "/api/reports/{study}/sign") == "report"
    assert required_scope("POST", "/api/ai/results") == "ai"
    assert required_scope("OPTIONS", "/dicom-web/studies") == required_scope("GET", "/healthz") == PUBLIC
    assert required_scope("GET", "/a/new/route") == "admin"  # fail closed


async def test_jwt_checks(enforced: ThreadedServer, idp_key: rsa.RSAPrivateKey) -> None:
    other = _rsa()
    now = time.time()
    async with aiohttp.ClientSession(enforced.base_url) as s:
        async with s.get("/dicom-web/studies", headers=_auth(_jwt(idp_key, "openid read"))) as resp:
            assert resp.status == 200 and await resp.json() == []
        async with s.get("/dicom-web/studies", headers=_auth(_jwt(idp_key, "", scp=["read"]))) as resp:
            assert resp.status == 200
        async with s.get("/api/aes", headers=_auth(_jwt(idp_key, "read write"))) as resp:
            assert resp.status == 403
            assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
        bad = {"expired": _jwt(idp_key, exp=now - 3600), "wrong key": _jwt(other),
               "wrong audience": _jwt(idp_key, aud="another-app"), "wrong issuer": _jwt(idp_key, iss="https://evil"),
               "HS256 with the public key": _forged_hs256(_pem(idp_key)),
               "not a token": "abc.def.ghi"}
        for name, token in bad.items():
            async with s.get("/dicom-web/studies", headers=_auth(token)) as resp:
                assert resp.status == 401, name
                assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="pacs", error="invalid_token"'), name
                assert "dr.who" not in resp.headers["WWW-Authenticate"]


async def test_jwks_url(settings: Settings, idp_key: rsa.RSAPrivateKey) -> None:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(idp_key.public_key()))
    jwks = {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}
    served: list[str] = []

    async def keys(request: web.Request) -> web.Response:
        served.append(request.path)
        return web.json_response(jwks)

    app = web.Application()
    app.router.add_get("/jwks", keys)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv = ThreadedServer(settings.replace(auth_required=True, oidc_issuer=ISSUER, oidc_audience=AUDIENCE,
                                          oidc_jwks_url=f"http://127.0.0.1:{port}/jwks")).start()
    try:
        async with aiohttp.ClientSession(srv.base_url) as s:
            for _ in range(3):
                async with s.get("/dicom-web/studies", headers=_auth(_jwt(idp_key, kid="k1"))) as resp:
                    assert resp.status == 200
            assert served == ["/jwks"]  # keys cached
            for token in (_jwt(idp_key, kid="unknown"), _jwt(_rsa(), kid="k1"), _jwt(idp_key, kid="k1", aud="x")):
                async with s.get("/dicom-web/studies", headers=_auth(token)) as resp:
                    assert resp.status == 401
    finally:
        srv.stop()
        await runner.cleanup()


async def test_api_tokens_expire_and_revoke(enforced: ThreadedServer) -> None:
    assert enforced.archive is not None
    db = enforced.archive.db
    admin = _token(enforced, "admin")
    expired = api_tokens.create(db, "old", ["read"], 10, now=time.time() - 100)[0]
    async with aiohttp.ClientSession(enforced.base_url) as s:
        async with s.post("/api/tokens", json={"name": "viewer", "scopes": ["read"], "expires": "1h"},
                          headers=_auth(admin)) as resp:
            assert resp.status == 201
            created = await resp.json()
        assert created["scopes"] == ["read"] and created["token"].startswith("pacst1." + created["id"] + ".")
        assert 3590 < created["expires_at"] - created["created_at"] <= 3600
        viewer = created["token"]
        async with s.get("/dicom-web/studies", headers=_auth(viewer)) as resp:
            assert resp.status == 200
        async with s.get("/api/tokens", headers=_auth(admin)) as resp:
            listed = (await resp.json())["tokens"]
        assert {t["name"] for t in listed} == {"test", "old", "viewer"}
        assert all("token" not in t and "secret_hash" not in t for t in listed)
        async with s.post("/api/tokens", json={"name": "x", "scopes": ["root"]}, headers=_auth(admin)) as resp:
            assert resp.status == 400 and "unknown scopes root" in (await resp.json())["error"]
        async with s.delete(f"/api/tokens/{created['id']}", headers=_auth(admin)) as resp:
            assert resp.status == 200 and (await resp.json())["revoked_at"] is not None
        for token, reason in ((viewer, "API token revoked"), (expired, "API token expired"),
                              (viewer[:-3] + "xyz", "unknown API token"), ("pacst1.zz.y", "malformed API token")):
            async with s.get("/dicom-web/studies", headers=_auth(token)) as resp:
                assert resp.status == 401 and (await resp.json()) == {"error": reason}
        async with s.delete("/api/tokens/0123456789ab", headers=_auth(admin)) as resp:
            assert resp.status == 404


async def test_study_scoped_token_reaches_its_study_only(enforced: ThreadedServer) -> None:
    assert enforced.archive is not None
    own, other = make_ct(), make_ct(patient_id="PID2")
    for ds in (own, other):
        enforced.archive.ingest_bytes(to_bytes(ds), source="test")
    key = ai_tokens.signing_key(enforced.archive.db)
    token, _ = ai_tokens.issue(key, own.StudyInstanceUID, 1, ttl=300)
    expired, _ = ai_tokens.issue(key, own.StudyInstanceUID, 1, ttl=-10)
    async with aiohttp.ClientSession(enforced.base_url, headers=_auth(token)) as s:
        async with s.get(f"/dicom-web/studies/{own.StudyInstanceUID}/metadata") as resp:
            assert resp.status == 200
            assert [i["0020000D"]["Value"][0] for i in await resp.json()] == [own.StudyInstanceUID]
        for url in (f"/dicom-web/studies/{other.StudyInstanceUID}/metadata", "/dicom-web/studies", "/api/changes",
                    "/api/aes", "/api/ai/subscriptions", "/api/reading-worklist"):
            async with s.get(url) as resp:
                assert resp.status == 403, url
        async with s.delete(f"/dicom-web/studies/{own.StudyInstanceUID}") as resp:
            assert resp.status == 403
        async with s.get(f"/dicom-web/studies/{own.StudyInstanceUID}/metadata", headers=_auth(expired)) as resp:
            assert resp.status == 401


def test_viewer_flow_with_dicomweb_client(enforced: ThreadedServer) -> None:
    """What OHIF does: QIDO-RS and WADO-RS metadata with the user's bearer token."""
    assert enforced.archive is not None
    ds = make_ct()
    enforced.archive.ingest_bytes(to_bytes(ds), source="test")
    client = DICOMwebClient(f"{enforced.base_url}/dicom-web", headers=_auth(_token(enforced, "read")))
    assert [s["0020000D"]["Value"][0] for s in client.search_for_studies()] == [ds.StudyInstanceUID]
    meta = client.retrieve_study_metadata(ds.StudyInstanceUID)
    assert meta[0]["00080018"]["Value"] == [ds.SOPInstanceUID]
    with pytest.raises(requests.HTTPError) as info:
        DICOMwebClient(f"{enforced.base_url}/dicom-web").search_for_studies()
    assert info.value.response.status_code == 401
    writer = DICOMwebClient(f"{enforced.base_url}/dicom-web", headers=_auth(_token(enforced, "read")))
    with pytest.raises(requests.HTTPError) as info:
        writer.store_instances([make_ct()])
    assert info.value.response.status_code == 403


async def test_open_mode_still_checks_sent_tokens(server: ThreadedServer) -> None:
    """Authentication off (the loopback default): no token is served, a sent token holds."""
    read = _token(server, "read")
    async with aiohttp.ClientSession(server.base_url) as s:
        async with s.get("/api/aes") as resp:
            assert resp.status == 200
        async with s.get("/api/aes", headers=_auth(read)) as resp:
            assert resp.status == 403
        async with s.get("/api/aes", headers=_auth("pacst1.0123456789ab.nope")) as resp:
            assert resp.status == 401


def test_non_loopback_without_auth_refuses_to_start(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    archive = Archive(settings)
    try:
        with pytest.raises(InsecureBind) as info:
            build_application(_with(archive, host="0.0.0.0"))
        assert "PACS_AUTH_REQUIRED=true" in str(info.value) and "PACS_ALLOW_UNAUTHENTICATED=true" in str(info.value)
        with caplog.at_level(logging.WARNING, logger="pacs.auth"):
            build_application(_with(archive, host="0.0.0.0", allow_unauthenticated=True))
        assert "AUTHENTICATION IS OFF" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pacs.auth"):
            build_application(_with(archive, host="0.0.0.0", auth_required=True))
        assert "AUTHENTICATION IS OFF" not in caplog.text
    finally:
        archive.close()


def _with(archive: Archive, **changes: Any) -> Archive:
    archive.settings = archive.settings.replace(**changes)
    return archive


def test_serve_refuses_open_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("PACS_DATA_DIR", str(tmp_path / "data"))
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "set PACS_AUTH_REQUIRED=true" in capsys.readouterr().err


def test_oidc_settings_need_issuer_and_audience() -> None:
    with pytest.raises(ValueError, match="oidc_issuer and oidc_audience"):
        load_settings(env={"PACS_OIDC_JWKS_URL": "https://idp/jwks"})


@pytest.fixture
def cli_env(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("PACS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PACS_DATABASE_URL", database_url)
    return load_settings(env={}, data_dir=tmp_path / "data", database_url=database_url)


def test_token_cli(cli_env: Settings, capsys) -> None:
    assert main(["token", "create", "--name", "ris", "--scopes", "worklist,read", "--expires", "30d"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert token.startswith("pacst1.") and "shown only now" in err
    archive = Archive(cli_env)
    try:
        info = api_tokens.verify(archive.db, token)
        assert info.name == "ris" and info.scopes == {"worklist", "read"}
        assert info.expires_at is not None and abs(info.expires_at - info.created_at - 30 * 86400) < 1
        assert main(["token", "list"]) == 0
        listed = capsys.readouterr().out
        assert info.id in listed and "read,worklist" in listed and "active" in listed and token not in listed
        assert main(["token", "revoke", info.id]) == 0
        assert capsys.readouterr().out.strip() == f"revoked {info.id} (ris)"
        with pytest.raises(api_tokens.InvalidApiToken, match="revoked"):
            api_tokens.verify(archive.db, token)
        assert main(["token", "list"]) == 0 and "revoked" in capsys.readouterr().out
    finally:
        archive.close()
    assert main(["token", "create", "--name", "x", "--scopes", "read,sudo"]) == 2
    assert "unknown scopes sudo" in capsys.readouterr().err
    assert main(["token", "create", "--name", "x", "--scopes", "read", "--expires", "soon"]) == 2
    assert main(["token", "revoke", "0123456789ab"]) == 2
