"""The whole evaluation path on tiny models: train.py's unet.pth -> test_sd15.sh (generate, score with
all five reward models, summary table) for two models -> test_vs.sh win rates from their manifests."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [{"prompt": "a red circle"}, {"prompt": "a blue square"}, {"prompt": "a red circle"}, {"prompt": ""}]


@pytest.fixture(scope="module")
def reward_root(tmp_path_factory):
    from sdpo.tiny.rewards import build_tiny_reward_root

    return build_tiny_reward_root(tmp_path_factory.mktemp("rewards") / "root", seed=0)


def run_script(script, *args, env_extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.run(["bash", str(ROOT / "scripts" / "eval" / script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_generate_score_and_compare_two_models(tiny_sd15, reward_root, tmp_path):
    from diffusers import UNet2DConditionModel

    prompts = tmp_path / "tiny_set.json"
    prompts.write_text(json.dumps(PROMPTS))
    env = {"PRETRAIN_PATH": str(tiny_sd15), "SIZE": "64", "STEPS": "2", "SETS": str(prompts),
           "SDPO_REWARD_ROOT": str(reward_root), "DEVICE": "cpu", "BATCH_SIZE": "2"}  # fmt: skip
    manifests = {}
    for name, seed in (("a", 1), ("b", 2)):
        unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(0.05 * torch.randn_like(p))
        ckpt = tmp_path / name / "checkpoint-2"
        ckpt.mkdir(parents=True)
        torch.save(unet.state_dict(), ckpt / "unet.pth")
        proc = run_script("test_sd15.sh", ckpt / "unet.pth", env_extra=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        manifest = ckpt / "tiny_set_seed0_64x64_2s_7.5cfg.json"
        entries = json.loads(manifest.read_text())
        assert [e["prompt"] for e in entries] == [p["prompt"] for p in PROMPTS]
        scores = json.loads((ckpt / "tiny_set_seed0_64x64_2s_7.5cfg.scores.json").read_text())
        text = json.dumps(scores)
        for metric in ("pickscore", "hpsv2", "aesthetics", "clip", "imagereward"):
            assert metric in text
        log = (ckpt / "joint_test_64.log").read_text()
        assert "PickScore" in log and "IR" in log and "tiny_set" in log
        manifests[name] = manifest

    out = tmp_path / "vs"
    proc = run_script("test_vs.sh", "--json_a", manifests["a"], "--json_b", manifests["b"], "--label_a", "A",
                      "--label_b", "B", "--outdir", out, "--n_boot", "200", env_extra=env)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (result,) = out.glob("A_vs_B_*")
    summary = json.loads((result / "summary.json").read_text())
    assert (result / "winrate.png").stat().st_size > 1000
    text = json.dumps(summary)
    assert "pickscore" in text and "imagereward" in text
    # The two models' cached scores were reused, so the per-pair files agree with them.
    pairs = json.loads((result / "pickscore.json").read_text())
    assert len(pairs if isinstance(pairs, list) else pairs["pairs"]) == 4
