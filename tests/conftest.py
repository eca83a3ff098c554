"""Shared fixtures: tiny model folders and pair datasets, built once per test session, offline."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The MKL mode eval/generate.py sets on import.  test_generate*.py import it while the suite is collected,
# before MKL's first call, so a whole-suite run computes in this mode; set it here so that any subset of
# the suite (one file, one test) rounds the same way as the whole suite does.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory):
    from sdpo.tiny import build_tiny_model

    return build_tiny_model("sd15", tmp_path_factory.mktemp("models") / "sd15", seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    from sdpo.tiny import build_tiny_model

    return build_tiny_model("sdxl", tmp_path_factory.mktemp("models") / "sdxl", seed=0)


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory):
    from sdpo.tiny import build_tiny_pairs

    return build_tiny_pairs(tmp_path_factory.mktemp("data") / "pairs", n=24, size=64, seed=0)


def reset_accelerate() -> None:
    """accelerate keeps process-wide singletons; in-process runs in one test session must start clean."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture
def run_train():
    """Run ``train.py`` in-process with the given flags; returns the final unet.pth path."""
    from sdpo.config import parse_args
    from sdpo.training import train

    def run(*argv: str):
        reset_accelerate()
        try:
            return train(parse_args([str(a) for a in argv]))
        finally:
            reset_accelerate()

    return run


def tiny_flags(model, pairs, out, *extra) -> list[str]:
    """Flags for a fast tiny run (64 px, batch 2, lr large enough to move the weights)."""
    return [
        "--pretrained_model_name_or_path", str(model), "--dataset_name", str(pairs), "--output_dir", str(out),
        "--resolution", "64", "--train_batch_size", "2", "--learning_rate", "1e-4", "--lr_warmup_steps", "0",
        "--report_to", "none", "--max_train_steps", "4", "--checkpointing_steps", "2", "--beta_dpo", "500",
        *map(str, extra),
    ]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory):
    from sdpo.tiny import build_tiny_model

    return build_tiny_model("flux", tmp_path_factory.mktemp("models") / "flux", seed=0)


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory):
    from sdpo.tiny import build_tiny_model

    return build_tiny_model("sd3", tmp_path_factory.mktemp("models") / "sd3", seed=0)


def flow_flags(model, pairs, out, *extra) -> list[str]:
    """A fast tiny SD3/FLUX run: 32 px, batch 1, no gradient checkpointing."""
    return [
        "--pretrained_model_name_or_path", str(model), "--dataset_name", str(pairs), "--output_dir", str(out),
        "--resolution", "32", "--train_batch_size", "1", "--learning_rate", "1e-3", "--lr_warmup_steps", "0",
        "--report_to", "none", "--max_train_steps", "1", "--checkpointing_steps", "1", "--beta_dpo", "500",
        "--no-gradient_checkpointing", *map(str, extra),
    ]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_cogvideox(tmp_path_factory):
    from sdpo.tiny import build_tiny_model

    return build_tiny_model("cogvideox", tmp_path_factory.mktemp("models") / "cogvideox", seed=0)


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory):
    from sdpo.tiny import build_tiny_model

    return build_tiny_model("wan", tmp_path_factory.mktemp("models") / "wan", seed=0)


@pytest.fixture(scope="session")
def tiny_video_pairs(tmp_path_factory):
    """Eight 9-frame 32 px clip pairs (one of them a tie) in the parquet format."""
    from sdpo.tiny_video import build_tiny_video_pairs

    return build_tiny_video_pairs(tmp_path_factory.mktemp("data") / "video_pairs", n=8, frames=9, size=32, seed=0)


def video_flags(model, pairs, out, *extra) -> list[str]:
    """A fast tiny video run: 9 frames at 32 px, batch 1, one step, no gradient checkpointing."""
    return [
        "--pretrained_model_name_or_path", str(model), "--dataset_name", str(pairs), "--output_dir", str(out),
        "--resolution", "32", "--num_frames", "9", "--train_batch_size", "1", "--learning_rate", "1e-3",
        "--lr_warmup_steps", "0", "--report_to", "none", "--max_train_steps", "1", "--checkpointing_steps", "1",
        "--beta_dpo", "2", "--no-gradient_checkpointing", *map(str, extra),
    ]  # fmt: skip
