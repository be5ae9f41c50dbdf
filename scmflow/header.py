"""The status file's header as rollback and resume read it: what it must hold, and the
bounds every value must keep (upgrade.cfg's own validators), whatever its MAC says.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from scmflow.config import ConfigFile
from scmflow.configrules import (
    check_host_name,
    check_install_user,
    check_normalised_path,
    check_outside_install,
    check_run_base,
    check_user_name,
    normalise_install_path,
)
from scmflow.errors import JournalError
from scmflow.hooks import Hooks

MAX_START_TIMEOUT = 86400
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_run_header(path: Path, header: Mapping[str, Any]) -> None:
    """JournalError unless the header holds what rollback and resume need, every value valid."""
    check_header_shape(path, header)
    check_header_values(path, header)


def check_header_values(path: Path, header: Mapping[str, Any]) -> None:
    """JournalError naming the first header value that upgrade.cfg's own validators refuse.

    The header says which hosts to log in to, which paths to touch and as whom. Its MAC
    says who wrote it; these checks bound what even an authentic file may say. Expects a
    header that passed `check_header_shape`.
    """
    for name, check in _value_checks(header):
        try:
            check()
        except ValueError as exc:
            # the reason quotes the value: escape what a terminal would act on, newlines included
            raise JournalError(f"{path} names an unsafe {name}: {_printable(str(exc))}") from None


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _value_checks(header: Mapping[str, Any]) -> list[tuple[str, Callable[[], None]]]:
    """(header field, its check) for every value rollback and resume use."""
    layout = header["layout"]
    install = layout["install_path"]
    checks: list[tuple[str, Callable[[], None]]] = [
        ("layout.install_path", partial(_check_install_path, install)),
        ("layout.install_user", partial(check_install_user, layout["install_user"])),
        ("layout.admin_user", partial(_check_optional, layout.get("admin_user"), check_user_name)),
        ("layout.start_timeout", partial(_check_start_timeout, layout.get("start_timeout", 300))),
        ("layout.upgrade_dir", partial(_check_run_dir, layout["upgrade_dir"], "upgrade-", install)),
        ("layout.backup_dir", partial(_check_run_dir, layout["backup_dir"], "backup-", install)),
    ]
    for index, host in enumerate(header["hosts"]):
        where = f"hosts[{index}]"
        checks += [
            (f"{where}.name", partial(check_host_name, host["name"])),
            (f"{where}.user", partial(check_user_name, host["user"])),
            (f"{where}.port", partial(_check_port, host.get("port"))),
            (f"{where}.java_home", partial(_check_optional, host.get("java_home"), check_normalised_path)),
        ]
    checks += [(f"plan[{i}].host", partial(check_host_name, p["host"])) for i, p in enumerate(header["plan"])]
    release = header["release"]
    checks.append(("release.root", partial(_check_optional, release.get("root"), check_normalised_path)))
    for service, info in release["packages"].items():
        checks.append((f"release.packages.{service}", partial(_check_package, info)))
    config = header.get("config")
    if isinstance(config, Mapping):
        checks.append(("config.path", partial(check_normalised_path, config["path"])))
    return checks


def _check_optional(value: object, check: Callable[[str], None]) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    check(value)


def _check_install_path(value: str) -> None:
    if normalise_install_path(value) != value:
        raise ValueError(f"'{value}' is not a normalised InstallPath (an absolute path ending in /sequoiacm)")


def _check_run_dir(value: str, prefix: str, install_path: str) -> None:
    """A run's own directory: `<base>/<prefix><time>`, its base as upgrade.cfg allows it."""
    check_normalised_path(value)
    base, name = value.rsplit("/", 1)
    if not name.startswith(prefix):
        raise ValueError(f"'{value}' is not a run's directory ({prefix}<time>)")
    check_run_base(base or "/")
    check_outside_install(base or "/", install_path)


def _check_port(value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{value!r} is not a port number (1-65535)")


def _check_start_timeout(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_START_TIMEOUT:
        raise ValueError(f"{value!r} is not a number of seconds (1-{MAX_START_TIMEOUT})")


def _check_package(info: object) -> None:
    """A package as the release recorded it: a plain file name in the run's pack dir, and its sha256."""
    if not isinstance(info, Mapping):
        raise ValueError(f"{info!r} is not a package record")
    name, digest = info.get("name"), info.get("sha256")
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or any(ord(c) < 32 for c in name):
        raise ValueError(f"{name!r} is not a package file name")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ValueError(f"{digest!r} is not a sha256")


def check_header_shape(path: Path, header: Mapping[str, Any]) -> None:
    """JournalError unless the header holds what rollback and resume need."""
    problems = []
    layout = header.get("layout")
    if not isinstance(layout, Mapping) or not all(
        isinstance(layout.get(k), str) for k in ("install_path", "install_user", "upgrade_dir", "backup_dir")
    ):
        problems.append("layout")
    hosts = header.get("hosts")
    if not isinstance(hosts, list) or not all(
        isinstance(h, Mapping) and isinstance(h.get("name"), str) and isinstance(h.get("user"), str)
        for h in hosts
    ):
        problems.append("hosts")
    plan = header.get("plan")
    if not isinstance(plan, list) or not all(
        isinstance(p, Mapping)
        and all(isinstance(p.get(k), str) for k in ("host", "service", "printed", "new_version"))
        for p in plan
    ):
        problems.append("plan")
    release = header.get("release")
    if not isinstance(release, Mapping) or not isinstance(release.get("packages"), Mapping):
        problems.append("release")
    if not _valid_config_record(header.get("config")):
        problems.append("config")
    if not _valid_hooks_record(header.get("hooks")) or not _valid_names(header.get("hook_env_exclude")):
        problems.append("hooks")
    if problems:
        raise JournalError(
            f"{path} is not the status file of an upgrade run: its header lacks a valid {', '.join(problems)}"
        )


def _valid_hooks_record(record: object) -> bool:
    """Whether a header's `hooks` is absent (an older file) or a proper Hooks record."""
    if record is None:
        return True
    try:
        Hooks.from_record(record)
    except ValueError:
        return False
    return True


def _valid_names(names: object) -> bool:
    return names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names))


def _valid_config_record(record: object) -> bool:
    """Whether a header's `config` is absent (an older file) or a proper ConfigFile record."""
    if record is None:
        return True
    if not isinstance(record, Mapping):
        return False
    try:
        ConfigFile.from_record(record)
    except ValueError:
        return False
    return True
