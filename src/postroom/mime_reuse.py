"""What a message edited after import keeps of its original when `mime` renders it again.

A message that arrived as RFC 5322 and was then edited through its properties (subject, body,
recipients, attachments) is rendered from its properties, and keeps of the original:

* **every header field that no MAPI property owns, in its place** (`merge_headers`): the
  fields rendered from properties (`OWNED`: From, Sender, To, Cc, Bcc, Subject, Message-ID,
  In-Reply-To, Importance, X-Priority, Priority, Disposition-Notification-To, MIME-Version and
  every Content-*) take the place of their first original occurrence, the others stay as
  written (References, Reply-To, List-*, Auto-Submitted, Received, every X-*, repeated and
  8-bit ones alike), and fields the original did not have come last. The original Date stays
  (the author's time), and a field that cannot go out safely (a stray CR, NUL or other line
  break, a line over 998 octets) is left out;
* **the whole original content** (every Content-* field and the body, so a multipart/signed,
  multipart/encrypted or multipart/report structure with it) when the text, the HTML and every
  attachment are as they came: only header fields were edited;
* when attachments were only added, the whole original content as the first part of a
  multipart/mixed, the new attachments after it;
* otherwise **each unedited attachment as its original part** (`reused_parts`): same place,
  name, type, Content-ID and size (an embedded message: same content), so a signature
  (application/pgp-signature, application/pkcs7-signature) or an encrypted part
  (application/pkcs7-mime) goes out as it came; and a multipart/signed or multipart/encrypted
  entity that holds none of the text goes out whole when none of its attachments was edited.
  The text and HTML are rendered again.

The parts are the `email` package's parse of the original, written back by its generator:
their header fields and content lines come out as they went in (line ends made the
transport's; a field written `Name:value` gets a blank after the colon).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.message import EmailMessage, Message

from .mapi.message import MessageData
from .original import attachment_key, header_fields, text_key

__all__ = [
    "OWNED",
    "REUSED",
    "SEALED",
    "WHOLE_BODY",
    "merge_headers",
    "only_added",
    "reused_parts",
    "same_content",
    "sealed_units",
]

#: Header fields rendered from MAPI properties (every Content-* field too).
OWNED = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "subject",
        "message-id",
        "in-reply-to",
        "importance",
        "x-priority",
        "priority",
        "disposition-notification-to",
        "mime-version",
    }
)
#: Entities whose bytes are covered by a signature or are ciphertext: reused whole or not at all.
SEALED = frozenset({"multipart/signed", "multipart/encrypted"})
#: The attribute of a message that keeps its whole original content: the original body's bytes,
#: written as they are after the header block (the generator may not give every byte back).
WHOLE_BODY = "_postroom_whole_body"
#: The attribute that marks a part taken from the original (`mime` leaves it as it is).
REUSED = "_postroom_reused"
_UNSAFE = re.compile(rb"[\r\x00\x0b\x0c\x1c-\x1e]")
_MAX_LINE = 998


def _owned(name: str) -> bool:
    return name in OWNED or name.startswith("content-")


def _safe(field: bytes) -> bool:
    return not _UNSAFE.search(field) and all(len(line) <= _MAX_LINE for line in field.split(b"\n"))


def _as_header(field: bytes) -> tuple[str, str]:
    """(name, value) of a raw field, for `set_raw`: bytes that are not ASCII ride along as
    surrogates, which the generator writes back as the same bytes."""
    name, _, value = field.partition(b":")
    return name.decode("ascii"), value.lstrip(b" \t").decode("ascii", "surrogateescape")


def merge_headers(out: EmailMessage, block: bytes) -> None:
    """Give `out` (rendered from properties) the original's header fields that no property owns,
    in the original's order, with the rendered fields in the place of the ones they replace."""
    generated: dict[str, list[tuple[str, str]]] = {}
    for name, value in out.raw_items():
        generated.setdefault(name.lower(), []).append((name, str(value)))
    result: list[tuple[str, str]] = []
    placed: set[str] = set()
    for name, field in header_fields(block):
        if not name:
            continue
        if _owned(name):
            if name in generated and name not in placed:
                result.extend(generated[name])
                placed.add(name)
        elif _safe(field):
            result.append(_as_header(field))
            placed.add(name)  # the original Date replaces the rendered one
    for name, values in generated.items():
        if name not in placed:
            result.extend(values)
    for name in generated:
        del out[name]
    for name, value in result:
        out.set_raw(name, value)


def same_content(md: MessageData, imported: MessageData) -> bool:
    """Whether `md` has the text, HTML and attachments `imported` (the original converted again) has."""
    if [attachment_key(a) for a in md.attachments] != [attachment_key(a) for a in imported.attachments]:
        return False
    return text_key(md) == text_key(imported)


def only_added(md: MessageData, imported: MessageData) -> bool:
    """Whether `md` is `imported` with attachments added after the ones it came with, and nothing else."""
    count = len(imported.attachments)
    return (
        len(md.attachments) > count
        and text_key(md) == text_key(imported)
        and [attachment_key(a) for a in md.attachments[:count]] == [attachment_key(a) for a in imported.attachments]
    )


def _unedited(md: MessageData, imported: MessageData, i: int) -> bool:
    return (
        i < len(md.attachments)
        and i < len(imported.attachments)
        and attachment_key(md.attachments[i]) == attachment_key(imported.attachments[i])
    )


def sealed_units(root: Message, parts: Sequence[Message | None], bodies: set[int]) -> list[tuple[Message, list[int]]]:
    """Each outermost multipart/signed or multipart/encrypted entity of the parsed original that
    holds no part of the text (`bodies`: ids of the text and HTML parts), with the positions of
    the attachments that came from inside it."""
    index = {id(p): i for i, p in enumerate(parts) if p is not None}
    units: list[tuple[Message, list[int]]] = []

    def walk(node: Message) -> None:
        if node.get_content_type() in SEALED:
            inside = sorted(index[id(p)] for p in node.walk() if id(p) in index)
            if inside and not any(id(p) in bodies for p in node.walk()):
                units.append((node, inside))
            return
        if node.is_multipart():
            for child in node.get_payload():
                if isinstance(child, Message):
                    walk(child)

    walk(root)
    return units


def reused_parts(
    md: MessageData,
    imported: MessageData,
    parts: Sequence[Message | None],
    units: Sequence[tuple[Message, list[int]]] = (),
) -> tuple[dict[int, Message], set[int]]:
    """The original part to send for each attachment of `md` that is as it came (by position),
    marked REUSED, and the attachments a reused signed or encrypted entity already holds: such an
    entity goes out whole, in the place of its first attachment, when none of those was edited."""
    reused: dict[int, Message] = {}
    held: set[int] = set()
    for unit, inside in units:
        if all(_unedited(md, imported, i) for i in inside):
            setattr(unit, REUSED, True)
            reused[inside[0]] = unit
            held.update(inside[1:])
    for i, part in enumerate(parts):
        if i not in reused and i not in held and part is not None and _unedited(md, imported, i):
            setattr(part, REUSED, True)
            reused[i] = part
    return reused, held
