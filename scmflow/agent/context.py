"""One op on the host: its spec, the environment its commands run in, and how it fails."""

import os
import time
from typing import Any, Callable, Dict

_POLL = 0.2


class Failure(Exception):
    """A step failed; `message` is the operator's one line."""

    def __init__(self, message: str, step: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.step = step


class Ctx:
    """One op: its spec, the environment for commands, and the step in progress."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        self.spec = spec
        self.step = "start"
        # gethostname(2) is uname's nodename; os spares a one-shot agent importing socket
        self.host = os.uname().nodename
        self.env = dict(os.environ)
        # The control side names the JDK in the spec (probe) or as JAVA_HOME (every step).
        java_home = spec.get("java_home") or self.env.get("JAVA_HOME")
        if java_home:
            use_java(self.env, str(java_home))
        self.command_timeout = float(spec.get("command_timeout") or 600)
        # The control side waits `step_timeout` plus a margin: the agent gives up first.
        budget = spec.get("step_timeout")
        self.deadline = time.monotonic() + float(budget) if budget else None

    def need(self, key: str) -> str:
        """A required string value of the spec; Failure naming the key when absent."""
        value = self.spec.get(key)
        if value is None or value == "":
            raise Failure(f"the spec lacks '{key}'", "spec")
        return str(value)

    def service(self) -> Dict[str, Any]:
        """The spec's service entry (`Service.to_spec()`)."""
        svc = self.spec.get("service")
        if not isinstance(svc, dict):
            raise Failure("the spec names no service", "spec")
        return svc

    def service_dir(self) -> str:
        """`<install_path>/<dir>`; the install path itself for an empty dir."""
        svc = self.service()
        base = self.need("install_path")
        if not os.path.isabs(base) or os.path.normpath(base) != base or base == "/":
            raise Failure(f"install path '{base}' must be absolute, normalised and not /", "spec")
        rel = str(svc["dir"])
        if rel.startswith("/") or ".." in rel.split("/"):
            raise Failure(f"service dir '{rel}' must stay inside the install path", "spec")
        path = os.path.join(base, rel) if rel else base
        # A link could carry the service dir elsewhere; nothing outside the install is touched.
        real_base, real = os.path.realpath(base), os.path.realpath(path)
        if real != real_base and not real.startswith(real_base + os.sep):
            raise Failure(f"{path} resolves to {real}, outside the install path {base}", "spec")
        return path


def use_java(env: Dict[str, str], java_home: str) -> None:
    """JAVA_HOME, and its bin/ first on PATH, as the vendor's upgrader sets them.

    The ctl tools start nodes with `nohup java`, the first java on PATH: without this a
    host's OS JDK (often a newer one at /usr/bin/java) would run the nodes and fail.
    """
    env["JAVA_HOME"] = java_home
    bindir = os.path.join(java_home, "bin")
    rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != bindir]
    env["PATH"] = os.pathsep.join([bindir] + rest)


def one_line(text: str) -> str:
    """Collapse a message onto one line."""
    return " ".join(text.split())


def wait_for(check: Callable[[], bool], seconds: float) -> bool:
    """Poll `check` until true or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True
