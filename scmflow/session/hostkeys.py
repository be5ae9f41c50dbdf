"""known_hosts: find, check and record host keys the way OpenSSH does."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

from scmflow.errors import HostKeyError
from scmflow.session.targets import SSHOptions, SSHTarget


@dataclass(frozen=True)
class KnownKey:
    """One known_hosts line that matches a host."""

    path: Path
    line: int
    key: paramiko.PKey
    revoked: bool = False



def fingerprint(key: paramiko.PKey) -> str:
    """The key's SHA256 fingerprint as OpenSSH prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _pattern_matches(patterns: str, name: str) -> bool:
    """OpenSSH host-pattern matching: hashed names, comma lists, wildcards, negation."""
    if patterns.startswith("|1|"):
        try:
            return paramiko.HostKeys.hash_host(name, patterns) == patterns
        except (ValueError, AssertionError, binascii.Error):
            return False
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        glob = pattern[1:] if negated else pattern
        regex = re.escape(glob).replace(r"\*", ".*").replace(r"\?", ".")
        if re.fullmatch(regex, name, flags=re.IGNORECASE):
            if negated:
                return False
            matched = True
    return matched


def _parse_known_line(text: str) -> tuple[str, str, paramiko.PKey] | None:
    """(marker, host patterns, key) of one known_hosts line, or None if it holds no usable key."""
    fields = text.split()
    marker = ""
    if fields and fields[0].startswith("@"):
        marker, fields = fields[0], fields[1:]
    if len(fields) < 3:
        return None
    try:
        key = paramiko.PKey.from_type_string(fields[1], base64.b64decode(fields[2]))
    except Exception:  # noqa: BLE001 - unknown key types and bad base64 are skipped, as ssh does
        return None
    return marker, fields[0], key


def find_known_keys(paths: Sequence[Path], name: str) -> list[KnownKey]:
    """Every key recorded for `name` in the given known_hosts files (missing files skipped)."""
    found = []
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for number, raw in enumerate(lines, 1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            parsed = _parse_known_line(text)
            if parsed is None:
                continue
            marker, patterns, key = parsed
            if marker not in ("", "@revoked") or not _pattern_matches(patterns, name):
                continue
            found.append(KnownKey(path, number, key, revoked=marker == "@revoked"))
    return found


def _wants_hashed(path: Path, preference: bool | None) -> bool:
    if preference is not None:
        return preference
    try:
        return any(line.startswith("|1|") for line in path.read_text(errors="replace").splitlines())
    except FileNotFoundError:
        return False


def record_host_key(path: Path, name: str, key: paramiko.PKey, *, hashed: bool | None = None) -> None:
    """Append `name key` to a known_hosts file, as OpenSSH writes it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shown = paramiko.HostKeys.hash_host(name) if _wants_hashed(path, hashed) else name
    line = f"{shown} {key.get_name()} {key.get_base64()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size > 0:
            with open(path, "rb") as existing:
                existing.seek(-1, os.SEEK_END)
                if existing.read(1) != b"\n":
                    line = "\n" + line
        # one write() with O_APPEND, so parallel connects never interleave lines
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def check_host_key(
    host: str,
    port: int,
    key: paramiko.PKey,
    options: SSHOptions,
    *,
    names: Sequence[str] = (),
    accept_hint: str | None = None,
) -> bool:
    """Accept a known key; refuse a changed or unknown one; True when a new key was recorded.

    `names` are the known_hosts names (default: SSHTarget(host, port).known_names): a key is
    recorded and reported under the first; the others can only vouch for a matching key.
    `accept_hint` tells an operator how to accept an unknown key (default: ssh-keyscan).
    """
    names = tuple(names) or SSHTarget(host, port).known_names
    name = names[0]
    accept_hint = accept_hint or f"run `ssh-keyscan -p {port} {host} >> ~/.ssh/known_hosts`"
    offered = f"{key.get_name()} key {fingerprint(key)}"
    known = find_known_keys(options.known_hosts, name)
    for entry in known:
        if entry.revoked and entry.key.asbytes() == key.asbytes():
            where = f"{entry.path}:{entry.line}"
            raise HostKeyError(host, f"host key for {name} ({offered}) is marked revoked in {where}")
    valid = [entry for entry in known if not entry.revoked]
    if any(entry.key.asbytes() == key.asbytes() for entry in valid):
        return False
    if not valid and _vouched_for(names[1:], key, options):
        return False
    if valid:
        old = valid[0]
        raise HostKeyError(
            host,
            f"host key for {name} has changed: the host now offers {offered}, but {old.path}:{old.line} "
            f"records {old.key.get_name()} key {fingerprint(old.key)}; refusing to connect (possible "
            f"man-in-the-middle); if the host was reinstalled, verify the new key, then remove the old "
            f"one with `ssh-keygen -R '{name}'`",
        )
    if not options.accept_new_host_keys:
        raise HostKeyError(
            host,
            f"unknown host key for {name}: {offered}; check the fingerprint, then {accept_hint} "
            "or use --accept-new-host-keys",
        )
    if not options.known_hosts:
        raise HostKeyError(host, f"cannot record the host key for {name}: no known_hosts file configured")
    record_host_key(options.known_hosts[0], name, key, hashed=options.hash_known_hosts)
    return True


def _vouched_for(names: Sequence[str], key: paramiko.PKey, options: SSHOptions) -> bool:
    """Whether a fallback name holds this key, and does not mark it revoked."""
    for name in names:
        known = find_known_keys(options.known_hosts, name)
        matching = [entry for entry in known if entry.key.asbytes() == key.asbytes()]
        if matching and not any(entry.revoked for entry in matching):
            return True
    return False


def host_key_types(known: Sequence[KnownKey]) -> list[str]:
    """Host-key algorithms to ask for first, so the server offers the key we know."""
    types: list[str] = []
    for entry in known:
        name = entry.key.get_name()
        wanted = ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if name == "ssh-rsa" else [name]
        types += [t for t in wanted if t not in types]
    return types
