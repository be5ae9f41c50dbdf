"""Rewriting a status file as anyone without the status key can: the tests' forger."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack


def forge(
    source: Path, target: Path, change: Callable[[dict[str, Any]], None], *, unsigned: bool = False
) -> None:
    """Write `source` to `target` with its header changed and every digest and `prev` recomputed.

    The MACs are kept as they were (nobody without the key can make new ones), or, with
    `unsigned`, dropped and the header made format version 1, as an older scmflow wrote it.
    """
    out, prev = [], b""
    for seq, frame in enumerate(msgpack.Unpacker(io.BytesIO(source.read_bytes()), raw=False)):
        record = msgpack.unpackb(frame[0], raw=False)
        if seq == 0:
            change(record)
            if unsigned:
                record["format_version"] = 1
                record.pop("key_id", None)
        else:
            record["prev"] = prev
        body = msgpack.packb(record, use_bin_type=True)
        prev = hashlib.sha256(body).digest()
        out.append(msgpack.packb([body, prev, *([] if unsigned else frame[2:])], use_bin_type=True))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"".join(out))
