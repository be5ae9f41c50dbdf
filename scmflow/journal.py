"""The upgrade-status file as it is written: an append-only, fsynced, hash-chained journal.

Each record is framed, digested, chained and (with a status key) MACed as
scmflow/statusformat.py describes; every append is on disk before it returns. A journal
given no key writes format version 1, without MACs (the local demo). Reading a file back
is scmflow/journalreader.py; replaying it into pair states, scmflow/replay.py.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from scmflow.errors import JournalError, LockError
from scmflow.journalreader import JournalContents, read_journal
from scmflow.statusformat import (
    FILE_PREFIX,
    FORMAT,
    FORMAT_VERSION,
    NAME_TIME_FORMAT,
    UNSIGNED_FORMAT_VERSION,
    check_event,
    check_header,
    encode_record,
    format_time,
)
from scmflow.statuskey import StatusKey

_MAX_NAME_SUFFIX = 1000

Clock = Callable[[], float]


class Journal:
    """An open status file that records are appended to; each is fsynced before append returns.

    Records that several threads append at about the same time share one fsync (group
    commit): a thread writes its record, then waits for an fsync that began after the
    write; whichever thread runs the fsync makes every record written so far durable.

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
        # Held across an fsync; taken before `_lock`, never while holding it.
        self._sync_lock = threading.Lock()
        self._synced_seq = seq
        self._synced_size = os.fstat(fd).st_size

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
        check_header(header)
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
            digest, frame = encode_record(record, key)
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
        check_event(event)
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
            digest, frame = encode_record(record, self._key)
            self._write_record(fd, frame)
            self._seq += 1
            self._last_digest = digest
        self._sync(record["seq"])
        return record

    def close(self) -> None:
        """Release the file; appending afterwards is an error."""
        with self._sync_lock, self._lock:
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
        except OSError as exc:
            # A partial record followed by later ones would read as tampering: cut it off.
            try:
                os.ftruncate(fd, size)
            except OSError:
                self._broken = f"a failed write could not be undone ({exc.strerror or exc})"
            raise JournalError(
                f"cannot write to status file {self.path}: {exc.strerror or exc}"
            ) from exc

    def _sync(self, seq: int) -> None:
        """Return once record `seq` is on disk: by an fsync of this thread's or of another's."""
        with self._sync_lock:
            if self._synced_seq >= seq:
                return
            with self._lock:
                fd = self._writable_fd()
                upto, size = self._seq, os.fstat(fd).st_size
            try:
                os.fsync(fd)
            except OSError as exc:
                self._fail_sync(fd, exc)
            self._synced_seq, self._synced_size = upto, size

    def _fail_sync(self, fd: int, exc: OSError) -> NoReturn:
        """Drop every record not known to be on disk; no later append may follow them."""
        with self._lock:
            self._broken = f"an fsync failed ({exc.strerror or exc})"
            try:
                os.ftruncate(fd, self._synced_size)
            except OSError:
                self._broken = f"a failed fsync could not be undone ({exc.strerror or exc})"
        raise JournalError(f"cannot write to status file {self.path}: {exc.strerror or exc}") from exc


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
