"""bench/acct.py: decoding process-accounting records, and accounting a real process."""

from __future__ import annotations

import struct

from bench import acct


def _record(comm: bytes, utime: int, stime: int, version: int = 3, pid: int = 1) -> bytes:
    return struct.pack("<BBHIIIIIIf8H16s", 0, version, 0, 0, 0, 0, pid, 1, 0, 0.0,
                       utime, stime, 0, 0, 0, 0, 0, 0, comm)


def test_comp_t_decodes_mantissa_and_base_8_exponent() -> None:
    assert acct.comp_t(5) == 5
    assert acct.comp_t((1 << 13) | 3) == 24
    assert acct.comp_t((2 << 13) | 0x1FFF) == 0x1FFF * 64


def test_parse_sums_cpu_by_command_and_counts_other_versions() -> None:
    data = (_record(b"python3", 4, 1) + _record(b"sudo", 1, 0) + _record(b"python3", 3, 0)
            + _record(b"old", 9, 9, version=2) + _record(b"me", 7, 7, pid=42))
    profile = acct.parse(data, exclude_pid=42)
    assert [(c.name, c.processes, round(c.cpu_seconds, 2)) for c in profile.commands] == [
        ("python3", 2, 0.08), ("sudo", 1, 0.01),
    ]
    assert profile.unreadable == 1
    line = acct.Profile(profile.commands, machine_cpu=1.0).line()
    assert line == "python3 2 x 40 ms = 0.1 s, sudo 1 x 10 ms = 0.0 s, unattributed 0.9 s"

