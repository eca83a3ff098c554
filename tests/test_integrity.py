"""Verified checkpoints, run identity, free disk space and leftovers of killed runs (docs/reliability.md).

Each scenario checks the exact line a user sees.  Training runs are in-process and few: one four-step run
whose folder the damage, identity and leftover checks reuse, and two for the disk checks.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_flags

from sdpo.checkpoint import manifest
from sdpo.checkpoint import store as checkpoint
from sdpo.errors import UserError
from sdpo.training.metrics import read_jsonl


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _damaged_copy(src: Path, dst: Path, damage) -> Path:
    shutil.copytree(src, dst)
    damage(dst)
    return dst


def _truncate(name: str):
    return lambda folder: os.truncate(folder / name, (folder / name).stat().st_size // 2)


def _flip_a_bit(name: str):
    def flip(folder: Path) -> None:
        data = bytearray((folder / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (folder / name).write_bytes(bytes(data))

    return flip


def test_damaged_checkpoints_are_named_and_skipped(tiny_sd15, tiny_pairs, tmp_path, run_train, caplog):
    out = tmp_path / "run"
    flags = tiny_flags(tiny_sd15, tiny_pairs, out, "--use_winner_preserving", "--winner_preserving_mu", "0.5")
    straight = _load(run_train(*flags))
    ckpt4 = out / "checkpoint-4"
    assert (ckpt4 / manifest.MANIFEST).is_file()
    records = manifest.read(ckpt4)
    assert sorted(records) == sorted(p.name for p in ckpt4.iterdir() if p.name != manifest.MANIFEST)

    # Each kind of damage, named in one line (the checks only read files: no model needed).
    size = records["model.safetensors"]["bytes"]
    cases = {
        "truncated": (_truncate("model.safetensors"),
                      f"model.safetensors: {size // 2} bytes, the manifest records {size} (truncated or replaced)"),
        "missing": (lambda f: (f / "optimizer.bin").unlink(), "optimizer.bin: missing"),
        "flipped": (_flip_a_bit("random_states_0.pkl"),
                    "random_states_0.pkl: its content differs from the manifest's hash (the file changed after it "
                    "was written)"),
        "state": (_truncate("training_state.json"), "training_state.json: "),
        "manifest": (_truncate(manifest.MANIFEST), "manifest.json: unreadable ("),
    }  # fmt: skip
    for name, (damage, expected) in cases.items():
        found = checkpoint.verify(_damaged_copy(ckpt4, tmp_path / name, damage))
        assert found is not None and found.startswith(expected), (name, found)
    assert checkpoint.verify(ckpt4) is None

    # The newest checkpoint cut short: the run says so, resumes from checkpoint-2, ends as if never stopped.
    # Leftovers of a killed run go at the start, with what they weighed.
    _truncate("model.safetensors")(ckpt4)
    (out / "unet.pth").unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / f".unet.pth.tmp-{dead.pid}").write_bytes(b"x" * 1000)
    (out / "checkpoint-6.partial").mkdir()
    (out / "checkpoint-6.partial" / "optimizer.bin").write_bytes(b"x" * 2000)
    with caplog.at_level(logging.INFO, logger="sdpo"):  # an in-process demo earlier in the suite quiets "sdpo"
        resumed = _load(run_train(*flags))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert [r["step"] for r in read_jsonl(out)] == [1, 2, 3, 4]
    text = caplog.text
    assert (f"removed what an interrupted run left in {out}: .unet.pth.tmp-{dead.pid} (1.0 kB), checkpoint-6.partial/ "
            "(2.0 kB); 3.0 kB freed") in text  # fmt: skip
    assert f"{ckpt4} is damaged, skipped: model.safetensors: {size // 2} bytes, the manifest records {size}" in text
    assert "resuming from checkpoint-2, the newest checkpoint that verifies" in text
    assert f"resumed from {out / 'checkpoint-2'} at step 2" in text
    assert not list(out.glob(".*.tmp-*")) and not list(out.glob("*.partial"))

    # Naming a damaged checkpoint refuses; with none that verifies, latest refuses rather than start over.
    _flip_a_bit("random_states_0.pkl")(ckpt4)
    with pytest.raises(UserError) as e:
        run_train(*flags, "--resume_from_checkpoint", "checkpoint-4")
    assert str(e.value) == (
        "--resume_from_checkpoint checkpoint-4: damaged, random_states_0.pkl: its content differs from the manifest's "
        "hash (the file changed after it was written); name an older checkpoint, or pass --resume_from_checkpoint "
        "latest to take the newest one that verifies"
    )
    (out / "checkpoint-2" / "optimizer.bin").unlink()
    with pytest.raises(UserError, match=r"run: no checkpoint verifies \(checkpoint-4: random_states_0\.pkl: .*; "
                                        r"checkpoint-2: optimizer\.bin: missing\); move the damaged ones away"):  # fmt: skip
        run_train(*flags)

    # The run's identity: another objective or resolution in the same folder is refused (before any model loads).
    shutil.rmtree(out / "checkpoint-2")
    _flip_a_bit("random_states_0.pkl")(ckpt4)  # flipped back: checkpoint-4 verifies again
    for extra, line in [
        (["--train_method", "sft"], "checkpoint-4 belongs to a run with --train_method 'diffusion-dpo', this launch "
                                    "has 'sft': resume with the run's own value, use another --output_dir, or pass "
                                    "--allow_changed_flags train_method to continue anyway"),
        (["--resolution", "32"], "checkpoint-4 belongs to a run with --resolution 64, this launch has 32: "),
        (["--winner_preserving_mu", "0.9"], "a run with --winner_preserving_mu 0.5, this launch has 0.9"),
        (["--lora_rank", "4"], "a run with --lora_rank not set, this launch has 4"),
    ]:  # fmt: skip
        with pytest.raises(UserError) as e:
            run_train(*flags, *extra, "--max_train_steps", "5")
        assert str(e.value).startswith(line) or line in str(e.value), str(e.value)


def test_learning_rate_given_on_resume_applies():
    """torch restores the saved lr (and the scheduler its base rate) on load: the flags given now are put back."""
    from diffusers.optimization import get_scheduler

    from sdpo.checkpoint.identity import optimizer_settings, reapply_optimizer_settings

    def make(lr: float, wd: float):
        p = torch.nn.Parameter(torch.ones(3))
        opt = torch.optim.AdamW([p], lr=lr, weight_decay=wd)
        return p, opt, get_scheduler("constant_with_warmup", opt, num_warmup_steps=4)

    p, opt, sched = make(1e-3, 0.01)
    for _ in range(2):
        p.grad = torch.ones(3)
        opt.step()
        sched.step()
    saved = opt.state_dict(), sched.state_dict()
    p2, opt2, sched2 = make(5e-4, 0.0)
    fresh = optimizer_settings(opt2)
    opt2.load_state_dict(saved[0])
    sched2.load_state_dict(saved[1])
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-3 * 2 / 4)  # the old rate came back with the state
    notes = reapply_optimizer_settings(opt2, sched2, fresh)
    assert notes == ["optimizer weight_decay: 0.01 in the checkpoint, 0.0 now",
                     "learning rate: 0.001 in the checkpoint, 0.0005 now"]  # fmt: skip
    assert opt2.param_groups[0]["lr"] == pytest.approx(5e-4 * 2 / 4) and sched2.get_last_lr() == [pytest.approx(2.5e-4)]
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(5e-4 * 3 / 4)  # the warm-up goes on from its saved step
    assert torch.equal(opt2.state[opt2.param_groups[0]["params"][0]]["exp_avg"], opt.state[p]["exp_avg"])


def test_a_full_disk_is_one_line_and_the_previous_checkpoint_stays(tiny_sd15, tiny_pairs, tmp_path, run_train,
                                                                   monkeypatch):  # fmt: skip
    import sdpo.diskspace as disk
    from sdpo.checkpoint.store import FullWeights

    out = tmp_path / "run"
    flags = tiny_flags(tiny_sd15, tiny_pairs, out, "--train_method", "sft")
    real_free = disk.free_bytes
    # Before writing: once checkpoint-2 exists, only 1000 bytes are free.
    monkeypatch.setattr(disk, "free_bytes", lambda p: 1000 if (out / "checkpoint-2").is_dir() else real_free(p))
    with pytest.raises(UserError) as e:
        run_train(*flags)
    size = manifest.total_bytes(out / "checkpoint-2")
    assert str(e.value) == (
        f"not enough disk space at {out} for checkpoint-4: it needs about {disk.human(size)} (the size of "
        f"checkpoint-2), 1.0 kB is free; free some space (or point the output elsewhere) and rerun; {out}/checkpoint-2 "
        "is intact"
    )
    assert not (out / "checkpoint-4.partial").exists() and checkpoint.verify(out / "checkpoint-2") is None

    # While writing: the disk fills up in the middle of checkpoint-4 (as ENOSPC from the file system).
    monkeypatch.setattr(disk, "free_bytes", real_free)

    def full_disk(self, accelerator, module, folder):
        (folder / "unet.pth").write_bytes(b"x" * 3000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FullWeights, "save_model", full_disk)
    with pytest.raises(UserError) as e:
        run_train(*flags)
    line = str(e.value)
    assert line.startswith(f"disk full at {out}/checkpoint-4.partial while writing checkpoint-4 (") and line.endswith(
        f" free); {out}/checkpoint-2 is intact; free some space and rerun"
    ), line
    assert not (out / "checkpoint-4.partial").exists() and checkpoint.verify(out / "checkpoint-2") is None


def test_disk_full_while_writing_a_cache_shard_or_an_image(tmp_path, monkeypatch):
    """The writers of the cache and of generated images report a full disk the same way."""
    import safetensors.torch

    from sdpo.cache import precompute
    from sdpo.diskspace import reporting_disk_full

    def no_space(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    with pytest.raises(UserError) as e:
        precompute._save({"mean": torch.zeros(4, 4)}, tmp_path, "latents/latents-00003.safetensors")
    assert str(e.value).startswith(f"disk full at {tmp_path} while writing latents/latents-00003.safetensors (")
    assert str(e.value).endswith("; the finished shards are kept; free some space and rerun")
    assert ", about 64 B needed, " in str(e.value)
    assert not list(tmp_path.rglob("*.tmp-*"))  # the temporary file is gone
    with pytest.raises(
        UserError,
        match=rf"^disk full at {tmp_path} while writing images \(0 B written, .* free\); free some space and rerun$",
    ):
        with reporting_disk_full(tmp_path, "images"):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
    with pytest.raises(ValueError, match="not about space"):  # anything else passes through unchanged
        with reporting_disk_full(tmp_path, "images"):
            raise ValueError("not about space")


def test_leftovers_of_live_writers_are_kept(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f".unet.pth.tmp-{sleeper.pid}").write_bytes(b"x")  # being written right now
        (tmp_path / f".unet.pth.tmp-{os.getpid()}").write_bytes(b"x")  # this process's own
        (tmp_path / "notes.tmp-12").write_bytes(b"x")  # not an atomic_path name
        assert checkpoint.remove_leftovers(tmp_path) == []
        assert len(list(tmp_path.iterdir())) == 3
    finally:
        sleeper.kill()
        sleeper.wait()
    assert checkpoint.remove_leftovers(tmp_path) == [(f".unet.pth.tmp-{sleeper.pid}", 1)]


def test_a_flipped_bit_in_a_cache_shard_is_refused_and_redone(tiny_sd15, tiny_pairs, tmp_path, monkeypatch, capsys):
    """One flipped bit used to train silently on the wrong value (the index recorded sizes only); now the shard
    is hashed when the run's batches first reach it (or every file first with --verify_cache full), and
    ``--redo_shard`` rewrites exactly that file."""
    from test_cache import _cli, files_of, precompute

    import train
    from sdpo.cache import store as cache

    shard = "--shard_size", "24", "--text_shard_size", "4", "--encode_batch_size", "1"  # one latent shard: every batch
    base = ("--pretrained_model_name_or_path", tiny_sd15, "--dataset_name", tiny_pairs, "--resolution", "32",
            "--no_hflip")  # fmt: skip
    root = precompute(*base, *shard, "--out", tmp_path / "cache")
    index = cache.read_json(root / cache.INDEX)
    assert all(len(f[manifest.HASH]) == 32 for f in index["files"])
    assert {f["path"]: f[manifest.HASH] for f in index["files"]} == {
        n: r[manifest.HASH] for n, r in manifest.records(root, [f["path"] for f in index["files"]]).items()
    }
    good = files_of(root)
    latents, text = cache.latent_file(0), cache.text_file(0)
    _flip_a_bit(latents)(root)
    train_flags = [*base, "--output_dir", tmp_path / "o", "--report_to", "none", "--precomputed", root,
                   "--train_batch_size", "2", "--max_train_steps", "2", "--checkpointing_steps", "2"]  # fmt: skip
    line = _cli(train.main, train_flags, monkeypatch, capsys)
    assert line == (
        f"error: --precomputed {root}: {latents} does not match its content hash in index.json (it changed after "
        f"precompute wrote it); rewrite it with python -m sdpo.precompute <this run's flags> --out {root} "
        f"--redo_shard {latents}"
    )
    assert not (tmp_path / "o" / "unet.pth").exists() and not list((tmp_path / "o").glob("checkpoint-*"))

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (root / "latents" / f".latents-00001.safetensors.tmp-{dead.pid}").write_bytes(b"x")  # a killed precompute's
    precompute(*base, *shard, "--out", root, "--redo_shard", latents)
    assert files_of(root) == good  # the same bytes as the first time, index included, the leftover gone

    _flip_a_bit(text)(root)
    line = _cli(train.main, [*train_flags, "--verify_cache", "full"], monkeypatch, capsys)
    assert line.startswith(f"error: --precomputed {root}: {text} does not match its content hash"), line
