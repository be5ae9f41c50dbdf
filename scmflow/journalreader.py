"""Reading a status file back: its frames, its hash chain and its MACs checked, damage located.

A crash can only leave an incomplete last record (a torn tail, scmflow/torntail.py), which
readers report and ignore; any other damage breaks a digest, the chain or the framing, and
is reported with the first bad record. The chain shows that a file is whole; only the MACs
show that this machine's key wrote it. Version 1 files are read as unauthenticated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from scmflow.authenticity import AUTHENTIC, INVALID, NO_KEY, UNSIGNED, Authenticity
from scmflow.errors import JournalError
from scmflow.statusformat import (
    EVENT_KINDS,
    FORMAT,
    FORMAT_VERSION,
    FRAME_SHAPES,
    UNSIGNED_FORMAT_VERSION,
    FrameShape,
    decode_payload,
    frame_parts,
    has_magic,
)
from scmflow.statuskey import StatusKey
from scmflow.torntail import looks_torn


class TamperedJournal(JournalError):
    """A status file whose records were changed, reordered or cut in the middle."""

    def __init__(self, path: Path, seq: int, offset: int, reason: str) -> None:
        super().__init__(
            f"{path} is damaged or was tampered with: record {seq} (byte offset {offset}) {reason}"
        )
        self.path = path
        self.seq = seq
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True)
class JournalContents:
    """Every intact record of a status file, plus what was wrong with its tail."""

    path: Path
    header: dict[str, Any]
    records: tuple[dict[str, Any], ...]
    digests: tuple[bytes, ...]
    torn_tail: bool
    torn_offset: int | None
    size: int
    problems: tuple[str, ...]
    authenticity: Authenticity = Authenticity(UNSIGNED)

    @property
    def format_version(self) -> int:
        """The header's status format version."""
        return int(self.header.get("format_version", UNSIGNED_FORMAT_VERSION))

    @property
    def count(self) -> int:
        """Intact records, the header included."""
        return 1 + len(self.records)

    @property
    def clean_size(self) -> int:
        """Bytes covered by intact records (where a torn tail starts)."""
        return self.size if self.torn_offset is None else self.torn_offset


@dataclass(frozen=True)
class VerifyResult:
    """The verdict on a status file: its chain (`ok`: intact) and the MACs of its intact records."""

    ok: bool
    count: int
    first_bad_seq: int | None
    message: str
    first_bad_offset: int | None = None
    torn_tail: bool = False
    authenticity: Authenticity = Authenticity(UNSIGNED)

    @property
    def authentic(self) -> bool:
        """Whether the chain is intact and every MAC checks: the file is as this key wrote it."""
        return self.ok and self.authenticity.ok


def read_journal(path: Path, *, key: StatusKey | None = None) -> JournalContents:
    """Read and verify a status file; a torn last record is reported, any other damage raises.

    The MACs are checked with `key`; the verdict is the result's `authenticity`.
    """
    path = Path(path)
    data = _read_bytes(path)
    scan = _scan(path, data)
    if scan.damage is not None:
        raise TamperedJournal(path, *scan.damage)
    if not scan.payloads:
        raise JournalError(f"{path} holds no complete header: it was cut off while being created")
    problems: list[str] = []
    if scan.torn_offset is not None:
        problems.append(
            f"the last record (seq {len(scan.payloads)}, byte offset {scan.torn_offset}, "
            f"{len(data) - scan.torn_offset} bytes) is incomplete, left by an interrupted write; "
            "it was ignored"
        )
    for record in scan.payloads[1:]:
        kind = record.get("kind")
        if kind not in EVENT_KINDS:
            problems.append(f"record {record.get('seq')} has an unknown kind {kind!r}")
    return JournalContents(
        path=path,
        header=scan.payloads[0],
        records=tuple(scan.payloads[1:]),
        digests=tuple(scan.digests),
        torn_tail=scan.torn_offset is not None,
        torn_offset=scan.torn_offset,
        size=len(data),
        problems=tuple(problems),
        authenticity=_authenticity(scan, key),
    )


def verify_journal(path: Path, *, key: StatusKey | None = None) -> VerifyResult:
    """Check every record's digest, the chain, and the intact records' MACs with `key`.

    Raises only for files that are not status files.
    """
    path = Path(path)
    data = _read_bytes(path)
    scan = _scan(path, data)
    count = len(scan.payloads)
    authenticity = _authenticity(scan, key)
    if scan.damage is not None:
        seq, offset, reason = scan.damage
        message = str(TamperedJournal(path, seq, offset, reason))
        return VerifyResult(False, count, seq, message, offset, authenticity=authenticity)
    if scan.torn_offset is not None:
        message = (
            f"{path}: {count} records intact; the last record (seq {count}, byte offset "
            f"{scan.torn_offset}) is incomplete, left by an interrupted write"
        )
        return VerifyResult(False, count, count, message, scan.torn_offset, True, authenticity)
    return VerifyResult(True, count, None, f"OK: {count} records, chain intact", authenticity=authenticity)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise JournalError(f"{path} is a directory, not an scmflow upgrade status file") from None
    except OSError as exc:
        raise JournalError(f"cannot read status file {path}: {exc.strerror or exc}") from exc


# --- reading frames -----------------------------------------------------------------


@dataclass
class _Scan:
    payloads: list[dict[str, Any]]
    digests: list[bytes]
    raw: list[bytes] = field(default_factory=list)  # each payload's bytes, for the MACs
    macs: list[bytes | None] = field(default_factory=list)
    damage: tuple[int, int, str] | None = None
    torn_offset: int | None = None

    @property
    def version(self) -> int | None:
        """The header's format version, once the header was read."""
        if not self.payloads:
            return None
        version = self.payloads[0].get("format_version")
        return version if isinstance(version, int) else None

    def shapes(self) -> list[FrameShape]:
        """The frame shapes the next record may have: its file's, or any before the header."""
        version = self.version
        return [FRAME_SHAPES[version]] if version in FRAME_SHAPES else list(FRAME_SHAPES.values())


def _scan(path: Path, data: bytes) -> _Scan:
    """Walk the frames; stop at the first damage or at a torn tail."""
    if not data:
        raise JournalError(f"{path} is not an scmflow upgrade status file (it is empty)")
    scan = _Scan([], [])
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=0)
    unpacker.feed(data)
    offset = 0
    while offset < len(data):
        seq = len(scan.payloads)
        try:
            frame = unpacker.unpack()
        except msgpack.OutOfData:
            if looks_torn(data[offset:], scan.shapes()):
                if seq == 0 and not has_magic(data):
                    raise _not_status_file(path) from None
                scan.torn_offset = offset
            else:
                _damaged(scan, path, data, seq, offset, "is cut short or its framing was changed")
            return scan
        except Exception:  # mangled bytes raise many kinds of errors; all mean damage
            _damaged(scan, path, data, seq, offset, "cannot be parsed")
            return scan
        reason = _accept(scan, path, data, seq, frame)
        if reason is not None:
            scan.damage = (seq, offset, reason)
            return scan
        offset = unpacker.tell()
    return scan


def _authenticity(scan: _Scan, key: StatusKey | None) -> Authenticity:
    """Whether the intact records' MACs check with `key` (the first that does not is named)."""
    named = scan.payloads[0].get("key_id") if scan.payloads else None
    file_key_id = named if isinstance(named, str) else None
    if not scan.payloads or scan.version not in FRAME_SHAPES or FRAME_SHAPES[scan.version].trailer < 2:
        return Authenticity(UNSIGNED)
    if key is None:
        return Authenticity(NO_KEY, file_key_id=file_key_id)
    for seq, (payload, mac) in enumerate(zip(scan.raw, scan.macs, strict=True)):
        if mac is None or not key.verifies(payload, mac):
            return Authenticity(INVALID, seq, key, file_key_id)
    return Authenticity(AUTHENTIC, None, key, file_key_id)


def _damaged(scan: _Scan, path: Path, data: bytes, seq: int, offset: int, reason: str) -> None:
    # Damage before a header was read is only "tampering" if the file was ever ours.
    if seq == 0 and not has_magic(data):
        raise _not_status_file(path)
    scan.damage = (seq, offset, reason)


def _accept(scan: _Scan, path: Path, data: bytes, seq: int, frame: Any) -> str | None:
    """Append the frame's payload to `scan`, or say what is wrong with it."""
    parts = frame_parts(frame)
    if parts is None:
        if seq == 0 and not has_magic(data):
            raise _not_status_file(path)
        return "is not a [payload, digest(, mac)] frame"
    payload_bytes, digest, mac = parts
    payload = decode_payload(payload_bytes)
    intact = hashlib.sha256(payload_bytes).digest() == digest
    if seq == 0:
        reason = _check_stored_header(path, payload, intact)
    else:
        reason = _check_stored_record(scan, seq, payload, intact)
    if reason is None:
        assert payload is not None  # both checks refuse a missing payload
        reason = _check_frame_shape(payload if seq == 0 else scan.payloads[0], mac)
    if reason is None:
        assert payload is not None
        scan.payloads.append(payload)
        scan.digests.append(digest)
        scan.raw.append(payload_bytes)
        scan.macs.append(mac)
    return reason


def _check_frame_shape(header: Mapping[str, Any], mac: bytes | None) -> str | None:
    """Whether the frame has a MAC exactly when its file's format version has them."""
    signed = header.get("format_version", UNSIGNED_FORMAT_VERSION) >= FORMAT_VERSION
    if signed and mac is None:
        return "has no MAC, which every record of a version 2 file carries"
    if not signed and mac is not None:
        return "carries a MAC, which no record of a version 1 file has"
    return None


def _check_stored_header(path: Path, payload: dict[str, Any] | None, intact: bool) -> str | None:
    ours = payload is not None and payload.get("format") == FORMAT
    if not ours:
        if intact:
            raise _not_status_file(path)
        return "does not match its digest"
    assert payload is not None
    version = payload.get("format_version")
    # Checked before the digest: a newer format may also digest differently.
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise JournalError(
            f"{path} was written by a newer scmflow (status format version {version}; "
            f"this scmflow reads up to version {FORMAT_VERSION})"
        )
    if not intact:
        return "does not match its digest"
    if not isinstance(version, int) or version < 1:
        raise JournalError(f"{path} has an unsupported status format version {version!r}")
    if payload.get("seq") != 0:
        return "is not a header (seq is not 0)"
    return None


def _check_stored_record(
    scan: _Scan, seq: int, payload: dict[str, Any] | None, intact: bool
) -> str | None:
    if not intact:
        return "does not match its digest"
    if payload is None:
        return "holds no record"
    if payload.get("seq") != seq:
        return f"says it is record {payload.get('seq')!r} (records were removed or reordered)"
    if payload.get("prev") != scan.digests[-1]:
        return f"does not chain to record {seq - 1} (a record before it was changed or replaced)"
    return None


def _not_status_file(path: Path) -> JournalError:
    return JournalError(f"{path} is not an scmflow upgrade status file")
