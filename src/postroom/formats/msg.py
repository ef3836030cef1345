"""Outlook `.msg` files (MS-OXMSG): a MAPI message's property bags in a compound file.

`read_msg` reads one with olefile: the fixed-size properties of each object from its
`__properties_version1.0` stream, the variable-size ones from `__substg1.0_<tag>` streams
(multi-valued ones from their length stream and one stream per value), the recipient and
attachment storages, embedded messages (`__substg1.0_3701000D`), and the named-property
mapping (`__nameid_version1.0`). Tags, entry IDs and search keys are kept as the file has them.
ANSI strings (PT_STRING8) are decoded with the message's code page. The body Outlook keeps
only as PR_RTF_COMPRESSED is decompressed (`rtf`), and when it wraps HTML (`\\fromhtml1`) and
the message has no PR_HTML, the HTML taken out of it becomes PR_HTML; the compressed value
itself is kept as it is.

`write_msg` writes a message back in the same layout, through postroom's own compound-file
writer (`cfb`). Named properties: postroom's store has no named-property table, so the mapping
of a message's tags 0x8000 and up travels with the message, as JSON in the postroom-private
property `PR_POSTROOM_NAMEID_MAP` (in the provider-defined, non-transmittable range); it is
written to `__nameid_version1.0` and not as a property.
"""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from typing import Any

import olefile

from ..mapi import tags as T
from ..mapi.codes import HResult, MAPIError
from ..mapi.flags import AttachMethod
from ..mapi.message import Attachment, MessageData, Props, Recipient
from .cfb import Tree, write_cfb
from .mapiprops import (
    FIXED,
    MV_FIXED,
    PR_INTERNET_CPID,
    PR_MESSAGE_CODEPAGE,
    PR_POSTROOM_NAMEID_MAP,
    PS_MAPI,
    PS_PUBLIC_STRINGS,
    VARIABLE,
    add_unicode_twins,
    filetime,
    fill_body,
    from_filetime,
)

__all__ = [
    "PR_POSTROOM_NAMEID_MAP",
    "PS_MAPI",
    "PS_PUBLIC_STRINGS",
    "add_unicode_twins",
    "filetime",
    "fill_body",
    "from_filetime",
    "read_msg",
    "write_msg",
]

PROPS = "__properties_version1.0"
NAMEID = "__nameid_version1.0"
RECIP = "__recip_version1.0_#{:08X}"
ATTACH = "__attach_version1.0_#{:08X}"
EMBEDDED = "__substg1.0_3701000D"
_ENTRY = struct.Struct("<IIQ")


def _corrupt(why: str) -> MAPIError:
    return MAPIError(HResult.MAPI_E_CORRUPT_DATA, f".msg: {why}")


# --- reading ---------------------------------------------------------------------------------------
class _Reader:
    def __init__(self, ole: olefile.OleFileIO) -> None:
        self.ole = ole
        self.codepage = "cp1252"
        self.listing = ole.listdir(streams=True, storages=True)

    def stream(self, path: list[str]) -> bytes | None:
        if not self.ole.exists("/".join(path)) or self.ole.get_type("/".join(path)) != olefile.STGTY_STREAM:
            return None
        data: bytes = self.ole.openstream("/".join(path)).read()
        return data

    def children(self, path: list[str]) -> list[str]:
        depth = len(path)
        names = {entry[depth] for entry in self.listing if len(entry) > depth and entry[:depth] == path}
        return sorted(n for n in names)

    def text(self, kind: int, data: bytes) -> str:
        if kind == T.PT_UNICODE:
            return data.decode("utf-16-le", "replace").split("\0", 1)[0]
        return data.decode(self.codepage, "replace").split("\0", 1)[0]

    def bag(self, path: list[str], header: int) -> Props:
        """Every property of the object at `path` (see the module docstring)."""
        raw = self.stream([*path, PROPS]) or b""
        props: Props = {}
        listed = set()
        for offset in range(header, len(raw) - _ENTRY.size + 1, _ENTRY.size):
            tag, _flags, value = _ENTRY.unpack_from(raw, offset)
            listed.add(tag)
            got = self.value(path, tag, value)
            if got is not None:
                props[tag] = got
        # Some writers leave variable-size properties out of the property stream: take their streams too.
        for name in self.children(path):
            if name.startswith("__substg1.0_") and len(name) == 20:
                try:
                    tag = int(name[12:], 16)
                except ValueError:
                    continue
                if tag not in listed and T.prop_type(tag) in VARIABLE:
                    got = self.value(path, tag, 0)
                    if got is not None:
                        props[tag] = got
        return props

    def value(self, path: list[str], tag: int, raw: int) -> Any:
        kind = T.prop_type(tag)
        if kind in FIXED:
            packed = struct.pack("<Q", raw)
            value = struct.unpack_from(FIXED[kind], packed)[0]
            if kind == T.PT_BOOLEAN:
                return bool(value & 0xFF)
            if kind == T.PT_SYSTIME:
                return from_filetime(value)
            return value
        name = f"__substg1.0_{tag:08X}"
        if kind in VARIABLE or kind == T.PT_CLSID:
            data = self.stream([*path, name])
            if data is None:
                return None
            if kind in (T.PT_UNICODE, T.PT_STRING8):
                return self.text(kind, data)
            return data
        if kind & T.MV_FLAG:
            base = kind & ~T.MV_FLAG
            data = self.stream([*path, name])
            if data is None:
                return None
            if base in MV_FIXED:
                fmt = MV_FIXED[base]
                size = struct.calcsize(fmt)
                items = [struct.unpack_from(fmt, data, n)[0] for n in range(0, len(data) - size + 1, size)]
                return [from_filetime(v) for v in items] if base == T.PT_SYSTIME else items
            if base in VARIABLE:
                step = 8 if base == T.PT_BINARY else 4
                values: list[Any] = []
                for n in range(len(data) // step):
                    item = self.stream([*path, f"{name}-{n:08X}"]) or b""
                    values.append(item if base == T.PT_BINARY else self.text(base, item))
                return values
        return None  # PT_OBJECT (read as a storage), PT_NULL, PT_UNSPECIFIED: no value to keep

    def message(self, path: list[str], header: int) -> MessageData:
        props = self.bag(path, header)
        cpid = props.get(PR_MESSAGE_CODEPAGE) or props.get(PR_INTERNET_CPID)
        if isinstance(cpid, int) and cpid and cpid != 1200:
            try:
                codepage = f"cp{cpid}" if cpid != 65001 else "utf-8"
                "".encode(codepage)
            except LookupError:
                codepage = self.codepage
            if codepage != self.codepage:  # strings read with the default page: read them again
                self.codepage = codepage
                props = self.bag(path, header)
        md = MessageData(props=props)
        names = self.children(path)
        for name in names:
            if name.startswith("__recip_version1.0_#"):
                row = Recipient(props=self.bag([*path, name], 8), row_id=len(md.recipients))
                md.recipients.append(row)
        for name in names:
            if name.startswith("__attach_version1.0_#"):
                md.attachments.append(self.attachment([*path, name], len(md.attachments)))
        fill_body(md)
        return md

    def attachment(self, path: list[str], num: int) -> Attachment:
        props = self.bag(path, 8)
        att = Attachment(props=props, num=num)
        data = props.pop(T.PR_ATTACH_DATA_BIN, None)
        if int(props.get(T.PR_ATTACH_METHOD, 1)) == AttachMethod.EMBEDDED_MSG and self.ole.exists(
            "/".join([*path, EMBEDDED])
        ):
            att.embedded = self.message([*path, EMBEDDED], 24)
        elif int(props.get(T.PR_ATTACH_METHOD, 1)) == AttachMethod.OLE and self.ole.exists("/".join([*path, EMBEDDED])):
            # An OLE object's storage, kept whole as a compound file of its own (written back as
            # the storage it was, see _Writer.message).
            att.data = write_cfb(self.tree([*path, EMBEDDED]))
            att.size = len(att.data)
        elif isinstance(data, bytes):
            att.data = data
            att.size = len(data)
        return att

    def tree(self, path: list[str]) -> dict[str, Any]:
        """Every stream and storage under `path`, as `cfb.write_cfb` takes them."""
        out: dict[str, Any] = {}
        for name in self.children(path):
            where = [*path, name]
            data = self.stream(where)
            out[name] = data if data is not None else self.tree(where)
        return out

    def names(self) -> dict[str, list[Any]]:
        guids = self.stream([NAMEID, "__substg1.0_00020102"]) or b""
        entries = self.stream([NAMEID, "__substg1.0_00030102"]) or b""
        strings = self.stream([NAMEID, "__substg1.0_00040102"]) or b""
        out: dict[str, list[Any]] = {}
        for offset in range(0, len(entries) - 7, 8):
            ident, info = struct.unpack_from("<II", entries, offset)
            kind, guid_index, index = info & 1, (info & 0xFFFF) >> 1, info >> 16
            if guid_index == 1:
                guid = PS_MAPI
            elif guid_index == 2:
                guid = PS_PUBLIC_STRINGS
            else:
                start = (guid_index - 3) * 16
                if start + 16 > len(guids):
                    raise _corrupt(f"named property {index}: GUID index {guid_index} out of range")
                guid = str(uuid.UUID(bytes_le=guids[start : start + 16]))
            if kind:
                (length,) = struct.unpack_from("<I", strings, ident)
                name: Any = strings[ident + 4 : ident + 4 + length].decode("utf-16-le", "replace")
            else:
                name = ident
            out[f"{0x8000 + index:04X}"] = [guid, name]
        return out


def read_msg(data: bytes) -> MessageData:
    """The message in a `.msg` file's bytes; MAPI_E_CORRUPT_DATA when they are not one."""
    if not olefile.isOleFile(data=data):
        raise _corrupt("not a compound file")
    try:
        ole = olefile.OleFileIO(data)
    except (OSError, ValueError, struct.error) as exc:
        raise _corrupt(f"the compound file cannot be read ({exc})") from exc
    try:
        reader = _Reader(ole)
        if not ole.exists(PROPS):
            raise _corrupt("no __properties_version1.0 stream: not an Outlook message")
        md = reader.message([], 32)
        names = reader.names()
        if names:
            md.props[PR_POSTROOM_NAMEID_MAP] = json.dumps(names, separators=(",", ":"))
        return md
    except (OSError, ValueError, struct.error, UnicodeError) as exc:
        raise _corrupt(f"a stream cannot be read ({exc})") from exc
    finally:
        ole.close()


# --- writing ---------------------------------------------------------------------------------------
class _Writer:
    def __init__(self, codepage: str) -> None:
        self.codepage = codepage

    def bag(self, props: Props, header: bytes, storage: dict[str, Any]) -> None:
        entries = [header]
        for tag in sorted(props):
            value = props[tag]
            kind = T.prop_type(tag)
            if value is None or kind in (T.PT_OBJECT, T.PT_NULL, T.PT_UNSPECIFIED) or tag == PR_POSTROOM_NAMEID_MAP:
                continue
            name = f"__substg1.0_{tag:08X}"
            if kind in FIXED:
                if kind == T.PT_SYSTIME:
                    raw = filetime(value)
                elif kind == T.PT_BOOLEAN:
                    raw = 1 if value else 0
                else:
                    raw = struct.unpack("<Q", struct.pack(FIXED[kind], value).ljust(8, b"\0"))[0]
                entries.append(_ENTRY.pack(tag, 6, raw))
            elif kind in VARIABLE or kind == T.PT_CLSID:
                data = self.encode(kind, value)
                storage[name] = data
                entries.append(_ENTRY.pack(tag, 6, len(data)))
            elif kind & T.MV_FLAG:
                base = kind & ~T.MV_FLAG
                if base in MV_FIXED:
                    items = [filetime(v) if base == T.PT_SYSTIME else v for v in value]
                    data = b"".join(struct.pack(MV_FIXED[base], v) for v in items)
                    storage[name] = data
                    entries.append(_ENTRY.pack(tag, 6, len(data)))
                elif base in VARIABLE:
                    lengths = []
                    for n, item in enumerate(value):
                        encoded = self.encode(base, item)
                        storage[f"{name}-{n:08X}"] = encoded
                        lengths.append(
                            struct.pack("<II", len(encoded), 0)
                            if base == T.PT_BINARY
                            else struct.pack("<I", len(encoded))
                        )
                    storage[name] = b"".join(lengths)
                    entries.append(_ENTRY.pack(tag, 6, len(storage[name])))
        storage[PROPS] = b"".join(entries)

    def encode(self, kind: int, value: Any) -> bytes:
        if kind == T.PT_UNICODE:
            return str(value).encode("utf-16-le", "surrogatepass") + b"\0\0"
        if kind == T.PT_STRING8:
            return str(value).encode(self.codepage, "replace") + b"\0"
        return bytes(value)

    def message(self, md: MessageData, top: bool, storage: dict[str, Any]) -> None:
        counts = struct.pack("<IIII", len(md.recipients), len(md.attachments), len(md.recipients), len(md.attachments))
        header = b"\0" * 8 + counts + (b"\0" * 8 if top else b"")
        self.bag(md.props, header, storage)
        for n, row in enumerate(md.recipients):
            sub: dict[str, Any] = {}
            self.bag({T.PR_ROWID: n, **row.props}, b"\0" * 8, sub)
            storage[RECIP.format(n)] = sub
        for n, att in enumerate(md.attachments):
            sub = {}
            props = {**att.props, T.PR_ATTACH_NUM: n}
            if att.embedded is not None:
                props[T.PR_ATTACH_METHOD] = int(AttachMethod.EMBEDDED_MSG)
                props[T.PR_ATTACH_DATA_OBJ] = None
                inner: dict[str, Any] = {}
                self.message(att.embedded, False, inner)
                sub[EMBEDDED] = inner
                entries_extra = _ENTRY.pack(T.PR_ATTACH_DATA_OBJ, 6, 0xFFFFFFFF)
            elif att.method == AttachMethod.OLE and olefile.isOleFile(data=(content := att.read_all())):
                props[T.PR_ATTACH_DATA_OBJ] = None
                sub[EMBEDDED] = _storage_of(content)
                entries_extra = _ENTRY.pack(T.PR_ATTACH_DATA_OBJ, 6, 0xFFFFFFFF)
            else:
                props[T.PR_ATTACH_DATA_BIN] = att.read_all()
                entries_extra = b""
            self.bag(props, b"\0" * 8, sub)
            sub[PROPS] += entries_extra
            storage[ATTACH.format(n)] = sub


def _storage_of(content: bytes) -> dict[str, Any]:
    """The tree of streams and storages of a compound file (an OLE attachment kept as one)."""
    ole = olefile.OleFileIO(content)
    try:
        return _Reader(ole).tree([])
    finally:
        ole.close()


def _nameid(mapping: dict[str, list[Any]]) -> dict[str, bytes]:
    guids: list[str] = []
    entries = bytearray()
    strings = bytearray()
    buckets: dict[int, bytearray] = {}
    for key in sorted(mapping, key=lambda k: int(k, 16)):
        guid, name = mapping[key]
        index = int(key, 16) - 0x8000
        guid = str(uuid.UUID(guid))
        if guid == PS_MAPI:
            guid_index = 1
        elif guid == PS_PUBLIC_STRINGS:
            guid_index = 2
        else:
            if guid not in guids:
                guids.append(guid)
            guid_index = 3 + guids.index(guid)
        if isinstance(name, str):
            encoded = name.encode("utf-16-le")
            ident = len(strings)
            strings += struct.pack("<I", len(encoded)) + encoded
            strings += b"\0" * (-len(strings) % 4)
            kind = 1
        else:
            ident, kind = int(name), 0
        info = (index << 16) | (guid_index << 1) | kind
        entries += struct.pack("<II", ident, info)
        # The name-to-ID mapping streams (MS-OXMSG §2.2.3.1.3), which Outlook looks names up in:
        # numeric names by their ID, string names by the CRC-32 of their UTF-16LE form.
        lookup = int(name) if kind == 0 else zlib.crc32(str(name).encode("utf-16-le"))
        bucket = 0x1000 + ((lookup ^ ((guid_index << 1) | kind)) % 0x1F)
        buckets.setdefault(bucket, bytearray()).extend(struct.pack("<II", lookup, info))
    streams = {
        "__substg1.0_00020102": b"".join(uuid.UUID(g).bytes_le for g in guids),
        "__substg1.0_00030102": bytes(entries),
        "__substg1.0_00040102": bytes(strings),
    }
    streams.update({f"__substg1.0_{bucket:04X}0102": bytes(data) for bucket, data in buckets.items()})
    return streams


def write_msg(md: MessageData) -> bytes:
    """`md` as the bytes of a `.msg` file (see the module docstring)."""
    cpid = md.props.get(PR_MESSAGE_CODEPAGE) or md.props.get(PR_INTERNET_CPID)
    codepage = "cp1252"
    if isinstance(cpid, int) and cpid not in (0, 1200):
        candidate = "utf-8" if cpid == 65001 else f"cp{cpid}"
        try:
            "".encode(candidate)
            codepage = candidate
        except LookupError:
            pass
    storage: dict[str, Any] = {}
    _Writer(codepage).message(md, True, storage)
    mapping = md.props.get(PR_POSTROOM_NAMEID_MAP)
    names: dict[str, list[Any]] = json.loads(mapping) if isinstance(mapping, str) and mapping else {}
    storage[NAMEID] = _nameid(names)
    tree: Tree = storage
    return write_cfb(tree)
