"""The rules every upgrade.cfg value is held to: paths, host and user names, run directories.

Public so that values from elsewhere (a status file's header) meet the very same rules as
the parser's. Each check raises ValueError with the reason.
"""

from __future__ import annotations

import re

INSTALL_DIR_NAME = "sequoiacm"
ROOT_USER = "root"

_HOST_RE = re.compile(r"^[A-Za-z0-9_.:%-]+$")
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$")

# Directories the run creates dated subdirectories in: never the system's own.
SYSTEM_DIRS = frozenset(
    "/bin /boot /dev /etc /home /lib /lib32 /lib64 /opt /proc /root /run /sbin /srv /sys "
    "/tmp /usr /usr/bin /usr/lib /usr/local /usr/sbin /var /var/lib /var/log".split()
)


def normalise_install_path(raw: str) -> str:
    """InstallPath as the original reads it, ending in `/sequoiacm`; ValueError if relative."""
    parts = _path_parts(raw)
    if not parts or parts[-1] != INSTALL_DIR_NAME:
        parts.append(INSTALL_DIR_NAME)
    return "/" + "/".join(parts)


def normalise_path(raw: str) -> str:
    """An absolute path without repeated or trailing slashes and `.`; ValueError if relative,
    with `..` or with a control character."""
    return "/" + "/".join(_path_parts(raw))


def check_normalised_path(value: str) -> None:
    """ValueError unless `value` is already what `normalise_path` makes of it."""
    if normalise_path(value) != value:
        raise ValueError(f"'{value}' is not a normalised absolute path")


def check_host_name(name: str) -> None:
    """ValueError unless `name` is a host name or an IP address (what HostName accepts)."""
    if not name:
        raise ValueError("the host name is empty")
    if not _HOST_RE.match(name) or name.startswith("-"):
        raise ValueError(f"'{name}' is not a host name or address")


def check_user_name(user: str) -> None:
    """ValueError unless `user` is a user name (empty is not)."""
    if not user:
        raise ValueError("the user name is empty")
    if not _USER_RE.match(user):
        raise ValueError(f"'{user}' is not a user name")


def check_install_user(user: str) -> None:
    """ValueError unless `user` may own the install: a user name, and not root.

    The services, their ctl scripts and java run as this user; as root, a file under the
    install would be code run as root.
    """
    check_user_name(user)
    if user == ROOT_USER:
        raise ValueError(f"'{user}' cannot be the install user: the services and their scripts run as it")


def check_run_base(directory: str) -> None:
    """ValueError when `directory` may not hold a run's dated directories: `/` or a system directory."""
    if directory == "/" or directory in SYSTEM_DIRS:
        raise ValueError(f"'{directory}' is a system directory")


def check_outside_install(directory: str, install_path: str) -> None:
    """ValueError when `directory` lies inside `install_path`, which an upgrade replaces parts of."""
    if directory == install_path or directory.startswith(install_path + "/"):
        raise ValueError(f"'{directory}' must not lie inside InstallPath {install_path}")


def _path_parts(raw: str) -> list[str]:
    """Components of an absolute path with repeated and trailing slashes dropped."""
    if any(ord(ch) < 32 for ch in raw):
        raise ValueError("path contains a control character")
    if raw and not raw.startswith("/"):
        raise ValueError(f"'{raw}' is not an absolute path")
    parts = [p for p in raw.split("/") if p and p != "."]
    if ".." in parts:
        raise ValueError(f"'{raw}' must not contain '..'")
    return parts
