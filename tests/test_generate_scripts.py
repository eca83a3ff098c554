"""scripts/eval/test_sd15.sh and test_sdxl.sh: the commands they would run (dry run), and a real run
on a tiny model with stand-in scorers (the reward models are eval/score.py's own tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from generate_helpers import REPO, build_models, cli_env, write_prompts

FAKE_SCORE = "import sys\nprint('fake-score', *sys.argv[1:])\n"
FAKE_SUMMARY = "import sys\nprint('fake-table', len(sys.argv) - 1, 'manifests')\n"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("models"), ("sd15",))


@pytest.fixture()
def fakes(tmp_path) -> dict[str, str]:
    (tmp_path / "score.py").write_text(FAKE_SCORE)
    (tmp_path / "summary.py").write_text(FAKE_SUMMARY)
    return {"SCORE_PY": str(tmp_path / "score.py"), "SUMMARY_PY": str(tmp_path / "summary.py")}


def _script(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "eval" / name), *args], env=cli_env(**env), capture_output=True, text=True
    )


def _commands(out: str, tool: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("+ ") and tool in line]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_sd15_dry_run_prints_the_commands_and_runs_nothing(tmp_path, fakes, how):
    ckpt = tmp_path / "checkpoint-2000"
    ckpt.mkdir()
    (ckpt / "unet.pth").write_bytes(b"")
    args, env = (["--dry-run"], {}) if how == "flag" else ([], {"DRY_RUN": "1"})
    proc = _script("test_sd15.sh", *args, str(ckpt / "unet.pth"), **fakes, **env)
    assert proc.returncode == 0, proc.stderr
    gens, scores = _commands(proc.stdout, "eval/generate.py"), _commands(proc.stdout, "--json_path")
    assert len(gens) == 3 and len(scores) == 3
    for cmd, name in zip(gens, ["papv2", "hpsv2", "partiprompts"]):
        assert f"--test_json prompts/{name}.json" in cmd
        assert "--pretrain_path stable-diffusion-v1-5/stable-diffusion-v1-5" in cmd
        assert "--height 512 --width 512 --steps 50 --cfg 7.5 --seed 0" in cmd and "--sdxl" not in cmd
    for cmd, name in zip(scores, ["papv2", "hpsv2", "partiprompts"]):
        assert cmd.endswith(f"--json_path {ckpt}/{name}_seed0_512x512_50s_7.5cfg.json --metrics all")
    assert len(_commands(proc.stdout, fakes["SUMMARY_PY"])) == 1
    assert sorted(p.name for p in ckpt.iterdir()) == ["unet.pth"]  # no log, no images


def test_sdxl_dry_run_settings_from_environment(tmp_path, fakes):
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    (ckpt / "unet.pth").write_bytes(b"")
    (ckpt / "hpsv2_seed1_768x768_20s_5.0cfg.json").write_text("[]")  # a complete set is not regenerated
    env = dict(SETS="hpsv2 papv2", CFG="5", STEPS="20", SEED="1", SIZE="768", BATCH_SIZE="8", DEVICE="cuda:1")
    env.update(LAUNCH="accelerate launch --num_processes 8", PRETRAIN_PATH="/models/sdxl", VAE_PATH="/models/vae")
    proc = _script("test_sdxl.sh", "--dry-run", str(ckpt / "unet.pth"), **fakes, **env)
    assert proc.returncode == 0, proc.stderr
    gens = _commands(proc.stdout, "eval/generate.py")
    assert len(gens) == 1 and gens[0].startswith("+ accelerate launch --num_processes 8 eval/generate.py")
    for part in ("--sdxl", "--vae_path /models/vae", "--pretrain_path /models/sdxl", "--height 768 --width 768"):
        assert part in gens[0]
    assert "--steps 20 --cfg 5 --seed 1" in gens[0] and "--batch_size 8" in gens[0]
    assert "generation skipped" in proc.stdout and "hpsv2_seed1_768x768_20s_5.0cfg.json exists" in proc.stdout
    scores = _commands(proc.stdout, "--json_path")
    assert [s.split("--json_path ")[1].split()[0] for s in scores] == [
        f"{ckpt}/hpsv2_seed1_768x768_20s_5.0cfg.json",
        f"{ckpt}/papv2_seed1_768x768_20s_5.0cfg.json",
    ]
    assert all(s.endswith("--metrics all --device cuda:1") for s in scores)


def test_missing_scorer_is_reported_and_bad_path_fails(tmp_path):
    (tmp_path / "unet.pth").write_bytes(b"")
    proc = _script("test_sd15.sh", "--dry-run", str(tmp_path / "unet.pth"), SCORE_PY=str(tmp_path / "absent.py"))
    assert proc.returncode == 0
    assert proc.stdout.count(f"scoring skipped: {tmp_path}/absent.py not found") == 3
    bad = _script("test_sd15.sh", str(tmp_path / "nope.pth"))
    assert bad.returncode == 2 and f"error: {tmp_path}/nope.pth: no such file or folder" in bad.stderr
    usage = _script("test_sd15.sh")
    assert usage.returncode == 2 and "usage: " in usage.stderr


def test_real_run_on_a_tiny_model_logs_beside_the_checkpoint(models, tmp_path, fakes):
    prompts = write_prompts(tmp_path / "six.json")
    unet = models["sd15_unet"]
    env = dict(SETS=str(prompts), PRETRAIN_PATH=str(models["sd15"]), SIZE="64", STEPS="2", BATCH_SIZE="3", **fakes)
    proc = _script("test_sd15.sh", str(unet), **env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    manifest = unet.parent / "six_seed0_64x64_2s_7.5cfg.json"
    assert manifest.is_file() and len(list((unet.parent / manifest.stem).glob("*.png"))) == 6
    log = (unet.parent / "joint_test_64.log").read_text()
    assert "generated 6 images (0 already present)" in log
    assert f"fake-score --json_path {manifest} --metrics all" in log
    assert "fake-table 1 manifests" in log

    again = _script("test_sd15.sh", str(unet), **env)
    assert again.returncode == 0 and "generation skipped" in again.stdout
    assert Path(unet.parent / "joint_test_64.log").read_text().count("== ") >= 6  # appended, not overwritten


def test_flux_dry_run_uses_the_flow_defaults(tmp_path, fakes):
    ckpt = tmp_path / "checkpoint-2000"
    ckpt.mkdir()
    (ckpt / "transformer.pth").write_bytes(b"")
    proc = _script("test_flux.sh", "--dry-run", str(ckpt / "transformer.pth"), SETS="papv2", **fakes)
    assert proc.returncode == 0, proc.stderr
    (gen,) = _commands(proc.stdout, "eval/generate.py")
    assert "--model_family flux" in gen and "--pretrain_path black-forest-labs/FLUX.1-dev" in gen
    assert "--height 1024 --width 1024 --steps 50 --cfg 3.5 --seed 0" in gen
    (score,) = _commands(proc.stdout, "--json_path")
    assert f"--json_path {ckpt}/papv2_seed0_1024x1024_50s_3.5cfg.json" in score
