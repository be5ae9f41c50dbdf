"""The sandbox JDK's "JVM": what `<JAVA_HOME>/bin/java [options] -jar JAR [args]` runs.

make_jdk copies this file to `<JAVA_HOME>/lib/sandbox/`; `bin/java` answers `-version`
itself and hands every other command line to this file. Standard library only: it runs on
test hosts with nothing but python3.

A sandbox jar holds no bytecode, only a header (`SEQUOIACM-SANDBOX-JAR artifact version`,
then `Main-Class: ...`), so what a jar "runs" is decided here:
  - a jar whose Main-Class is Spring Boot's JarLauncher is a SequoiaCM service: it runs as a
    node (see `run_node`) configured by `--spring.config.location=<application.properties>`;
  - `-Dsandbox.program=FILE` runs the Python program FILE (a file, or a package directory
    as `python -m` runs one) with the jar's arguments instead (the ctl scripts run their
    tools jar this way, with the tool's code from their bin/).
Anything else fails the way a JVM fails: `Error: Unable to access jarfile X`,
`Error: Invalid or corrupt jarfile X`, `no main manifest attribute, in X`, exit 1.

A node serves HTTP on every address: `GET /internal/v1/health` answers 200 with
{"status": "UP", "version", "service", "port", "pid"} once the node is ready (503 with
{"status": "DOWN"} before, for `-Dsandbox.startDelay=SECONDS`, and after its first UP with
`-Dsandbox.healthDown=true`); other paths answer 404.
"""

from __future__ import annotations

import os
import sys

# The ctl scripts go through this file on every call, so only os and sys are imported up
# front; a node imports what it serves with (json, socket, signal, threading, time).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Sequence
    from types import CodeType

JAR_MAGIC = b"SEQUOIACM-SANDBOX-JAR"
SPRING_BOOT_LAUNCHER = "org.springframework.boot.loader.JarLauncher"
HEALTH_PATH = b"/internal/v1/health"
CONFIG_OPTION = "--spring.config.location="
PROGRAM_PROPERTY = "sandbox.program"
DELAY_PROPERTY = "sandbox.startDelay"
HEALTH_DOWN_PROPERTY = "sandbox.healthDown"
# Options of the real `java` launcher that take the next word as their value.
VALUE_OPTIONS = ("-cp", "-classpath", "--class-path", "--module-path", "-p", "--add-modules")
MAX_REQUEST_HEAD = 8 * 1024
REQUEST_SECONDS = 2.0
USAGE = "Usage: java [options] -jar <jarfile> [args...]\n"


class JvmError(Exception):
    """A launch failure: printed on stderr as it is, exit status 1 (as java does)."""


def main(argv: Sequence[str]) -> int:
    """Parse java's command line, check the jar, run its program."""
    try:
        props, jar, args = parse_command_line(argv)
        main_class, version = read_manifest(jar)
        program = props.get(PROGRAM_PROPERTY)
        if program:
            return run_program(program, args)
        if main_class != SPRING_BOOT_LAUNCHER:
            raise JvmError(
                f"Error: Could not find or load main class {main_class}\n"
                f"Caused by: java.lang.ClassNotFoundException: {main_class}"
            )
        delay = float(props.get(DELAY_PROPERTY) or 0.0)
        return run_node(jar, version, args, delay, health_down=props.get(HEALTH_DOWN_PROPERTY) == "true")
    except JvmError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1


def parse_command_line(argv: Sequence[str]) -> tuple[dict[str, str], str, list[str]]:
    """(system properties, jar, program arguments) of `java [options] -jar JAR [args]`."""
    props: dict[str, str] = {}
    words = list(argv)
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-jar":
            if index + 1 >= len(words):
                raise JvmError("Error: -jar requires jar file specification\n" + USAGE.rstrip())
            return props, words[index + 1], words[index + 2 :]
        if word.startswith("-D"):
            key, _, value = word[2:].partition("=")
            props[key] = value
        elif word in VALUE_OPTIONS:
            index += 1
        elif not word.startswith("-"):
            raise JvmError(
                f"Error: Could not find or load main class {word}\n"
                f"Caused by: java.lang.ClassNotFoundException: {word}"
            )
        index += 1
    raise JvmError(USAGE.rstrip())


def read_manifest(jar: str) -> tuple[str, str]:
    """(Main-Class, version) of a sandbox jar; JvmError as java words it otherwise."""
    try:
        with open(jar, "rb") as f:
            head = f.read(512)
    except OSError:
        raise JvmError(f"Error: Unable to access jarfile {jar}") from None
    lines = head.split(b"\n")
    first = lines[0].split()
    if len(first) != 3 or first[0] != JAR_MAGIC:
        raise JvmError(f"Error: Invalid or corrupt jarfile {jar}")
    for line in lines[1:]:
        key, _, value = line.decode("utf-8", "replace").partition(":")
        if key.strip() == "Main-Class" and value.strip():
            return value.strip(), first[2].decode("utf-8", "replace")
    raise JvmError(f"no main manifest attribute, in {jar}")


def run_program(program: str, args: list[str]) -> int:
    """Run the Python file `program` as __main__ with `args`, in this process (no second
    interpreter start: the ctl scripts are called often).

    A package directory runs as `python -m` runs one: its `__main__.py`, whose relative
    imports find the package's modules beside it. No bytecode is written: a tool run must
    leave no file anywhere (the tool lives in the install's bin/).
    """
    package = os.path.isdir(program)
    main = os.path.join(program, "__main__.py") if package else program
    try:
        code = load_program(main)
    except OSError:
        raise JvmError(f"Error: Could not find or load main class ({program})") from None
    namespace = {"__name__": "__main__", "__file__": main, "__builtins__": __builtins__}
    if package:
        sys.dont_write_bytecode = True
        sys.path.insert(0, os.path.dirname(program))
        namespace["__package__"] = os.path.basename(program)
    sys.argv = [program, *args]
    exec(code, namespace)  # noqa: S102 - the sandbox's own code
    return 0


def load_program(program: str) -> CodeType:
    """The compiled program. Nothing is cached: a tool run must leave no file anywhere."""
    with open(program, "rb") as f:
        return compile(f.read(), program, "exec")


# ---------------------------------------------------------------- a node (Spring Boot app)


def run_node(jar: str, version: str, args: list[str], delay: float, *, health_down: bool = False) -> int:
    """Serve the node's health on its port until SIGTERM.

    `health_down`: answer UP once (the ctl's start check), then DOWN from then on.
    """
    import json
    import signal
    import time

    config = node_config(args)
    port = int(config["server.port"])
    service = config.get("spring.application.name") or config_service(args)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        server = listen(port)
    except OSError as exc:
        raise JvmError(f"Web server failed to start. Port {port} was already in use. ({exc})") \
            from None
    up = json.dumps({
        "status": "UP", "version": version, "service": service, "port": port, "pid": os.getpid(),
    }).encode()
    ready_at = time.monotonic() + delay
    sys.stderr.write(f"Starting {service} on port {port} (version {version}, jar {jar})\n")
    sys.stderr.flush()
    answered: list[bool] = []

    def body() -> bytes | None:
        if time.monotonic() < ready_at or (health_down and answered):
            return None
        answered.append(True)
        return up

    try:
        serve(server, body)
    finally:
        server.close()
    return 0


def node_config(args: list[str]) -> dict[str, str]:
    """The node's application.properties, named by `--spring.config.location=`."""
    locations = [a[len(CONFIG_OPTION) :] for a in args if a.startswith(CONFIG_OPTION)]
    if not locations:
        raise JvmError("APPLICATION FAILED TO START: no --spring.config.location given")
    try:
        with open(locations[-1], encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise JvmError(f"APPLICATION FAILED TO START: cannot read {locations[-1]}: {exc}") \
            from None
    config: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            key, _, value = line.partition("=")
            config[key.strip()] = value.strip()
    if not config.get("server.port", "").isdigit():
        raise JvmError(f"APPLICATION FAILED TO START: no server.port in {locations[-1]}")
    return config


def config_service(args: list[str]) -> str:
    """The service of `.../conf/<service>/<port>/application.properties`."""
    location = [a for a in args if a.startswith(CONFIG_OPTION)][-1]
    parts = location.split("/")
    return parts[-3] if len(parts) >= 3 else "unknown"


def listen(port: int) -> socket.socket:
    """A listening socket on every address (a test host may lack DNS: no names resolved)."""
    import socket

    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))  # noqa: S104 - nodes listen on every address
    server.listen(64)
    return server


def serve(server: socket.socket, body: Callable[[], bytes | None]) -> None:
    """Answer each client on its own thread; `body()` is the UP JSON, or None while starting."""
    import threading

    while True:
        conn, _ = server.accept()
        threading.Thread(target=answer_client, args=(conn, body), daemon=True).start()


def answer_client(conn: socket.socket, body: Callable[[], bytes | None]) -> None:
    """Read one request from `conn`, answer it, close."""
    with conn:
        conn.settimeout(REQUEST_SECONDS)
        try:
            conn.sendall(http_answer(read_request_head(conn), body()))
        except OSError:
            return


def read_request_head(conn: socket.socket) -> bytes:
    """The request line and headers (up to the blank line), at most MAX_REQUEST_HEAD bytes."""
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < MAX_REQUEST_HEAD:
        chunk = conn.recv(MAX_REQUEST_HEAD - len(head))
        if not chunk:
            break
        head += chunk
    return head


def http_answer(head: bytes, up: bytes | None) -> bytes:
    """The HTTP/1.0 answer to a request head: the health JSON, 404 or 405."""
    words = head.split(b"\n", 1)[0].split()
    if len(words) < 2 or words[0] not in (b"GET", b"HEAD"):
        status, payload, kind = b"405 Method Not Allowed", b"", b"text/plain"
    elif words[1].split(b"?", 1)[0] != HEALTH_PATH:
        status, payload, kind = b"404 Not Found", b'{"status":404,"error":"Not Found"}', \
            b"application/json"
    elif up is None:
        status, payload, kind = b"503 Service Unavailable", b'{"status":"DOWN"}', \
            b"application/json"
    else:
        status, payload, kind = b"200 OK", up, b"application/json"
    headers = (
        b"HTTP/1.0 " + status + b"\r\nContent-Type: " + kind
        + b"\r\nContent-Length: " + str(len(payload)).encode() + b"\r\nConnection: close\r\n\r\n"
    )
    return headers + (payload if words[:1] != [b"HEAD"] else b"")


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
