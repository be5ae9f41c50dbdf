"""Logging in to the cluster over SSH: passwords (config, environment or asked) and connections."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from scmflow.catalog import Catalog
from scmflow.cli.cluster_flow import SessionOpener
from scmflow.cli.options import ClusterOptions
from scmflow.cli.ui import Printer, ask_password
from scmflow.config import StaleConfigError, UpgradeConfig, load_config, load_recorded_config
from scmflow.errors import ConfigError, UsageError
from scmflow.hosttable import HostConfig
from scmflow.runstate import HostEntry, ResumeState
from scmflow.session.base import Session
from scmflow.session.ssh import connect_all
from scmflow.session.targets import SSHOptions
from scmflow.sshconfig import load_client_config, resolve_target
from scmflow.upgrade import Connector

# (port, user, password) of a host; a None port leaves it to ~/.ssh/config.
Endpoint = tuple[int | None, str, str | None]


def resolve_passwords(hosts: Sequence[HostConfig], config_path: str = "") -> dict[str, str | None]:
    """Each host's password: literal, from the environment, or asked once per distinct user."""
    asked: dict[str, str] = {}
    out: dict[str, str | None] = {}
    for host in hosts:
        if host.password_source == "env":
            name = host.password_env or ""
            if name not in os.environ:
                raise ConfigError(
                    f"environment variable {name} is not set: Password env:{name} of host {host.name} "
                    f"reads the SSH password from it; export {name}=... before running, or change the cell",
                    path=config_path,
                    line=host.line or None,
                    field="Password",
                )
            out[host.name] = os.environ[name]
        elif host.password_source == "prompt":
            if host.user not in asked:
                asked[host.user] = ask_password(host.user)
            out[host.name] = asked[host.user]
        else:
            out[host.name] = host.password
    return out


def ssh_connector(endpoints: Mapping[str, Endpoint], options: ClusterOptions) -> Connector:
    """A Connector opening one SSH connection per host, verified host keys, in parallel.

    Each endpoint is (port, user, password) for a host name; ~/.ssh/config fills in the
    rest as `ssh` would (HostName, ProxyJump, IdentityFile, and Port when it is None).
    """
    ssh_options = SSHOptions(accept_new_host_keys=options.accept_new_host_keys)

    def connect(names: Sequence[str]) -> dict[str, Session]:
        client_config = load_client_config()
        targets = [
            resolve_target(
                client_config, n, port=endpoints[n][0], user=endpoints[n][1], password=endpoints[n][2]
            )
            for n in names
        ]
        sessions = connect_all(targets, ssh_options, parallel=options.parallel_ssh)
        return dict(sessions)

    return connect


def connect_endpoints(endpoints: Mapping[str, Endpoint], options: ClusterOptions) -> dict[str, Session]:
    """One SSH connection per endpoint."""
    return ssh_connector(endpoints, options)(list(endpoints))


@dataclass(frozen=True)
class SSHAccess:
    """The `cluster` command's HostAccess: SSH, with the passwords of the status file's hosts."""

    options: ClusterOptions
    catalog: Catalog
    printer: Printer

    def login(self, state: ResumeState, hosts: Sequence[str], *, ask: bool = True) -> SessionOpener:
        """Every password of `hosts` settled now; the connections open when the opener is called."""
        options = self.options if ask else replace(self.options, unattended=True)
        endpoints = status_endpoints(state, options, self.catalog, self.printer, hosts)
        return lambda: connect_endpoints(endpoints, self.options)


def status_endpoints(
    state: ResumeState, options: ClusterOptions, catalog: Catalog, printer: Printer, hosts: Sequence[str]
) -> dict[str, Endpoint]:
    """How to log in to the status file's `hosts`, every password known; no host is contacted.

    Passwords come from --upgrade-conf; without it, from the config the status file records
    if that file is unchanged; else they are asked on a terminal. When none of these works,
    a UsageError names the option to give, before anything is done.
    """
    entries = [e for e in state.hosts if e.name in hosts]
    config, why_not = _password_config(state, options, catalog, entries)
    if config is not None and options.upgrade_conf is None:
        printer.info(f"The SSH passwords come from the config recorded in the status file, {config.path}")
    rows = _config_rows(config, entries)
    found = resolve_passwords(list(rows.values()), config.path if config else "")
    unlisted = [e for e in entries if e.password_auth and e.name not in rows]
    asked = _ask_passwords(unlisted, options, printer, why_not)
    endpoints: dict[str, Endpoint] = {}
    for entry in entries:
        row = rows.get(entry.name)
        if row is not None:
            # an empty SshPort cell leaves the port to ~/.ssh/config, as the upgrade did
            endpoints[entry.name] = (entry.port if row.port_given else None, entry.user, found[row.name])
        else:
            password = asked.get(entry.user) if entry.password_auth else None
            endpoints[entry.name] = (entry.port, entry.user, password)
    return endpoints


def _password_config(
    state: ResumeState, options: ClusterOptions, catalog: Catalog, entries: Sequence[HostEntry]
) -> tuple[UpgradeConfig | None, str]:
    """The config to take passwords from, or None and why the recorded one cannot serve."""
    if options.upgrade_conf is not None:
        config = load_config(options.upgrade_conf, catalog)
        return config, f"{config.path} has no row for them"
    if not any(e.password_auth for e in entries):
        # key logins only: nothing to read, whatever became of the config since
        return None, ""
    if state.config is None:
        return None, "the status file records no config file: an older scmflow wrote it"
    try:
        config = load_recorded_config(state.config, catalog)
    except StaleConfigError as exc:
        return None, exc.message
    return config, f"{config.path} has no row for them"


def _config_rows(config: UpgradeConfig | None, entries: Sequence[HostEntry]) -> dict[str, HostConfig]:
    """The config's row of each entry that has one (host names match case-insensitively)."""
    if config is None:
        return {}
    names = {h.name.lower(): h for h in config.hosts}
    return {e.name: names[e.name.lower()] for e in entries if e.name.lower() in names}


def _ask_passwords(
    entries: Sequence[HostEntry], options: ClusterOptions, printer: Printer, why_not: str
) -> dict[str, str]:
    """Passwords no config supplies, asked once per user; UsageError when nobody can be asked.

    --unattended means no questions, so a password is asked only without it, on a terminal.
    """
    if not entries:
        return {}
    if options.unattended or not sys.stdin.isatty():
        logins = ", ".join(dict.fromkeys(f"{e.user}@{e.name}" for e in entries))
        because = "--unattended" if options.unattended else "there is no terminal"
        raise UsageError(
            f"the SSH password of {logins} is not in the status file and cannot be asked ({because}); "
            f"pass --upgrade-conf FILE ({why_not})"
        )
    if why_not:
        printer.warn(f"Asking for the SSH passwords: {why_not}")
    asked: dict[str, str] = {}
    for entry in entries:
        if entry.user not in asked:
            asked[entry.user] = ask_password(entry.user)
    return asked
