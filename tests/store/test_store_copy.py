"""`postroom store copy`: SQLite → PostgreSQL → SQLite loses nothing, and entry IDs stay valid."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.store.pgutil import temp_schema

from postroom.mapi import tags as T
from postroom.mapi.codes import HResult, MAPIError
from postroom.mapi.message import Attachment, MessageData, OriginalMime, Recipient
from postroom.store import FolderRole, MessageStore, RecipientOutcome, RecipientState, WaitKind, open_store
from postroom.store.copy import TABLES, _open
from postroom.storeadmin import StoreLocation, copy_store, locate

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

pytestmark = pytest.mark.postgres


def message(*addresses: str, subject: str = "s") -> MessageData:
    return MessageData(
        props={T.PR_SUBJECT: subject},
        recipients=[
            Recipient(
                props={T.PR_ADDRTYPE: "SMTP", T.PR_EMAIL_ADDRESS: a, T.PR_DISPLAY_NAME: a, T.PR_RECIPIENT_TYPE: 1}
            )
            for a in addresses
        ],
    )


def fill(store: MessageStore) -> dict[str, int]:
    """A store with something of everything."""
    outbox = store.folder(FolderRole.OUTBOX).id
    projects = store.create_folder("Projects")
    inner_folder = store.create_folder("Inner", projects.id)
    store.set_receive_folder("IPM.Note.Project", inner_folder.id)
    ids: dict[str, int] = {}
    rich = message("a@x.test", "b@x.test", subject="Grüße ✉")
    rich.props.update(
        {
            T.PR_IMPORTANCE: 2,
            T.PR_CLIENT_SUBMIT_TIME: NOW,
            T.PR_SEARCH_KEY: b"\x00\xff",
            0x80010000 | T.PT_MV_UNICODE: ["x", "y"],
            0x80020000 | T.PT_MV_BINARY: [b"\x01"],
            T.PR_SENTMAIL_ENTRYID: projects.entry_id,
        }
    )
    deep = message("deep@x.test", subject="embedded")
    deep.attachments.append(Attachment(props={T.PR_ATTACH_LONG_FILENAME: "deep.txt"}, data=b"deep bytes"))
    rich.attachments += [
        Attachment(props={T.PR_ATTACH_LONG_FILENAME: "big.bin"}, data=bytes(n % 253 for n in range(3_000_000))),
        Attachment(props={}, embedded=deep),
        Attachment(props={T.PR_ATTACH_LONG_FILENAME: "empty"}, data=b""),
    ]
    ids["rich"] = store.create_message(outbox, rich)
    ids["gone"] = store.create_message(outbox, message("gone@x.test"))
    store.submit(ids["rich"], NOW)
    ids["held"] = store.create_and_submit(outbox, message("h@x.test"), NOW)
    store.hold(ids["held"], NOW, "operator")
    ids["waiting"] = store.create_and_submit(outbox, message("w@x.test", "v@x.test"), NOW + timedelta(seconds=1))
    ids["leased"] = store.create_and_submit(outbox, message("l@x.test"), NOW + timedelta(seconds=2))
    assert store.claim("spooler-a", NOW + timedelta(seconds=5), 300, 1) == [ids["rich"]]
    store.record_outcomes(
        ids["rich"],
        "spooler-a",
        [RecipientOutcome(0, RecipientState.FAILED, "smtp", {T.PR_REPORT_TEXT: "550 no"}, report=True)],
        NOW,
    )
    store.release(ids["rich"], "spooler-a", NOW, NOW + timedelta(minutes=5), "451 later", WaitKind.RETRY)
    assert store.claim("spooler-b", NOW + timedelta(seconds=6), 300, 2) == [ids["waiting"], ids["leased"]]
    store.release(
        ids["waiting"],
        "spooler-b",
        NOW,
        None,
        "offline",
        WaitKind.SEND_RECEIVE,
        [RecipientOutcome(1, RecipientState.DELIVERED, "smtp")],
    )
    received = message("me@x.test", subject="in")
    received.original = OriginalMime("0" * 64, 9, data=b"S: in\r\n\r\nx")
    ids["inbox"] = store.deliver_message(store.folder(FolderRole.INBOX).id, received, NOW)
    store.save_status_rows("spooler-b", [("smtp", {"status": "available"})], NOW)
    store.record_send("smtp", NOW)  # type: ignore[attr-defined]
    store.set_breaker_state("smtp", {"failures": 2}, NOW)  # type: ignore[attr-defined]
    ids["last"] = store.create_message(outbox, message("last@x.test"))
    store.delete_message(ids["gone"])
    store.delete_message(ids["last"])  # the highest ID is gone: it must not come back after a copy
    return ids


def dump(location: StoreLocation) -> dict[str, Any]:
    """Every row of every table, and a digest of each attachment's content."""
    side = _open(location, write=False)
    try:
        out: dict[str, Any] = {"uid": side.store_uid()}
        for table, columns in TABLES:
            out[table] = [tuple(row) for row in side.rows(table, columns)]
        data = {}
        for aid, *_rest in out["attachments"]:
            size = side.attachment_size(int(aid))
            if size is not None:
                digest = hashlib.sha256()
                for chunk in side.attachment_chunks(int(aid), size):
                    digest.update(chunk)
                data[aid] = (size, digest.hexdigest())
        out["data"] = data
        out["messages_counter"] = side.counter("messages")
        return out
    finally:
        side.close()


def test_sqlite_to_postgres_and_back_loses_nothing(tmp_path: Path) -> None:
    first = tmp_path / "first.sqlite"
    store = open_store(first)
    ids = fill(store)
    entry_ids = {name: store.entry_id_of(mid) for name, mid in ids.items()}
    inner_id = store.find_folder("Inner").id
    store.close()
    original = dump(locate(str(first)))
    with temp_schema("copy") as url:
        report = copy_store(locate(str(first)), locate(url))
        assert report.rows["messages"] == len(original["messages"]) and report.attachment_bytes == 3_000_000 + 10
        assert dump(locate(url)) == original
        back = tmp_path / "back.sqlite"
        copy_store(locate(url), locate(str(back)))
        assert dump(locate(str(back))) == original
        pg = open_store(url)
        try:
            # Entry IDs of the old store resolve in the new one, with the same folders and queue.
            assert pg.resolve_message(entry_ids["rich"]) == ids["rich"]
            assert pg.find_folder("Inner").id == inner_id
            assert pg.get_receive_folder("IPM.Note.Project.X")[0] == pg.find_folder("Inner").id
            rich = pg.open_message(ids["rich"])
            assert rich[T.PR_SENTMAIL_ENTRYID] == pg.find_folder("Projects").entry_id
            big, embedded, _ = rich.attachments
            assert big.read_all() == bytes(n % 253 for n in range(3_000_000))
            assert embedded.embedded is not None and embedded.embedded.attachments[0].read_all() == b"deep bytes"
            kept = pg.open_message(ids["inbox"]).original
            assert kept is not None and (kept.fingerprint, kept.read_all()) == ("0" * 64, b"S: in\r\n\r\nx")
            queue = {q.id: q for q in pg.queue()}
            assert queue[ids["held"]].hold_reason == "operator"
            assert queue[ids["leased"]].lease_owner == "spooler-b"
            assert queue[ids["waiting"]].waiting_for is WaitKind.SEND_RECEIVE
            assert queue[ids["rich"]].last_error == "451 later" and queue[ids["rich"]].previous_owner is None
            # The leased message is taken over when its lease runs out, as before the move.
            assert pg.claim("spooler-c", NOW + timedelta(hours=1), 60, 5) == [ids["rich"], ids["leased"]]
            # IDs are never reused: not even the highest one that was deleted before the copy.
            assert pg.create_message(pg.folder(FolderRole.OUTBOX).id, message("new@x.test")) > ids["last"]
            assert pg.create_folder("After").id > pg.find_folder("Inner").id
        finally:
            pg.close()
        again = open_store(back)
        try:
            assert again.create_message(again.folder(FolderRole.OUTBOX).id, message("n@x.test")) > ids["last"]
            assert again.store_uid == original["uid"]
        finally:
            again.close()


def test_the_target_must_be_empty_unless_replaced(tmp_path: Path) -> None:
    src = tmp_path / "src.sqlite"
    store = open_store(src)
    fill(store)
    store.close()
    with temp_schema("copy") as url:
        copy_store(locate(str(src)), locate(url))
        with pytest.raises(MAPIError) as err:
            copy_store(locate(str(src)), locate(url))
        assert err.value.code == HResult.MAPI_E_INVALID_PARAMETER and "--replace" in err.value.message
        before = dump(locate(url))
        copy_store(locate(str(src)), locate(url), replace=True)
        assert dump(locate(url)) == before
    with pytest.raises(MAPIError):
        copy_store(locate(str(src)), locate(str(src)))
    with pytest.raises(MAPIError) as err:
        copy_store(locate(str(tmp_path / "missing.sqlite")), locate(str(tmp_path / "x.sqlite")))
    assert err.value.code == HResult.MAPI_E_NOT_FOUND


def test_a_failed_copy_leaves_the_target_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src.sqlite"
    store = open_store(src)
    fill(store)
    store.close()
    with temp_schema("copy") as url:
        target = open_store(url)
        target.create_folder("Existing")
        target.close()
        before = dump(locate(url))
        from postroom.store import copy as copymod

        def broken(self: Any, table: str, value: int) -> None:
            raise RuntimeError("disk full")

        monkeypatch.setattr(copymod._PgSide, "set_counter", broken)
        with pytest.raises(RuntimeError):
            copy_store(locate(str(src)), locate(url), replace=True)
        assert dump(locate(url)) == before
