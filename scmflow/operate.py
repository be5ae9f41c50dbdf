"""The `cluster` command's flow, as the operator sees it: parse, check, show, confirm, run.

Part of the CLI layer (it prints through the Printer); the work is done by the core.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from scmflow.availability import StageLimit, single_host_warnings, stage_limits
from scmflow.availability import describe as describe_limit
from scmflow.catalog import Catalog
from scmflow.compatibility import load_compatibility
from scmflow.config import (
    StaleConfigError,
    UpgradeConfig,
    load_config,
    load_recorded_config,
    select_hosts,
    select_services,
)
from scmflow.errors import EXIT_OK, ConfigError, ScmflowError, UntrustedStatusFile, UsageError
from scmflow.header import check_run_header
from scmflow.hooks import dry_run_hook_lines
from scmflow.hosttable import HostConfig
from scmflow.journalreader import JournalContents, read_journal
from scmflow.lifecycle import ROLLBACK, Lifecycle, load_lifecycle
from scmflow.locks import clear_dead_host_locks, run_locks
from scmflow.outcome import run_records
from scmflow.plan import Pair
from scmflow.records import run_record
from scmflow.replay import replay
from scmflow.report import dry_run_steps, plan_lines, plan_warnings, rollback_steps
from scmflow.resume import ResumeSelection, fresh_pairs, reprobe_pairs, resume_upgrade, select_resume
from scmflow.rollback import (
    check_pairs,
    execute_rollback,
    needs_rollback,
    select_pairs,
)
from scmflow.runstate import (
    HostEntry,
    ResumeState,
    RunFailed,
    RunInterrupted,
    RunOutcome,
    StatusTrust,
    open_run,
    read_run,
    untrusted_message,
)
from scmflow.session.base import Session
from scmflow.session.ssh import connect_all
from scmflow.session.targets import SSHOptions
from scmflow.sshconfig import load_client_config, resolve_target
from scmflow.statusformat import FORMAT_VERSION
from scmflow.statuskey import key_path, load_key, load_or_create_key
from scmflow.trustview import authenticity_hint, trusted_values
from scmflow.upgrade import (
    CheckedCluster,
    Connector,
    RunSettings,
    Target,
    check_cluster,
    close_sessions,
    execute_upgrade,
    make_layout,
    reload_release,
)

if TYPE_CHECKING:
    from scmflow.cli import ClusterOptions, Printer

# (port, user, password) of a host; a None port leaves it to ~/.ssh/config.
Endpoint = tuple[int | None, str, str | None]
ROLLBACK_HINT = (
    "If you want to rollback successfully upgraded services, you need to specify the upgrade "
    "status file, file location:{path}"
)


def run_cluster(options: ClusterOptions, printer: Printer, *, catalog: Catalog) -> int:
    """`scm.py cluster ...`: the exit code."""
    if options.rollback:
        return _rollback(options, printer, catalog)
    if options.status_path is not None:
        return _resume(options, printer, catalog)
    return _upgrade(options, printer, catalog)


# -- passwords and connections -------------------------------------------------------------


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
                asked[host.user] = _ask_password(host.user)
            out[host.name] = asked[host.user]
        else:
            out[host.name] = host.password
    return out


def _ask_password(user: str) -> str:
    if not sys.stdin.isatty():
        raise ConfigError(
            f"the password of SSH user {user} is to be asked (Password -) but there is no "
            "terminal; use Password env:NAME instead",
            field="Password",
        )
    value: str = click.prompt(f"SSH password for {user}", hide_input=True, err=True)
    return value


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


def _state_locks(
    options: ClusterOptions, state: ResumeState, sessions: Mapping[str, Session], printer: Printer
) -> AbstractContextManager[None]:
    """The run locks for continuing or rolling back the run a status file records."""
    return run_locks(
        options.status_dir,
        sessions,
        upgrade_pack_path=_pack_base(state),
        admin_user=state.layout.admin_user,
        login_users={h.name: h.user for h in state.hosts},
        run_id=str(state.header.get("run_id", "")),
        force=options.break_lock,
        install_path=state.layout.install_path,
        warn=printer.warn,
    )


def _clear_dead_locks(
    options: ClusterOptions,
    state: ResumeState,
    catalog: Catalog,
    printer: Printer,
    hosts: Sequence[str],
    sessions: Mapping[str, Session] | None = None,
) -> None:
    """With nothing to do, still remove the host locks a dead run left (never in a dry run).

    Such a run takes no lock, so a dead run's would stay. No password is asked for this.
    """
    if options.dry_run or not hosts:
        return
    opened: Mapping[str, Session] = sessions or {}
    try:
        if sessions is None:
            quiet = replace(options, unattended=True)
            opened = _connect(_status_endpoints(state, quiet, catalog, printer, hosts), options)
        clear_dead_host_locks(
            opened,
            upgrade_pack_path=_pack_base(state),
            run_id=str(state.header.get("run_id", "")),
            warn=printer.warn,
            admin_user=state.layout.admin_user,
        )
    except ScmflowError as exc:
        printer.warn(f"The hosts' run locks were not checked for dead runs: {exc.message}")
    finally:
        if sessions is None:
            close_sessions(opened)


# -- upgrade ---------------------------------------------------------------------------------


def _load(options: ClusterOptions, printer: Printer, catalog: Catalog) -> UpgradeConfig:
    printer.info("Parsing the upgrade configuration...")
    assert options.upgrade_conf is not None
    config = load_config(options.upgrade_conf, catalog)
    for warning in config.warnings:
        printer.warn(warning)
    printer.info("Parse the upgrade configuration success")
    return config


def _target(config: UpgradeConfig, options: ClusterOptions, catalog: Catalog) -> Target:
    hosts = select_hosts(",".join(options.hosts), config) if options.hosts else config.hosts
    services = select_services(",".join(options.services), catalog) if options.services else config.services
    return Target(
        install_path=config.install_path,
        install_user=config.install_user,
        hosts=tuple(
            HostEntry(
                name=h.name,
                port=h.port if h.port_given else None,
                user=h.user,
                java_home=h.java_home,
                password_auth=h.password_source != "none",
            )
            for h in hosts
        ),
        services=services,
        upgrade_pack_path=config.upgrade_pack_path,
        backup_path=config.backup_path,
        config=config.file,
        hooks=config.hooks,
        secret_names=tuple(h.password_env for h in config.hosts if h.password_env),
    )


def _upgrade(options: ClusterOptions, printer: Printer, catalog: Catalog) -> int:
    from scmflow.cli import interrupt_handler, open_run_log

    config = _load(options, printer, catalog)
    target = _target(config, options, catalog)
    selected = [config.host(h.name) for h in target.hosts]
    passwords = resolve_passwords(selected, config.path)
    endpoints = {h.name: (h.port if h.port_given else None, h.user, passwords[h.name]) for h in selected}
    compatibility = load_compatibility(catalog=catalog)
    lifecycle = load_lifecycle()
    if not options.dry_run:
        open_run_log(options.status_dir, printer)
    with tempfile.TemporaryDirectory(prefix="scmflow-") as work:
        checked = check_cluster(
            target,
            release_dir=options.release_dir,
            catalog=catalog,
            compatibility=compatibility,
            connect=ssh_connector(endpoints, options),
            reporter=printer,
            work_dir=Path(work),
            parallel_ssh=options.parallel_ssh,
        )
        try:
            olds = [p.old_version for p in checked.plan.pairs if p.old_version]
            for notice in compatibility.notices_for(olds, checked.plan.release_version):
                printer.warn(f"Upgrade note: {notice}")
            if not _show_plan(checked, options, printer, catalog):
                return EXIT_OK
            run_id = uuid.uuid4().hex
            # made on first use: every record of the status file is signed with it
            status_key = load_or_create_key(key_path(options.status_key))
            settings = _settings(options, _upgrade_start_timeout(options))
            locks = run_locks(
                options.status_dir,
                {h: checked.sessions[h] for h in checked.plan.hosts()},
                upgrade_pack_path=target.upgrade_pack_path,
                admin_user=target.admin_user,
                login_users={h.name: h.user for h in target.hosts},
                run_id=run_id,
                force=options.break_lock,
                install_path=target.install_path,
                warn=printer.warn,
            )
            with locks, interrupt_handler(printer) as stop:
                try:
                    outcome = execute_upgrade(
                        checked,
                        run_id=run_id,
                        status_dir=options.status_dir,
                        argv=sys.argv,
                        catalog=catalog,
                        lifecycle=lifecycle,
                        settings=settings,
                        reporter=printer,
                        stop=stop,
                        status_key=status_key,
                    )
                except (RunFailed, RunInterrupted) as exc:
                    return _report_run_error(printer, exc)
        finally:
            checked.close()
    return _report_outcome(printer, outcome)


def _settings(options: ClusterOptions, start_timeout: int) -> RunSettings:
    return RunSettings(
        parallel=options.parallel,
        parallel_ssh=options.parallel_ssh,
        start_timeout=start_timeout,
        max_unavailable=options.max_unavailable,
        allow_outage=options.allow_outage,
        pause_after=options.pause_after,
    )


def _report_outcome(printer: Printer, outcome: RunOutcome) -> int:
    """The closing line of an upgrade or resume that did not fail: success or a pause."""
    path = outcome.status_path
    if outcome.paused:
        lifecycle = load_lifecycle()
        planned = [p for p in replay(read_journal(path), lifecycle).values() if p.in_plan]
        verified = sum(1 for p in planned if p.state == lifecycle.done)
        printer.info(
            f"Paused after {verified} of {len(planned)} pairs; resume with: "
            f"scm.py cluster --upgrade --upgrade-status-path {path}"
        )
        return EXIT_OK
    printer.info(f"Upgrade service success, generate upgrade status file success, file location:{path}")
    return EXIT_OK


def _report_run_error(printer: Printer, exc: RunFailed | RunInterrupted) -> int:
    printer.error(exc.message)
    printer.info(ROLLBACK_HINT.format(path=exc.status_path))
    return exc.exit_code


def _show_plan(checked: CheckedCluster, options: ClusterOptions, printer: Printer, catalog: Catalog) -> bool:
    """Print warnings and the plan; True when the operator wants it run."""
    from scmflow.cli import confirm, echo_json

    plan = checked.plan
    limits = stage_limits(plan.pairs, _settings(options, 0).guard)
    for warning in plan_warnings(plan) + single_host_warnings(limits):
        printer.warn(warning)
    if options.output == "json":
        document = {
            "action": "upgrade",
            **plan.to_record(),
            "start_timeout": _upgrade_start_timeout(options),
            "stages": [limit.to_record() for limit in limits],
            "pause_after": options.pause_after,
        }
        if options.dry_run:
            document["steps"] = _steps(checked, catalog, options)
        echo_json(document)
    if not plan.pairs:
        printer.info("No service need to upgrade")
        return False
    # the stages first: the vendor's plan block (order, pairs, question) stays in one piece
    _print_limits(printer, limits, options)
    printer.info("Prepare to upgrade services in this order")
    for line in plan_lines(plan.pairs):
        printer.info(line)
    if options.dry_run:
        if options.output == "text":
            _print_steps(printer, _steps(checked, catalog, options))
        printer.info("Dry run: nothing was changed")
        return False
    if options.unattended:
        return True
    if not confirm(printer, "Whether to upgrade?"):
        printer.info("Upgrade cancelled, nothing was changed")
        return False
    return True


def _steps(checked: CheckedCluster, catalog: Catalog, options: ClusterOptions) -> dict[str, list[str]]:
    layout = make_layout(checked.target, "<timestamp>", _upgrade_start_timeout(options))
    hooks = checked.target.hooks
    return {
        pair.label(): dry_run_hook_lines(hooks, "pre_stop")
        + dry_run_steps(pair, catalog, layout, checked.release.package_for(pair.service).name)
        + dry_run_hook_lines(hooks, "post_verify")
        for pair in checked.plan.pairs
    }


def _print_limits(printer: Printer, limits: Sequence[StageLimit], options: ClusterOptions) -> None:
    """One line per stage: hosts, how many at once, whether a node keeps serving; and the pause."""
    for limit in limits:
        printer.info(describe_limit(limit))
    if options.pause_after is not None:
        printer.info(f"The run pauses once {options.pause_after} pairs are verified (--pause-after)")


def _print_steps(printer: Printer, steps: Mapping[str, Sequence[str]]) -> None:
    for label, lines in steps.items():
        printer.info(f"Dry run: {label}")
        for line in lines:
            printer.info(f"    {line}")


def _upgrade_start_timeout(options: ClusterOptions) -> int:
    from scmflow.cli import DEFAULT_START_TIMEOUT

    return options.start_timeout if options.start_timeout is not None else DEFAULT_START_TIMEOUT


# -- resume and rollback -----------------------------------------------------------------------


def _open_status(options: ClusterOptions, printer: Printer) -> ResumeState | None:
    """The status file, opened to continue it; None when the operator chose not to trust it.

    Before any host is contacted: a file that this machine's status key did not write is
    refused (UntrustedStatusFile, exit 2) unless --trust-status-file, and then only after
    its hosts, users and paths were shown (and accepted, unless --unattended). Either way
    every header value passes upgrade.cfg's validators (open_run).
    """
    assert options.status_path is not None
    path = options.status_path
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise UsageError(f"upgrade status file {path} {what}")
    where = key_path(options.status_key)
    key = load_key(where)
    contents = read_journal(path, key=key)
    accepted: bytes | None = None
    if not contents.authenticity.ok:
        if not options.trust_status_file:
            hint = authenticity_hint(contents.authenticity, where)
            raise UntrustedStatusFile(
                f"{untrusted_message(path, contents.authenticity)}{hint}; nothing was done "
                "(to use it anyway, check it and pass --trust-status-file)"
            )
        if not _accept_untrusted(path, contents, options, printer):
            return None
        accepted = contents.digests[0]
        if key is None and contents.format_version >= FORMAT_VERSION:
            key = load_or_create_key(where)  # what is appended to a signed file is signed too
    trust = StatusTrust(key=key, accepted_header=accepted)
    # a dry run reads the file and changes no byte of it (not even a torn tail's repair)
    state = read_run(path, trust=trust) if options.dry_run else open_run(path, trust=trust)
    printer.info(f"Read the upgrade status file {path}: {len(state.pairs)} planned pairs")
    return _with_start_timeout(state, options, printer)


def _with_start_timeout(state: ResumeState, options: ClusterOptions, printer: Printer) -> ResumeState:
    """The state with --start-timeout in force when given, else the recorded value; says which."""
    recorded = state.layout.start_timeout
    if options.start_timeout is None or options.start_timeout == recorded:
        printer.info(f"Node start timeout: {recorded} s, as the run recorded it (--start-timeout changes it)")
        return state
    given = options.start_timeout
    printer.info(f"Node start timeout: {given} s (--start-timeout; the run recorded {recorded} s)")
    return replace(state, layout=replace(state.layout, start_timeout=options.start_timeout))


def _accept_untrusted(
    path: Path, contents: JournalContents, options: ClusterOptions, printer: Printer
) -> bool:
    """--trust-status-file: show what the file would have done, then ask (on stderr) unless unattended."""
    from scmflow.cli import confirm

    check_run_header(path, contents.header)  # nothing unvalidated reaches the terminal
    printer.warn(
        f"{untrusted_message(path, contents.authenticity)}; --trust-status-file uses it anyway. It names:",
        err=True,
    )
    for line in trusted_values(contents.header):
        printer.warn(f"    {line}", err=True)
    if options.unattended or confirm(printer, "Whether to use this status file?", err=True):
        return True
    printer.info("The status file was not used, nothing was changed", err=True)
    return False


def _status_endpoints(
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
            asked[entry.user] = _ask_password(entry.user)
    return asked


def _connect(endpoints: Mapping[str, Endpoint], options: ClusterOptions) -> dict[str, Session]:
    """One SSH connection per endpoint."""
    return ssh_connector(endpoints, options)(list(endpoints))


def _resume(options: ClusterOptions, printer: Printer, catalog: Catalog) -> int:
    from scmflow.cli import confirm, echo_json, interrupt_handler, open_run_log

    if options.upgrade_conf is not None:
        printer.info(
            f"Resuming the run recorded in {options.status_path}; {options.upgrade_conf} only "
            "supplies the SSH passwords (the run's hosts and services come from the status file)"
        )
    state = _open_status(options, printer)
    if state is None:
        return EXIT_OK
    if options.upgrade_conf is not None:
        _check_same_cluster(state, load_config(options.upgrade_conf, catalog))
    selection = select_resume(state, hosts=options.hosts, services=options.services, catalog=catalog)
    for pair in selection.kept:
        printer.info(
            f"Kept rolled back by --rollback (name it with --host/--service to redo it): {pair.label()}"
        )
    if not selection.pairs:
        return _nothing_to_resume(options, state, selection, catalog, printer)
    steps = _resume_steps(state, selection.pairs, catalog) if options.dry_run else {}
    limits = stage_limits(selection.pairs, _settings(options, 0).guard)
    for warning in single_host_warnings(limits):
        printer.warn(warning)
    if options.output == "json":
        document = _status_plan_document("resume", state, selection.pairs, steps)
        document["stages"] = [limit.to_record() for limit in limits]
        document["pause_after"] = options.pause_after
        echo_json(document)
    _print_limits(printer, limits, options)
    printer.info("Prepare to resume the upgrade of these services in this order")
    for pair in selection.pairs:
        printer.info(f"{pair.label()} ({_state_word(state, pair)})")
    if options.dry_run:
        if options.output == "text":
            _print_steps(printer, steps)
        printer.info("Dry run: nothing was changed")
        return EXIT_OK
    # passwords first: a run that cannot log in stops here, before the question and any change
    hosts = list(dict.fromkeys(p.host for p in selection.pairs))
    endpoints = _status_endpoints(state, options, catalog, printer, hosts)
    if not options.unattended and not confirm(printer, "Whether to resume the upgrade?"):
        printer.info("Resume cancelled, nothing was changed")
        return EXIT_OK
    open_run_log(options.status_dir, printer)
    with tempfile.TemporaryDirectory(prefix="scmflow-") as work:
        release_dir = options.release_dir if options.release_dir_given else None
        release = reload_release(state.header, release_dir, catalog, Path(work))
        sessions = _connect(endpoints, options)
        try:
            with _state_locks(options, state, sessions, printer), interrupt_handler(printer) as stop:
                # what the hosts run now, not what the original check found (exit 2 if changed)
                probed = reprobe_pairs(
                    state,
                    fresh_pairs(state, selection.pairs),
                    sessions=sessions,
                    catalog=catalog,
                    parallel=options.parallel_ssh,
                )
                try:
                    outcome = resume_upgrade(
                        state,
                        [probed.get(p.key, p) for p in selection.pairs],
                        sessions=sessions,
                        release=release,
                        catalog=catalog,
                        lifecycle=load_lifecycle(),
                        settings=_settings(options, state.layout.start_timeout),
                        reporter=printer,
                        stop=stop,
                    )
                except (RunFailed, RunInterrupted) as exc:
                    return _report_run_error(printer, exc)
        finally:
            close_sessions(sessions)
    return _report_outcome(printer, outcome)


def _nothing_to_resume(
    options: ClusterOptions,
    state: ResumeState,
    selection: ResumeSelection,
    catalog: Catalog,
    printer: Printer,
) -> int:
    from scmflow.cli import echo_json

    if options.output == "json":
        echo_json(_status_plan_document("resume", state, [], {}))
    if selection.kept:
        printer.info(f"No pair to resume in {options.status_path}")
        return EXIT_OK
    if selection.named:
        printer.info(f"Every named pair of {options.status_path} is already upgraded; nothing to resume")
        return EXIT_OK
    if not options.dry_run:
        _close_finished_run(state)
    printer.info(f"Every pair of {options.status_path} is already upgraded; nothing to resume")
    _clear_dead_locks(options, state, catalog, printer, [h.name for h in state.hosts])
    return EXIT_OK


def _check_same_cluster(state: ResumeState, config: UpgradeConfig) -> None:
    """UsageError unless --upgrade-conf describes the cluster the status file records."""
    configured = {h.name.lower() for h in config.hosts}
    missing = [h.name for h in state.hosts if h.name.lower() not in configured]
    if config.install_path != state.layout.install_path or missing:
        what = (
            f"hosts {', '.join(missing)} are not in it"
            if missing
            else f"its InstallPath {config.install_path} is not {state.layout.install_path}"
        )
        raise UsageError(
            f"{config.path} is not the config of the run in {state.path}: {what}; resume takes the "
            "run from the status file, so give that run's config or none"
        )


def _resume_steps(state: ResumeState, pairs: Sequence[Pair], catalog: Catalog) -> dict[str, list[str]]:
    """Per pair, the rollback it needs first (if any) and the upgrade steps it will take."""
    lifecycle = state.lifecycle
    packages = _recorded_packages(state.header)
    out: dict[str, list[str]] = {}
    for pair in pairs:
        steps: list[str] = []
        current = _current_state(state, pair)
        if current not in (*lifecycle.clean(), lifecycle.done):
            steps += rollback_steps(pair, catalog, state.layout, _rollback_action(lifecycle, current))
            steps += dry_run_hook_lines(state.hooks, "post_rollback")
        package = packages.get(pair.service, "(no package recorded)")
        steps += dry_run_hook_lines(state.hooks, "pre_stop")
        steps += dry_run_steps(pair, catalog, state.layout, package)
        steps += dry_run_hook_lines(state.hooks, "post_verify")
        out[pair.label()] = steps
    return out


def _rollback_steps(state: ResumeState, pairs: Sequence[Pair], catalog: Catalog) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for pair in pairs:
        action = _rollback_action(state.lifecycle, _current_state(state, pair))
        steps = rollback_steps(pair, catalog, state.layout, action)
        out[pair.label(reverse=True)] = steps + dry_run_hook_lines(state.hooks, "post_rollback")
    return out


def _current_state(state: ResumeState, pair: Pair) -> str:
    """The state a resume or rollback acts from: failed for a pair caught mid-step."""
    return state.lifecycle.failed if pair.key in state.in_flight else state.state_of(pair)


def _rollback_action(lifecycle: Lifecycle, state: str) -> str:
    edge = lifecycle.edge(ROLLBACK, state)
    return edge.action if edge is not None and edge.action else "restore"


def _status_plan_document(
    action: str, state: ResumeState, pairs: Sequence[Pair], steps: Mapping[str, list[str]]
) -> dict[str, Any]:
    """The JSON plan of a resume or rollback (`--output json`), like the upgrade's."""
    document: dict[str, Any] = {
        "action": action,
        "status_file": str(state.path),
        "release_version": state.header.get("release", {}).get("version"),
        "start_timeout": state.layout.start_timeout,
        "pairs": [{**p.to_record(), "state": _state_word(state, p)} for p in pairs],
    }
    if steps:
        document["steps"] = dict(steps)
    return document


def _close_finished_run(state: ResumeState) -> None:
    """Record success for a run that was killed or interrupted after its last pair was verified.

    Otherwise the file would read "interrupted" for good although every pair is upgraded.
    """
    journal = state.writer()
    runs = run_records(read_journal(journal.path))
    if not runs or runs[-1].get("detail", {}).get("result") != "success":
        journal.append(run_record("resume", "success"))


def _state_word(state: ResumeState, pair: Pair) -> str:
    if pair.key in state.in_flight:
        return f"interrupted during {state.in_flight[pair.key]}"
    word = state.state_of(pair)
    if state.explicitly_rolled_back(pair):
        return "rolled_back by --rollback"
    return word


def _rollback(options: ClusterOptions, printer: Printer, catalog: Catalog) -> int:
    from scmflow.cli import confirm, echo_json, interrupt_handler, open_run_log

    state = _open_status(options, printer)
    if state is None:
        return EXIT_OK
    candidates, warnings = select_pairs(
        state, hosts=options.hosts, services=options.services, catalog=catalog
    )
    for warning in warnings:
        printer.warn(warning)
    chosen_hosts = list(dict.fromkeys(p.host for p in candidates))
    candidates = [p for p in candidates if needs_rollback(state, p)]
    if not candidates:
        if options.output == "json":
            echo_json(_status_plan_document("rollback", state, [], {}))
        printer.info("No service need to rollback")
        _clear_dead_locks(options, state, catalog, printer, chosen_hosts)
        return EXIT_OK
    hosts = list(dict.fromkeys(p.host for p in candidates))
    sessions = _connect(_status_endpoints(state, options, catalog, printer, hosts), options)
    try:
        selection = check_pairs(
            state, candidates, sessions=sessions, catalog=catalog, parallel=options.parallel_ssh
        )
        for warning in selection.warnings:
            printer.warn(warning)
        steps = _rollback_steps(state, selection.pairs, catalog) if options.dry_run else {}
        if options.output == "json":
            echo_json(_status_plan_document("rollback", state, selection.pairs, steps))
        if not selection.pairs:
            printer.info("No service need to rollback")
            _clear_dead_locks(options, state, catalog, printer, hosts, sessions)
            return EXIT_OK
        printer.info("prepare to rollback services in this order")
        for line in plan_lines(selection.pairs, reverse=True):
            printer.info(line)
        if options.dry_run:
            if options.output == "text":
                _print_steps(printer, steps)
            printer.info("Dry run: nothing was changed")
            return EXIT_OK
        if not options.unattended and not confirm(printer, "Whether to rollback?"):
            printer.info("Rollback cancelled, nothing was changed")
            return EXIT_OK
        open_run_log(options.status_dir, printer)
        packages = _recorded_packages(state.header)
        with _state_locks(options, state, sessions, printer), interrupt_handler(printer) as stop:
            try:
                outcome = execute_rollback(
                    state,
                    selection.pairs,
                    sessions=sessions,
                    release_packages=packages,
                    catalog=catalog,
                    lifecycle=load_lifecycle(),
                    parallel=options.parallel,
                    reporter=printer,
                    stop=stop,
                )
            except RunInterrupted as exc:
                return _report_run_error(printer, exc)
            except RunFailed as exc:
                printer.error(exc.message)
                printer.info(f"Rerun the rollback with the same status file to finish it:{exc.status_path}")
                return exc.exit_code
    finally:
        close_sessions(sessions)
    printer.info(f"Rollback service success, upgrade status file location:{outcome.status_path}")
    return EXIT_OK


def _pack_base(state: ResumeState) -> str:
    """The upgrade pack base dir the run used (parent of its upgrade-<stamp> dir)."""
    return state.layout.upgrade_dir.rstrip("/").rsplit("/", 1)[0] or "/"


def _recorded_packages(header: Mapping[str, Any]) -> dict[str, str]:
    packages = header.get("release", {}).get("packages", {})
    return {service: str(info["name"]) for service, info in packages.items()}
