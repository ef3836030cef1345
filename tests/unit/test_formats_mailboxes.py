"""`postroom import` of .eml files, mbox files and Maildir directories, and `export --folder` to an
mbox or a Maildir: exact bytes kept, one bad item reported while the rest goes in, nothing
imported twice, through the face and through the command line."""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from pathlib import Path

import pytest

import postroom
from postroom import HResult, ImportStatus, Session
from postroom.formats import cfb

from support.cli import as_json, ok, postroom_at_a_terminal
from support.cli import postroom as run_postroom

DATA = Path(__file__).parents[1] / "data" / "msg"


def message(n: int, *, crlf: bool = False) -> bytes:
    text = (
        f"From: Sender {n} <sender{n}@example.org>\nTo: you@example.org\nSubject: message {n}\n"
        f"Message-ID: <{n}@import.test>\nX-Odd-Header:   kept   as is\n\nbody {n}\n"
    )
    return text.replace("\n", "\r\n").encode() if crlf else text.encode()


def write_mbox(path: Path, messages: list[bytes]) -> Path:
    box = mailbox.mbox(str(path))
    for data in messages:
        box.add(data)
    box.flush()
    box.close()
    return path


@pytest.fixture
def profile_dir(tmp_path: Path) -> Path:
    postroom.Profile.create(tmp_path / "p", with_defaults=False)
    return tmp_path / "p"


@pytest.fixture
def session(profile_dir: Path) -> Iterator[Session]:
    with postroom.logon(profile_dir) as s:
        yield s


def statuses(results: list[postroom.ImportResult]) -> list[ImportStatus]:
    return [r.status for r in results]


def test_an_eml_file_is_imported_with_its_exact_bytes(session: Session, tmp_path: Path) -> None:
    path = tmp_path / "one.eml"
    path.write_bytes(message(1, crlf=True))
    (result,) = list(session.import_files([path]))
    assert result.status is ImportStatus.IMPORTED and result.message_id is not None
    assert session.export_rfc822(result.message_id) == message(1, crlf=True)
    assert session.open_message(result.message_id).subject == "message 1"
    assert [m.id for m in session.list_messages(session.inbox)] == [result.message_id]


def test_an_mbox_is_imported_message_by_message_into_the_folder_given(session: Session, tmp_path: Path) -> None:
    archive = session.create_folder("Archive")
    box = write_mbox(tmp_path / "a.mbox", [message(n) for n in range(5)])
    results = list(session.import_files([box], folder="Archive"))
    assert statuses(results) == [ImportStatus.IMPORTED] * 5
    assert [r.source for r in results] == [f"{box}#{n}" for n in range(1, 6)]
    listed = session.list_messages(archive)
    assert sorted(m.subject for m in listed) == [f"message {n}" for n in range(5)]
    assert sorted(session.export_rfc822(m.id) for m in listed) == sorted(message(n) for n in range(5))
    assert session.list_messages(session.inbox) == []


def test_a_maildir_is_imported_from_new_and_cur(session: Session, tmp_path: Path) -> None:
    box = mailbox.Maildir(str(tmp_path / "md"))
    box.add(message(1))
    seen = mailbox.MaildirMessage(message(2))
    seen.set_subdir("cur")
    box.add(seen)
    results = list(session.import_files([tmp_path / "md"]))
    assert statuses(results) == [ImportStatus.IMPORTED] * 2
    assert sorted(m.subject for m in session.list_messages(session.inbox)) == ["message 1", "message 2"]


def test_importing_the_same_messages_again_imports_nothing_twice(session: Session, tmp_path: Path) -> None:
    box = write_mbox(tmp_path / "a.mbox", [message(n) for n in range(3)])
    (tmp_path / "same.eml").write_bytes(message(1))  # the same bytes as the mbox's second message
    first = list(session.import_files([box, tmp_path / "same.eml", DATA / "strangeDate.msg"]))
    assert statuses(first) == [ImportStatus.IMPORTED] * 3 + [ImportStatus.SKIPPED, ImportStatus.IMPORTED]
    again = list(session.import_files([box, DATA / "strangeDate.msg"]))
    assert statuses(again) == [ImportStatus.SKIPPED] * 4
    assert len(session.list_messages(session.inbox)) == 4


def test_an_unreadable_item_is_reported_and_the_import_goes_on(session: Session, tmp_path: Path) -> None:
    (tmp_path / "good.eml").write_bytes(message(1))
    (tmp_path / "broken.msg").write_bytes(cfb.write_cfb({"not a message": b"x"}))
    (tmp_path / "plain-dir").mkdir()
    results = list(
        session.import_files(
            [tmp_path / "missing.eml", tmp_path / "broken.msg", tmp_path / "plain-dir", tmp_path / "good.eml"]
        )
    )
    assert statuses(results) == [ImportStatus.FAILED] * 3 + [ImportStatus.IMPORTED]
    missing, broken, plain, _ = results
    assert "No such file" in missing.detail
    assert HResult.MAPI_E_CORRUPT_DATA.name in broken.detail and "__properties_version1.0" in broken.detail
    assert "no Maildir" in plain.detail
    assert [m.subject for m in session.list_messages(session.inbox)] == ["message 1"]


def test_a_file_that_holds_no_message_fails_and_nothing_is_saved(session: Session, tmp_path: Path) -> None:
    (tmp_path / "picture.png").write_bytes(bytes.fromhex("89504E470D0A1A0A") + bytes(range(256)) * 4)
    (tmp_path / "notes.txt").write_bytes(b"\nnot a header line, just text\n")
    (tmp_path / "good.eml").write_bytes(message(1))
    results = list(session.import_files([tmp_path / "picture.png", tmp_path / "notes.txt", tmp_path / "good.eml"]))
    assert statuses(results) == [ImportStatus.FAILED, ImportStatus.FAILED, ImportStatus.IMPORTED]
    assert all("not an Internet message" in r.detail for r in results[:2])
    assert [m.subject for m in session.list_messages(session.inbox)] == ["message 1"]


def test_a_folder_exported_as_an_mbox_comes_back_byte_for_byte_in_another_store(
    session: Session, tmp_path: Path
) -> None:
    list(session.import_files([write_mbox(tmp_path / "a.mbox", [message(n) for n in range(4)])]))
    assert session.export_folder(session.inbox, mbox=tmp_path / "out.mbox") == 4
    postroom.Profile.create(tmp_path / "other", with_defaults=False)
    with postroom.logon(tmp_path / "other") as other:
        assert statuses(list(other.import_files([tmp_path / "out.mbox"]))) == [ImportStatus.IMPORTED] * 4
        assert sorted(other.export_rfc822(m.id) for m in other.list_messages(other.inbox)) == sorted(
            message(n) for n in range(4)
        )


def test_a_folder_exported_as_a_maildir_holds_each_messages_exact_bytes(session: Session, tmp_path: Path) -> None:
    for n in range(3):
        (tmp_path / f"{n}.eml").write_bytes(message(n, crlf=True))
    list(session.import_files(sorted(tmp_path.glob("*.eml"))))
    assert session.export_folder("Inbox", maildir=tmp_path / "md") == 3
    files = sorted(p.read_bytes() for p in (tmp_path / "md" / "new").iterdir())
    assert files == sorted(message(n, crlf=True) for n in range(3))


def test_export_folder_tells_its_progress_after_each_message_is_written(session: Session, tmp_path: Path) -> None:
    for n in range(3):
        (tmp_path / f"{n}.eml").write_bytes(message(n))
    list(session.import_files(sorted(tmp_path.glob("*.eml"))))
    seen: list[tuple[int, int, int]] = []

    def progress(written: int, total: int) -> None:
        seen.append((written, total, len(list((tmp_path / "md" / "new").iterdir()))))

    assert session.export_folder("Inbox", maildir=tmp_path / "md", progress=progress) == 3
    assert seen == [(1, 3, 1), (2, 3, 2), (3, 3, 3)]
    with pytest.raises(postroom.ArgumentTypeError):
        session.export_folder("Inbox", mbox=tmp_path / "x.mbox", progress=3)  # type: ignore[arg-type]


def test_export_folder_needs_exactly_one_of_mbox_and_maildir(session: Session, tmp_path: Path) -> None:
    with pytest.raises(postroom.MAPIError) as caught:
        session.export_folder("Inbox")
    assert caught.value.code is HResult.MAPI_E_INVALID_PARAMETER


# --- the command line ---------------------------------------------------------------------------
def test_the_import_command_counts_what_it_did_and_exits_1_when_an_item_failed(
    profile_dir: Path, tmp_path: Path
) -> None:
    box = write_mbox(tmp_path / "a.mbox", [message(n) for n in range(3)])
    result = run_postroom("import", box, tmp_path / "missing.eml", profile=profile_dir)
    assert result.returncode == 1
    assert "imported 3 into Inbox, skipped 0 (imported before), failed 1" in result.stdout
    assert f"cannot import {tmp_path / 'missing.eml'}: No such file" in result.stderr
    again = as_json(ok(run_postroom("--json", "import", box, profile=profile_dir)))
    assert (again["imported"], again["skipped"], again["failed"], again["failures"]) == (0, 3, 0, [])


def test_the_import_command_exits_1_for_a_file_that_holds_no_message(profile_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_bytes(b"\x00\x01 not mail\n")
    result = run_postroom("import", tmp_path / "notes.txt", profile=profile_dir)
    assert result.returncode == 1
    assert "imported 0 into Inbox, skipped 0 (imported before), failed 1" in result.stdout
    assert f"cannot import {tmp_path / 'notes.txt'}: " in result.stderr


def test_import_and_export_draw_a_progress_line_on_a_terminal_and_none_with_json(
    profile_dir: Path, tmp_path: Path
) -> None:
    box = write_mbox(tmp_path / "a.mbox", [message(n) for n in range(3)])
    result, drawn = postroom_at_a_terminal("import", box, profile=profile_dir)
    assert "imported 3 into Inbox" in ok(result).stdout
    assert "importing" in drawn and "3/?" in drawn
    result, drawn = postroom_at_a_terminal(
        "export", "--folder", "Inbox", "--mbox", tmp_path / "out.mbox", profile=profile_dir
    )
    assert "exported 3 message(s) from Inbox" in ok(result).stdout
    assert "exporting" in drawn and "3/3" in drawn
    for args in (("import", box), ("export", "--folder", "Inbox", "--maildir", tmp_path / "md")):
        result, drawn = postroom_at_a_terminal("--json", *args, profile=profile_dir)
        assert as_json(ok(result)) and drawn == ""


def test_export_writes_a_folder_as_an_mbox_and_a_message_as_a_msg_file(profile_dir: Path, tmp_path: Path) -> None:
    ok(run_postroom("import", DATA / "strangeDate.msg", profile=profile_dir))
    ok(run_postroom("export", "--folder", "Inbox", "--mbox", tmp_path / "out.mbox", profile=profile_dir))
    (exported,) = mailbox.mbox(str(tmp_path / "out.mbox"))
    assert exported["Subject"] == "MSG Test File"
    doc = as_json(ok(run_postroom("--json", "export", "1", "--msg", tmp_path / "m.msg", profile=profile_dir)))
    assert doc["size"] == (tmp_path / "m.msg").stat().st_size
    assert (tmp_path / "m.msg").read_bytes()[:8] == bytes.fromhex("D0CF11E0A1B11AE1")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("export", "--mbox", "x.mbox"), "--mbox and --maildir need --folder F"),
        (("export", "1", "--folder", "Inbox", "--mbox", "x.mbox"), "export a whole --folder, not a message ID"),
        (("export", "--folder", "Inbox"), "--folder goes with --mbox or --maildir"),
        (("export", "--folder", "Nowhere", "--maildir", "d"), "MAPI_E_NOT_FOUND"),
    ],
)
def test_export_with_options_that_do_not_fit_says_so_in_one_line(
    profile_dir: Path, args: tuple[str, ...], words: str
) -> None:
    result = run_postroom(*args, profile=profile_dir)
    assert result.returncode == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_an_empty_folder_exports_an_empty_mbox_that_imports_nothing(session: Session, tmp_path: Path) -> None:
    session.create_folder("Empty")
    assert session.export_folder("Empty", mbox=tmp_path / "empty.mbox") == 0
    assert (tmp_path / "empty.mbox").read_bytes() == b""
    assert list(session.import_files([tmp_path / "empty.mbox"])) == []
