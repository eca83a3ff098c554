"""Mistakes that used to end in a traceback or in a line pointing the wrong way: each is now one ``error:`` line
(checked exactly), exit status 2, found before any model loads where it can be, and no output folder left."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import reset_accelerate, tiny_flags

ROOT = Path(__file__).resolve().parents[1]


def _train_line(argv, monkeypatch, capsys) -> str:
    import train

    monkeypatch.setattr(sys, "argv", ["train.py", *map(str, argv)])
    reset_accelerate()
    try:
        with pytest.raises(SystemExit) as exc:
            train.main()
    finally:
        reset_accelerate()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if a training run gets as far as loading its models."""
    import sdpo.training.setup

    def refuse(*args, **kwargs):
        raise AssertionError("the models were loaded before the mistake was reported")

    monkeypatch.setattr(sdpo.training.setup, "load_family", refuse)


def test_data_and_model_paths(tiny_sd15, tiny_pairs, tmp_path, monkeypatch, capsys, no_model_loads):
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny" / "empty").mkdir(parents=True)
    first = sorted(Path(tiny_pairs).rglob("*.parquet"))[0]
    pq.write_table(pq.read_table(first).slice(0, 0), tmp_path / "tiny" / "empty" / "train-0.parquet")
    shutil.copytree(tiny_sd15, tmp_path / "tiny" / "sd15")
    out = tmp_path / "out"
    cases = [
        (tiny_flags("tiny/sd15", "tiny/nopairs", out),
         f"error: --dataset_name tiny/nopairs: no such folder or file (relative to {tmp_path}), and as a hub dataset id "
         "not in the local datasets cache (offline mode); check the path"),
        (tiny_flags("tiny/sd15", "tiny/empty", out),
         "error: --dataset_name tiny/empty: its 1 parquet file(s) hold 0 rows; point it at the pairs to train on"),
        (tiny_flags("tiny/nosd15", tiny_pairs, out),
         f"error: --pretrained_model_name_or_path tiny/nosd15: no such folder (relative to {tmp_path}), and as a hub "
         "model id not in the local hub cache (offline mode); check the path"),
        (tiny_flags("tiny/nosd15", tiny_pairs, out, "--model_family", "sd15"),  # used to fail on scheduler_config.json
         f"error: --pretrained_model_name_or_path tiny/nosd15: no such folder (relative to {tmp_path}), and as a hub "
         "model id not in the local hub cache (offline mode); check the path"),
        (tiny_flags("tiny/sd15", tiny_pairs, out, "--stop_signals", "TERM,KILL"),
         "error: --stop_signals TERM,KILL: 'KILL' is not a signal that can be caught; use names such as "
         "SIGTERM,SIGINT,SIGUSR1, or none"),
    ]  # fmt: skip
    for argv, expected in cases:
        assert _train_line(argv, monkeypatch, capsys) == expected
        assert not out.exists()


def test_missing_reward_weights_in_validation_name_the_validation_flag(tiny_sd15, tiny_pairs, tmp_path, monkeypatch,
                                                                       capsys, no_model_loads):  # fmt: skip
    for var in ("SDPO_PICKSCORE_MODEL", "SDPO_PICKSCORE_PROCESSOR", "SDPO_REWARD_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))  # no cached copy either
    prompts = tmp_path / "p.json"
    prompts.write_text('[{"prompt": "a cat"}]')
    out = tmp_path / "out"
    argv = tiny_flags(tiny_sd15, tiny_pairs, out, "--validation_prompts", prompts, "--validation_metrics", "pickscore")
    line = _train_line(argv, monkeypatch, capsys)
    assert line.startswith(
        "error: pickscore: CLIP model not found; looked in $SDPO_PICKSCORE_MODEL (unset), "
        "$SDPO_REWARD_ROOT/--validation_model_root (unset), the Hugging Face hub/cache for yuvalkirstain/PickScore_v1; "
        "put it under --validation_model_root/$SDPO_REWARD_ROOT as <root>/yuvalkirstain/PickScore_v1"
    ), line
    assert "--model_root" not in line.replace("--validation_model_root", "") and not out.exists()


def test_sd3_at_a_resolution_its_patches_cannot_take(tiny_sd3, tiny_pairs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    line = _train_line(tiny_flags(tiny_sd3, tiny_pairs, out, "--resolution", "56"), monkeypatch, capsys)
    assert line == "error: --resolution must be a multiple of 16 for sd3 (VAE factor 8 x 2x2 latent patches), got 56"
    assert not out.exists()


def test_truncated_weights_files(tiny_sd15, tiny_pairs, tmp_path, monkeypatch, capsys):
    from eval.generate import main as generate

    weights = tmp_path / "unet.safetensors"
    shutil.copy(Path(tiny_sd15) / "unet" / "diffusion_pytorch_model.safetensors", weights)
    os.truncate(weights, weights.stat().st_size // 2)
    torch_file = tmp_path / "unet.pth"
    torch_file.write_bytes(b"PK\x03\x04" + b"\0" * 100)  # a zip that lost its end (where the directory is)
    why = ("not a readable safetensors file (Error while deserializing header: incomplete metadata, file not fully "
           "covered); it may be cut short: copy or download it again")  # fmt: skip
    out = tmp_path / "out"
    line = _train_line(tiny_flags(tiny_sd15, tiny_pairs, out, "--unet_init", weights), monkeypatch, capsys)
    assert line == f"error: {weights}: {why}" and not out.exists()  # (the output folder was made, then removed)

    prompts = tmp_path / "p.json"
    prompts.write_text('[{"prompt": "a cat"}]')
    gen = tmp_path / "gen"
    for path, expected in [
        (weights, f"error: --weights_path: {weights}: {why}"),
        (torch_file, f"error: --weights_path: {torch_file}: not a readable PyTorch file (a zip archive without its "
                     "directory); it may be cut short: copy or download it again"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            generate(["--weights_path", str(path), "--pretrain_path", str(tiny_sd15), "--test_json", str(prompts),
                      "--output_path", str(gen), "--height", "32", "--width", "32", "--steps", "2"])  # fmt: skip
        assert exc.value.code == 2 and capsys.readouterr().err.strip() == expected
        assert not gen.exists()  # refused before its folder was made
