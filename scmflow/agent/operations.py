"""Running one op to its reply; each op's module is imported when an op first needs it.

Every agent process compiles the modules it imports from the bundle (nothing is cached on
a host), so a one-shot agent that takes a lock does not compile the package handling,
health checks or node control it never uses.
"""

import importlib
import json
import os
from typing import Any, Callable, Dict, Optional, Tuple

from .context import Ctx, Failure, one_line
from .locks import hold_step_lock

# op -> (module of this package, function)
_OPS: Dict[str, Tuple[str, str]] = {
    "probe": ("steps", "op_probe"),
    "backup": ("backups", "op_backup"),
    "replace": ("steps", "op_replace"),
    "restart": ("steps", "op_restart"),
    "verify": ("steps", "op_verify"),
    "restore": ("backups", "op_restore"),
    "abandon": ("backups", "op_abandon"),
    "prepare": ("prepare", "op_prepare"),
    "exists": ("prepare", "op_exists"),
    "lock": ("locks", "op_lock"),
    "unlock": ("locks", "op_unlock"),
}


def op_handler(op: str) -> Callable[[Ctx], Dict[str, Any]]:
    """The function that carries out `op` (Failure for an unknown op)."""
    where = _OPS.get(op)
    if where is None:
        raise Failure(f"unknown op '{op}'", "args")
    module = importlib.import_module("." + where[0], __package__)
    handler: Callable[[Ctx], Dict[str, Any]] = getattr(module, where[1])
    return handler


def run_op(op: str, raw: Any) -> Dict[str, Any]:
    """Run one op on a spec (a dict or its JSON text); the reply, `ok` true or false."""
    ctx: Optional[Ctx] = None
    lock: Optional[int] = None
    try:
        handler = op_handler(op)
        spec = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(spec, dict):
            raise Failure("the spec is not a JSON object", "args")
        ctx = Ctx(spec)
        lock = hold_step_lock(ctx, op)
        ctx.step = op
        reply: Dict[str, Any] = {"ok": True}
        reply.update(handler(ctx))
    except Failure as exc:
        reply = {"ok": False, "error": one_line(exc.message), "step": exc.step or _step(ctx)}
    except BaseException as exc:  # noqa: B036 - the control machine must always get a reply
        import traceback  # here: only a failing op pays for it

        message = one_line(f"{type(exc).__name__}: {exc}")
        reply = {"ok": False, "error": message, "step": _step(ctx), "trace": traceback.format_exc()}
    finally:
        if lock is not None:
            os.close(lock)
    return reply


def _step(ctx: Optional[Ctx]) -> str:
    return ctx.step if ctx is not None else "args"
