"""The daemon: `scmd.sh start|stop|status`, one process whose command lives in a crontab file."""

from __future__ import annotations

import os
import sys
import time

from .faults import Faults
from .files import jar_version, make_dirs, read_pid, read_text, remove_pid, unlink, write_pid, write_text
from .pack import Pack, listed_name
from .procs import is_daemon_argv, live_cmdline, spawn_detached, terminate
from .tool import EMPTY_OUT, INVALID_ARG, STOP_GRACE_SECONDS, SUCCESS, CtlError


def ctl_daemon(pack: Pack, ctl: str, args: list[str]) -> int:
    """`start`, `stop` and `status` of the daemon (no ports, one process)."""
    if len(args) != 1 or args[0] not in ("start", "stop", "status"):
        raise CtlError(f"{ctl}: give one command: start, stop or status", INVALID_ARG)
    daemon = Daemon(pack)
    if args[0] == "start":
        daemon.start()
        return SUCCESS
    if args[0] == "stop":
        daemon.stop()
        return SUCCESS
    pid = daemon.pid()
    sys.stdout.write(f"{daemon.name} ({pid if pid is not None else '-'})\n")
    return SUCCESS if pid is not None else EMPTY_OUT


class Daemon:
    """The daemon: its command lives in `conf/.crontab.properties`, its pid in `log/`."""

    def __init__(self, pack: Pack) -> None:
        self.pack = pack
        self.service = pack.services[0]
        self.name = listed_name(self.service)
        self.crontab = os.path.join(pack.root, "conf", ".crontab.properties")
        self.pid_file = os.path.join(pack.root, "log", "scmd.pid")

    def command(self) -> list[str] | None:
        """The command of the `linuxCron` line (between `nohup` and `>`), or None."""
        try:
            text = read_text(self.crontab)
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("linuxCron="):
                words = line.split()
                if "nohup" in words and ">" in words:
                    return words[words.index("nohup") + 1 : words.index(">")]
        return None

    def pid(self) -> int | None:
        """Pid of the live process that runs the crontab command, or None."""
        command = self.command()
        pid = read_pid(self.pid_file)
        if command is None or pid is None:
            return None
        return pid if live_cmdline(pid) == command else None

    def start(self) -> None:
        """Write the crontab line and start its command detached; no-op when running."""
        running = self.pid()
        if running is not None:
            sys.stdout.write(f"{self.name} is already running ({running})\n")
            return
        self._kill_stale()
        jar = self.pack.jar(self.service)
        faults = Faults(self.pack.install_path, self.service["name"], jar_version(jar))
        if faults.active("start-fail") is not None:
            raise CtlError(f"failed to start {self.name}: injected start failure")
        slow = faults.active("start-slow")
        if slow:
            time.sleep(slow)
        # beside this package, in the pack's bin/
        bin_dir = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
        script = os.path.join(bin_dir, "scmdaemon.py")
        command = [sys.executable, script, "--jar", jar]
        if any(" " in word for word in command):
            raise CtlError("the daemon's paths must not contain spaces (crontab line)")
        make_dirs(os.path.dirname(self.crontab))
        line = f"linuxCron=* * * * * nohup {' '.join(command)} > /dev/null 2>&1 &\n"
        write_text(self.crontab, line)
        proc = spawn_detached(command, cwd=self.pack.root, log=None)
        write_pid(self.pid_file, proc.pid)
        sys.stdout.write(f"Success: {self.name} is successfully started ({proc.pid})\n")

    def stop(self) -> None:
        """Kill the daemon process and delete the crontab file."""
        if self.pid() is not None:
            faults = Faults(self.pack.install_path, self.service["name"], self._version())
            if faults.active("stop-fail") is not None:
                raise CtlError(f"failed to stop {self.name}: injected stop failure")
        self._kill_stale()
        unlink(self.crontab)
        sys.stdout.write(f"Success: {self.name} is stopped\n")

    def _kill_stale(self) -> None:
        pid = read_pid(self.pid_file)
        argv = live_cmdline(pid) if pid is not None else None
        if pid is not None and argv is not None and is_daemon_argv(argv):
            terminate(pid, grace=STOP_GRACE_SECONDS)
        remove_pid(self.pid_file, None)

    def _version(self) -> str | None:
        try:
            return jar_version(self.pack.jar(self.service))
        except CtlError:
            return None
