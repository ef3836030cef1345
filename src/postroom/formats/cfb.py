"""A minimal writer of compound files (MS-CFB version 3), for `.msg` export.

olefile reads compound files but cannot make new ones, so postroom writes its own: a tree of
storages (dicts) and streams (bytes) becomes a 512-byte-sector file with its header, FAT (and
DIFAT sectors past 109 FAT sectors), directory, and the mini stream with its mini FAT for streams
under 4096 bytes. Directory siblings form a red-black tree built balanced from the sorted
names (MS-CFB §2.6.4 order: shorter names first, then by upper-cased UTF-16), coloured so that
every path has the same number of black nodes. Timestamps and CLSIDs are left zero, as the
MS-OXMSG streams need neither. The whole file is built in memory: `.msg` files are small.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Union

__all__ = ["Tree", "write_cfb"]

Tree = Mapping[str, Union[bytes, "Tree"]]

SECTOR = 512
MINI = 64
CUTOFF = 4096
FREESECT = 0xFFFFFFFF
ENDOFCHAIN = 0xFFFFFFFE
FATSECT = 0xFFFFFFFD
DIFSECT = 0xFFFFFFFC
NOSTREAM = 0xFFFFFFFF
_PER_SECTOR = SECTOR // 4


@dataclass
class _Entry:
    name: str
    kind: int  # 1 storage, 2 stream, 5 root
    data: bytes = b""
    children: list[_Entry] = field(default_factory=list)
    left: int = NOSTREAM
    right: int = NOSTREAM
    child: int = NOSTREAM
    black: bool = True
    start: int = ENDOFCHAIN
    size: int = 0


def _key(name: str) -> tuple[int, str]:
    return len(name.encode("utf-16-le")) // 2, name.upper()


def _entries(tree: Tree) -> list[_Entry]:
    out: list[_Entry] = []
    for name, value in tree.items():
        if len(name) > 31:
            raise ValueError(f"compound file names have at most 31 characters: {name!r}")
        if isinstance(value, bytes | bytearray):
            out.append(_Entry(name, 2, bytes(value)))
        else:
            out.append(_Entry(name, 1, children=_entries(value)))
    return out


def _flatten(root: _Entry) -> list[_Entry]:
    """Every entry in directory order (the root first), with sibling trees and child links set."""
    order = [root]
    pending = [root]
    while pending:
        parent = pending.pop(0)
        kids = sorted(parent.children, key=lambda e: _key(e.name))
        if not kids:
            continue
        base = len(order)
        order.extend(kids)
        pending.extend(kids)
        parent.child = _link(kids, base, 0, len(kids) - 1, 0, _min_leaf_depth(len(kids)))
    return order


def _link(kids: list[_Entry], base: int, lo: int, hi: int, level: int, depth: int) -> int:
    """The root of a balanced tree of kids[lo..hi] (their directory IDs start at `base`)."""
    if lo > hi:
        return NOSTREAM
    mid = (lo + hi) // 2
    node = kids[mid]
    node.black = level <= depth  # the deepest, incomplete level red: every path has as many blacks
    node.left = _link(kids, base, lo, mid - 1, level + 1, depth)
    node.right = _link(kids, base, mid + 1, hi, level + 1, depth)
    return base + mid


def _min_leaf_depth(n: int) -> int:
    """The deepest level that a middle-split tree of n nodes fills completely."""
    level, full = 0, 1
    while full * 2 + 1 <= n:
        full = full * 2 + 1
        level += 1
    return level


def _chain(fat: list[int], start: int, count: int) -> None:
    for n in range(count):
        fat[start + n] = start + n + 1 if n + 1 < count else ENDOFCHAIN


def _pad(data: bytes, size: int) -> bytes:
    return data + b"\0" * (-len(data) % size)


def write_cfb(tree: Tree) -> bytes:
    """A compound file holding `tree` (see the module docstring)."""
    root = _Entry("Root Entry", 5, children=_entries(tree))
    order = _flatten(root)
    # Small streams go to the mini stream, big ones to sectors of their own.
    mini = bytearray()
    minifat: list[int] = []
    big: list[_Entry] = []
    for entry in order:
        if entry.kind != 2:
            continue
        entry.size = len(entry.data)
        if entry.size == 0:
            entry.start = ENDOFCHAIN
        elif entry.size < CUTOFF:
            entry.start = len(minifat)
            count = -(-entry.size // MINI)
            minifat.extend(range(entry.start + 1, entry.start + count))
            minifat.append(ENDOFCHAIN)
            mini += _pad(entry.data, MINI)
        else:
            big.append(entry)
    sectors: list[bytes] = []
    fat: list[int] = []

    def place(data: bytes) -> int:
        if not data:
            return ENDOFCHAIN
        start = len(sectors)
        padded = _pad(data, SECTOR)
        count = len(padded) // SECTOR
        sectors.extend(padded[n * SECTOR : (n + 1) * SECTOR] for n in range(count))
        fat.extend([0] * count)
        _chain(fat, start, count)
        return start

    for entry in big:
        entry.start = place(entry.data)
    root.start = place(bytes(mini))
    root.size = len(mini)
    minifat_bytes = b"".join(struct.pack("<I", v) for v in minifat)
    first_minifat = place(minifat_bytes)
    minifat_sectors = -(-len(minifat_bytes) // SECTOR)
    unused = _Entry("", 0, black=False, start=0)
    first_dir = place(b"".join(_dir_entry(e) for e in [*order, *[unused] * (-len(order) % 4)]))
    # The FAT covers every sector, its own and the DIFAT's included: grow until it fits.
    data_sectors = len(sectors)
    fat_count = difat_count = 0
    while True:
        need = -(-(data_sectors + fat_count + difat_count) // _PER_SECTOR)
        need_difat = 0 if need <= 109 else -(-(need - 109) // (_PER_SECTOR - 1))
        if need == fat_count and need_difat == difat_count:
            break
        fat_count, difat_count = need, need_difat
    fat_positions = list(range(data_sectors, data_sectors + fat_count))
    difat_positions = list(range(data_sectors + fat_count, data_sectors + fat_count + difat_count))
    fat.extend([FATSECT] * fat_count + [DIFSECT] * difat_count)
    fat.extend([FREESECT] * (fat_count * _PER_SECTOR - len(fat)))
    fat_bytes = b"".join(struct.pack("<I", v) for v in fat)
    sectors.extend(fat_bytes[n * SECTOR : (n + 1) * SECTOR] for n in range(fat_count))
    rest = fat_positions[109:]
    for n, _ in enumerate(difat_positions):
        chunk = rest[n * (_PER_SECTOR - 1) : (n + 1) * (_PER_SECTOR - 1)]
        chunk += [FREESECT] * (_PER_SECTOR - 1 - len(chunk))
        nxt = difat_positions[n + 1] if n + 1 < len(difat_positions) else ENDOFCHAIN
        sectors.append(b"".join(struct.pack("<I", v) for v in [*chunk, nxt]))
    head_difat = fat_positions[:109] + [FREESECT] * (109 - min(109, fat_count))
    header = struct.pack(
        "<8s16sHHHHH6sIIIIIIIII",
        bytes.fromhex("D0CF11E0A1B11AE1"),
        b"\0" * 16,
        0x003E,
        0x0003,
        0xFFFE,
        9,
        6,
        b"\0" * 6,
        0,  # directory sectors: always 0 in version 3
        fat_count,
        first_dir,
        0,
        CUTOFF,
        first_minifat if minifat else ENDOFCHAIN,
        minifat_sectors,
        difat_positions[0] if difat_positions else ENDOFCHAIN,
        difat_count,
    ) + b"".join(struct.pack("<I", v) for v in head_difat)
    return header + b"".join(sectors)


def _dir_entry(e: _Entry) -> bytes:
    name = (e.name + "\0").encode("utf-16-le") if e.kind else b""
    return struct.pack(
        "<64sHBBIII16sIQQIQ",
        name,
        len(name),
        e.kind,
        1 if e.black else 0,
        e.left,
        e.right,
        e.child,
        b"\0" * 16,
        0,
        0,
        0,
        e.start if e.kind != 1 else 0,
        e.size,
    )
