"""The MAPI vocabulary: property tags, flags, codes, MAPIUIDs, entry IDs, search keys.

This package knows nothing of the rest of postroom; everything else speaks in its words.
"""

from .codes import HResult, MAPIError
from .entryid import (
    MAPI_ONE_OFF_UID,
    MAPIUID,
    OneOff,
    decode_one_off,
    encode_one_off,
    is_one_off,
    make_entry_id,
    one_off_entry_id,
    provider_uid_of,
    search_key,
)
from .flags import (
    AttachMethod,
    EndMessageFlags,
    FlushFlags,
    LogonFlags,
    LogonResultFlags,
    MessageFlags,
    NDRDiag,
    NDRReason,
    NotifyFlags,
    RecipientType,
    ResourceFlags,
    ResourceMethods,
    ResourceType,
    StatusCode,
    SubmitFlags,
)

__all__ = [
    "MAPIUID",
    "MAPI_ONE_OFF_UID",
    "AttachMethod",
    "EndMessageFlags",
    "FlushFlags",
    "HResult",
    "LogonFlags",
    "LogonResultFlags",
    "MAPIError",
    "MessageFlags",
    "NDRDiag",
    "NDRReason",
    "NotifyFlags",
    "OneOff",
    "RecipientType",
    "ResourceFlags",
    "ResourceMethods",
    "ResourceType",
    "StatusCode",
    "SubmitFlags",
    "decode_one_off",
    "encode_one_off",
    "is_one_off",
    "make_entry_id",
    "one_off_entry_id",
    "provider_uid_of",
    "search_key",
]
