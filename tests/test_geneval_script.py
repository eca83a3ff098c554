"""scripts/eval/geneval.sh: the commands it would run (dry run) for SD1.5, SDXL and another family."""

from __future__ import annotations

import subprocess

from generate_helpers import REPO, cli_env


def _script(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "scripts/eval/geneval.sh"), *args], env=cli_env(**env), capture_output=True, text=True
    )


def _ckpt(tmp_path):
    ckpt = tmp_path / "checkpoint-2000"
    ckpt.mkdir()
    (ckpt / "unet.pth").write_bytes(b"")
    return ckpt


def test_sd15_dry_run(tmp_path):
    ckpt = _ckpt(tmp_path)
    proc = _script("--dry-run", str(ckpt / "unet.pth"))
    assert proc.returncode == 0, proc.stderr
    cmds = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    assert len(cmds) == 2
    assert "eval/generate.py" in cmds[0] and "--layout geneval --images_per_prompt 4" in cmds[0]
    assert "--test_json prompts/geneval/evaluation_metadata.jsonl" in cmds[0] and "--sdxl" not in cmds[0]
    assert "--height 512 --width 512 --steps 50 --cfg 7.5 --seed 0" in cmds[0]
    assert cmds[1] == f"+ python -m eval.geneval {ckpt}/geneval_seed0_512x512_50s_7.5cfg_4img"
    assert sorted(p.name for p in ckpt.iterdir()) == ["unet.pth"]  # no log, no images


def test_sdxl_and_other_families_from_the_environment(tmp_path):
    ckpt = _ckpt(tmp_path)
    proc = _script(str(ckpt), DRY_RUN="1", KIND="sdxl", DEVICE="cuda", EVAL_BATCH_SIZE="16", MODEL_ROOT="/m")
    assert proc.returncode == 0, proc.stderr
    gen, ev = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    assert "--sdxl" in gen and "--vae_path madebyollin/sdxl-vae-fp16-fix" in gen and "--height 1024" in gen
    assert ev.endswith("geneval_seed0_1024x1024_50s_7.5cfg_4img --device cuda --batch_size 16 --model_root /m")
    # A family generate.py knows by its own flag: passed through GEN_ARGS, named by generate.py.
    proc = _script(str(ckpt), DRY_RUN="1", KIND="flux", PRETRAIN_PATH="black-forest-labs/FLUX.1-dev", CFG="3.5",
                   GEN_ARGS="--sampler pipeline")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    gen = next(line for line in proc.stdout.splitlines() if line.startswith("+ ") and "generate.py" in line)
    assert "--pretrain_path black-forest-labs/FLUX.1-dev" in gen and gen.endswith("--sampler pipeline --batch_size 1")
    assert "geneval_seed0_1024x1024_50s_3.5cfg_4img" in proc.stdout


def test_usage_errors(tmp_path):
    proc = _script()
    assert proc.returncode == 2 and "usage:" in proc.stderr
    proc = _script(str(tmp_path / "missing.pth"))
    assert proc.returncode == 2 and "no such file or folder" in proc.stderr
