"""Fault tolerance: crash and resume bit-exactly, atomic checkpoints, bad rows, NaN losses, safe loading."""

import io
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_flags
from PIL import Image

from sdpo.errors import UserError
from sdpo.tiny import jpeg_bytes, tiny_pair_rows, write_pairs
from sdpo.training.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def launch(flags, env_extra=None):
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *flags], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


def logged_steps(out: Path) -> int:
    p = out / "metrics.jsonl"
    return len(read_jsonl(p)) if p.exists() else 0


def test_sigkill_at_random_moments_then_resume_is_bit_exact(tiny_sd15, tiny_pairs, tmp_path, run_train):
    steps = ["--max_train_steps", "8", "--checkpointing_steps", "2", "--use_winner_preserving",
             "--winner_preserving_mu", "0.5", "--dataloader_num_workers", "0"]  # fmt: skip
    ref_out, out = tmp_path / "uninterrupted", tmp_path / "killed"
    run_train(*tiny_flags(tiny_sd15, tiny_pairs, ref_out, *steps))  # in-process: same code, no start-up cost

    rng = random.Random(0)
    flags = tiny_flags(tiny_sd15, tiny_pairs, out, *steps)
    # 1) killed in the middle of writing checkpoint-4 (fault injection at the exact spot)
    p = launch(flags, {"SDPO_CRASH_AT": "checkpoint-4"})
    assert p.wait(timeout=300) == -signal.SIGKILL
    assert (out / "checkpoint-4.partial").is_dir() and not (out / "checkpoint-4").exists()
    # 2) and 3): SIGKILL after a random number of logged steps, wherever the process is then
    for _ in range(2):
        p, before = launch(flags), logged_steps(out)
        target = before + rng.randint(1, 2)
        deadline = time.time() + 240
        while p.poll() is None and logged_steps(out) < target and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    # 4) finish
    p = launch(flags)
    assert p.wait(timeout=300) == 0, p.stderr.read()

    a = torch.load(ref_out / "unet.pth", weights_only=True)
    b = torch.load(out / "unet.pth", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"
    assert [r["step"] for r in read_jsonl(out)] == list(range(1, 9))
    assert not list(out.glob("*.partial")) and not list(out.glob(".*tmp*"))
    assert sorted(int(c.name.split("-")[1]) for c in out.glob("checkpoint-*")) == [2, 4, 6, 8]


def test_checkpoints_total_limit_keeps_newest(tiny_sd15, tiny_pairs, tmp_path, run_train):
    out = tmp_path / "run"
    run_train(*tiny_flags(tiny_sd15, tiny_pairs, out, "--max_train_steps", "5", "--checkpointing_steps", "1",
                          "--checkpoints_total_limit", "2", "--train_method", "sft"))  # fmt: skip
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]


def test_latest_ignores_half_written_checkpoints(tmp_path):
    from sdpo.checkpoint.store import find_resume_point

    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "training_state.json").write_text('{"step": 2}')
    (tmp_path / "checkpoint-4").mkdir()  # no training_state.json: interrupted
    (tmp_path / "checkpoint-6.partial").mkdir()
    assert find_resume_point(tmp_path, "latest") == tmp_path / "checkpoint-2"
    with pytest.raises(UserError, match="not a complete checkpoint"):
        find_resume_point(tmp_path, str(tmp_path / "checkpoint-4"))


def broken_rows():
    rows = tiny_pair_rows(20, seed=5, tie_every=0)
    rows[1]["jpg_0"] = b"\xff\xd8 definitely not a jpeg"
    rows[3]["caption"] = None
    rows[5]["label_0"] = 2.0
    rows[7]["jpg_1"] = jpeg_bytes(Image.new("RGB", (8, 8)))  # thumbnail
    rows[9]["jpg_1"] = jpeg_bytes(Image.new("RGB", (640, 64)))  # 10:1 strip
    cmyk = io.BytesIO()
    Image.new("CMYK", (64, 64), (0, 50, 100, 0)).save(cmyk, format="JPEG")
    rows[11]["jpg_0"] = cmyk.getvalue()  # unusual mode, but usable: kept, converted to RGB
    gray = io.BytesIO()
    Image.new("L", (64, 64), 128).save(gray, format="PNG")
    rows[12]["jpg_1"] = gray.getvalue()  # not even a JPEG: decodable, kept
    return rows


def test_bad_rows_skipped_with_counts_and_indices(tmp_path, caplog, tiny_sd15, run_train):
    from types import SimpleNamespace

    from sdpo.data import pairs as data

    write_pairs(broken_rows(), tmp_path / "pairs")
    cfg = SimpleNamespace(dataset_name=str(tmp_path / "pairs"), train_data_dir=None, split="train", cache_dir=None,
                          streaming=False, dataset_config_name=None, data_check=True, max_bad_fraction=0.5,
                          max_train_samples=None, seed=0, dataloader_num_workers=0, video=False)  # fmt: skip
    with caplog.at_level("WARNING"):
        kept = data.clean_pairs(data.load_pairs(cfg), cfg)
    assert len(kept) == 15
    text = caplog.text
    assert "skipped 5/20 broken rows" in text
    for reason, row in [("undecodable image", 1), ("missing caption", 3), ("bad label", 5)]:
        assert f"{reason}: 1 (rows {row})" in text
    assert "unusual image size: 2 (rows 7, 9)" in text
    # ... and a real run trains on the rest (decoding CMYK and PNG rows on the way).
    out = tmp_path / "run"
    run_train(*tiny_flags(tiny_sd15, tmp_path / "pairs", out, "--max_train_steps", "3", "--train_batch_size", "5",
                          "--max_bad_fraction", "0.5"))  # fmt: skip
    assert (out / "unet.pth").is_file()


def test_mostly_broken_dataset_aborts_with_clear_message(tmp_path, tiny_sd15):
    rows = broken_rows()
    for r in rows[:12]:
        r["label_0"] = 7.0
    write_pairs(rows, tmp_path / "pairs")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *tiny_flags(tiny_sd15, tmp_path / "pairs",
                          tmp_path / "o")], capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "rows are broken" in line and "bad label: 12 (rows 0, 1, 2, 3, 4, ...)" in line
    assert "--max_bad_fraction 0.1" in line
    assert not (tmp_path / "o").exists()  # stopped before writing anything


def _nan_on(calls_to_poison, monkeypatch):
    """Make the objective return NaN on the given (1-based) micro-step calls."""
    import sdpo.training.loop
    import sdpo.training.setup
    from sdpo.losses import LossOutput, get_objective

    real = get_objective("diffusion-dpo")
    count = {"n": 0}

    class Poisoned:
        NEEDS_REFERENCE, USES_LOSER = real.NEEDS_REFERENCE, real.USES_LOSER

        @staticmethod
        def loss(terms, cfg):
            count["n"] += 1
            out = real.loss(terms, cfg)
            if count["n"] in calls_to_poison or "all" in calls_to_poison:
                return LossOutput(loss=out.loss * float("nan"), inside=out.inside)
            return out

    monkeypatch.setattr(sdpo.training.setup, "get_objective", lambda name: Poisoned)


def test_nonfinite_loss_skips_the_step(tiny_sd15, tiny_pairs, tmp_path, run_train, monkeypatch):
    _nan_on({3}, monkeypatch)
    out = tmp_path / "run"
    run_train(*tiny_flags(tiny_sd15, tiny_pairs, out, "--max_train_steps", "4", "--checkpointing_steps", "1"))
    w = {s: torch.load(out / f"checkpoint-{s}" / "unet.pth", weights_only=True) for s in (2, 3, 4)}
    assert all(torch.equal(w[2][k], w[3][k]) for k in w[2])  # step 3 changed nothing
    assert any(not torch.equal(w[3][k], w[4][k]) for k in w[3])  # step 4 trained again
    assert [r["nonfinite_steps"] for r in read_jsonl(out)] == [0, 0, 1, 1]


def test_persistent_nonfinite_loss_stops_with_last_good_state(tiny_sd15, tiny_pairs, tmp_path, run_train,
                                                              monkeypatch):  # fmt: skip
    _nan_on({"all"}, monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"3 consecutive optimizer steps had a non-finite loss .*checkpoint-3"):
        run_train(*tiny_flags(tiny_sd15, tiny_pairs, out, "--max_train_steps", "10", "--max_nonfinite_steps", "3",
                              "--checkpointing_steps", "100"))  # fmt: skip
    init = torch.load(out / "checkpoint-3" / "unet.pth", weights_only=True)
    from diffusers import UNet2DConditionModel

    fresh = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet").state_dict()
    assert all(torch.equal(init[k], fresh[k]) for k in fresh)  # no NaN update reached the weights


class _Evil:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_unsafe_unet_pth_is_refused_and_never_runs(tmp_path):
    from sdpo.checkpoint.weights import load_unet_state_dict

    marker = tmp_path / "pwned"
    torch.save({"conv_in.weight": torch.zeros(1), "x": _Evil(marker)}, tmp_path / "unet.pth")
    with pytest.raises(UserError, match="refused to load"):
        load_unet_state_dict(tmp_path / "unet.pth")
    assert not marker.exists()


def test_tampered_checkpoint_is_refused_on_resume(tiny_sd15, tiny_pairs, tmp_path, run_train):
    out = tmp_path / "run"
    run_train(*tiny_flags(tiny_sd15, tiny_pairs, out, "--max_train_steps", "2", "--train_method", "sft"))
    marker = tmp_path / "pwned"
    torch.save({"state": _Evil(marker)}, out / "checkpoint-2" / "optimizer.bin")
    from sdpo.checkpoint import manifest

    folder = out / "checkpoint-2"  # a tamperer rewrites the manifest too: the safe loader must still refuse
    manifest.write(folder, manifest.records(folder, manifest.listing(folder)))
    with pytest.raises(UserError, match="refused to load a checkpoint file"):
        run_train(*tiny_flags(tiny_sd15, tiny_pairs, out, "--max_train_steps", "4", "--train_method", "sft"))
    assert not marker.exists()


def test_wrong_architecture_unet_init_names_the_family(tiny_sd15, tiny_sdxl, tiny_pairs, tmp_path):
    from diffusers import UNet2DConditionModel

    sdxl_weights = UNet2DConditionModel.from_pretrained(tiny_sdxl, subfolder="unet").state_dict()
    torch.save(sdxl_weights, tmp_path / "unet.pth")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "o",
                          "--unet_init", tmp_path / "unet.pth")], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "weights do not fit this UNet" in line and "missing" in line and "unexpected" in line
    assert "looks like an SDXL UNet" in line


def test_jsonl_survives_a_line_cut_short(tmp_path):
    from sdpo.training.metrics import JsonlLog

    p = tmp_path / "metrics.jsonl"
    p.write_text(json.dumps({"step": 1, "a": 1}) + "\n" + json.dumps({"step": 2, "a": 2}) + '\n{"step": 3, "a"')
    JsonlLog(tmp_path, resume_step=1)
    assert read_jsonl(tmp_path) == [{"step": 1, "a": 1}]
