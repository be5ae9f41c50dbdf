"""Sandbox SequoiaCM control tool: the program every pack's `bin/<ctl>.sh` runs.

Shipped verbatim in each pack's `bin/scmsandbox/` beside `sandbox.json` (the pack's
manifest), so an upgrade that replaces `bin/` replaces it too. The ctl script checks
JAVA_HOME and runs the pack's tools jar with `$JAVA_HOME/bin/java
-Dsandbox.program=<this package's directory>`: the sandbox JDK (scmflow/sandbox/jdk.py) then
runs the package as `python -m` would, writing no bytecode. Its modules import each other
only relatively, so the same files are `scmflow.sandbox.payload.scmsandbox` here. Standard
library only: it runs on test hosts with nothing but python3. Every path is derived from
the package's location at run time, so the install may be moved or bind-mounted elsewhere.

Behaviour, as SequoiaCM's own tools (see the reference's "Nodes" section):
  <ctl> list [-m local|run] [-l] [-p PORT]
        one line per node, `NAME(PORT) (PID)` running or `NAME(PORT) (-)` stopped, then
        `Total:N`. NAME is the service name upper-cased, hyphen kept (`SERVICE-CENTER`).
        `-m local` lists every configured node (a dir `<dir>/conf/<service>/<port>/`), the
        default `run` only running ones; `-l` appends the node's properties path.
  <ctl> start [--timeout S] -p PORT [-p PORT...] | -t SERVICE | -t all | --all
        starts each node as `nohup java <jvm options> -jar <jar>
        --spring.config.location=<conf>/application.properties`, `java` being the FIRST java
        on PATH, and waits until GET /internal/v1/health says UP (a node not up in time is
        killed and the start fails); a running node is left alone.
  <ctl> stop  -p PORT | -t SERVICE | -t all | --all      stops and waits; none running = 0
  scmd.sh start|stop|status        the daemon; status exits 0 when running, 1 when not
  scmsysctl.sh -v | list           version of the sys-tools; every node of the host
A node runs when the pid in its pid file (under `log/`) is a live process whose command
line names that node's config file. Exit codes (ScmExitCode): 0 success, 1 EMPTY_OUT (a
listing with no node; `Total:0` is still printed), 3 invalid argument, 4 file not found,
8 system error; errors are one `ERROR:` line on stderr.

Fault switches (`<install>/.sandbox-faults/<service>.<kind>`, see faults.py): start-fail,
stop-fail, start-slow, health-down (the node reports UP to the start check, then DOWN), and
jvm-fail, which makes the whole tool of the service's directory
fail as a JVM that cannot start: nothing on stdout, `Error occurred during initialization of
VM` on stderr, exit 1, no `Total:` line.

Usage: scmsandbox <ctl-name> <ctl args...>     (through the ctl script and the JDK)
"""
