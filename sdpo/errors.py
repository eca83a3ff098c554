"""One exception type for mistakes a user can fix, and the CLI wrapper that prints it as one line."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """Bad input: the message says what is wrong, where, and what to do. Printed without a traceback."""


class RunStopped(Exception):
    """A run that stopped on purpose before its last step, its state saved (e.g. the winner guard,
    ``sdpo.training.guard``); the CLI exits with ``exit_code`` so a launcher can tell it from a crash (1) or
    from bad input (2).  Codes in use: 3, the winner guard."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def one_line(message: str) -> str:
    """A UserError raised in a DataLoader worker comes back wrapped with the worker's traceback;
    the user needs only the original message, which is the traceback's last line."""
    if "Original Traceback" in message:
        last = message.strip().splitlines()[-1]
        return last.split("UserError: ", 1)[-1]
    return message


def cli_main(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn``; a ``UserError`` becomes ``error: <message>`` on stderr and exit status 2, a ``RunStopped``
    ``stopped: <message>`` and its own exit status."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {one_line(str(e))}", file=sys.stderr, flush=True)
            sys.exit(2)
        except RunStopped as e:
            print(f"stopped: {e}", file=sys.stderr, flush=True)
            sys.exit(e.exit_code)

    return wrapper
