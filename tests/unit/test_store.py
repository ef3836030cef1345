"""What is particular to the embedded SQLite store; the store behaviour both stores share is in tests/store/."""

from __future__ import annotations

import os
from pathlib import Path

from postroom.store import SQLiteStore, match_receive_folder


def test_receive_folder_longest_dotted_prefix_case_insensitive() -> None:
    assoc = {"": 1, "IPM": 1, "IPM.NOTE.SAMPLE": 7, "REPORT": 1}
    assert match_receive_folder(assoc, "IPM.Note.Sample.Simple") == (7, "IPM.NOTE.SAMPLE")
    assert match_receive_folder(assoc, "ipm.note.sample") == (7, "IPM.NOTE.SAMPLE")
    assert match_receive_folder(assoc, "IPM.Note") == (1, "IPM")
    assert match_receive_folder(assoc, "IPM.Note.SampleX") == (1, "IPM")  # dot boundary, not characters
    assert match_receive_folder(assoc, "IPM.Timecard") == (1, "IPM")
    assert match_receive_folder(assoc, "") == (1, "")
    assert match_receive_folder(assoc, "Custom.Thing") == (1, "")


def test_store_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "s.sqlite")
    assert oct(os.stat(tmp_path / "s.sqlite").st_mode & 0o777) == "0o600"
    assert s._q("PRAGMA journal_mode")[0][0] == "wal"
    s.close()
