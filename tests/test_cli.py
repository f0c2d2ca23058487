"""The `pacs` command line: db upgrade, ae registry, import, sample-data, settings file."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pacs import aes
from pacs.archive import Archive
from pacs.cli import main
from pacs.index.models import Instance
from pacs.settings import load_settings

from .factory import make_ct, to_bytes
from .servers import ThreadedServer


@pytest.fixture
def cli_env(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    monkeypatch.setenv("PACS_DATA_DIR", str(data))
    monkeypatch.setenv("PACS_DATABASE_URL", database_url)
    return data


def _count(database_url: str, data: Path) -> int:
    archive = Archive(load_settings(env={}, data_dir=data, database_url=database_url), migrate=False)
    with archive.db.read() as conn:
        count = conn.execute(select(func.count(Instance.id))).scalar()
    archive.close()
    return int(count)


def test_db_upgrade(cli_env: Path, capsys) -> None:
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "upgrade"]) == 0  # idempotent
    assert "up to date" in capsys.readouterr().out


def test_ae_registry_while_server_runs(cli_env: Path, database_url: str, capsys) -> None:
    settings = load_settings(env={}, data_dir=cli_env, database_url=database_url, dimse_port=0, http_port=0)
    server = ThreadedServer(settings).start()
    try:
        assert main(["ae", "add", "WORKSTATION", "10.1.2.3", "104", "--description", "reading room"]) == 0
        assert aes.get_ae(server.archive.db, "WORKSTATION") == aes.AEEntry("WORKSTATION", "10.1.2.3", 104, "reading room")
        assert main(["ae", "list"]) == 0
        assert "WORKSTATION" in capsys.readouterr().out
        assert main(["ae", "add", "WORKSTATION", "10.1.2.3", "104"]) == 2  # duplicate
        assert "already registered" in capsys.readouterr().err
        assert main(["ae", "add", "THIS_TITLE_IS_TOO_LONG", "h", "104"]) == 2
        assert main(["ae", "remove", "WORKSTATION"]) == 0
        assert aes.get_ae(server.archive.db, "WORKSTATION") is None
        assert main(["ae", "remove", "WORKSTATION"]) == 2
    finally:
        server.stop()


def test_import_folder_zip_and_junk(cli_env: Path, database_url: str, tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    for i in range(3):
        (src / "nested" / f"{i}.dcm").write_bytes(to_bytes(make_ct(seed=i)))
    with zipfile.ZipFile(src / "more.zip", "w") as zf:
        for i in range(3, 5):
            zf.writestr(f"dir/{i}.dcm", to_bytes(make_ct(seed=i)))
        zf.writestr("dir/readme.txt", "not dicom")
    (src / "notes.txt").write_text("hello")
    duplicate = src / "nested" / "0.dcm"
    assert main(["import", str(src), str(duplicate), "-q"]) == 0
    out = capsys.readouterr().out
    assert "stored 5, duplicate 1, failed 2" in out
    assert "not a DICOM Part 10 object" in out
    assert _count(database_url, cli_env) == 5
    assert duplicate.exists()  # import never moves the user's files


@pytest.mark.slow
def test_sample_data_imports_demo_studies(cli_env: Path, database_url: str, capsys) -> None:
    assert main(["sample-data", "-q"]) == 0
    out = capsys.readouterr().out
    assert "failed 0" in out
    assert _count(database_url, cli_env) == 115


def test_settings_from_toml_env_and_overrides(tmp_path: Path) -> None:
    config = tmp_path / "pacs.toml"
    config.write_text('[pacs]\nae_title = "ARCHIVE"\ndimse_port = 4242\nstable_seconds = 5\n')
    env = {"PACS_DIMSE_PORT": "11113", "PACS_REQUIRE_CALLED_AE": "true"}
    settings = load_settings(config, env=env, http_port=9000)
    assert settings.ae_title == "ARCHIVE"
    assert settings.dimse_port == 11113  # environment beats the file
    assert settings.http_port == 9000  # explicit override beats both
    assert settings.stable_seconds == 5.0
    assert settings.require_called_ae is True


def test_settings_defaults_and_urls(tmp_path: Path) -> None:
    settings = load_settings(env={"PACS_DATA_DIR": str(tmp_path)})
    assert (settings.ae_title, settings.host, settings.dimse_port, settings.http_port) == (
        "PACS", "127.0.0.1", 11112, 8080)
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'index.sqlite'}"
    assert settings.resolved_storage_url == str(tmp_path.resolve() / "objects")
    pg = load_settings(env={"PACS_DATABASE_URL": "postgresql://db:5432/pacs"})
    assert pg.resolved_database_url == "postgresql+psycopg://db:5432/pacs"


@pytest.mark.parametrize("env", [{"PACS_DUPLICATE_POLICY": "maybe"}, {"PACS_AE_TITLE": "X" * 17},
                                 {"PACS_DIMSE_PORT": "abc"}, {"PACS_DEIDENTIFY_SECRET": "too short"},
                                 {"PACS_RATE_LIMIT_PER_SECOND": "-1"}, {"PACS_MAX_DECODED_BYTES": "-1"},
                                 {"PACS_WORKERS": "-1"}])
def test_settings_rejects_bad_values(env: dict) -> None:
    with pytest.raises(ValueError):
        load_settings(env=env)


def test_workers_default_to_one_per_usable_core() -> None:
    import os

    cores = len(os.sched_getaffinity(0))
    assert load_settings(env={}).process_count == max(1, min(8, cores))
    assert load_settings(env={"PACS_WORKERS": "3"}).process_count == 3
    assert load_settings(env={"PACS_WORKERS": "1"}).process_count == 1


def test_workers_are_pinned_to_cores_only_when_there_are_enough(monkeypatch) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 1, 2, 0})
    assert load_settings(env={"PACS_WORKERS": "2"}).worker_cpus() == [0, 1]
    assert load_settings(env={"PACS_WORKERS": "0"}).worker_cpus() == [0, 1, 2, 3]
    assert load_settings(env={"PACS_WORKERS": "5"}).worker_cpus() == [None] * 5  # more workers than cores
    assert load_settings(env={"PACS_WORKERS": "1"}).worker_cpus() == [None]
    assert load_settings(env={"PACS_WORKERS": "2", "PACS_PIN_WORKERS": "false"}).worker_cpus() == [None, None]


def test_unknown_setting_in_file_rejected(tmp_path: Path) -> None:
    config = tmp_path / "pacs.toml"
    config.write_text("dimse_prot = 1\n")
    with pytest.raises(ValueError, match="unknown settings"):
        load_settings(config, env={})


def test_every_setting_is_documented() -> None:
    from pacs.settings import settings_reference

    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    missing = [name for name, _, _ in settings_reference() if f"`{name}`" not in doc]
    assert not missing


def test_a_worker_that_cannot_keep_to_its_core_runs_anyway(monkeypatch, caplog) -> None:
    import os

    import pacs.worker
    from pacs import supervisor

    ran = []
    monkeypatch.setattr(pacs.worker, "worker_main", lambda settings, channel: ran.append(channel))
    before = os.sched_getaffinity(0)
    supervisor._worker(load_settings(env={}), "channel", 1 << 20)  # no such core
    assert ran == ["channel"] and os.sched_getaffinity(0) == before
    assert "worker not kept to core" in caplog.text
