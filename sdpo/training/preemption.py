"""Stop when asked, without losing work: finish the optimizer step, write a checkpoint, exit 75.

Why: SLURM (``sbatch --signal=USR1@120``, ``scancel``, the end of a time limit) and Kubernetes (pod
termination) send a signal and then, after a grace period, SIGKILL.  Without a handler, SIGTERM killed
the run at once and SIGINT printed a ``KeyboardInterrupt`` traceback: all the work since the last
checkpoint was lost.  With ``--stop_signals`` (default ``SIGTERM,SIGINT,SIGUSR1``) the first such signal
sets a flag; at the next optimizer-step boundary every process agrees to stop (an all-reduce of the flag:
a signal that reached only some ranks stops them all, at the same step), the checkpoint is written as
usual and the run exits with status ``EXIT_STOPPED`` (75, ``EX_TEMPFAIL`` of sysexits.h: "try again
later") and one line saying which checkpoint holds the work.  Rerunning the same command resumes from it,
bit for bit.  A second signal ends the process at once, by the signal's default action (status 128 + the
signal's number in a shell), for when the grace period is too short.

DataLoader workers ignore these signals (a Ctrl-C reaches the whole process group; a worker that died of
it would break the main process's next batch); they exit with their parent.
"""

from __future__ import annotations

import os
import signal
import threading

import torch

from sdpo.errors import EXIT_STOPPED

__all__ = ["EXIT_STOPPED", "Preemption", "ignore_in_worker"]


def ignore_in_worker(names: tuple[str, ...], worker_id: int = 0) -> None:
    """``worker_init_fn`` of the DataLoader: the stop signals are the main process's business."""
    for name in names:
        signal.signal(getattr(signal, name), signal.SIG_IGN)


class Preemption:
    """While entered, the stop signals set a flag instead of killing the process (a second one kills it)."""

    def __init__(self, names: tuple[str, ...]):
        self.signals = [getattr(signal, n) for n in names]
        self.received: int = 0  # the first stop signal's number, 0 until one arrives
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received:  # the second one: the signal's own default action, now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        # os.write, not logging: a handler may interrupt the logging module while it holds its lock
        os.write(2, f"received {signal.Signals(signum).name}: finishing the current optimizer step, then writing a "
                    f"checkpoint and exiting (a second signal stops at once)\n".encode())  # fmt: skip

    def agreed(self, accelerator) -> str | None:
        """At an optimizer-step boundary, on every process: the name of the stop signal any process received
        (all processes get the same answer from one all-reduce), or None to go on."""
        received = self.received
        if accelerator.num_processes > 1:
            flag = torch.tensor([received], device=accelerator.device, dtype=torch.int64)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            received = int(flag.item())
        return signal.Signals(received).name if received else None
