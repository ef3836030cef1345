"""TNEF (MS-OXTNEF): the `winmail.dat` / `application/ms-tnef` part in which Outlook and Exchange
send the MAPI properties a MIME message has no room for. postroom's own reader.

A TNEF stream is a signature, a key, and attributes: (level, ID, length, data, checksum). The
message-level ones carry the subject, dates, class and plain body (`attBody`), and, in
`attMAPIProps`, any MAPI property at all (the RTF body, HTML, named properties with their names
inline); `attRecipTable` is a recipient table; each attachment starts with `attAttachRenddata`
and brings its bytes (`attAttachData`), its title and, in `attAttachment`, its own MAPI
properties, an embedded message being a TNEF stream of its own in PR_ATTACH_DATA_OBJ.

`read_tnef` turns a stream into a `MessageData`; `expand` replaces the TNEF part of a message
that came as MIME with what it carries (`mime.from_mime` calls it, so every inbound path gets
it): the properties, the body (RTF decompressed; HTML taken out of RTF that wraps it), the
recipients when MIME gave none, and the attachments in place of `winmail.dat`. A TNEF part
that cannot be read stays the attachment it was.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..mapi import tags as T
from ..mapi.codes import HResult, MAPIError
from ..mapi.entryid import decode_one_off, is_one_off
from ..mapi.flags import AttachMethod
from ..mapi.message import Attachment, MessageData, Props, Recipient
from . import mapiprops as props_

__all__ = ["SIGNATURE", "expand", "is_tnef", "read_tnef", "wants_rich_info", "with_tnef", "write_tnef"]


def _guid_bytes(text: str) -> bytes:
    """A GUID's 16 bytes as MAPI keeps them (the first three fields little-endian), without `uuid`."""
    raw = bytes.fromhex(text.replace("-", ""))
    return raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:]


def _guid_text(raw: bytes) -> str:
    b = raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:]
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


SIGNATURE = 0x223E9F78
LEVEL_MESSAGE, LEVEL_ATTACHMENT = 1, 2
# Attribute IDs (the low 16 bits; the high 16 are the attribute's type, which writers vary).
ATT_FROM = 0x8000
ATT_SUBJECT = 0x8004
ATT_DATE_SENT = 0x8005
ATT_DATE_RECD = 0x8006
ATT_MESSAGE_CLASS = 0x8008
ATT_MESSAGE_ID = 0x8009
ATT_BODY = 0x800C
ATT_PRIORITY = 0x800D
ATT_ATTACH_DATA = 0x800F
ATT_ATTACH_TITLE = 0x8010
ATT_ATTACH_CREATE_DATE = 0x8012
ATT_ATTACH_MODIFY_DATE = 0x8013
ATT_DATE_MODIFIED = 0x8020
ATT_ATTACH_TRANSPORT_FILENAME = 0x9001
ATT_ATTACH_RENDDATA = 0x9002
ATT_MAPI_PROPS = 0x9003
ATT_RECIP_TABLE = 0x9004
ATT_ATTACHMENT = 0x9005
ATT_OEM_CODEPAGE = 0x9007

IID_IMESSAGE = _guid_bytes("00020307-0000-0000-c000-000000000046")
#: Fixed-size property types: their struct format in an attMAPIProps value (each padded to 4 bytes).
_FIXED = {**{t: f for t, f in props_.FIXED.items()}, T.PT_CLSID: "16s"}
_VARIABLE = (T.PT_STRING8, T.PT_UNICODE, T.PT_BINARY, T.PT_OBJECT)
#: Legacy message classes (attMessageClass) and the MAPI ones they stand for.
_CLASSES = {"IPM.Microsoft Mail.Note": "IPM.Note", "IPM.Microsoft Mail.Read Receipt": "Report.IPM.Note.IPNRN"}
#: Properties of a TNEF message that belong to the store or the transport that received it.
_NOT_MERGED = frozenset({T.PR_ENTRYID, T.PR_MESSAGE_FLAGS, T.PR_MESSAGE_SIZE, T.PR_HASATTACH, T.PR_RECORD_KEY})


def _corrupt(why: str) -> MAPIError:
    return MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"TNEF: {why}")


def is_tnef(data: bytes) -> bool:
    return len(data) >= 6 and struct.unpack_from("<I", data)[0] == SIGNATURE


class _Props:
    """A reader of attMAPIProps-style property lists (MS-OXTNEF §2.1.3.5), collecting the names of
    named properties as it goes."""

    def __init__(self, data: bytes, codepage: str, names: dict[str, list[Any]]) -> None:
        self.data = data
        self.pos = 0
        self.codepage = codepage
        self.names = names

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _corrupt("a property list runs past its attribute")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        value: int = struct.unpack("<I", self.take(4))[0]
        return value

    def pad(self, n: int) -> None:
        self.take(-n % 4)

    def bag(self) -> Props:
        props: Props = {}
        for _ in range(self.u32()):
            kind, pid = struct.unpack("<HH", self.take(4))
            if pid >= 0x8000:
                guid = _guid_text(self.take(16))
                if self.u32() == 0:
                    name: Any = self.u32()
                else:
                    size = self.u32()
                    name = self.take(size).decode("utf-16-le", "replace").split("\0", 1)[0]
                    self.pad(size)
                self.names.setdefault(f"{pid:04X}", [guid, name])
            props[T.prop_tag(kind, pid)] = self.value(kind)
        return props

    def value(self, kind: int) -> Any:
        base = kind & ~T.MV_FLAG
        if kind & T.MV_FLAG:
            return [self.one(base) for _ in range(self.u32())]
        if base in _VARIABLE:
            count = self.u32()
            values = [self.one(base) for _ in range(count)]
            return values[0] if values else None
        return self.one(base)

    def one(self, base: int) -> Any:
        if base in _VARIABLE:
            size = self.u32()
            raw = self.take(size)
            self.pad(size)
            if base == T.PT_UNICODE:
                return raw.decode("utf-16-le", "replace").split("\0", 1)[0]
            if base == T.PT_STRING8:
                return raw.decode(self.codepage, "replace").split("\0", 1)[0]
            return raw
        if base not in _FIXED:
            raise _corrupt(f"property type 0x{base:04X} is unknown")
        fmt = _FIXED[base]
        size = struct.calcsize(fmt)
        raw = self.take(size)
        self.pad(size)
        value = struct.unpack(fmt, raw)[0]
        if base == T.PT_BOOLEAN:
            return bool(value)
        if base == T.PT_SYSTIME:
            return props_.from_filetime(value)
        return value


def _dtr(data: bytes) -> datetime | None:
    """attDate* values: year, month, day, hour, minute, second (and weekday), 16 bits each."""
    if len(data) < 12:
        return None
    year, month, day, hour, minute, second = struct.unpack_from("<6H", data)
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None


def _codepage(number: int) -> str:
    name = "utf-8" if number == 65001 else f"cp{number}"
    try:
        "".encode(name)
    except LookupError:
        return "cp1252"
    return name


def read_tnef(data: bytes, *, depth: int = 0, names: dict[str, list[Any]] | None = None) -> MessageData:
    """The MAPI message in a TNEF stream; MAPI_E_CORRUPT_DATA when it is not one. The names of
    named properties go to the top message's PR_POSTROOM_NAMEID_MAP (an embedded message's too,
    as in a .msg file, whose embedded messages share their parent's mapping)."""
    if not is_tnef(data):
        raise _corrupt("no TNEF signature")
    if depth > 8:
        raise _corrupt("embedded messages nested too deep")
    md = MessageData()
    names = {} if names is None else names
    codepage = "cp1252"
    att: Attachment | None = None
    pos = 6
    read = 0
    while pos + 9 <= len(data):
        level, attr, length = struct.unpack_from("<BII", data, pos)
        start = pos + 9
        if level not in (LEVEL_MESSAGE, LEVEL_ATTACHMENT) or start + length + 2 > len(data):
            break  # garbage after the last attribute: what came before stands
        body = data[start : start + length]
        pos = start + length + 2  # the checksum follows; a wrong one is not worth losing the message
        ident = attr & 0xFFFF
        read += 1
        if ident == ATT_OEM_CODEPAGE and len(body) >= 4:
            codepage = _codepage(struct.unpack_from("<I", body)[0])
        elif level == LEVEL_MESSAGE:
            _message_attribute(md, ident, body, codepage, names, depth)
        elif ident == ATT_ATTACH_RENDDATA or att is None:
            att = Attachment(num=len(md.attachments))
            md.attachments.append(att)
            if ident != ATT_ATTACH_RENDDATA:
                _attachment_attribute(att, ident, body, codepage, names, depth)
        else:
            _attachment_attribute(att, ident, body, codepage, names, depth)
    if not read:
        raise _corrupt("no attribute after the signature")
    for item in md.attachments:
        if item.data is not None:
            item.size = len(item.data)
    props_.fill_body(md)
    props_.add_unicode_twins(md)
    if names and depth == 0:
        md.props[props_.PR_POSTROOM_NAMEID_MAP] = json.dumps(names, separators=(",", ":"))
    return md


def _text(body: bytes, codepage: str) -> str:
    return body.decode(codepage, "replace").split("\0", 1)[0]


def _message_attribute(
    md: MessageData, ident: int, body: bytes, codepage: str, names: dict[str, list[Any]], depth: int
) -> None:
    if ident == ATT_MAPI_PROPS:
        md.props.update(_Props(body, codepage, names).bag())
    elif ident == ATT_RECIP_TABLE:
        reader = _Props(body, codepage, names)
        for n in range(reader.u32()):
            md.recipients.append(Recipient(props=reader.bag(), row_id=n))
    elif ident == ATT_SUBJECT:
        md.props.setdefault(T.PR_SUBJECT, _text(body, codepage))
    elif ident == ATT_BODY:
        md.props.setdefault(T.PR_BODY, _text(body, codepage))
    elif ident == ATT_MESSAGE_CLASS:
        name = _text(body, codepage)
        md.props.setdefault(T.PR_MESSAGE_CLASS, _CLASSES.get(name, name))
    elif ident in (ATT_DATE_SENT, ATT_DATE_RECD, ATT_DATE_MODIFIED):
        tag = {
            ATT_DATE_SENT: T.PR_CLIENT_SUBMIT_TIME,
            ATT_DATE_RECD: T.PR_MESSAGE_DELIVERY_TIME,
            ATT_DATE_MODIFIED: T.PR_LAST_MODIFICATION_TIME,
        }[ident]
        when = _dtr(body)
        if when is not None:
            md.props.setdefault(tag, when)
    elif ident == ATT_PRIORITY and len(body) >= 2:
        # attPriority: 1 high, 2 normal, 3 low; PR_IMPORTANCE: 2 high, 1 normal, 0 low.
        md.props.setdefault(T.PR_IMPORTANCE, {1: 2, 2: 1, 3: 0}.get(struct.unpack_from("<H", body)[0], 1))


def _attachment_attribute(
    att: Attachment, ident: int, body: bytes, codepage: str, names: dict[str, list[Any]], depth: int
) -> None:
    if ident == ATT_ATTACH_DATA:
        att.data = body
    elif ident == ATT_ATTACH_TITLE:
        att.props.setdefault(T.PR_ATTACH_FILENAME, _text(body, codepage))
    elif ident == ATT_ATTACH_TRANSPORT_FILENAME:
        att.props.setdefault(T.prop_tag(T.PT_BINARY, 0x370C), body)  # PR_ATTACH_TRANSPORT_NAME's bytes
    elif ident == ATT_ATTACHMENT:
        props = _Props(body, codepage, names).bag()
        binary = props.pop(T.PR_ATTACH_DATA_BIN, None)
        obj = props.pop(T.PR_ATTACH_DATA_OBJ, None)
        att.props.update(props)
        if isinstance(binary, bytes):
            att.data = binary
        if isinstance(obj, bytes):
            inner = obj[16:]
            if obj[:16] == IID_IMESSAGE and is_tnef(inner):
                att.embedded = read_tnef(inner, depth=depth + 1, names=names)
                att.props[T.PR_ATTACH_METHOD] = int(AttachMethod.EMBEDDED_MSG)
                att.data = None
            else:
                att.data = inner  # an OLE object or a file kept whole: its bytes after the interface ID


def _tnef_part(att: Attachment) -> bool:
    if att.embedded is not None:
        return False
    mime = str(att.props.get(T.PR_ATTACH_MIME_TAG) or "").lower()
    return mime in ("application/ms-tnef", "application/vnd.ms-tnef") or att.filename.lower() == "winmail.dat"


def expand(md: MessageData) -> MessageData:
    """`md` with its TNEF part replaced by what it carries (see the module docstring); never raises."""
    for att in list(md.attachments):
        if not _tnef_part(att):
            continue
        try:
            inner = read_tnef(att.read_all())
        except (MAPIError, OSError, struct.error, ValueError):
            continue  # not readable: it stays the attachment it was
        for tag, value in inner.props.items():
            if tag not in _NOT_MERGED and value is not None:
                md.props[tag] = value
        if not md.recipients:
            md.recipients = inner.recipients
        at = md.attachments.index(att)
        md.attachments[at : at + 1] = inner.attachments
    for n, item in enumerate(md.attachments):
        item.num = n
    return md


# --- writing ------------------------------------------------------------------------------------------
#: attAttachRenddata of a file attachment: AttachTypeFile, position -1, no size, no flags.
_RENDDATA_FILE = struct.pack("<HIHHI", 1, 0xFFFFFFFF, 0, 0, 0)
#: The legacy class Outlook writes in attMessageClass for an IPM.Note.
_LEGACY = {mapi: legacy for legacy, mapi in _CLASSES.items()}
#: Properties never written to attMAPIProps: the store's own, and what TNEF carries elsewhere.
_NOT_WRITTEN = frozenset(
    {T.PR_ENTRYID, T.PR_RECORD_KEY, T.PR_INSTANCE_KEY, T.PR_MESSAGE_SIZE, T.PR_ATTACH_DATA_BIN, T.PR_ATTACH_DATA_OBJ}
) | {props_.PR_POSTROOM_NAMEID_MAP}


def _attribute(level: int, attr: int, data: bytes) -> bytes:
    return struct.pack("<BII", level, attr, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


class _PropWriter:
    def __init__(self, codepage: str, names: dict[str, list[Any]]) -> None:
        self.codepage = codepage
        self.names = names

    def bag(self, props: Props, extra: Sequence[bytes] = ()) -> bytes:
        items: list[bytes] = []
        for tag in sorted(props):
            value = props[tag]
            kind, pid = T.prop_type(tag), T.prop_id(tag)
            if value is None or tag in _NOT_WRITTEN or kind in (T.PT_OBJECT, T.PT_NULL, T.PT_UNSPECIFIED):
                continue
            head = struct.pack("<HH", kind, pid)
            if pid >= 0x8000:
                name = self.names.get(f"{pid:04X}")
                if name is None:
                    continue  # a named property whose name is unknown cannot be written
                head += self.name(name)
            items.append(head + self.value(kind, value))
        items.extend(extra)
        return struct.pack("<I", len(items)) + b"".join(items)

    @staticmethod
    def name(entry: list[Any]) -> bytes:
        guid, name = entry
        if isinstance(name, str):
            raw = (name + "\0").encode("utf-16-le")
            return _guid_bytes(guid) + struct.pack("<II", 1, len(raw)) + _padded(raw)
        return _guid_bytes(guid) + struct.pack("<II", 0, int(name))

    def value(self, kind: int, value: Any) -> bytes:
        base = kind & ~T.MV_FLAG
        if kind & T.MV_FLAG:
            return struct.pack("<I", len(value)) + b"".join(self.one(base, v) for v in value)
        if base in _VARIABLE:
            return struct.pack("<I", 1) + self.one(base, value)
        return self.one(base, value)

    def one(self, base: int, value: Any) -> bytes:
        if base in _VARIABLE:
            if base == T.PT_UNICODE:
                raw = (str(value) + "\0").encode("utf-16-le", "surrogatepass")
            elif base == T.PT_STRING8:
                raw = (str(value) + "\0").encode(self.codepage, "replace")
            else:
                raw = bytes(value)
            return struct.pack("<I", len(raw)) + _padded(raw)
        if base == T.PT_SYSTIME:
            value = props_.filetime(value)
        elif base == T.PT_BOOLEAN:
            value = 1 if value else 0
        return _padded(struct.pack(_FIXED[base], value))


def _padded(raw: bytes) -> bytes:
    return raw + b"\0" * (-len(raw) % 4)


def write_tnef(
    md: MessageData, *, recipients: bool = False, key: int = 0x0001, names: dict[str, list[Any]] | None = None
) -> bytes:
    """`md` as a TNEF stream: the legacy attributes Outlook writes, every property in attMAPIProps
    (named ones with their names, from PR_POSTROOM_NAMEID_MAP), each attachment with its data and
    attAttachment properties, an embedded message as a TNEF stream of its own. The recipient table
    only with `recipients=True` (`export --tnef`): a message sent as TNEF has its recipients in
    its MIME header, and a Bcc row must never travel in its body."""
    mapping = md.props.get(props_.PR_POSTROOM_NAMEID_MAP)
    if names is None:  # an embedded message is written with its parent's names
        names = json.loads(mapping) if isinstance(mapping, str) and mapping else {}
    cpid = md.props.get(props_.PR_MESSAGE_CODEPAGE) or md.props.get(props_.PR_INTERNET_CPID) or 1252
    codepage = _codepage(int(cpid)) if isinstance(cpid, int) and cpid not in (1200,) else "cp1252"
    number = 65001 if codepage == "utf-8" else int(codepage[2:])
    writer = _PropWriter(codepage, names)
    out = [struct.pack("<IH", SIGNATURE, key)]
    out.append(_attribute(LEVEL_MESSAGE, 0x00089006, struct.pack("<I", 0x00010000)))
    out.append(_attribute(LEVEL_MESSAGE, 0x00060000 | ATT_OEM_CODEPAGE, struct.pack("<II", number, 0)))
    klass = md.message_class
    out.append(_attribute(LEVEL_MESSAGE, 0x00070000 | ATT_MESSAGE_CLASS, (_LEGACY.get(klass, klass) + "\0").encode()))
    if recipients and md.recipients:
        rows = b"".join(writer.bag(r.props) for r in md.recipients)
        out.append(
            _attribute(LEVEL_MESSAGE, 0x00060000 | ATT_RECIP_TABLE, struct.pack("<I", len(md.recipients)) + rows)
        )
    out.append(_attribute(LEVEL_MESSAGE, 0x00060000 | ATT_MAPI_PROPS, writer.bag(md.props)))
    for att in md.attachments:
        out.append(_attribute(LEVEL_ATTACHMENT, 0x00060000 | ATT_ATTACH_RENDDATA, _RENDDATA_FILE))
        extra: list[bytes] = []
        if att.embedded is not None:
            inner = IID_IMESSAGE + write_tnef(att.embedded, recipients=True, key=key, names=names)
            extra.append(
                struct.pack("<HHI", T.PT_OBJECT, T.prop_id(T.PR_ATTACH_DATA_OBJ), 1) + writer.one(T.PT_BINARY, inner)
            )
        else:
            if att.filename:
                title = (att.filename + "\0").encode(codepage, "replace")
                out.append(_attribute(LEVEL_ATTACHMENT, 0x00010000 | ATT_ATTACH_TITLE, title))
            out.append(_attribute(LEVEL_ATTACHMENT, 0x00060000 | ATT_ATTACH_DATA, att.read_all()))
        out.append(_attribute(LEVEL_ATTACHMENT, 0x00060000 | ATT_ATTACHMENT, writer.bag(att.props, extra)))
    return b"".join(out)


def wants_rich_info(recipient: Recipient) -> bool:
    """Whether a recipient takes MAPI's rich information (TNEF), as Outlook decides: its
    PR_SEND_RICH_INFO when it has one, else whether its one-off entry ID lacks
    MAPI_ONE_OFF_NO_RICH_INFO; a recipient with neither does not."""
    flag = recipient.props.get(T.PR_SEND_RICH_INFO)
    if flag is not None:
        return bool(flag)
    entry = recipient.entry_id
    if entry and is_one_off(entry):
        try:
            return not decode_one_off(entry).no_rich_info
        except MAPIError:
            return False
    return False


def with_tnef(md: MessageData) -> MessageData:
    """The message to render as MIME when it goes out as TNEF: its text body and header as they
    are, and in place of its attachments one `winmail.dat` (application/ms-tnef) carrying the
    whole message: attachments, RTF, named properties."""
    carrier = Attachment(
        props={T.PR_ATTACH_LONG_FILENAME: "winmail.dat", T.PR_ATTACH_MIME_TAG: "application/ms-tnef"},
        data=write_tnef(md),
    )
    carrier.size = len(carrier.data or b"")
    return MessageData(props=dict(md.props), recipients=list(md.recipients), attachments=[carrier], original=None)
