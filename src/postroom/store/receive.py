"""Receive-folder selection (IMsgStore::GetReceiveFolder, spec §8.4).

Matching is by the longest dot-boundary prefix of the message class, case-insensitively;
the default association ("") always exists and points at the Inbox. The spec marks the
dot-wise, case-insensitive rule as unconfirmed for MAPI 1.0; it is the rule that makes
`IPM.Note.Sample` never capture `IPM.NoteX`, so we take it.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..mapi.codes import HResult, MAPIError


def normalise_class(message_class: str) -> str:
    return (message_class or "").strip().upper()


def match_receive_folder(associations: Mapping[str, int], message_class: str) -> tuple[int, str]:
    """Return (folder ID, matched class) for the longest dotted prefix of `message_class`."""
    cls = normalise_class(message_class)
    while True:
        if cls in associations:
            return associations[cls], cls
        if cls == "":
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, "the store has no default receive folder")
        cls = cls.rsplit(".", 1)[0] if "." in cls else ""
