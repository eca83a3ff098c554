"""Bad input to train.py: one clear line on stderr, exit status 2, before any model is loaded."""

import subprocess
import sys
from pathlib import Path

import pytest

from sdpo.tiny import write_pairs

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)  # fmt: skip


def one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_missing_model_folder(tiny_pairs, tmp_path):
    line = one_error_line(run_cli("--pretrained_model_name_or_path", tmp_path / "no" / "such", "--dataset_name",
                                  tiny_pairs, "--output_dir", tmp_path / "o"))  # fmt: skip
    assert "no such folder" in line and "pretrained_model_name_or_path" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("mu", ["1.5", "-0.1"])
def test_mu_outside_unit_interval(tiny_sd15, tiny_pairs, tmp_path, mu):
    line = one_error_line(run_cli("--pretrained_model_name_or_path", tiny_sd15, "--dataset_name", tiny_pairs,
                                  "--use_winner_preserving", "--winner_preserving_mu", mu))  # fmt: skip
    assert "--winner_preserving_mu must be in [0, 1]" in line and mu in line


def test_unknown_train_method(tiny_sd15, tiny_pairs):
    line = one_error_line(run_cli("--pretrained_model_name_or_path", tiny_sd15, "--dataset_name", tiny_pairs,
                                  "--train_method", "ppo"))  # fmt: skip
    assert "--train_method" in line and "'ppo'" in line and "diffusion-dpo" in line


def test_dataset_without_needed_columns_fails_before_model_load(tmp_path):
    write_pairs([{"caption": "a", "jpg_0": b"x", "label_0": 1.0}], tmp_path / "bad")
    empty_model = tmp_path / "model"
    (empty_model / "unet").mkdir(parents=True)  # loading this would fail with another message
    line = one_error_line(run_cli("--pretrained_model_name_or_path", empty_model, "--dataset_name", tmp_path / "bad",
                                  "--output_dir", tmp_path / "o", "--report_to", "none"))  # fmt: skip
    assert "lacks column(s) ['jpg_1']" in line
