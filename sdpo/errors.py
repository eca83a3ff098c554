"""One exception type for mistakes a user can fix, and the CLI wrapper that prints it as one line."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """Bad input: the message says what is wrong, where, and what to do. Printed without a traceback."""


def cli_main(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn``; a ``UserError`` becomes ``error: <message>`` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
