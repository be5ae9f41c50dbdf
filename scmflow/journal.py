"""The upgrade-status file: an append-only, fsynced, hash-chained, authenticated msgpack journal.

On disk every record is one msgpack array `[payload, digest, mac]`: `payload` is a packed
map, `digest` its sha256 and `mac` its HMAC-SHA256 under the control machine's status key
(scmflow/statuskey.py). Record 0 is the header; every later payload carries its `seq`
and `prev`, the digest of the record before it. A crash can only leave an incomplete
last record (a torn tail), which readers report and ignore; any other damage breaks a
digest, the chain or the framing, and is reported with the first bad record. The chain
shows that a file is whole; only the MACs show that this machine's key wrote it.

Format version 1 frames are `[payload, digest]`, without a MAC. They are still read, as
unauthenticated, and a journal given no key still writes them (the local demo).
See docs/status-file.md for the format.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import msgpack

from scmflow.errors import JournalError, LockError
from scmflow.lifecycle import Lifecycle, load_lifecycle
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
_DIGEST_SIZE = 32
_DIGEST_HEAD = b"\xc4\x20"  # msgpack bin8 of 32 bytes: the head of a digest and of a MAC
_TRAILER_ITEM = len(_DIGEST_HEAD) + _DIGEST_SIZE
_BIN_LENGTH_WIDTH = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_MAGIC_WINDOW = 64
_MAX_NAME_SUFFIX = 1000

Clock = Callable[[], float]

# What a file's records say about who wrote them (Authenticity.state).
AUTHENTIC = "authentic"  # every MAC checks with the key given
INVALID = "invalid"  # a MAC does not: the file was changed, or another key wrote it
NO_KEY = "no key"  # the records carry MACs but no key was given to check them with
UNSIGNED = "unsigned"  # format version 1: the records carry no MAC


@dataclass(frozen=True)
class _Shape:
    """How the frames of one format version look: msgpack fixarray head, 32-byte items after the payload."""

    start: int
    trailer: int  # digest, then MAC

    @property
    def size(self) -> int:
        """Bytes after the payload."""
        return self.trailer * _TRAILER_ITEM


_SHAPES = {1: _Shape(0x92, 1), 2: _Shape(0x93, 2)}
_FRAME_STARTS = frozenset(shape.start for shape in _SHAPES.values())


@dataclass(frozen=True)
class Authenticity:
    """Whether a status file's intact records were written by the holder of a key."""

    state: str
    first_bad_seq: int | None = None
    key: StatusKey | None = None  # the key they were checked with
    file_key_id: str | None = None  # the key id the header names (anyone could write it)

    @property
    def ok(self) -> bool:
        """Whether every record's MAC checks with the key."""
        return self.state == AUTHENTIC

    @property
    def reason(self) -> str:
        """What makes the file authentic or not, as one clause."""
        named = f"the file names status key {self.file_key_id}" if self.file_key_id else ""
        if self.state == AUTHENTIC:
            assert self.key is not None
            return f"every record's MAC is valid with {self.key.where}"
        if self.state == UNSIGNED:
            return "it is in status format version 1, whose records carry no MAC"
        if self.state == NO_KEY:
            return f"there is no status key to check its MACs with ({named or 'it names no key'})"
        assert self.key is not None
        where = f"record {self.first_bad_seq}'s MAC is not valid with {self.key.where}"
        if self.file_key_id and self.file_key_id != self.key.key_id:
            return f"{where}; {named}: another control machine's key wrote it, or it was rewritten"
        return f"{where}: it was changed after it was written"


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


@dataclass(frozen=True)
class PairReplay:
    """One pair's state as the status file tells it."""

    host: str
    service: str
    old_version: str | None
    new_version: str | None
    state: str
    in_flight: str | None
    last_error: str | None
    history: tuple[dict[str, Any], ...]
    in_plan: bool = True
    # The action of the run in which the pair was last rolled back: "rollback" when an
    # operator asked for it, "upgrade" or "resume" when a failure did; None if never.
    rolled_back_by: str | None = None
    # The nodes (as in the plan's records) the last `probe` found, when resume re-read them.
    probed_nodes: tuple[dict[str, Any], ...] | None = None

    @property
    def key(self) -> tuple[str, str]:
        """(host, service)."""
        return (self.host, self.service)

    @property
    def never_started(self) -> bool:
        """Whether no step of this pair ever began: it is as the upgrade found it."""
        return not any(r.get("kind") in PAIR_KINDS for r in self.history)

    @property
    def started(self) -> float | None:
        """Epoch of the pair's first `begin`."""
        return next((_epoch(r) for r in self.history if r.get("kind") == "begin"), None)

    @property
    def finished(self) -> float | None:
        """Epoch of the pair's last `transition` or `fail`."""
        settled = [r for r in self.history if r.get("kind") in ("transition", "fail")]
        return _epoch(settled[-1]) if settled else None


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


class Journal:
    """An open status file that records are appended to, one fsynced record at a time.

    With a key, every record carries its MAC (format version 2); without one, none
    (version 1). A file keeps the version its header was written in.
    """

    def __init__(
        self,
        path: Path,
        fd: int,
        header: dict[str, Any],
        *,
        seq: int,
        last_digest: bytes,
        clock: Clock,
        key: StatusKey | None = None,
    ) -> None:
        self.path = path
        self.header = header
        self._fd: int | None = fd
        self._seq = seq
        self._last_digest = last_digest
        self._clock = clock
        self._key = key
        self._broken: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def create(
        cls,
        status_dir: Path,
        header: Mapping[str, Any],
        *,
        now: datetime | None = None,
        clock: Clock = time.time,
        key: StatusKey | None = None,
    ) -> Journal:
        """Create a new status file in `status_dir` and write its header (record 0).

        With `key`, the file is in format version 2 and its header names the key's id;
        without, it is an unauthenticated version 1 file.
        """
        _check_header(header)
        epoch = now.timestamp() if now is not None else float(clock())
        status_dir = Path(status_dir)
        _ensure_status_dir(status_dir)
        path, fd = _create_exclusive(status_dir, datetime.fromtimestamp(epoch))
        record: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION if key is not None else UNSIGNED_FORMAT_VERSION,
            "seq": 0,
            "time": format_time(epoch),
            "epoch": epoch,
            **({"key_id": key.key_id} if key is not None else {}),
            **header,
        }
        try:
            _lock_file(fd, path)
            digest, frame = _encode(record, key)
            _write_all(fd, frame)
            os.fsync(fd)
            _fsync_dir(status_dir)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return cls(path, fd, record, seq=0, last_digest=digest, clock=clock, key=key)

    @classmethod
    def open_for_append(
        cls,
        path: Path,
        *,
        clock: Clock = time.time,
        key: StatusKey | None = None,
        check: Callable[[JournalContents], None] | None = None,
    ) -> Journal:
        """Open an existing status file to continue it (resume, rollback); repairs a torn tail.

        `check` sees what was read, under the file's lock and before anything is written
        (the torn tail's repair included); whatever it raises closes the file again. A
        version 2 file needs `key` to sign what is appended.
        """
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            raise JournalError(f"cannot open status file {path}: {exc.strerror or exc}") from exc
        try:
            _lock_file(fd, path)
            contents = read_journal(path, key=key)
            if check is not None:
                check(contents)
            signed = contents.format_version >= FORMAT_VERSION
            if signed and key is None:
                raise JournalError(
                    f"{path} is in status format version {contents.format_version}: "
                    "appending to it needs the status key"
                )
            journal = cls(
                path,
                fd,
                contents.header,
                seq=contents.count - 1,
                last_digest=contents.digests[-1],
                clock=clock,
                key=key if signed else None,
            )
            if contents.torn_tail:
                _truncate(fd, path, contents.clean_size)
                journal.append(
                    {
                        "kind": "note",
                        "detail": {
                            "message": "removed the incomplete last record left by an interrupted write",
                            "torn_offset": contents.clean_size,
                            "torn_bytes": contents.size - contents.clean_size,
                        },
                    }
                )
        except BaseException:
            os.close(fd)
            raise
        return journal

    @property
    def seq(self) -> int:
        """Seq of the last record written."""
        return self._seq

    @property
    def last_digest(self) -> bytes:
        """Digest of the last record written; the next record's `prev`."""
        return self._last_digest

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._fd is None

    def append(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Append one event record; it is on disk (fsynced) when this returns."""
        _check_event(event)
        with self._lock:
            fd = self._writable_fd()
            epoch = float(self._clock())
            record: dict[str, Any] = {
                "seq": self._seq + 1,
                "time": format_time(epoch),
                "epoch": epoch,
                "prev": self._last_digest,
                **event,
            }
            digest, frame = _encode(record, self._key)
            self._write_record(fd, frame)
            self._seq += 1
            self._last_digest = digest
        return record

    def close(self) -> None:
        """Release the file; appending afterwards is an error."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _writable_fd(self) -> int:
        if self._fd is None:
            raise JournalError(f"status file {self.path} is closed")
        if self._broken is not None:
            raise JournalError(f"status file {self.path} cannot be appended to: {self._broken}")
        return self._fd

    def _write_record(self, fd: int, frame: bytes) -> None:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, frame)
            os.fsync(fd)
        except OSError as exc:
            # A partial record followed by later ones would read as tampering: cut it off.
            try:
                os.ftruncate(fd, size)
            except OSError:
                self._broken = f"a failed write could not be undone ({exc.strerror or exc})"
            raise JournalError(
                f"cannot write to status file {self.path}: {exc.strerror or exc}"
            ) from exc


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


def replay(
    contents: JournalContents, lifecycle: Lifecycle | None = None
) -> dict[tuple[str, str], PairReplay]:
    """Each planned pair's committed state, action in flight and history, in plan order.

    A pair starts in the lifecycle's initial state (states/pair.toml, loaded when not
    given), takes the `dst` of each `transition` record and the failed state on `fail`.
    """
    lifecycle = lifecycle or load_lifecycle()
    pairs: dict[tuple[str, str], _PairProgress] = {}
    for entry in _plan_entries(contents):
        key = (entry["host"], entry["service"])
        pairs[key] = _PairProgress(
            lifecycle, entry["host"], entry["service"], entry.get("old_version"), entry.get("new_version")
        )
    action: str | None = None
    for record in contents.records:
        if record.get("kind") == "run":
            detail = record.get("detail")
            if isinstance(detail, Mapping) and detail.get("result") == "started":
                action = str(detail.get("action"))
        host, service = record.get("host"), record.get("service")
        if not isinstance(host, str) or not isinstance(service, str):
            continue
        progress = pairs.get((host, service))
        if progress is None:
            progress = _PairProgress(lifecycle, host, service, None, None, in_plan=False)
            pairs[(host, service)] = progress
        progress.apply(record, action)
    return {key: progress.freeze() for key, progress in pairs.items()}


class _PairProgress:
    """Mutable accumulator behind `replay`."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        host: str,
        service: str,
        old_version: Any,
        new_version: Any,
        *,
        in_plan: bool = True,
    ) -> None:
        self.host = host
        self.service = service
        self.old_version = None if old_version is None else str(old_version)
        self.new_version = None if new_version is None else str(new_version)
        self.in_plan = in_plan
        self.lifecycle = lifecycle
        self.state = lifecycle.initial
        self.in_flight: str | None = None
        self.last_error: str | None = None
        self.history: list[dict[str, Any]] = []
        self.rolled_back_by: str | None = None
        self.probed_nodes: tuple[dict[str, Any], ...] | None = None

    def apply(self, record: dict[str, Any], action: str | None) -> None:
        self.history.append(record)
        kind = record.get("kind")
        if kind == "begin":
            self.in_flight = str(record.get("trigger"))
        elif kind == "transition":
            self.state = str(record.get("dst"))
            self.in_flight = None
            if self.state == self.lifecycle.rolled_back:
                self.rolled_back_by = action
        elif kind == "probe":
            self._apply_probe(record.get("detail"))
        elif kind == "fail":
            self.state = self.lifecycle.failed
            self.in_flight = None
            self.last_error = error_text(record.get("detail"))

    def freeze(self) -> PairReplay:
        return PairReplay(
            host=self.host,
            service=self.service,
            old_version=self.old_version,
            new_version=self.new_version,
            state=self.state,
            in_flight=self.in_flight,
            last_error=self.last_error,
            history=tuple(self.history),
            in_plan=self.in_plan,
            rolled_back_by=self.rolled_back_by,
            probed_nodes=self.probed_nodes,
        )

    def _apply_probe(self, detail: Any) -> None:
        nodes = detail.get("nodes") if isinstance(detail, Mapping) else None
        if isinstance(nodes, list) and all(_valid_node(n) for n in nodes):
            self.probed_nodes = tuple(dict(n) for n in nodes)


def _valid_node(node: Any) -> bool:
    """A node record as the plan writes it: a port (int or None) and whether it ran."""
    if not isinstance(node, Mapping) or not isinstance(node.get("running"), bool):
        return False
    port = node.get("port")
    return port is None or (isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535)


def error_text(detail: Any) -> str:
    """The error message of a `fail` record's detail (a dict with `error`, or a string)."""
    if isinstance(detail, Mapping):
        error = detail.get("error")
        return str(error) if error is not None else str(dict(detail))
    return "" if detail is None else str(detail)


def _plan_entries(contents: JournalContents) -> list[dict[str, Any]]:
    plan = contents.header.get("plan", [])
    if not isinstance(plan, list):
        raise JournalError(f"{contents.path}: the header's plan is not a list")
    for index, entry in enumerate(plan):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("host"), str)
            and isinstance(entry.get("service"), str)
        ):
            raise JournalError(f"{contents.path}: plan entry {index} has no host and service")
    return plan


def _epoch(record: Mapping[str, Any]) -> float | None:
    value = record.get("epoch")
    return float(value) if isinstance(value, int | float) else None


# --- checks on what is written ------------------------------------------------------


def _check_header(header: Mapping[str, Any]) -> None:
    if not isinstance(header, Mapping):
        raise JournalError("the status file header must be a mapping")
    secret = find_secret_key(header)
    if secret is not None:
        raise JournalError(f"refusing to write a secret into the status file (header key {secret})")
    reserved = sorted(_HEADER_RESERVED.intersection(header))
    if reserved:
        raise JournalError(f"header keys {', '.join(reserved)} are set by the journal itself")


def _check_event(event: Mapping[str, Any]) -> None:
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


def _encode(record: Mapping[str, Any], key: StatusKey | None = None) -> tuple[bytes, bytes]:
    """(digest, frame) of a record: `[payload, digest, mac]` with a key, `[payload, digest]` without."""
    try:
        payload: bytes = msgpack.packb(record, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise JournalError(f"cannot record {record.get('kind', 'header')!s}: {exc}") from exc
    digest = hashlib.sha256(payload).digest()
    parts = [payload, digest] if key is None else [payload, digest, key.mac(payload)]
    frame: bytes = msgpack.packb(parts, use_bin_type=True)
    return digest, frame


# --- the file system --------------------------------------------------------------


def _ensure_status_dir(status_dir: Path) -> None:
    if status_dir.is_dir():
        return
    try:
        status_dir.parent.mkdir(parents=True, exist_ok=True)
        status_dir.mkdir(mode=0o700)
        os.chmod(status_dir, 0o700)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        if not status_dir.is_dir():
            raise JournalError(f"status dir {status_dir} exists and is not a directory") from None
    except OSError as exc:
        raise JournalError(f"cannot create status dir {status_dir}: {exc.strerror or exc}") from exc


def _create_exclusive(status_dir: Path, local: datetime) -> tuple[Path, int]:
    base = FILE_PREFIX + local.strftime(NAME_TIME_FORMAT)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
    for number in range(1, _MAX_NAME_SUFFIX + 1):
        path = status_dir / (base if number == 1 else f"{base}-{number}")
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise JournalError(f"cannot create status file {path}: {exc.strerror or exc}") from exc
        os.fchmod(fd, 0o600)
        return path, fd
    raise JournalError(f"too many status files named {base} in {status_dir}")


def _lock_file(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise LockError(f"status file {path} is in use by another scmflow run") from exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _truncate(fd: int, path: Path, size: int) -> None:
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError as exc:
        raise JournalError(f"cannot cut the torn tail of {path}: {exc.strerror or exc}") from exc


def _fsync_dir(directory: Path) -> None:
    # The new file's name must survive a crash as well as its bytes.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

    def shapes(self) -> list[_Shape]:
        """The frame shapes the next record may have: its file's, or any before the header."""
        version = self.version
        return [_SHAPES[version]] if version in _SHAPES else list(_SHAPES.values())


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
            if _looks_torn(data[offset:], scan.shapes()):
                if seq == 0 and not _has_magic(data):
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
    if not scan.payloads or scan.version not in _SHAPES or _SHAPES[scan.version].trailer < 2:
        return Authenticity(UNSIGNED)
    if key is None:
        return Authenticity(NO_KEY, file_key_id=file_key_id)
    for seq, (payload, mac) in enumerate(zip(scan.raw, scan.macs, strict=True)):
        if mac is None or not key.verifies(payload, mac):
            return Authenticity(INVALID, seq, key, file_key_id)
    return Authenticity(AUTHENTIC, None, key, file_key_id)


def _damaged(scan: _Scan, path: Path, data: bytes, seq: int, offset: int, reason: str) -> None:
    # Damage before a header was read is only "tampering" if the file was ever ours.
    if seq == 0 and not _has_magic(data):
        raise _not_status_file(path)
    scan.damage = (seq, offset, reason)


def _frame_parts(frame: Any) -> tuple[bytes, bytes, bytes | None] | None:
    """(payload, digest, mac or None) of a `[payload, digest(, mac)]` frame; None for anything else."""
    if not isinstance(frame, list) or len(frame) not in (2, 3):
        return None
    if not all(isinstance(part, bytes) for part in frame):
        return None
    if any(len(part) != _DIGEST_SIZE for part in frame[1:]):
        return None
    return frame[0], frame[1], frame[2] if len(frame) == 3 else None


def _accept(scan: _Scan, path: Path, data: bytes, seq: int, frame: Any) -> str | None:
    """Append the frame's payload to `scan`, or say what is wrong with it."""
    parts = _frame_parts(frame)
    if parts is None:
        if seq == 0 and not _has_magic(data):
            raise _not_status_file(path)
        return "is not a [payload, digest(, mac)] frame"
    payload_bytes, digest, mac = parts
    payload = _decode_payload(payload_bytes)
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


def _decode_payload(payload: bytes) -> dict[str, Any] | None:
    try:
        value = msgpack.unpackb(payload, raw=False)
    except Exception:  # any decoding failure means "not a record"
        return None
    return value if isinstance(value, dict) else None


def _has_magic(data: bytes) -> bool:
    """Whether the file starts like one of ours: a frame whose payload names our format."""
    framed = data[:1] and data[0] in _FRAME_STARTS and data[1:2] and data[1] in _BIN_LENGTH_WIDTH
    return bool(framed) and FORMAT.encode() in data[:_MAGIC_WINDOW]


def _not_status_file(path: Path) -> JournalError:
    return JournalError(f"{path} is not an scmflow upgrade status file")


def _looks_torn(region: bytes, shapes: Sequence[_Shape]) -> bool:
    """Whether `region` (from a frame start to EOF) is a strict prefix of one frame."""
    shape = next((s for s in shapes if s.start == region[0]), None)
    if shape is None:
        return False
    if len(region) == 1:
        return True
    width = _BIN_LENGTH_WIDTH.get(region[1])
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
        at = payload_end + item * _TRAILER_ITEM
        if len(region) > at and not _DIGEST_HEAD.startswith(region[at : at + len(_DIGEST_HEAD)]):
            return False
    return not (_ends_with_whole_frame(region, shape) or _holds_frame(region))


def _is_map_start(byte: int) -> bool:
    return 0x80 <= byte <= 0x8F or byte in (0xDE, 0xDF)


def _ends_with_whole_frame(region: bytes, shape: _Shape) -> bool:
    """A complete frame whose length bytes were changed still ends in its intact digest (and MAC)."""
    tail = shape.size
    if len(region) <= tail:
        return False
    trailer = region[-tail:]
    items = [trailer[i * _TRAILER_ITEM : (i + 1) * _TRAILER_ITEM] for i in range(shape.trailer)]
    if any(item[: len(_DIGEST_HEAD)] != _DIGEST_HEAD for item in items):
        return False
    digest = items[0][len(_DIGEST_HEAD) :]
    return any(hashlib.sha256(region[start:-tail]).digest() == digest for start in range(2, 7))


def _holds_frame(region: bytes) -> bool:
    """Whether a valid frame starts inside `region`: then it is not the last record."""
    for start in _FRAME_STARTS:
        for marker in _BIN_LENGTH_WIDTH:
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
    parts = _frame_parts(frame)
    return parts is not None and hashlib.sha256(parts[0]).digest() == parts[1]
