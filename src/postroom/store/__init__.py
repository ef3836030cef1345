"""The message store: folders, messages, the outgoing queue with leases, receive folders, history."""

from .base import (
    Event,
    Folder,
    FolderRole,
    LeaseLost,
    MessageStore,
    MessageSummary,
    QueueEntry,
    QueueState,
    RecipientOutcome,
    RecipientState,
    RecipientStatus,
    WaitKind,
)
from .receive import match_receive_folder
from .sqlite import SQLiteStore

__all__ = [
    "Event",
    "Folder",
    "FolderRole",
    "LeaseLost",
    "MessageStore",
    "MessageSummary",
    "QueueEntry",
    "QueueState",
    "RecipientOutcome",
    "RecipientState",
    "RecipientStatus",
    "SQLiteStore",
    "WaitKind",
    "match_receive_folder",
]
