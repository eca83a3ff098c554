"""Pre-emption: a stop signal finishes the optimizer step, writes a checkpoint and exits 75; rerunning the same
command ends with the weights of a run that was never stopped, bit for bit (one process and two)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import tiny_flags
from dist_helpers import COMMON, ROOT, env, load, torchrun

from sdpo.errors import EXIT_STOPPED
from sdpo.training.metrics import read_jsonl


def _logged(out: Path) -> int:
    p = out / "metrics.jsonl"
    return len(read_jsonl(p)) if p.exists() else 0


def _signal_after_first_step(proc: subprocess.Popen, out: Path, send) -> str:
    """Wait for the run's first logged step, call ``send()``, return the run's stderr."""
    deadline = time.time() + 300
    while proc.poll() is None and _logged(out) < 1 and time.time() < deadline:
        time.sleep(0.05)
    send()
    _, err = proc.communicate(timeout=300)
    return err


def _stop_line(err: str, out: Path, steps: int) -> int:
    """The step the run stopped at, from its one ``stopped:`` line (checked exactly)."""
    step = _logged(out)
    assert [ln for ln in err.splitlines() if ln.startswith("stopped: ")] == [
        f"stopped: SIGTERM received; {out}/checkpoint-{step} holds step {step} of {steps}: rerun the same command to "
        "resume from it"
    ], err[-2000:]
    assert "Traceback" not in err
    return step


def test_sigterm_stops_at_the_step_boundary_and_the_rerun_is_bit_exact(tiny_sd15, tiny_pairs, tmp_path, run_train):
    import os

    extra = ["--max_train_steps", "4", "--checkpointing_steps", "100", "--dataloader_num_workers", "1"]
    straight = load(run_train(*tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "straight", *extra)))
    out = tmp_path / "stopped"
    flags = tiny_flags(tiny_sd15, tiny_pairs, out, *extra)
    # Its own session: SIGTERM goes to the whole process group, DataLoader worker included (as `scancel` does).
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *flags], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    err = _signal_after_first_step(proc, out, lambda: os.killpg(proc.pid, signal.SIGTERM))
    assert proc.returncode == EXIT_STOPPED, err[-3000:]
    step = _stop_line(err, out, 4)
    assert step in (1, 2)  # the step running when the signal came, or the one after if it came at the boundary
    assert "received SIGTERM: finishing the current optimizer step, then writing a checkpoint and exiting" in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{step}"]
    resumed = load(run_train(*flags))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight), "the rerun differs from an unstopped run"
    assert [r["step"] for r in read_jsonl(out)] == [1, 2, 3, 4]


def test_a_second_signal_stops_at_once():
    code = (
        "import os, signal, time\n"
        "from sdpo.training.preemption import Preemption\n"
        "with Preemption(('SIGINT', 'SIGUSR1')) as p:\n"
        "    os.kill(os.getpid(), signal.SIGUSR1)\n"
        "    time.sleep(0.2)\n"
        "    print('flag', p.received == signal.SIGUSR1, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(10)\n"
        "print('not reached')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGINT and proc.stdout == "flag True\n", (proc.stdout, proc.stderr)
    assert (
        proc.stderr.startswith("received SIGUSR1: finishing the current optimizer step")
        and "Traceback" not in proc.stderr
    )


def _ranks(parent: int) -> dict[int, int]:
    """``{rank: pid}`` of the train.py processes a torchrun started (Linux /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != parent:
                continue
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(stat.parent.name)
    return found


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tiny_sd15, tiny_pairs, tmp_path):
    base = ["--pretrained_model_name_or_path", tiny_sd15, "--dataset_name", tiny_pairs, "--resolution", "64", *COMMON,
            "--train_batch_size", "1", "--max_train_steps", "3", "--checkpointing_steps", "100"]  # fmt: skip
    straight = tmp_path / "straight"
    proc = subprocess.run(torchrun(2, *base, "--output_dir", straight), env=env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "stopped"
    cmd = torchrun(2, *base, "--output_dir", out)
    proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = _signal_after_first_step(proc, out, lambda: __import__("os").kill(_ranks(proc.pid)[1], signal.SIGTERM))
    assert proc.returncode == 1  # torchrun: its workers exited 75, which it reports as a failure
    # rank 1's line may land after rank 0's progress bar on one line of the shared stderr
    stopped = [ln[ln.index("stopped: ") :] for ln in err.splitlines() if "stopped: " in ln]
    step = _logged(out)
    assert len(stopped) == 2 and len(set(stopped)) == 1, err[-3000:]  # both ranks, the same step
    assert stopped[0] == (f"stopped: SIGTERM received; {out}/checkpoint-{step} holds step {step} of 3: rerun the "
                          "same command to resume from it")  # fmt: skip
    assert err.count("received SIGTERM") == 1  # only rank 1 got the signal; rank 0 learnt it from the all-reduce
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{step}"] and step in (1, 2)
    proc = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load(straight / "unet.pth"), load(out / "unet.pth")
    assert all(torch.equal(a[k], b[k]) for k in a), "the rerun differs from an unstopped two-process run"
