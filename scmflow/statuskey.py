"""The status key: the control machine's secret that authenticates status files.

The sha256 chain of a status file proves only that the file is self-consistent: anyone
who can write it can rewrite a record and recompute every digest. From format version 2
every record also carries an HMAC-SHA256 of its payload under a 32-byte random key that
never leaves the control machine (see docs/status-file.md). Only a holder of the key can
write a record that checks, so rollback and resume can tell their own files from
rewritten ones.

The key lives in `~/.config/scmflow/status.key` (mode 0600, in a 0700 directory), is
made on first use, and is never followed through a symbolic link. `--status-key FILE` or
the environment variable `SCMFLOW_STATUS_KEY_FILE` name another file. The key's bytes
appear nowhere else: not in status files, logs, messages or command lines. Status files
name the key by `key_id`, a digest of it that reveals nothing of it.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from scmflow.errors import StatusKeyError

KEY_SIZE = 32
ENV_VAR = "SCMFLOW_STATUS_KEY_FILE"
# What the key id is the MAC of: a constant no msgpack payload (a map) can equal.
_KEY_ID_MESSAGE = b"scmflow status key id"
_KEY_ID_LENGTH = 16


@dataclass(frozen=True)
class StatusKey:
    """A status key and the file it came from (None: made in memory, e.g. by a test)."""

    secret: bytes = field(repr=False)
    path: Path | None = None

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_SIZE:
            raise ValueError(f"a status key is {KEY_SIZE} bytes, not {len(self.secret)}")

    @classmethod
    def generate(cls, path: Path | None = None) -> StatusKey:
        """A fresh random key (not written anywhere)."""
        return cls(secrets.token_bytes(KEY_SIZE), path)

    @property
    def key_id(self) -> str:
        """A public name of the key: 16 hex digits of a MAC, from which the key cannot be had."""
        return hmac.new(self.secret, _KEY_ID_MESSAGE, hashlib.sha256).hexdigest()[:_KEY_ID_LENGTH]

    @property
    def where(self) -> str:
        """The key for messages: its id and file."""
        return f"status key {self.key_id}" + (f" ({self.path})" if self.path is not None else "")

    def mac(self, payload: bytes) -> bytes:
        """HMAC-SHA256 of `payload` under this key."""
        return hmac.new(self.secret, payload, hashlib.sha256).digest()

    def verifies(self, payload: bytes, mac: bytes) -> bool:
        """Whether `mac` is this key's MAC of `payload` (compared in constant time)."""
        return hmac.compare_digest(self.mac(payload), mac)


def default_key_path() -> Path:
    """`~/.config/scmflow/status.key` of the user running scmflow."""
    return Path.home() / ".config" / "scmflow" / "status.key"


def key_path(option: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Where the key is: `--status-key`, else $SCMFLOW_STATUS_KEY_FILE, else the default."""
    if option is not None:
        return Path(option).expanduser()
    named = (os.environ if environ is None else environ).get(ENV_VAR, "")
    return Path(named).expanduser() if named else default_key_path()


def load_key(path: Path) -> StatusKey | None:
    """The key stored at `path`, or None when there is none; StatusKeyError when it is unusable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise _open_error(path, exc, "read") from None
    try:
        return StatusKey(_read_key(fd, path), path)
    finally:
        os.close(fd)


def load_or_create_key(path: Path) -> StatusKey:
    """The key at `path`, made first (32 random bytes, mode 0600) when there is none."""
    found = load_key(path)
    if found is not None:
        return found
    directory = _key_dir(path.parent)
    try:
        _create(directory, path)
    finally:
        os.close(directory)
    created = load_key(path)
    if created is None:
        raise StatusKeyError(f"the status key {path} vanished right after it was created")
    return created


def _read_key(fd: int, path: Path) -> bytes:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise StatusKeyError(f"the status key {path} is not a regular file")
    # Like ssh with a private key: a key others may read or replace proves nothing.
    if info.st_uid not in (os.geteuid(), 0):
        raise StatusKeyError(f"the status key {path} belongs to another user (uid {info.st_uid})")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise StatusKeyError(
            f"the status key {path} is open to other users (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"make it private: chmod 600 {path}"
        )
    data = os.read(fd, KEY_SIZE + 1)
    if len(data) != KEY_SIZE:
        raise StatusKeyError(
            f"{path} is not a status key: it holds {info.st_size} bytes, a key is {KEY_SIZE} random bytes"
        )
    return data


def _key_dir(directory: Path) -> int:
    """An fd of the key's directory, made with mode 0700 if missing; never a symbolic link."""
    try:
        if not directory.exists():
            directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.mkdir(mode=0o700)
            os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        pass  # made in between by another run: fine, it is checked below like any other
    except OSError as exc:
        raise StatusKeyError(f"cannot create the directory of the status key, {directory}: "
                             f"{exc.strerror or exc}") from None
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _open_error(directory, exc, "use") from None


def _create(directory: int, path: Path) -> None:
    """Write a new key under a private name, then link it into place only if there is none.

    The link is as exclusive as O_EXCL, and readers never see a half-written key.
    """
    temporary = f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temporary, flags, 0o600, dir_fd=directory)
    except OSError as exc:
        raise StatusKeyError(f"cannot create the status key {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secrets.token_bytes(KEY_SIZE))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        try:
            os.link(temporary, path.name, src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
        except FileExistsError:
            return  # another run made it first: theirs is the key
        os.fsync(directory)
    except OSError as exc:
        raise StatusKeyError(f"cannot create the status key {path}: {exc.strerror or exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(temporary, dir_fd=directory)
        except OSError:
            pass  # nothing was left, or nothing more can be done about it


def _open_error(path: Path, exc: OSError, verb: str) -> StatusKeyError:
    # O_NOFOLLOW says ELOOP for a link to a file, O_DIRECTORY ENOTDIR for a link to a directory.
    if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and path.is_symlink()):
        return StatusKeyError(f"the status key path {path} is a symbolic link, which is never followed")
    if exc.errno == errno.ENOTDIR:
        return StatusKeyError(f"cannot {verb} the status key path {path}: it is not a directory")
    return StatusKeyError(f"cannot {verb} the status key {path}: {exc.strerror or exc}")
