"""The status key file: made once with mode 0600 in a 0700 directory, never through a symlink."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from scmflow.errors import StatusKeyError
from scmflow.statuskey import (
    ENV_VAR,
    KEY_SIZE,
    StatusKey,
    default_key_path,
    key_path,
    load_key,
    load_or_create_key,
)


def test_first_use_makes_a_private_random_key_in_a_private_directory(tmp_path: Path) -> None:
    path = tmp_path / "config" / "scmflow" / "status.key"
    assert load_key(path) is None
    assert not path.parent.exists(), "looking for a key must not create anything"

    key = load_or_create_key(path)

    assert key.path == path and len(key.secret) == KEY_SIZE
    assert path.read_bytes() == key.secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.listdir(path.parent) == ["status.key"], "no temporary file is left"
    assert load_or_create_key(path) == key == load_key(path), "made once, then reused"
    assert load_or_create_key(tmp_path / "other.key") != key


def test_the_key_is_never_shown(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "status.key")
    for text in (repr(key), str(key), key.where, key.key_id):
        assert key.secret.hex() not in text and repr(key.secret) not in text
    assert key.where == f"status key {key.key_id} ({tmp_path / 'status.key'})"


def test_concurrent_first_uses_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "scmflow" / "status.key"
    keys: list[StatusKey] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_key(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len({k.secret for k in keys}) == 1
    assert os.listdir(path.parent) == ["status.key"]


def test_a_symlinked_key_or_key_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    load_or_create_key(real)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    for action in (load_key, load_or_create_key):
        with pytest.raises(StatusKeyError, match="is a symbolic link, which is never followed"):
            action(link)
    # a dangling link is not followed to create the key where it points either
    dangling = tmp_path / "dangling.key"
    dangling.symlink_to(tmp_path / "elsewhere.key")
    with pytest.raises(StatusKeyError, match="symbolic link"):
        load_or_create_key(dangling)
    assert not (tmp_path / "elsewhere.key").exists()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "dir-link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StatusKeyError, match="symbolic link"):
        load_or_create_key(tmp_path / "dir-link" / "status.key")
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_key_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "status.key"
    load_or_create_key(path)
    path.chmod(mode)
    with pytest.raises(StatusKeyError, match=f"open to other users \\(mode 0{mode:o}\\); .*chmod 600"):
        load_key(path)


@pytest.mark.parametrize("size", [0, 31, 33, 100])
def test_a_file_of_the_wrong_size_is_not_a_key(tmp_path: Path, size: int) -> None:
    path = tmp_path / "status.key"
    path.write_bytes(b"k" * size)
    path.chmod(0o600)
    with pytest.raises(StatusKeyError, match=f"holds {size} bytes, a key is 32 random bytes"):
        load_or_create_key(path)
    assert path.read_bytes() == b"k" * size, "an existing file is never replaced"


def test_a_directory_is_not_a_key(tmp_path: Path) -> None:
    (tmp_path / "status.key").mkdir(mode=0o700)
    with pytest.raises(StatusKeyError, match="not a regular file"):
        load_key(tmp_path / "status.key")


def test_where_the_key_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert default_key_path() == tmp_path / ".config" / "scmflow" / "status.key"
    assert key_path() == default_key_path()
    assert key_path(environ={ENV_VAR: "/etc/scm/k"}) == Path("/etc/scm/k")
    assert key_path(environ={ENV_VAR: ""}) == default_key_path()
    assert key_path(Path("/opt/k"), environ={ENV_VAR: "/etc/scm/k"}) == Path("/opt/k")
    monkeypatch.setenv(ENV_VAR, "~/keys/k")
    assert key_path() == tmp_path / "keys" / "k"


def test_key_id_and_mac_are_hmac_sha256() -> None:
    import hashlib
    import hmac

    key = StatusKey(bytes(32))
    assert key.mac(b"payload") == hmac.new(bytes(32), b"payload", hashlib.sha256).digest()
    assert key.verifies(b"payload", key.mac(b"payload"))
    assert not key.verifies(b"payload!", key.mac(b"payload"))
    assert key.key_id == hmac.new(bytes(32), b"scmflow status key id", hashlib.sha256).hexdigest()[:16]
    with pytest.raises(ValueError, match="32 bytes"):
        StatusKey(b"short")
