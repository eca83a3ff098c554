"""One exception type for mistakes a user can fix, and the CLI wrapper that prints it as one line."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


EXIT_STOPPED = 75  # a run stopped by a signal after writing its checkpoint (sysexits.h EX_TEMPFAIL: retry resumes)


class UserError(Exception):
    """Bad input: the message says what is wrong, where, and what to do. Printed without a traceback."""


class RunStopped(Exception):
    """A run that stopped on purpose before its last step, its state saved: a stop signal
    (``sdpo.training.preemption``; ``EXIT_STOPPED``, so a retry resumes) or the winner guard
    (``sdpo.training.guard``; 3).  Printed as one ``stopped:`` line; the exit status tells a launcher it from a
    crash (1) or from bad input (2)."""

    def __init__(self, message: str, exit_code: int = EXIT_STOPPED):
        super().__init__(message)
        self.exit_code = exit_code


def one_line(message: str) -> str:
    """A UserError raised in a DataLoader worker comes back wrapped with the worker's traceback;
    the user needs only the original message, which is the traceback's last line."""
    if "Original Traceback" in message:
        last = message.strip().splitlines()[-1]
        return last.split("UserError: ", 1)[-1]
    return message


def _end_progress_bars() -> None:
    """Close the progress bars the error interrupted (training steps, precompute shards, generation): an open
    bar has not ended its line, and the error line must start one of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def cli_main(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn``; a ``UserError`` becomes ``error: <message>`` on stderr and exit status 2, a ``RunStopped``
    ``stopped: <message>`` and its own exit status."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            _end_progress_bars()
            print(f"error: {one_line(str(e))}", file=sys.stderr, flush=True)
            sys.exit(2)
        except RunStopped as e:
            _end_progress_bars()
            print(f"stopped: {e}", file=sys.stderr, flush=True)
            sys.exit(e.exit_code)

    return wrapper
