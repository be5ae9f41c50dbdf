"""The status file's on-disk format: its name, its frames and what a record may hold.

On disk every record is one msgpack array `[payload, digest, mac]`: `payload` is a packed
map, `digest` its sha256 and `mac` its HMAC-SHA256 under the control machine's status key
(scmflow/statuskey.py). Record 0 is the header; every later payload carries its `seq`
and `prev`, the digest of the record before it. Format version 1 frames are
`[payload, digest]`, without a MAC. See docs/status-file.md for the format.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack

from scmflow.errors import JournalError
from scmflow.statuskey import StatusKey

FORMAT = "scmflow-status"
FORMAT_VERSION = 2  # the newest this scmflow reads and writes: records carry a MAC
UNSIGNED_FORMAT_VERSION = 1  # records without a MAC: older files, and journals given no key
FILE_PREFIX = "upgrade_status_"
NAME_TIME_FORMAT = "%Y-%m-%d-%H:%M:%S"
# `probe`: what resume found on a pair's host before redoing it (its version and nodes then)
# `hook`: an operator hook run for a pair (phase, argv, exit code, duration, output tail)
EVENT_KINDS = frozenset({"begin", "transition", "fail", "note", "run", "probe", "hook"})
PAIR_KINDS = frozenset({"begin", "transition", "fail"})

# Keys the journal sets itself; a caller passing them would corrupt the chain's meaning.
_EVENT_RESERVED = frozenset({"seq", "time", "epoch", "prev"})
_HEADER_RESERVED = frozenset({"format", "format_version", "seq", "time", "epoch", "prev", "key_id"})
_SECRET_WORDS = ("password", "passwd", "secret", "token")
DIGEST_SIZE = 32
DIGEST_HEAD = b"\xc4\x20"  # msgpack bin8 of 32 bytes: the head of a digest and of a MAC
TRAILER_ITEM = len(DIGEST_HEAD) + DIGEST_SIZE
BIN_LENGTH_WIDTH = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_MAGIC_WINDOW = 64


@dataclass(frozen=True)
class FrameShape:
    """How the frames of one format version look: msgpack fixarray head, 32-byte items after the payload."""

    start: int
    trailer: int  # digest, then MAC

    @property
    def size(self) -> int:
        """Bytes after the payload."""
        return self.trailer * TRAILER_ITEM


FRAME_SHAPES = {1: FrameShape(0x92, 1), 2: FrameShape(0x93, 2)}
FRAME_STARTS = frozenset(shape.start for shape in FRAME_SHAPES.values())


def format_time(epoch: float) -> str:
    """UTC ISO-8601 with milliseconds, e.g. `2024-05-01T08:00:00.123Z`."""
    stamp = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def find_secret_key(value: Any, where: str = "") -> str | None:
    """Path of the first key named like a secret (password, token, ...) at any depth."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if any(word in str(key).lower() for word in _SECRET_WORDS):
                return path
            found = find_secret_key(item, path)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = find_secret_key(item, f"{where}[{index}]")
            if found is not None:
                return found
    return None


# --- checks on what is written ------------------------------------------------------


def check_header(header: Mapping[str, Any]) -> None:
    """JournalError unless `header` may be written as a header: a mapping, no secret, no reserved key."""
    if not isinstance(header, Mapping):
        raise JournalError("the status file header must be a mapping")
    secret = find_secret_key(header)
    if secret is not None:
        raise JournalError(f"refusing to write a secret into the status file (header key {secret})")
    reserved = sorted(_HEADER_RESERVED.intersection(header))
    if reserved:
        raise JournalError(f"header keys {', '.join(reserved)} are set by the journal itself")


def check_event(event: Mapping[str, Any]) -> None:
    """JournalError unless `event` may be appended: a known kind, its fields, no secret, no reserved key."""
    if not isinstance(event, Mapping):
        raise JournalError("a status file record must be a mapping")
    kind = event.get("kind")
    if kind not in EVENT_KINDS:
        raise JournalError(f"unknown status record kind {kind!r}")
    reserved = sorted(_EVENT_RESERVED.intersection(event))
    if reserved:
        raise JournalError(f"record keys {', '.join(reserved)} are set by the journal itself")
    if kind in PAIR_KINDS:
        for key in ("host", "service", "trigger"):
            if not isinstance(event.get(key), str):
                raise JournalError(f"a '{kind}' record needs '{key}' as a string")
        if kind == "transition" and not isinstance(event.get("dst"), str):
            raise JournalError("a 'transition' record needs 'dst' as a string")
    if kind in ("probe", "hook"):
        for key in ("host", "service"):
            if not isinstance(event.get(key), str):
                raise JournalError(f"a '{kind}' record needs '{key}' as a string")
    secret = find_secret_key(event)
    if secret is not None:
        raise JournalError(f"refusing to write a secret into the status file (record key {secret})")


def encode_record(record: Mapping[str, Any], key: StatusKey | None = None) -> tuple[bytes, bytes]:
    """(digest, frame) of a record: `[payload, digest, mac]` with a key, `[payload, digest]` without."""
    try:
        payload: bytes = msgpack.packb(record, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise JournalError(f"cannot record {record.get('kind', 'header')!s}: {exc}") from exc
    digest = hashlib.sha256(payload).digest()
    parts = [payload, digest] if key is None else [payload, digest, key.mac(payload)]
    frame: bytes = msgpack.packb(parts, use_bin_type=True)
    return digest, frame


# --- frames as read ---------------------------------------------------------------


def frame_parts(frame: Any) -> tuple[bytes, bytes, bytes | None] | None:
    """(payload, digest, mac or None) of a `[payload, digest(, mac)]` frame; None for anything else."""
    if not isinstance(frame, list) or len(frame) not in (2, 3):
        return None
    if not all(isinstance(part, bytes) for part in frame):
        return None
    if any(len(part) != DIGEST_SIZE for part in frame[1:]):
        return None
    return frame[0], frame[1], frame[2] if len(frame) == 3 else None


def decode_payload(payload: bytes) -> dict[str, Any] | None:
    """The record a payload packs, or None when it does not hold a map."""
    try:
        value = msgpack.unpackb(payload, raw=False)
    except Exception:  # any decoding failure means "not a record"
        return None
    return value if isinstance(value, dict) else None


def has_magic(data: bytes) -> bool:
    """Whether the file starts like one of ours: a frame whose payload names our format."""
    framed = data[:1] and data[0] in FRAME_STARTS and data[1:2] and data[1] in BIN_LENGTH_WIDTH
    return bool(framed) and FORMAT.encode() in data[:_MAGIC_WINDOW]
