"""How the agent is asked and answers: one op from argv, or request lines when serving.

The control side (scmflow/agentcall.py) speaks the other end: it reads the greeting and
the replies of this protocol version, and sends `request_line`s.
"""

import json
import os
import sys
from typing import Any, Dict, List

from .operations import run_op

SERVE = "--serve"
# A serving agent's first line: what it is and which request/reply protocol it speaks.
GREETING_KEY = "scmflow_agent"
PROTOCOL = 2


def main(argv: List[str]) -> int:
    """Run one op, or serve requests; print each JSON reply on its own stdout line.

    One op (`OP SPEC-JSON`) exits 0 on success, 1 on failure. `--serve` answers one
    request line (`{"op", "spec"}`) after another until stdin ends, then exits 0.
    """
    # Nothing relative may resolve in a directory that another user controls.
    os.chdir("/")
    if argv == [SERVE]:
        return serve(sys.stdin.buffer, sys.stdout)
    if len(argv) != 2:
        reply = {"ok": False, "error": "usage: agent OP SPEC-JSON | agent --serve", "step": "args"}
    else:
        reply = run_op(argv[0], argv[1])
    sys.stdout.write("\n" + json.dumps(reply, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0 if reply["ok"] else 1


def serve(requests: Any, replies: Any) -> int:
    """Greet, then answer request lines from `requests` on `replies` until end of input.

    The greeting proves that what reads the requests is this agent (not a sudo prompt
    or a shell); each reply names its request's id, so a reply cannot be taken for
    another request's.
    """
    replies.write(json.dumps({GREETING_KEY: PROTOCOL, "pid": os.getpid()}, sort_keys=True) + "\n")
    replies.flush()
    while True:
        line = requests.readline()
        if not line:
            return 0
        if not line.strip():
            continue
        request_id = None
        try:
            request = json.loads(line)
            request_id = request.get("id")
            op, spec = request["op"], request["spec"]
        except (ValueError, TypeError, KeyError, AttributeError):
            reply: Dict[str, Any] = {"ok": False, "error": "malformed request line", "step": "args"}
        else:
            reply = run_op(op, spec)
        reply["id"] = request_id
        replies.write(json.dumps(reply, sort_keys=True) + "\n")
        replies.flush()
