"""A profile whose store is PostgreSQL, its password handling, and `postroom store migrate|copy`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.store.pgutil import temp_schema

import postroom
from postroom.cli.app import cli, run
from postroom.cli.store import store as store_commands
from postroom.mapi.codes import HResult, MAPIError
from postroom.profile import Profile
from postroom.store import FolderRole, open_store, redact_secrets, redact_url, url_password

needs_pg = pytest.mark.postgres

# The app module registers the command group; registering it again here is harmless.
cli.add_command(store_commands)


def profile_with_store(tmp_path: Path, store: str, **settings: object) -> Profile:
    profile = Profile.create(tmp_path / "profile")
    profile.settings["store"] = store
    profile.settings.update(settings)
    profile.save()
    return Profile.load(profile.directory)


def test_urls_are_recognised_and_passwords_never_shown() -> None:
    url = "postgresql://alice:s3cret@db.example:5433/mail?sslmode=require"
    assert url_password(url) == "s3cret"
    assert "s3cret" not in redact_url(url) and "alice" in redact_url(url) and "sslmode=require" in redact_url(url)
    assert url_password("postgresql://alice@db/mail?password=s3cret") == "s3cret"
    assert "s3cret" not in redact_url("postgresql://alice@db/mail?password=s3cret")
    assert url_password("postgresql:///mail?service=postroom") is None


@pytest.mark.parametrize("key", ["password", "sslpassword", "SSLPassword", "my_password_too"])
def test_every_password_in_a_store_url_is_a_secret(key: str) -> None:
    url = f"postgresql://alice@db.example/mail?sslmode=require&{key}=s3cret%21&application_name=x"
    assert url_password(url) == "s3cret!"
    shown = redact_url(url)
    assert "s3cret" not in shown and f"{key}=***" in shown and "sslmode=require" in shown
    assert redact_secrets("could not read key: s3cret! / s3cret%21", url) == "could not read key: *** / ***"


def test_a_profile_store_url_with_an_ssl_key_password_is_refused(tmp_path: Path) -> None:
    profile = profile_with_store(tmp_path, "postgresql://alice@127.0.0.1:1/mail?sslpassword=s3cret")
    with pytest.raises(MAPIError) as err:
        postroom.logon(profile)
    assert err.value.code == HResult.MAPI_E_INVALID_PARAMETER
    assert "s3cret" not in err.value.message and "sslpassword=***" in err.value.message


def test_store_migrate_never_prints_an_ssl_key_password(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("psycopg")
    url = "postgresql://alice@127.0.0.1:1/mail?connect_timeout=1&sslpassword=SeKrEt42"
    assert run(["store", "migrate", "--store", url]) == 2
    out = capsys.readouterr()
    assert "MAPI_E_NETWORK_ERROR" in out.err and "sslpassword=***" in out.err
    assert "SeKrEt42" not in out.err + out.out


@needs_pg
def test_store_migrate_reports_a_store_without_its_ssl_key_password(capsys: pytest.CaptureFixture[str]) -> None:
    with temp_schema() as url:
        assert run(["store", "migrate", "--store", url + "&sslpassword=SeKrEt42"]) == 0
        out = capsys.readouterr().out
        assert "Created the postgresql store" in out and "sslpassword=***" in out and "SeKrEt42" not in out


CONNINFO = "host=127.0.0.1 dbname=mail password=Hunter2"


def test_a_libpq_connection_string_is_refused_never_made_an_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for argv in (["store", "migrate", "--store", CONNINFO], ["store", "copy", "--from", CONNINFO, "--to", "x.db"]):
        assert run(argv) == 2
        err = capsys.readouterr().err
        assert "MAPI_E_INVALID_PARAMETER" in err and "libpq connection string" in err and "postgresql://" in err
        assert "host=… dbname=… password=…" in err and "Hunter2" not in err
    for target in (CONNINFO, " dbname = mail", "service=postroom"):
        with pytest.raises(MAPIError) as info:
            open_store(target)
        assert info.value.code == HResult.MAPI_E_INVALID_PARAMETER
    assert list(tmp_path.iterdir()) == []
    # A file name that merely contains "=" is still a file name.
    open_store(tmp_path / "a=b c.sqlite").close()


def test_a_profile_whose_store_is_a_libpq_connection_string_is_refused(tmp_path: Path) -> None:
    profile = profile_with_store(tmp_path, CONNINFO)
    before = sorted(p.name for p in profile.directory.iterdir())
    with pytest.raises(MAPIError) as err:
        postroom.logon(profile)
    assert err.value.code == HResult.MAPI_E_INVALID_PARAMETER
    assert "libpq connection string" in err.value.message and "Hunter2" not in err.value.message
    assert sorted(p.name for p in profile.directory.iterdir()) == before


def test_a_profile_store_url_with_a_password_is_refused(tmp_path: Path) -> None:
    profile = profile_with_store(tmp_path, "postgresql://alice:s3cret@127.0.0.1:1/mail")
    with pytest.raises(MAPIError) as err:
        postroom.logon(profile)
    assert err.value.code == HResult.MAPI_E_INVALID_PARAMETER
    assert "s3cret" not in err.value.message and "PGPASSWORD" in err.value.message


def test_a_missing_password_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTROOM_TEST_NO_SUCH_VAR", raising=False)
    profile = profile_with_store(
        tmp_path, "postgresql://alice@127.0.0.1:1/mail", store_password_env="POSTROOM_TEST_NO_SUCH_VAR"
    )
    pytest.importorskip("psycopg")
    with pytest.raises(MAPIError) as err:
        postroom.logon(profile)
    assert err.value.code == HResult.MAPI_E_LOGON_FAILED and "POSTROOM_TEST_NO_SUCH_VAR" in err.value.message


@needs_pg
def test_a_wrong_password_from_the_variable_is_not_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with temp_schema() as url:
        monkeypatch.setenv("POSTROOM_TEST_PW", "not-the-Password-42")
        profile = profile_with_store(tmp_path, url, store_password_env="POSTROOM_TEST_PW")
        with pytest.raises(MAPIError) as err:
            postroom.logon(profile)
        assert err.value.code == HResult.MAPI_E_NETWORK_ERROR
        assert "not-the-Password-42" not in err.value.message and "password" in err.value.message


@needs_pg
def test_a_session_on_a_postgresql_profile_sends_mail(tmp_path: Path) -> None:
    with temp_schema() as url:
        profile = profile_with_store(tmp_path, url)
        with postroom.logon(profile) as session:
            mid = session.create_message("hello", "body").to("bob@localhost").submit()
            summary = session.deliver()
            assert summary.delivered == 1
            assert session.engine.store.message_folder(mid) in (
                session.engine.store.folder(FolderRole.SENT_ITEMS).id,
                session.engine.store.folder(FolderRole.OUTBOX).id,
            )
            assert [e.kind for e in session.events(mid)][:2] == ["submitted", "delivered"]
        assert list((profile.directory / "maildir").rglob("*"))


def test_store_migrate_on_the_embedded_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = Profile.create(tmp_path / "p")
    assert run(["--profile", str(profile.directory), "store", "migrate"]) == 0
    assert "sqlite store" in capsys.readouterr().out
    assert run(["--profile", str(profile.directory), "--json", "store", "migrate"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "sqlite" and doc["changed"] is False and doc["schema"] == doc["schema_before"]
    # A mistyped --store never creates the directories it names.
    typo = tmp_path / "no" / "such" / "dir" / "store.sqlite"
    assert run(["--profile", str(profile.directory), "store", "migrate", "--store", str(typo)]) == 2
    assert "MAPI_E_NOT_FOUND" in capsys.readouterr().err and not (tmp_path / "no").exists()


@needs_pg
def test_moving_a_profile_to_postgresql_with_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = Profile.create(tmp_path / "p")
    with postroom.logon(profile) as session:
        mid = session.create_message("moved", "body").to("bob@localhost").submit()
        entry = session.engine.store.entry_id_of(mid)
    with temp_schema("cli") as url:
        assert run(["--profile", str(profile.directory), "store", "migrate", "--store", url]) == 0
        assert "Created the postgresql store" in capsys.readouterr().out
        code = run(["store", "copy", "--from", str(profile.directory), "--to", url, "--switch"])
        out = capsys.readouterr()
        assert code == 0, out.err
        assert "1 message(s)" in out.out and "now uses" in out.out
        moved = Profile.load(profile.directory)
        assert moved.store_url == url
        with postroom.logon(moved) as session:
            assert session.engine.store.resolve_message(entry) == mid
            assert session.deliver().delivered == 1
        # And back to a new SQLite file.
        back = tmp_path / "back.sqlite"
        assert run(["--json", "store", "copy", "--from", url, "--to", str(back)]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["rows"]["messages"] >= 1 and doc["switched_profile"] is None
        again = open_store(back)
        try:
            assert again.resolve_message(entry) == mid
        finally:
            again.close()
        # Copying onto a store with content is refused with the way out.
        assert run(["store", "copy", "--from", str(back), "--to", url]) == 2
        assert "--replace" in capsys.readouterr().err
