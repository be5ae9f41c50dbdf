"""What every part of the sandbox ctl tool shares: its constants, exit codes and errors."""

from __future__ import annotations

import errno

# Tools call the ctl scripts many times per upgrade, so each call imports only what it needs:
# argparse alone (re, gettext...) cost a third of a `list`, http.client more still, and
# pathlib, glob, json (all three import re) and signal (enum) together some 20 ms of a 57 ms
# `list`. So options are parsed by hand, paths are strings, the manifests' `jars/NAME-*.jar`
# patterns are matched by listing the directory, JSON goes to json's C scanner (load_json),
# signals are sent by number, health is asked over a plain socket, and socket, subprocess
# and fcntl are imported by the commands that need them. errno and stat cost nothing: one is
# built in, os has imported the other.
JAR_MAGIC = "SEQUOIACM-SANDBOX-JAR"
CONFIG_OPTION = "--spring.config.location="
PROPERTIES = "application.properties"
HEALTH_PATH = "/internal/v1/health"
JVM_OPTIONS = ("-Xms256m", "-Xmx512m")
DELAY_PROPERTY = "sandbox.startDelay"
HEALTH_DOWN_PROPERTY = "sandbox.healthDown"
FAULTS_DIR = ".sandbox-faults"
POLL_SECONDS = 0.01
STOP_GRACE_SECONDS = 10.0
DEFAULT_START_TIMEOUT = 60.0
DEFAULT_SLOW_SECONDS = 3.0
MAX_ANSWER = 64 * 1024
# The numbers POSIX fixes for `kill -15` and `kill -9`.
SIGTERM = 15
SIGKILL = 9
# stat errors that pathlib's is_dir()/exists() take for "no such path" (others raise).
MISSING_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)
JSON_SPACE = " \t\n\r"  # what json skips around a value

# ScmExitCode of the real tools.
SUCCESS = 0
EMPTY_OUT = 1
INVALID_ARG = 3
FILE_NOT_FIND = 4
SYSTEM_ERROR = 8
# What java prints and returns when the VM cannot start (no memory, wrong java).
JVM_FAILURE = 1
JVM_FAILURE_TEXT = (
    "Error occurred during initialization of VM\n"
    "Could not reserve enough space for object heap\n"
)


class CtlError(Exception):
    """A failure the ctl reports as one `ERROR:` line and exit status `code`."""

    def __init__(self, message: str, code: int = SYSTEM_ERROR) -> None:
        super().__init__(message)
        self.code = code


class Usage(Exception):
    """`-h`: print the command's usage on stdout and exit 0."""
