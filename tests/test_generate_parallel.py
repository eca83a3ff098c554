"""Two data-parallel processes (torchrun, the launcher ``accelerate launch`` uses) write the same
images and the same single manifest as one process."""

from __future__ import annotations

import subprocess
import sys

import pytest
from generate_helpers import REPO, SIZE, STEPS, build_models, cli_env, model_args, pngs, run_generate, write_prompts

NAME = f"six_seed0_{SIZE}x{SIZE}_{STEPS}s_7.5cfg"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("models"), ("sd15",))


def test_two_processes_match_one(models, tmp_path):
    prompts = write_prompts(tmp_path / "six.json")
    args = [*model_args(models, "sd15"), "--test_json", str(prompts), "--batch_size", "2"]
    run_generate([*args, "--output_path", str(tmp_path / "one")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, "eval/generate.py", *args, "--output_path", str(tmp_path / "two")],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,  # a rendezvous problem must fail the test, not hang it
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "generated 6 images (0 already present)" in proc.stdout and "on 2 process(es)" in proc.stdout
    assert proc.stdout.count("generated ") == 1  # one summary, from the main process
    assert pngs(tmp_path / "two" / NAME) == pngs(tmp_path / "one" / NAME)
    for f in pngs(tmp_path / "one" / NAME):
        assert (tmp_path / "two" / NAME / f).read_bytes() == (tmp_path / "one" / NAME / f).read_bytes()
    one = (tmp_path / "one" / f"{NAME}.json").read_text().replace(str(tmp_path / "one"), "X")
    two = (tmp_path / "two" / f"{NAME}.json").read_text().replace(str(tmp_path / "two"), "X")
    assert one == two
