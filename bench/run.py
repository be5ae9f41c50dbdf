"""scmflow against plain OpenSSH on real sshd test hosts; prints one `name: ratio` line per figure.

    sudo .venv/bin/python bench/run.py [--hosts 8] [--scale-hosts 32] [--pad-mb 200] [--repeat 3]

Needs root (tests/hosts.py gives each host its own network and mount namespace and sshd),
OpenSSH's ssh, scp and sshd, and the dev virtualenv. Figures, each scmflow / the baseline:

  send_1_host       distribute() of a --pad-mb release to one host / one `scp` of the same files
  send_H_hosts      the same to all H hosts / H `scp` at once
  upgrade_H_p1      `scm.py cluster --upgrade --unattended --allow-outage --parallel 1`, H hosts x
                    all services / bench/baseline.sh (the same remote steps over ssh, one at a time)
  upgrade_H_all     the same, all H hosts of a stage at once, against the baseline H at a time
  upgrade_S_all     the same with S hosts, all at once
  upgrade_S_p8      S hosts, 8 at a time on both sides
  check_H_vs_1      `--dry-run` (connect, check, plan) of H hosts / of one host
  memory_S_vs_H     peak RSS of the scm.py process upgrading S hosts / H hosts, all at once

Each upgrade figure is followed (on stderr) by a breakdown of both sides' time: scm.py's CPU
by thread and the host agents' CPU (bench/sampler.py), the rest of the hosts' CPU (sshd,
sudo, ctl scripts, nodes), and how long the cores sat idle.

Each line also gives the machine's CPU use, and for a figure the hosts' CPU may bound, the
floor that CPU alone sets (machine CPU seconds / cores, over the baseline): no tool doing
that work on this machine's cores can beat it. --profile adds, per timed run, the CPU of
every command that ended in it (process accounting), which says where that CPU went.

Every connection (scmflow's, and the ControlMaster that scp and the baseline multiplex over)
is opened before the clock starts for sends; upgrades and checks are timed as an operator
sees them (the whole command). Times are medians of --repeat runs (--upgrade-repeat for
upgrades); the hosts share this machine's CPUs with scmflow, so the machine must be idle.
Logins are as root, as in the vendor's upgrade.cfg; each host's /root/.bashrc is the stock
one (/etc/skel) unless --keep-root-bashrc, since a heavy one taxes every command of both sides.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import acct, cgroups, sampler  # noqa: E402
from bench.figures import (  # noqa: E402
    NO_METERS,
    Figure,
    Meters,
    cpu_floor,
    cpu_note,
    median_time,
    note,
    note_profile,
    run_measured,
)
from bench.testbed import (  # noqa: E402
    NEW,
    OLD,
    Releases,
    Run,
    build_releases,
    check_upgraded,
    empty_upgrade_dirs,
    full_topology,
    reinstall,
    scenario,
    scm_ok,
    ssh_masters,
    subset,
    use_stock_bashrc,
)
from scmflow import sandbox  # noqa: E402
from scmflow.actions import RemoteLayout  # noqa: E402
from scmflow.catalog import Catalog, load_catalog  # noqa: E402
from scmflow.distribute import distribute  # noqa: E402
from scmflow.fanout import DEFAULT_PARALLEL_SSH  # noqa: E402
from scmflow.plan import Pair  # noqa: E402
from scmflow.release import Release, load_release  # noqa: E402
from scmflow.sandbox import Topology  # noqa: E402
from scmflow.session.base import Session  # noqa: E402
from scmflow.session.ssh import connect_all  # noqa: E402
from scmflow.session.targets import SSHOptions, SSHTarget  # noqa: E402
from tests.e2e.sandbox_cluster import Scenario, outer_install  # noqa: E402
from tests.hosts import TestCluster, TestHost, missing_prerequisite, start_cluster  # noqa: E402

BASELINE = Path(__file__).resolve().parent / "baseline.sh"


# --------------------------------------------------------------------------- 1, 2: package send


def host_pairs(hosts: Sequence[TestHost], topology: Topology, catalog: Catalog) -> dict[str, list[Pair]]:
    """Every service of the topology on every host, as plan pairs."""
    return {
        h.address: [Pair(h.address, s, catalog.get(s).printed, OLD, NEW, ()) for s in topology.services]
        for h in hosts
    }


def time_distribute(
    sessions: dict[str, Session], pairs: dict[str, list[Pair]], release: Release, repeat: int
) -> float:
    """Median time of distribute() into a fresh upgrade dir (connections already open)."""
    hosts = list(pairs)
    runs = iter(range(repeat))

    def send() -> None:
        n = next(runs)
        layout = RemoteLayout(
            install_path="/opt/sequoiacm", install_user="scmadmin",
            upgrade_dir=f"/opt/upgrade/bench/send-{n}", backup_dir=f"/opt/backup/bench/send-{n}",
        )
        distribute(
            {h: sessions[h] for h in hosts}, pairs, release, layout,
            login_users=dict.fromkeys(hosts, "root"), fresh=True, parallel=16,
            on_host_start=lambda host: None,
        )

    return median_time(send, repeat)


def time_scp(options: list[str], files: dict[str, list[Path]], repeat: int) -> float:
    """Median time of `ssh mkdir` then one scp per host, all hosts at once, into a fresh directory."""
    timings = []
    for n in range(repeat):
        target = f"/opt/upgrade/scp-{n}"
        started = time.monotonic()
        copies = [
            subprocess.Popen(
                f"ssh {shlex.join(options)} root@{host} 'mkdir -p {target}' && "
                f"scp -q {shlex.join(options)} {shlex.join(map(str, paths))} root@{host}:{target}/",
                shell=True,
            )
            for host, paths in files.items()
        ]
        if any(c.wait() != 0 for c in copies):
            raise SystemExit("bench: scp failed")
        timings.append(time.monotonic() - started)
    return statistics.median(timings)


def measure_sends(
    cluster: TestCluster, hosts: Sequence[TestHost], releases: Releases, work: Path, repeat: int
) -> tuple[float, float]:
    """(scmflow, scp) median seconds to send every host the big release's packages."""
    catalog = load_catalog()
    topology = full_topology(catalog)
    release = load_release(releases.big, catalog, topology.services, work_dir=work / "big-nonservice")
    pairs = host_pairs(hosts, topology, catalog)
    files = {h: sorted({release.package_for(p.service).path for p in ps}) for h, ps in pairs.items()}
    options = SSHOptions(
        known_hosts=(cluster.known_hosts,), key_filenames=(cluster.client_key,), use_agent=False
    )
    sessions = connect_all([SSHTarget(h.address) for h in hosts], options)
    try:
        ours = time_distribute(sessions, pairs, release, repeat)
    finally:
        for session in sessions.values():
            session.close()
    empty_upgrade_dirs(hosts)
    with ssh_masters(cluster, hosts) as ssh_options:
        theirs = time_scp(ssh_options, files, repeat)
    empty_upgrade_dirs(hosts)
    return ours, theirs


# --------------------------------------------------------------------------- 3: full upgrade


def baseline_plan(hosts: Sequence[TestHost], topology: Topology, release: Release, catalog: Catalog) -> str:
    """bench/baseline.sh's plan: one line per pair, stage by stage (service by service)."""
    lines = []
    for index, service in enumerate(catalog.ordered()):
        if service.name not in topology.services:
            continue
        nodes = [n for n in topology.nodes_of(service.name) if n.running]
        ports = " ".join(str(n.port) for n in nodes if n.port is not None)
        daemon = "1" if any(n.port is None for n in nodes) else "0"
        for host in hosts:
            fields = [
                f"{index:02d}", host.address, service.name, service.dir, service.ctl or "",
                " ".join(service.stop_args), ports, daemon, str(release.package_for(service.name).path),
                " ".join(service.replace), service.version_file, NEW,
            ]
            lines.append("|".join(fields))
    return "\n".join(lines) + "\n"


def run_baseline(s: Scenario, plan: Path, parallel: int, meters: Meters = NO_METERS) -> Run:
    """bench/baseline.sh's wall and machine CPU seconds (and profile); it must succeed."""
    argv = ["bash", str(BASELINE), str(plan), str(parallel), str(s.cluster.client_key),
            str(s.cluster.known_hosts)]
    m = run_measured(argv, meters, capture_output=True, text=True)
    if m.done.returncode != 0:
        output = m.done.stdout[-2000:] + m.done.stderr[-2000:]
        raise SystemExit(f"bench: baseline failed ({m.done.returncode}):\n{output}")
    return Run(m.seconds, 0.0, 0.0, 0, "", m.machine_cpu, m.profile, None, m.command_cpu, m.hosts_cpu)


@dataclass(frozen=True)
class Timing:
    """Medians over repeated runs of one thing, and the last run's profile and CPU breakdown."""

    seconds: float
    cpu_seconds: float
    machine_cpu: float
    profile: acct.Profile | None = None
    connections: tuple[int, ...] = ()
    max_rss_mb: float = 0.0
    usage: sampler.Usage | None = None
    command_cpu: float | None = None
    hosts_cpu: float | None = None

    def breakdown(self) -> str:
        """Where the run's time went: the control side, the hosts (the agents among them), and
        the time left over, which is waiting (or CPU that other work on this machine took)."""
        cores = os.cpu_count() or 1
        parts = [f"wall {self.seconds:.1f} s"]
        if self.command_cpu is not None:
            parts.append(f"control side CPU {self.command_cpu:.1f} s")
        if self.usage is not None:
            parts.append(self.usage.line())
        if self.hosts_cpu is not None:
            parts.append(f"hosts CPU {self.hosts_cpu:.1f} s (sshd, sudo, agents, ctl, nodes)")
        if self.command_cpu is not None and self.hosts_cpu is not None:
            busy = self.command_cpu + self.hosts_cpu
            parts.append(f"both sides {busy:.1f} s = at least {busy / cores:.1f} s on {cores} cores, "
                         f"so {max(self.seconds - busy / cores, 0.0):.1f} s or more of waiting")
        else:
            parts.append(f"machine CPU {self.machine_cpu:.1f} s")
        return "; ".join(parts)


def medians(runs: Sequence[Run], connections: Sequence[int] = ()) -> Timing:
    """Median wall, scm.py CPU and machine CPU of `runs`; the last one's profile, RSS and usage."""
    return Timing(
        statistics.median(r.seconds for r in runs),
        statistics.median(r.cpu_seconds for r in runs),
        statistics.median(r.machine_cpu for r in runs),
        runs[-1].profile,
        tuple(connections),
        max(r.max_rss_mb for r in runs),
        runs[-1].usage,
        _median_of(r.command_cpu for r in runs),
        _median_of(r.hosts_cpu for r in runs),
    )


def _median_of(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def time_upgrade(
    s: Scenario, topology: Topology, parallel: int, repeat: int, meters: Meters
) -> Timing:
    """An unattended upgrade from a fresh 3.1.2 install; also SSH connections per host.

    `--allow-outage`: the baseline takes `parallel` hosts of a stage at once whatever they
    serve, and so does scmflow here (its availability guard would keep one node serving).
    `--parallel-ssh`: at least `parallel`, since the baseline opens every host's connection
    and sends every host its packages at once (scmflow's default is 16 hosts at a time).
    """
    runs = []
    connections: list[int] = []
    for _ in range(repeat):
        reinstall(s, topology)
        before = [h.accepted_connections() for h in s.cluster.hosts]
        args = s.upgrade_args(NEW, "--unattended", "--allow-outage", "--parallel", str(parallel),
                              "--parallel-ssh", str(max(parallel, DEFAULT_PARALLEL_SSH)))
        runs.append(scm_ok(s, args, meters))
        connections = [h.accepted_connections() - b for h, b in zip(s.cluster.hosts, before, strict=True)]
        check_upgraded(s, topology)
    return medians(runs, connections)


def time_baseline(
    s: Scenario, topology: Topology, plan: Path, parallel: int, repeat: int, meters: Meters
) -> Timing:
    """bench/baseline.sh from a fresh 3.1.2 install."""
    runs = []
    for _ in range(repeat):
        reinstall(s, topology)
        runs.append(run_baseline(s, plan, parallel, meters))
        check_upgraded(s, topology)
    return medians(runs)


@dataclass(frozen=True)
class UpgradeCase:
    """One upgrade figure: H hosts, scmflow and the baseline each `parallel` pairs at a time."""

    hosts: int
    parallel: int
    target: float | None

    @property
    def name(self) -> str:
        """`upgrade_8_p1`, `upgrade_32_all`."""
        at_once = "all" if self.parallel >= self.hosts else f"p{self.parallel}"
        return f"upgrade_{self.hosts}_{at_once}"


def upgrade_cases(hosts: int, scale: int) -> list[UpgradeCase]:
    """H hosts one at a time and all at once; S hosts all at once and 8 at a time."""
    cases = [UpgradeCase(hosts, 1, 1.1), UpgradeCase(hosts, hosts, 1.1)]
    if scale:
        cases.append(UpgradeCase(scale, scale, 1.2))
    if scale > 8:
        cases.append(UpgradeCase(scale, 8, None))
    return cases


def measure_upgrade(
    s: Scenario, case: UpgradeCase, topology: Topology, release: Release, repeat: int,
    meters: Meters,
) -> tuple[Figure, Timing]:
    """scmflow and the baseline side by side for `case`; the figure and scmflow's timing."""
    catalog = load_catalog()
    plan = s.work / "baseline.plan"
    plan.write_text(baseline_plan(s.cluster.hosts, topology, release, catalog))
    theirs = time_baseline(s, topology, plan, case.parallel, repeat, meters)
    note_profile(f"baseline, {case.name}", theirs.profile)
    ours = time_upgrade(s, topology, case.parallel, repeat, meters)
    note_profile(f"scmflow, {case.name}", ours.profile)
    note(f"  breakdown of scmflow, {case.name}: {ours.breakdown()}")
    note(f"  breakdown of the baseline, {case.name}: {theirs.breakdown()}")
    figure = Figure(
        case.name, ours.seconds, theirs.seconds,
        (f"scmflow --parallel {case.parallel}", f"baseline {case.parallel} at a time"), case.target,
        detail=f"scm.py's own CPU {ours.cpu_seconds:.2f} s, peak RSS {ours.max_rss_mb:.0f} MB; "
               f"{cpu_note(ours.machine_cpu, ours.seconds)} vs "
               f"{cpu_note(theirs.machine_cpu, theirs.seconds)}",
    )
    return figure, ours


# --------------------------------------------------------------------------- 4: check + plan


def time_check(s: Scenario, repeat: int, meters: Meters) -> Timing:
    """`--dry-run` (connect, check, plan, print)."""
    return medians([scm_ok(s, s.upgrade_args(NEW, "--dry-run"), meters) for _ in range(repeat)])


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=8, help="H: the send, check and upgrade figures' hosts")
    parser.add_argument("--scale-hosts", type=int, default=32, help="S: the scale figures' hosts (0: skip)")
    parser.add_argument("--pad-mb", type=int, default=200, help="size of the release sent by send_*")
    parser.add_argument("--repeat", type=int, default=3, help="runs per send and check figure")
    parser.add_argument("--upgrade-repeat", type=int, default=1, help="runs per upgrade figure")
    parser.add_argument("--keep-root-bashrc", action="store_true", help="log in with /root/.bashrc as it is")
    parser.add_argument("--only", default="send,check,upgrade,scale", help="figures to measure")
    parser.add_argument("--profile", action="store_true",
                        help="print the CPU of every command that ended in each timed run (acct(2))")
    return parser.parse_args(argv)


def measure(cluster: TestCluster, args: argparse.Namespace, work: Path, meters: Meters) -> list[Figure]:
    """Every figure asked for, in order; each is printed to stderr as soon as it is known."""
    only = set(args.only.split(","))
    h = args.hosts
    hosts = cluster.hosts[:h]
    releases = build_releases(work, args.pad_mb if "send" in only else 0)
    note(f"releases built in {work / 'releases'}")
    figures: list[Figure] = []

    def add(figure: Figure) -> None:
        figures.append(figure)
        note(figure.line())

    if "send" in only:
        ours, theirs = measure_sends(cluster, hosts[:1], releases, work, args.repeat)
        add(Figure("send_1_host", ours, theirs, ("scmflow", "scp"), 1.5))
        ours, theirs = measure_sends(cluster, hosts, releases, work, args.repeat)
        add(Figure(f"send_{h}_hosts", ours, theirs, ("scmflow", f"{h} x scp"), 1.5))
    catalog = load_catalog()
    topology = full_topology(catalog)
    if "check" in only:
        full = scenario(subset(cluster, h), releases, work / "check")
        reinstall(full, topology)
        one = scenario(subset(cluster, 1), releases, work / "one")
        many = time_check(full, args.repeat, meters)
        single = time_check(one, args.repeat, meters)
        add(Figure(f"check_{h}_vs_1", many.seconds, single.seconds, (f"{h} hosts", "1 host"), 2.0,
                   detail=f"scm.py's own CPU {many.cpu_seconds:.2f} s vs {single.cpu_seconds:.2f} s; "
                          f"{cpu_note(many.machine_cpu, many.seconds)} vs "
                          f"{cpu_note(single.machine_cpu, single.seconds)}; "
                          f"floor set by CPU {cpu_floor(many.machine_cpu) / single.seconds:.2f}"))
        note_profile(f"check, {h} hosts", many.profile)
        note_profile("check, 1 host", single.profile)
    cases = [c for c in upgrade_cases(h, args.scale_hosts)
             if ("upgrade" in only and c.hosts == h) or ("scale" in only and c.hosts != h)]
    if not cases:
        return figures
    release = load_release(releases.new, catalog, topology.services, work_dir=work / "new-nonservice")
    all_at_once: dict[int, Timing] = {}
    for case in cases:
        s = scenario(subset(cluster, case.hosts), releases, work / case.name)
        figure, timing = measure_upgrade(s, case, topology, release, args.upgrade_repeat, meters)
        add(figure)
        if case.parallel >= case.hosts:
            all_at_once[case.hosts] = timing
    if len(all_at_once) == 2:
        (small, small_run), (large, large_run) = sorted(all_at_once.items())
        add(Figure(f"memory_{large}_vs_{small}", large_run.max_rss_mb, small_run.max_rss_mb,
                   (f"{large} hosts", f"{small} hosts"), 1.5, unit="MB",
                   detail="peak RSS of scm.py upgrading all hosts at once"))
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    """Bring up the hosts, measure, print the figures; 1 when a target was missed."""
    args = parse_args(argv)
    reason = missing_prerequisite()
    if reason is not None:
        print(f"bench: test hosts cannot run here: {reason}", file=sys.stderr)
        return 2
    count = max(args.hosts, args.scale_hosts if "scale" in args.only else 0)
    work = Path(tempfile.mkdtemp(prefix="scmflow-bench-"))
    work.chmod(0o755)
    note(f"starting {count} test hosts")
    cluster = start_cluster(count)
    hosts = cgroups.make_group("hosts")
    try:
        if hosts is not None:
            for host in cluster.hosts:
                hosts.add(host.sshd_pid)
        if not args.keep_root_bashrc:
            use_stock_bashrc(cluster)
        meters = Meters(work / "acct" if args.profile else None, hosts)
        figures = measure(cluster, args, work, meters)
    finally:
        if hosts is not None:
            hosts.remove()
        for host in cluster.hosts:
            sandbox.kill_nodes(outer_install(host))
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)
    for figure in figures:
        print(figure.line())
    return 1 if any(f.target is not None and f.ratio > f.target for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
