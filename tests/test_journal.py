"""The upgrade-status file: writing, integrity checks, torn tails, resume, authentication."""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import random
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import Any

import msgpack
import pytest

from scmflow.authenticity import AUTHENTIC, INVALID, NO_KEY, UNSIGNED, Authenticity
from scmflow.errors import JournalError, LockError
from scmflow.journal import Journal
from scmflow.journalreader import TamperedJournal, read_journal, verify_journal
from scmflow.statusformat import FORMAT, FORMAT_VERSION
from scmflow.statuskey import StatusKey
from tests.journals import NOW, PLAN, Ticker, header, pair_event, run_steps, sample_journal


def frame_offsets(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every frame of an intact file."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    spans, start = [], 0
    for _ in unpacker:
        spans.append((start, unpacker.tell()))
        start = unpacker.tell()
    assert start == len(data)
    return spans


def raw_frame(payload: dict[str, Any]) -> bytes:
    body = msgpack.packb(payload, use_bin_type=True)
    return msgpack.packb([body, hashlib.sha256(body).digest()], use_bin_type=True)


# --- writing --------------------------------------------------------------------------


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    clock = Ticker()
    with Journal.create(tmp_path / "status", header(), now=NOW, clock=clock) as journal:
        written = [
            journal.append({"kind": "run", "detail": {"action": "upgrade", "result": "started"}}),
            journal.append(pair_event("begin", "h1", "gateway", "backup", "pending", "backed_up")),
            journal.append(
                pair_event(
                    "transition", "h1", "gateway", "backup", "pending", "backed_up",
                    detail={"files": ["a.jar", "b.jar"], "bytes": 12345},
                )
            ),
            journal.append({"kind": "note", "detail": "operator note"}),
        ]
        path = journal.path

    contents = read_journal(path)
    assert contents.header["format"] == FORMAT
    assert contents.header["format_version"] == 1
    assert contents.header["seq"] == 0
    assert contents.header["run_id"] == "run-1"
    assert contents.header["plan"] == PLAN
    assert contents.header["epoch"] == NOW.timestamp()
    assert contents.header["time"] == NOW.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert list(contents.records) == written
    assert [r["seq"] for r in contents.records] == [1, 2, 3, 4]
    assert contents.records[2]["detail"] == {"files": ["a.jar", "b.jar"], "bytes": 12345}
    assert contents.records[0]["time"].endswith("Z") and "." in contents.records[0]["time"]
    assert contents.records[1]["epoch"] == pytest.approx(1714550400.25)
    assert contents.records[1]["time"] == "2024-05-01T08:00:00.250Z"
    # each record chains to the digest of the one before
    for index, record in enumerate(contents.records, start=1):
        assert record["prev"] == contents.digests[index - 1]
    assert not contents.torn_tail and contents.problems == ()
    result = verify_journal(path)
    assert result.ok and result.count == 5 and result.first_bad_seq is None


def test_file_name_modes_and_header_time(tmp_path: Path) -> None:
    status_dir = tmp_path / "deploy" / "upgrade-status"
    with Journal.create(status_dir, header(), now=NOW) as journal:
        path = journal.path
    assert path.name == "upgrade_status_2024-05-01-08:00:00"
    assert path.parent == status_dir
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(status_dir.stat().st_mode) == 0o700
    assert read_journal(path).header["epoch"] == NOW.timestamp()


def test_same_second_gets_numbered_suffixes(tmp_path: Path) -> None:
    names = []
    for run in range(3):
        with Journal.create(tmp_path, header(run_id=f"run-{run}"), now=NOW) as journal:
            names.append(journal.path.name)
    base = "upgrade_status_2024-05-01-08:00:00"
    assert names == [base, f"{base}-2", f"{base}-3"]
    assert [read_journal(tmp_path / n).header["run_id"] for n in names] == ["run-0", "run-1", "run-2"]


def test_create_never_overwrites_an_existing_file(tmp_path: Path) -> None:
    existing = tmp_path / "upgrade_status_2024-05-01-08:00:00"
    existing.write_bytes(b"someone else's file")
    with Journal.create(tmp_path, header(), now=NOW) as journal:
        assert journal.path.name.endswith("-2")
    assert existing.read_bytes() == b"someone else's file"


def test_every_append_is_fsynced_before_it_returns(tmp_path: Path, monkeypatch) -> None:
    real_fsync = os.fsync
    synced_sizes: list[int] = []

    def counting_fsync(fd: int) -> None:
        synced_sizes.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    journal = Journal.create(tmp_path, header(), now=NOW)
    after_create = len(synced_sizes)
    assert after_create >= 1
    assert synced_sizes[0] == journal.path.stat().st_size  # the header is on disk
    for n in range(5):
        journal.append({"kind": "note", "detail": f"note {n}"})
        assert len(synced_sizes) == after_create + n + 1
        assert synced_sizes[-1] == journal.path.stat().st_size
    journal.close()


def test_appends_that_meet_share_an_fsync_and_each_returns_durable(tmp_path: Path, monkeypatch) -> None:
    real_fsync = os.fsync
    synced: list[int] = []
    durable_at_return: list[bool] = []
    gate = threading.Barrier(8)

    def slow_fsync(fd: int) -> None:
        size = os.fstat(fd).st_size
        threading.Event().wait(0.05)  # a slow disk: the other threads' records pile up
        real_fsync(fd)
        synced.append(size)

    journal = Journal.create(tmp_path, header(), now=NOW)
    monkeypatch.setattr(os, "fsync", slow_fsync)

    def worker(n: int) -> None:
        gate.wait()
        for k in range(5):
            record = journal.append({"kind": "note", "detail": f"thread {n} note {k}"})
            # its bytes were in the file when some fsync that has ended began
            end = _end_of_record(journal.path.read_bytes(), record["seq"])
            durable_at_return.append(any(size >= end for size in synced))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    journal.close()
    assert all(durable_at_return) and len(durable_at_return) == 40
    assert len(synced) < 40  # shared: far fewer fsyncs than records
    contents = read_journal(journal.path)
    assert [r["seq"] for r in contents.records] == list(range(1, 41))


def _end_of_record(data: bytes, seq: int) -> int:
    """Offset just past record `seq` of a status file's bytes.

    Another thread may be in the middle of writing its record (a read can see part of a
    write), so the file is read up to its last whole frame.
    """
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    ends = [unpacker.tell() for _ in unpacker]
    return ends[seq]


def test_a_failed_fsync_drops_the_unsynced_records_and_refuses_more(tmp_path: Path, monkeypatch) -> None:
    journal = Journal.create(tmp_path, header(), now=NOW)
    journal.append({"kind": "note", "detail": "kept"})
    size = journal.path.stat().st_size

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(JournalError, match="Input/output error"):
        journal.append({"kind": "note", "detail": "lost"})
    monkeypatch.undo()
    with pytest.raises(JournalError, match="cannot be appended to"):
        journal.append({"kind": "note", "detail": "after"})
    journal.close()
    assert journal.path.stat().st_size == size
    assert [r.get("detail") for r in read_journal(journal.path).records] == ["kept"]


@pytest.mark.parametrize(
    "extra",
    [
        {"hosts": [{"name": "h1", "Password": "sequoiadb"}]},
        {"install": {"InstallUserPassword": "admin"}},
        {"sudo_passwd": "x"},
        {"deep": [[{"api_token": "t"}]]},
        {"client_secret": "s"},
    ],
)
def test_header_with_a_secret_is_refused(tmp_path: Path, extra: dict[str, Any]) -> None:
    with pytest.raises(JournalError, match="secret"):
        Journal.create(tmp_path / "status", header(**extra), now=NOW)
    assert not (tmp_path / "status").exists() or not any((tmp_path / "status").iterdir())


def test_bad_events_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with Journal.create(tmp_path, header(), now=NOW) as journal:
        size = journal.path.stat().st_size
        bad_events = [
            {"kind": "explode"},
            {"kind": "note", "seq": 7},
            {"kind": "note", "prev": b"x"},
            {"kind": "begin", "host": "h1", "service": "gateway"},  # no trigger
            {"kind": "transition", "host": "h1", "service": "gateway", "trigger": "backup"},  # no dst
            {"kind": "note", "detail": {"password": "x"}},
            {"kind": "note", "detail": object()},
            {"kind": "note", "detail": {1, 2}},
        ]
        for event in bad_events:
            with pytest.raises(JournalError):
                journal.append(event)
        assert journal.path.stat().st_size == size
        journal.append({"kind": "note", "detail": "still fine"})
    assert verify_journal(journal.path).ok


def test_reserved_header_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="format_version"):
        Journal.create(tmp_path, header(format_version=9), now=NOW)


def test_append_after_close_is_refused(tmp_path: Path) -> None:
    journal = Journal.create(tmp_path, header(), now=NOW)
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.append({"kind": "note"})


def test_failed_write_is_cut_off_so_the_file_stays_valid(tmp_path: Path, monkeypatch) -> None:
    journal = Journal.create(tmp_path, header(), now=NOW)
    journal.append({"kind": "note", "detail": "before"})
    real_write = os.write

    def half_then_fail(fd: int, data) -> int:
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_fail)
    with pytest.raises(JournalError, match="No space left"):
        journal.append({"kind": "note", "detail": "lost " * 50})
    monkeypatch.setattr(os, "write", real_write)
    journal.append({"kind": "note", "detail": "after"})
    journal.close()
    result = verify_journal(journal.path)
    assert result.ok, result.message
    assert [r["detail"] for r in read_journal(journal.path).records] == ["before", "after"]


def test_concurrent_appends_keep_one_valid_chain(tmp_path: Path) -> None:
    journal = Journal.create(tmp_path, header(), now=NOW)
    threads_count, per_thread = 8, 40

    def worker(number: int) -> None:
        for i in range(per_thread):
            journal.append({"kind": "note", "detail": {"thread": number, "i": i}})

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    journal.close()

    result = verify_journal(journal.path)
    assert result.ok and result.count == 1 + threads_count * per_thread
    records = read_journal(journal.path).records
    assert [r["seq"] for r in records] == list(range(1, 1 + threads_count * per_thread))
    for number in range(threads_count):
        mine = [r["detail"]["i"] for r in records if r["detail"]["thread"] == number]
        assert mine == list(range(per_thread))


# --- reading damaged and foreign files --------------------------------------------------


def test_torn_tail_is_reported_and_ignored(tmp_path: Path) -> None:
    path = sample_journal(tmp_path)
    data = path.read_bytes()
    intact = read_journal(path)
    last_start, last_end = frame_offsets(data)[-1]
    for cut in range(1, last_end - last_start):
        path.write_bytes(data[:-cut])
        contents = read_journal(path)
        assert contents.torn_tail, cut
        assert contents.torn_offset == last_start
        assert contents.records == intact.records[:-1]
        assert any("incomplete" in p for p in contents.problems)
        result = verify_journal(path)
        assert not result.ok and result.torn_tail
        assert result.first_bad_seq == intact.count - 1
        assert result.count == intact.count - 1


def test_every_changed_byte_is_detected_and_located(tmp_path: Path) -> None:
    path = sample_journal(tmp_path)
    data = path.read_bytes()
    spans = frame_offsets(data)
    assert len(spans) == 11
    for seq, (start, end) in enumerate(spans):
        for offset in range(start, end):
            for mask in (0x01, 0x80, 0xFF):
                with flipped(path, data, offset, mask):
                    where = f"record {seq}, offset {offset}, mask {mask:#x}"
                    with pytest.raises(JournalError):
                        read_journal(path)
                    try:
                        result = verify_journal(path)
                    except JournalError:
                        # A header mangled beyond recognition is "not a status file".
                        assert seq == 0, where
                        continue
                    assert not result.ok and not result.torn_tail, where
                    assert result.first_bad_seq == seq, where
                    assert result.first_bad_offset == start, where
                    assert result.count == seq, where


@contextmanager
def flipped(path: Path, data: bytes, offset: int, mask: int) -> Iterator[None]:
    """`path` holds `data` with the byte at `offset` XORed with `mask`, until the block ends.

    The byte is written in place (rewriting the whole file each time costs more than the
    checks themselves); the file's bytes are the same as a rewrite's.
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes([data[offset] ^ mask]), offset)
        yield
    finally:
        os.pwrite(fd, data[offset : offset + 1], offset)
        os.close(fd)


def test_rewritten_record_breaks_the_chain(tmp_path: Path) -> None:
    # A forger who recomputes the changed record's digest is caught by the next record.
    path = sample_journal(tmp_path)
    data = path.read_bytes()
    spans = frame_offsets(data)
    start, end = spans[3]
    record = read_journal(path).records[2]
    forged = raw_frame({**record, "detail": {"ok": False}})
    path.write_bytes(data[:start] + forged + data[end:])
    result = verify_journal(path)
    assert not result.ok and result.first_bad_seq == 4
    assert "does not chain to record 3" in result.message
    with pytest.raises(TamperedJournal, match="record 4"):
        read_journal(path)


def test_removed_record_is_detected(tmp_path: Path) -> None:
    path = sample_journal(tmp_path)
    data = path.read_bytes()
    start, end = frame_offsets(data)[5]
    path.write_bytes(data[:start] + data[end:])
    result = verify_journal(path)
    assert not result.ok and result.first_bad_seq == 5
    assert "removed or reordered" in result.message


@pytest.mark.parametrize("size", [1, 7, 64, 1000, 50_000])
def test_random_bytes_are_not_a_status_file(tmp_path: Path, size: int) -> None:
    path = tmp_path / "upgrade_status_x"
    rng = random.Random(size)
    for _attempt in range(20):
        path.write_bytes(bytes(rng.randrange(256) for _ in range(size)))
        with pytest.raises(JournalError, match="is not an scmflow upgrade status file"):
            read_journal(path)
        with pytest.raises(JournalError, match="is not an scmflow upgrade status file"):
            verify_journal(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"[host]\nHostName, SshPort\nh1, 22\n",
        raw_frame({"format": "something-else", "format_version": 1, "seq": 0}),
        msgpack.packb({"format": FORMAT}),
    ],
)
def test_foreign_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "upgrade_status_x"
    path.write_bytes(content)
    with pytest.raises(JournalError, match=r"is not an scmflow upgrade status file"):
        read_journal(path)


def test_missing_file_and_directory_are_errors(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="cannot read"):
        read_journal(tmp_path / "nope")
    with pytest.raises(JournalError, match="directory"):
        read_journal(tmp_path)


def test_newer_format_is_refused_with_its_version(tmp_path: Path) -> None:
    path = tmp_path / "upgrade_status_x"
    path.write_bytes(raw_frame({"format": FORMAT, "format_version": 3, "seq": 0}) + b"\x00future")
    for reader in (read_journal, verify_journal):
        newer = r"newer scmflow \(status format version 3; .*up to version 2\)"
        with pytest.raises(JournalError, match=newer):
            reader(path)


def test_header_cut_while_being_created(tmp_path: Path) -> None:
    path = sample_journal(tmp_path)
    header_end = frame_offsets(path.read_bytes())[0][1]
    path.write_bytes(path.read_bytes()[: header_end - 5])
    with pytest.raises(JournalError, match="no complete header"):
        read_journal(path)
    assert not verify_journal(path).ok


# --- resume ---------------------------------------------------------------------------


def test_open_for_append_cuts_the_torn_tail_and_notes_it(tmp_path: Path) -> None:
    path = sample_journal(tmp_path)
    intact = read_journal(path)
    data = path.read_bytes()
    last_start, _ = frame_offsets(data)[-1]
    path.write_bytes(data[:-9])

    with Journal.open_for_append(path, clock=Ticker(start=1714560000.0)) as journal:
        assert journal.seq == intact.count - 1  # the note took the torn record's seq
        journal.append({"kind": "run", "detail": {"action": "rollback", "result": "started"}})

    assert verify_journal(path).ok
    contents = read_journal(path)
    assert contents.records[:-2] == intact.records[:-1]
    note = contents.records[-2]
    assert note["kind"] == "note" and note["seq"] == intact.count - 1
    assert note["detail"]["torn_offset"] == last_start
    assert note["detail"]["torn_bytes"] == len(data) - 9 - last_start
    assert contents.records[-1]["detail"]["action"] == "rollback"


def test_open_for_append_continues_the_chain(tmp_path: Path) -> None:
    path = sample_journal(tmp_path)
    count = read_journal(path).count
    with Journal.open_for_append(path) as journal:
        journal.append({"kind": "note", "detail": "resumed"})
    contents = read_journal(path)
    assert contents.count == count + 1 and contents.records[-1]["seq"] == count
    assert verify_journal(path).ok


def test_open_for_append_refuses_a_tampered_file(tmp_path: Path) -> None:
    path = sample_journal(tmp_path)
    data = bytearray(path.read_bytes())
    data[frame_offsets(bytes(data))[2][0] + 10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(TamperedJournal, match="record 2"):
        Journal.open_for_append(path)
    assert path.read_bytes() == bytes(data)


def test_only_one_writer_at_a_time(tmp_path: Path) -> None:
    with Journal.create(tmp_path, header(), now=NOW) as journal:
        with pytest.raises(LockError, match="in use"):
            Journal.open_for_append(journal.path)
    with Journal.open_for_append(journal.path) as again:
        again.append({"kind": "note"})


# --- authentication (format version 2) ------------------------------------------------

KEY = StatusKey(bytes(range(32)))
OTHER_KEY = StatusKey(bytes(range(1, 33)))


def keyed_journal(tmp_path: Path, key: StatusKey = KEY) -> Path:
    """sample_journal, written with a status key."""
    with Journal.create(tmp_path / "status", header(), now=NOW, clock=Ticker(), key=key) as journal:
        journal.append({"kind": "run", "detail": {"action": "upgrade", "result": "started"}})
        run_steps(journal, "h1", "gateway")
        journal.append({"kind": "run", "detail": {"action": "upgrade", "result": "success"}})
        return journal.path


def frames(path: Path) -> list[list[bytes]]:
    return list(msgpack.Unpacker(io.BytesIO(path.read_bytes()), raw=False))


def rewrite(path: Path, change: Any, *, sign: StatusKey | None = None, version: int | None = None) -> None:
    """What a forger can do without the key: change payloads, recompute every digest and `prev`.

    MACs are kept as they were, or made with the forger's own `sign` key; `version` 1 drops them.
    """
    out, prev = [], b""
    for seq, frame in enumerate(frames(path)):
        payload = msgpack.unpackb(frame[0], raw=False)
        if seq == 0:
            change(payload)
            if version is not None:
                payload["format_version"] = version
        else:
            payload["prev"] = prev
        body = msgpack.packb(payload, use_bin_type=True)
        prev = hashlib.sha256(body).digest()
        parts = [body, prev]
        if version != 1:
            parts.append(sign.mac(body) if sign else frame[2])
        out.append(msgpack.packb(parts, use_bin_type=True))
    path.write_bytes(b"".join(out))


def test_a_keyed_journal_is_version_2_with_a_mac_on_every_record(tmp_path: Path) -> None:
    path = keyed_journal(tmp_path)
    contents = read_journal(path, key=KEY)
    assert contents.header["format_version"] == 2 == FORMAT_VERSION
    assert contents.header["key_id"] == KEY.key_id and len(KEY.key_id) == 16
    assert KEY.secret not in path.read_bytes()
    for frame in frames(path):
        assert len(frame) == 3
        assert frame[1] == hashlib.sha256(frame[0]).digest()
        assert frame[2] == hmac.new(KEY.secret, frame[0], hashlib.sha256).digest()
    assert contents.authenticity == Authenticity(AUTHENTIC, None, KEY, KEY.key_id)
    assert contents.authenticity.ok
    assert "every record's MAC is valid with status key " + KEY.key_id in contents.authenticity.reason
    result = verify_journal(path, key=KEY)
    assert result.ok and result.authentic and result.count == 11


def test_without_the_key_a_keyed_file_reads_but_is_not_authentic(tmp_path: Path) -> None:
    path = keyed_journal(tmp_path)
    assert read_journal(path).records == read_journal(path, key=KEY).records
    missing = read_journal(path).authenticity
    assert (missing.state, missing.ok, missing.file_key_id) == (NO_KEY, False, KEY.key_id)
    assert missing.reason == (
        f"there is no status key to check its MACs with (the file names status key {KEY.key_id})"
    )
    other = read_journal(path, key=OTHER_KEY).authenticity
    assert (other.state, other.first_bad_seq) == (INVALID, 0)
    assert "another control machine's key wrote it, or it was rewritten" in other.reason
    assert not verify_journal(path, key=OTHER_KEY).authentic and verify_journal(path, key=OTHER_KEY).ok


def test_a_version_1_file_is_unauthenticated_whatever_the_key(tmp_path: Path) -> None:
    path = sample_journal(tmp_path)
    contents = read_journal(path, key=KEY)
    assert contents.header["format_version"] == 1 and "key_id" not in contents.header
    assert all(len(frame) == 2 for frame in frames(path))
    assert contents.authenticity.state == UNSIGNED and not contents.authenticity.ok
    assert "version 1, whose records carry no MAC" in contents.authenticity.reason


@pytest.mark.parametrize(
    ("forgery", "state"),
    [
        ({}, INVALID),  # the old MACs kept
        ({"sign": OTHER_KEY}, INVALID),  # MACs of the forger's own key
        ({"version": 1}, UNSIGNED),  # passed off as an old file without MACs
    ],
    ids=["macs-kept", "own-key", "as-version-1"],
)
def test_a_rewritten_header_with_a_recomputed_chain_is_not_authentic(
    tmp_path: Path, forgery: dict[str, Any], state: str
) -> None:
    path = keyed_journal(tmp_path)
    rewrite(path, lambda h: h["hosts"][0].update(user="root", java_home="/tmp/evil"), **forgery)

    result = verify_journal(path, key=KEY)
    assert result.ok, "the chain alone cannot tell: it was recomputed"
    assert not result.authentic and result.authenticity.state == state
    contents = read_journal(path, key=KEY)
    assert contents.header["hosts"][0]["java_home"] == "/tmp/evil"
    assert contents.authenticity.state == state
    if state == INVALID:
        assert contents.authenticity.first_bad_seq == 0
        assert "record 0's MAC is not valid" in contents.authenticity.reason


def test_a_changed_mac_is_found_and_located(tmp_path: Path) -> None:
    path = keyed_journal(tmp_path)
    data = bytearray(path.read_bytes())
    _, end = frame_offsets(bytes(data))[4]
    data[end - 1] ^= 0x01  # the last byte of record 4's MAC
    path.write_bytes(bytes(data))
    assert verify_journal(path, key=KEY).ok
    authenticity = read_journal(path, key=KEY).authenticity
    assert (authenticity.state, authenticity.first_bad_seq) == (INVALID, 4)
    assert authenticity.reason.endswith("it was changed after it was written")


def test_every_changed_byte_of_a_keyed_file_is_found(tmp_path: Path) -> None:
    path = keyed_journal(tmp_path)
    data = path.read_bytes()
    for seq, (start, end) in enumerate(frame_offsets(data)):
        for offset in range(start, end):
            with flipped(path, data, offset, 0x01):
                where = f"record {seq}, offset {offset}"
                try:
                    result = verify_journal(path, key=KEY)
                except JournalError:
                    assert seq == 0, where  # a header mangled beyond recognition
                    continue
                assert not result.authentic, where
                if result.ok:  # only the MAC changed: the chain cannot see it, the key can
                    assert result.authenticity.first_bad_seq == seq, where
                else:
                    assert (result.first_bad_seq, result.first_bad_offset) == (seq, start), where


def test_torn_tail_of_a_keyed_file_leaves_the_rest_authentic(tmp_path: Path) -> None:
    path = keyed_journal(tmp_path)
    data = path.read_bytes()
    intact = read_journal(path, key=KEY)
    last_start, last_end = frame_offsets(data)[-1]
    for cut in range(1, last_end - last_start):
        path.write_bytes(data[:-cut])
        contents = read_journal(path, key=KEY)
        assert contents.torn_tail and contents.torn_offset == last_start, cut
        assert contents.records == intact.records[:-1]
        assert contents.authenticity.ok, cut
        result = verify_journal(path, key=KEY)
        assert result.torn_tail and not result.ok and result.authenticity.ok


def test_a_record_without_a_mac_in_a_version_2_file_is_damage(tmp_path: Path) -> None:
    path = keyed_journal(tmp_path)
    last = read_journal(path).digests[-1]
    count = read_journal(path).count
    with path.open("ab") as handle:
        handle.write(raw_frame({"seq": count, "time": "x", "epoch": 0.0, "prev": last, "kind": "note"}))
    result = verify_journal(path, key=KEY)
    assert not result.ok and result.first_bad_seq == count
    assert "has no MAC" in result.message


def test_open_for_append_signs_what_it_appends_and_needs_the_key(tmp_path: Path) -> None:
    path = keyed_journal(tmp_path)
    with pytest.raises(JournalError, match="needs the status key"):
        Journal.open_for_append(path)
    with Journal.open_for_append(path, key=KEY) as journal:
        journal.append({"kind": "note", "detail": "resumed"})
    contents = read_journal(path, key=KEY)
    assert contents.authenticity.ok and contents.records[-1]["detail"] == "resumed"
    # a version 1 file stays one: what is appended carries no MAC either
    old = sample_journal(tmp_path / "old")
    with Journal.open_for_append(old, key=KEY) as journal:
        journal.append({"kind": "note", "detail": "resumed"})
    assert all(len(frame) == 2 for frame in frames(old))
    assert verify_journal(old).ok


def test_open_for_append_checks_before_it_repairs_anything(tmp_path: Path) -> None:
    path = keyed_journal(tmp_path)
    path.write_bytes(path.read_bytes()[:-9])  # a torn tail, which opening would cut off
    torn = path.read_bytes()
    seen: list[Authenticity] = []

    def refuse(contents: Any) -> None:
        seen.append(contents.authenticity)
        raise JournalError("refused")

    with pytest.raises(JournalError, match="refused"):
        Journal.open_for_append(path, key=OTHER_KEY, check=refuse)
    assert path.read_bytes() == torn
    assert seen[0].state == INVALID
    with Journal.open_for_append(path, key=KEY):  # the lock was released
        pass


def test_key_id_is_set_by_the_journal_only(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="key_id"):
        Journal.create(tmp_path, header(key_id="0123456789abcdef"), now=NOW, key=KEY)
