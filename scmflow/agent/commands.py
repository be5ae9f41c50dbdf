"""Running a command on the host: bounded by the step's time, its output kept in files."""

import os
import shlex
import signal
import subprocess
import tempfile
import time
from typing import Any, List, Optional

from .context import Ctx, Failure

_OUTPUT_TAIL = 3
# What a step keeps of one command's output (the reply travels on one line).
_OUTPUT_LIMIT = 1 << 20


class Done:
    """What one command did."""

    def __init__(self, argv: List[str], code: int, out: str, err: str) -> None:
        self.argv = argv
        self.code = code
        self.out = out
        self.err = err

    def tail(self) -> str:
        """The last lines of stderr (else stdout), on one line."""
        text = self.err.strip() or self.out.strip()
        return " | ".join(text.splitlines()[-_OUTPUT_TAIL:])

    def describe(self) -> str:
        """`ctl start -p 1` exited 1 (last output lines)."""
        shown = " ".join(shlex.quote(a) for a in [os.path.basename(self.argv[0])] + self.argv[1:])
        detail = self.tail()
        return f"`{shown}` exited {self.code}" + (f" ({detail})" if detail else "")


def run_command(ctx: Ctx, argv: List[str], timeout: Optional[float] = None, check: bool = True) -> Done:
    """Run argv without a shell; output goes to files so detached children cannot hold it."""
    limit = timeout if timeout is not None else ctx.command_timeout
    if ctx.deadline is not None:
        left = ctx.deadline - time.monotonic()
        if left <= 0:
            raise Failure(f"the step ran out of its time before `{os.path.basename(argv[0])}` could run")
        limit = min(limit, left)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            # A new session, so nodes a ctl script starts outlive the SSH channel.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=ctx.env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise Failure(f"cannot run {argv[0]}: {exc.strerror}") from None
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            # The whole group: a ctl script's JVM must not outlive the step that gave up on it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
            proc.wait()
            done = Done(argv, -9, _read_all(out), _read_all(err))
            raise Failure(f"{done.describe()} after the {limit:g}s timeout") from None
        done = Done(argv, code, _read_all(out), _read_all(err))
    if check and code != 0:
        raise Failure(done.describe())
    return done


def _read_all(stream: Any) -> str:
    """A command's output; past `_OUTPUT_LIMIT` its head and tail with a note between."""
    size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    if size <= _OUTPUT_LIMIT:
        return str(stream.read().decode("utf-8", "replace"))
    half = _OUTPUT_LIMIT // 2
    head = stream.read(half)
    stream.seek(size - half)
    tail = stream.read(half)
    note = f"\n[scmflow: {size - 2 * half} bytes of output cut]\n".encode()
    return str((head + note + tail).decode("utf-8", "replace"))
