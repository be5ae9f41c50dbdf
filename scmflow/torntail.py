"""Telling a torn tail from damage: the incomplete last record a crash mid-write leaves.

A crash can only leave a strict prefix of one frame at the end of a status file; readers
report and ignore it, and a journal reopened to append cuts it off. Anything else that
does not parse is damage (scmflow/journalreader.py reports it as such).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgpack

from scmflow.statusformat import (
    BIN_LENGTH_WIDTH,
    DIGEST_HEAD,
    FRAME_STARTS,
    TRAILER_ITEM,
    FrameShape,
    frame_parts,
)


def looks_torn(region: bytes, shapes: Sequence[FrameShape]) -> bool:
    """Whether `region` (from a frame start to EOF) is a strict prefix of one frame."""
    shape = next((s for s in shapes if s.start == region[0]), None)
    if shape is None:
        return False
    if len(region) == 1:
        return True
    width = BIN_LENGTH_WIDTH.get(region[1])
    if width is None:
        return False
    head = 2 + width
    if len(region) < head:
        return True
    payload_end = head + int.from_bytes(region[2:head], "big")
    if len(region) >= payload_end + shape.size:
        return False  # the whole frame was written: its digest or MAC part is what is wrong
    if len(region) > head and not _is_map_start(region[head]):
        return False
    for item in range(shape.trailer):
        at = payload_end + item * TRAILER_ITEM
        if len(region) > at and not DIGEST_HEAD.startswith(region[at : at + len(DIGEST_HEAD)]):
            return False
    return not (_ends_with_whole_frame(region, shape) or _holds_frame(region))


def _is_map_start(byte: int) -> bool:
    return 0x80 <= byte <= 0x8F or byte in (0xDE, 0xDF)


def _ends_with_whole_frame(region: bytes, shape: FrameShape) -> bool:
    """A complete frame whose length bytes were changed still ends in its intact digest (and MAC)."""
    tail = shape.size
    if len(region) <= tail:
        return False
    trailer = region[-tail:]
    items = [trailer[i * TRAILER_ITEM : (i + 1) * TRAILER_ITEM] for i in range(shape.trailer)]
    if any(item[: len(DIGEST_HEAD)] != DIGEST_HEAD for item in items):
        return False
    digest = items[0][len(DIGEST_HEAD) :]
    return any(hashlib.sha256(region[start:-tail]).digest() == digest for start in range(2, 7))


def _holds_frame(region: bytes) -> bool:
    """Whether a valid frame starts inside `region`: then it is not the last record."""
    for start in FRAME_STARTS:
        for marker in BIN_LENGTH_WIDTH:
            needle = bytes((start, marker))
            position = region.find(needle, 1)
            while position != -1:
                if _is_valid_frame_at(region, position):
                    return True
                position = region.find(needle, position + 1)
    return False


def _is_valid_frame_at(region: bytes, position: int) -> bool:
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=0)
    unpacker.feed(region[position:])
    try:
        frame = unpacker.unpack()
    except Exception:  # not a frame, whatever the reason
        return False
    parts = frame_parts(frame)
    return parts is not None and hashlib.sha256(parts[0]).digest() == parts[1]
