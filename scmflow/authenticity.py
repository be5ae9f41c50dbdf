"""Whether a status file's records were written by the holder of a status key: the verdict and its reasons."""

from __future__ import annotations

from dataclasses import dataclass

from scmflow.statuskey import StatusKey

# What a file's records say about who wrote them (Authenticity.state).
AUTHENTIC = "authentic"  # every MAC checks with the key given
INVALID = "invalid"  # a MAC does not: the file was changed, or another key wrote it
NO_KEY = "no key"  # the records carry MACs but no key was given to check them with
UNSIGNED = "unsigned"  # format version 1: the records carry no MAC


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
