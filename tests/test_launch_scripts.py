"""The paper launch scripts: flags against the REFERENCE table (and sd15_kto.sh against the public
Diffusion-KTO example), batch arithmetic, refusals.

Each script is run with ``--dry-run``; the printed ``accelerate launch`` command is split with
``shlex`` and its train.py part parsed by train.py's own parser, so a flag the scripts spell
wrongly fails here.  The GPU count is faked with ``NUM_GPUS`` (no GPU is needed).  One test
launches a script for real on CPU with a tiny model, so accelerate must accept the command too.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sdpo.config import build_parser

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "train"

# REFERENCE section 4: script -> (train_method, beta_dpo, mu, dmpo_alpha, base lr)
TABLE = {
    "sd15_diffusion_dpo": ("diffusion-dpo", 5000.0, 0.9, 0.0, 1e-8),
    "sd15_dspo": ("dspo", 0.001, 0.2, 0.0, 1e-8),
    "sd15_dmpo": ("dmpo", 2000.0, 0.9, 0.01, 1e-8),
    "sdxl_diffusion_dpo": ("diffusion-dpo", 5000.0, 0.6, 0.0, 1e-9),
    "sdxl_dspo": ("dspo", 5000.0, 0.6, 0.0, 1e-9),
    "sdxl_dmpo": ("dmpo", 6000.0, 0.6, 0.01, 1e-9),
}
_SCRUB = (
    "NUM_GPUS", "CUDA_VISIBLE_DEVICES", "NUM_NODES", "NNODES", "SLURM_NNODES", "SLURM_NODEID", "NODE_RANK",
    "MASTER_ADDR", "MASTER_PORT", "DRY_RUN", "ALLOW_CPU", "MODEL", "VAE", "DATASET", "TRAIN_DATA_DIR",
    "OUTPUT_DIR", "GLOBAL_BATCH", "PER_GPU_BATCH", "MIXED_PRECISION", "NUM_WORKERS", "ACCEL_CONFIG", "SHARDING",
    "DP_REPLICATE",
)  # fmt: skip


def run_script(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    full.update(PYTHON=sys.executable, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env)
    return subprocess.run(["bash", str(SCRIPTS / f"{name}.sh"), *args], env=full, capture_output=True, text=True)


def dry_run(name: str, *args: str, **env: str):
    """(accelerate launch options as a dict, parsed train.py namespace, printed lines)."""
    proc = run_script(name, "--dry-run", *args, **env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    cmd = shlex.split(lines[-1])
    assert cmd[:2] == ["accelerate", "launch"], lines[-1]
    split = next(i for i, a in enumerate(cmd) if a.endswith("train.py"))
    launch, train = cmd[2:split], cmd[split + 1 :]
    opts, i = {}, 0
    while i < len(launch):  # every accelerate option here is a flag or "--name value"
        if i + 1 < len(launch) and not launch[i + 1].startswith("--"):
            opts[launch[i]] = launch[i + 1]
            i += 2
        else:
            opts[launch[i]] = True
            i += 1
    return opts, build_parser().parse_args(train), lines


@pytest.mark.parametrize("name", sorted(TABLE))
def test_paper_settings(name):
    method, beta, mu, alpha, lr = TABLE[name]
    opts, cfg, lines = dry_run(name, NUM_GPUS="8")
    assert (cfg.train_method, cfg.beta_dpo, cfg.winner_preserving_mu, cfg.dmpo_alpha) == (method, beta, mu, alpha)
    assert cfg.use_winner_preserving and cfg.learning_rate == lr and cfg.scale_lr
    assert (cfg.train_batch_size, cfg.gradient_accumulation_steps) == (8, 32)  # 8 GPUs x 8 x 32 = 2048
    assert (cfg.lr_scheduler, cfg.lr_warmup_steps, cfg.max_train_steps) == ("constant_with_warmup", 500, 2000)
    assert (cfg.mixed_precision, cfg.allow_tf32, cfg.checkpointing_steps) == ("bf16", True, 500)
    assert cfg.proportion_empty_prompts == 0.2  # the reference default, not overridden
    assert cfg.output_dir == f"outputs/{name}"
    if name.startswith("sdxl"):
        assert cfg.sdxl and cfg.use_adafactor and cfg.gradient_checkpointing
        assert cfg.pretrained_model_name_or_path == "stabilityai/stable-diffusion-xl-base-1.0"
        assert cfg.pretrained_vae_model_name_or_path == "madebyollin/sdxl-vae-fp16-fix"
    else:
        assert not cfg.sdxl and cfg.use_adafactor is None and cfg.pretrained_vae_model_name_or_path is None
        assert cfg.pretrained_model_name_or_path == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert opts["--multi_gpu"] is True and opts["--num_processes"] == "8" and opts["--num_machines"] == "1"
    assert opts["--mixed_precision"] == "bf16"
    assert f"x 2048 (--scale_lr) = {lr * 2048:.4g};" in "\n".join(lines)


def test_kto_script_follows_the_public_diffusion_kto_example():
    opts, cfg, lines = dry_run("sd15_kto", NUM_GPUS="4")
    assert (cfg.train_method, cfg.kto_beta, cfg.halo, cfg.positive_ratio) == ("kto", 1000.0, "sigmoid", 0.8)
    assert (cfg.lambda_d_kto, cfg.lambda_u_kto, cfg.kto_label_column) == (1.0, 1.0, None)
    assert not cfg.use_winner_preserving and not cfg.scale_lr and not cfg.allow_tf32 and cfg.learning_rate == 1e-7
    assert (cfg.train_batch_size, cfg.gradient_accumulation_steps) == (2, 1)  # 2 x 4 GPUs, as the example
    assert (cfg.lr_scheduler, cfg.lr_warmup_steps, cfg.max_train_steps) == ("constant_with_warmup", 200, 20000)
    assert (cfg.checkpointing_steps, cfg.checkpoints_total_limit, cfg.seed) == (5000, 4, 0)
    assert cfg.mixed_precision == "fp16" and opts["--mixed_precision"] == "fp16" and cfg.gradient_checkpointing
    assert cfg.proportion_empty_prompts == 0.2 and cfg.output_dir == "outputs/sd15_kto"
    assert cfg.pretrained_model_name_or_path == "stable-diffusion-v1-5/stable-diffusion-v1-5" and not cfg.sdxl
    text = "\n".join(lines)
    assert "per-GPU batch 2 x 4 x accumulation 1 = global batch 8 images" in text and "lr 1e-7 (not scaled)" in text
    _, one_gpu, _ = dry_run("sd15_kto", NUM_GPUS="1")
    assert one_gpu.gradient_accumulation_steps == 4  # the global batch of 8 is kept
    _, big, _ = dry_run("sd15_kto", NUM_GPUS="4", GLOBAL_BATCH="2048")  # the example's earlier revision
    assert big.gradient_accumulation_steps == 256


@pytest.mark.parametrize("name", [*sorted(TABLE), "sd15_kto"])
def test_each_train_flag_is_given_once(name):
    _, _, lines = dry_run(name, NUM_GPUS="4")
    cmd = shlex.split(lines[-1])
    flags = [a for a in cmd[next(i for i, a in enumerate(cmd) if a.endswith("train.py")) :] if a.startswith("--")]
    assert len(flags) == len(set(flags)), sorted(f for f in flags if flags.count(f) > 1)


@pytest.mark.parametrize(
    "env, processes, accum",
    [
        ({"NUM_GPUS": "8"}, 8, 32),
        ({"NUM_GPUS": "4"}, 4, 64),
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, 2, 128),  # counted from the visible devices
        ({"NUM_GPUS": "1"}, 1, 256),
        ({"NUM_GPUS": "8", "NUM_NODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.1.2.3"}, 16, 16),
        ({"NUM_GPUS": "8", "NNODES": "4", "NODE_RANK": "0", "MASTER_ADDR": "node0", "MASTER_PORT": "1234"}, 32, 8),
    ],
)
def test_accumulation_keeps_global_batch_2048(env, processes, accum):
    opts, cfg, lines = dry_run("sdxl_dspo", **env)
    assert cfg.gradient_accumulation_steps == accum
    assert cfg.train_batch_size * processes * cfg.gradient_accumulation_steps == 2048
    assert opts["--num_processes"] == str(processes)
    assert f"per-GPU batch 8 x {processes} x accumulation {accum} = global batch 2048" in "\n".join(lines)
    assert ("--multi_gpu" in opts) == (processes > 1)
    nodes = int(env.get("NUM_NODES", env.get("NNODES", "1")))
    assert opts["--num_machines"] == str(nodes)
    if nodes > 1:
        assert opts["--machine_rank"] == env["NODE_RANK"] and opts["--main_process_ip"] == env["MASTER_ADDR"]
        assert opts["--main_process_port"] == env.get("MASTER_PORT", "29500")


def test_batch_override_rescales_accumulation():
    _, cfg, lines = dry_run("sd15_dmpo", "--train_batch_size", "4", NUM_GPUS="8")
    assert (cfg.train_batch_size, cfg.gradient_accumulation_steps) == (4, 64)


def test_extra_flags_reach_train_py_and_override_the_recipe():
    _, cfg, _ = dry_run("sd15_dspo", "--max_train_steps", "10", "--beta_dpo=0.5", "--resolution", "256", NUM_GPUS="8")
    assert (cfg.max_train_steps, cfg.beta_dpo, cfg.resolution) == (10, 0.5, 256)


def test_paths_come_from_the_environment():
    env = dict(NUM_GPUS="2", MODEL="/mirror/sdxl", VAE="/mirror/vae", TRAIN_DATA_DIR="/mirror/pap", OUTPUT_DIR="/o")
    _, cfg, _ = dry_run("sdxl_diffusion_dpo", **env)
    assert (
        cfg.pretrained_model_name_or_path == "/mirror/sdxl" and cfg.pretrained_vae_model_name_or_path == "/mirror/vae"
    )
    assert cfg.train_data_dir == "/mirror/pap" and cfg.output_dir == "/o"


def test_no_safeguard_gives_the_baseline():
    _, cfg, _ = dry_run("sd15_diffusion_dpo", "--no-safeguard", NUM_GPUS="8")
    assert not cfg.use_winner_preserving and cfg.winner_preserving_mu == 0.0


def test_accelerate_config_file_decides_the_distributed_type():
    opts, _, _ = dry_run("sdxl_dspo", NUM_GPUS="8", ACCEL_CONFIG="configs/accelerate/deepspeed_zero2.yaml")
    assert opts["--config_file"] == "configs/accelerate/deepspeed_zero2.yaml" and "--multi_gpu" not in opts


def test_refuses_without_gpu():
    for env in ({"NUM_GPUS": "0"}, {"CUDA_VISIBLE_DEVICES": ""}):
        proc = run_script("sdxl_dmpo", "--dry-run", **env)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and "no GPU found" in proc.stderr and "ALLOW_CPU=1" in proc.stderr


def test_cpu_when_allowed():
    opts, cfg, _ = dry_run("sd15_dspo", NUM_GPUS="0", ALLOW_CPU="1")
    assert opts["--cpu"] is True and opts["--num_processes"] == "1" and "--multi_gpu" not in opts
    assert cfg.mixed_precision == "no" and cfg.gradient_accumulation_steps == 256


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--frobnicate", "1"], {}, "unknown option '--frobnicate'"),
        (["--max_train", "5"], {}, "unknown option '--max_train'"),  # abbreviations would dodge the batch maths
        (["--beta_dpo"], {}, "train.py would reject the extra arguments: argument --beta_dpo: expected one argument"),
        ([], {"PER_GPU_BATCH": "3"}, "global batch 2048 is not divisible by per-GPU batch 3 x 8 process(es) = 24"),
        ([], {"NUM_NODES": "2"}, "NUM_NODES=2 needs MASTER_ADDR"),
        ([], {"NUM_NODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "x"}, "NODE_RANK must be in [0, 1]"),
    ],
)
def test_bad_input_is_one_line(args, env, message):
    proc = run_script("sd15_dspo", "--dry-run", *args, NUM_GPUS="8", **env)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_real_launch_on_cpu(tmp_path):
    from sdpo.tiny import build_tiny_model, build_tiny_pairs

    model, pairs = build_tiny_model("sd15", tmp_path / "m"), build_tiny_pairs(tmp_path / "p", n=8)
    env = dict(
        ALLOW_CPU="1", MODEL=str(model), DATASET=str(pairs), OUTPUT_DIR=str(tmp_path / "out"),
        GLOBAL_BATCH="2", PER_GPU_BATCH="1", NUM_WORKERS="0", HF_HUB_OFFLINE="1",
    )  # fmt: skip
    args = ["--resolution", "64", "--max_train_steps", "1", "--lr_warmup_steps", "0", "--report_to", "none"]
    proc = run_script("sd15_diffusion_dpo", *args, **env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "per-GPU batch 1 x 1 x accumulation 2 = global batch 2 pairs" in proc.stdout
    assert (tmp_path / "out" / "unet.pth").is_file() and (tmp_path / "out" / "checkpoint-1").is_dir()


@pytest.mark.parametrize("name, model", [("flux_diffusion_dpo", "black-forest-labs/FLUX.1-dev"),
                                         ("sd35_diffusion_dpo", "stabilityai/stable-diffusion-3.5-medium")])  # fmt: skip
def test_flow_recipes_follow_appendix_b(name, model):
    opts, cfg, lines = dry_run(name, NUM_GPUS="8", NUM_NODES="2", NODE_RANK="0", MASTER_ADDR="node0")
    assert (cfg.train_method, cfg.beta_dpo, cfg.winner_preserving_mu, cfg.use_winner_preserving) == (
        "diffusion-dpo", 1000.0, 0.99, True)  # fmt: skip
    assert cfg.learning_rate == 1e-5 and not cfg.scale_lr and cfg.resolution == 1024 and cfg.gradient_checkpointing
    assert (cfg.train_batch_size, cfg.gradient_accumulation_steps) == (1, 32)  # 16 GPUs x 1 x 32 = 512
    assert cfg.model_family == name.split("_")[0].replace("sd35", "sd3") and cfg.pretrained_model_name_or_path == model
    assert opts["--num_processes"] == "16" and opts["--num_machines"] == "2" and cfg.mixed_precision == "bf16"
    assert "global batch 512 pairs" in "\n".join(lines) and "(not scaled)" in "\n".join(lines)


def test_flux_script_shards_as_the_paper_hsdp_2x8():
    opts, cfg, lines = dry_run("flux_diffusion_dpo", NUM_GPUS="8", NUM_NODES="2", NODE_RANK="1", MASTER_ADDR="n0")
    assert (cfg.sharding, cfg.dp_replicate, cfg.use_adafactor) == ("hsdp", 2, None)  # AdamW, FSDP inside a node
    assert opts["--multi_gpu"] is True and opts["--num_processes"] == "16"  # accelerate launches, train.py shards
    assert "HSDP: 2 replica group(s) x 8 shard(s)" in "\n".join(lines)
    _, cfg, _ = dry_run("flux_diffusion_dpo", NUM_GPUS="8", SHARDING="fsdp")
    assert (cfg.sharding, cfg.dp_replicate) == ("fsdp", None)
    _, cfg, _ = dry_run("sdxl_dspo", "--sharding", "fsdp", NUM_GPUS="8")  # the SDXL recipe, sharded: AdamW
    assert cfg.sharding == "fsdp" and not cfg.use_adafactor
    proc = run_script("flux_diffusion_dpo", "--dry-run", NUM_GPUS="6", DP_REPLICATE="4", GLOBAL_BATCH="24")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "4 replica group(s) do not divide 6 process(es)" in proc.stderr


# SIPO paper, Table A1 (video): beta per method; lr 2e-5 constant, Adam, 4 per GPU x 8 x 16 GPUs, fp16
VIDEO = {"cogvideox2b_sipo": "THUDM/CogVideoX-2b", "cogvideox5b_sipo": "THUDM/CogVideoX-5b",
         "wan13b_sipo": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"}  # fmt: skip
VIDEO_BETA = {"diffusion-dpo": 2.0, "dpo-cm": 0.02, "sipo": 0.02}


@pytest.mark.parametrize(
    "name, method",
    [(n, m) for n in VIDEO for m in VIDEO_BETA if not (n.startswith("wan") and m != "diffusion-dpo")],
)  # fmt: skip
def test_video_recipes_follow_table_a1(name, method):
    env = dict(NUM_GPUS="8", NUM_NODES="2", NODE_RANK="0", MASTER_ADDR="node0", DATASET="/pairs")
    opts, cfg, lines = dry_run(name, *(["--method", method] if method != "sipo" else []), **env)
    assert (cfg.train_method, cfg.beta_dpo) == (method, VIDEO_BETA[method]) and not cfg.use_winner_preserving
    assert cfg.learning_rate == 2e-5 and not cfg.scale_lr and (cfg.lr_scheduler, cfg.lr_warmup_steps) == ("constant", 0)
    assert cfg.adam_weight_decay == 0 and cfg.use_adafactor is False and cfg.gradient_checkpointing
    assert (cfg.train_batch_size, cfg.gradient_accumulation_steps) == (4, 8)  # 16 GPUs x 4 x 8 = 512
    assert cfg.mixed_precision == "fp16" and opts["--mixed_precision"] == "fp16"
    assert (cfg.max_train_steps, cfg.checkpointing_steps) == (1000, 250)
    assert cfg.pretrained_model_name_or_path == VIDEO[name] and cfg.dataset_name == "/pairs"
    assert cfg.model_family == name[:3].replace("cog", "cogvideox") and cfg.output_dir == f"outputs/{name}-{method}"
    assert ("--config_file" in opts) == (name == "cogvideox5b_sipo")  # 5B: DeepSpeed ZeRO-2 by default


@pytest.mark.parametrize(
    "name, args, env, message",
    [
        ("wan13b_sipo", [], {"DATASET": "/p"}, "--method sipo needs DDPM transition densities and Wan2.1 is "
         "rectified flow (no flow form of sipo is implemented); use --method diffusion-dpo"),
        ("wan13b_sipo", ["--method", "dpo-cm"], {"DATASET": "/p"}, "--method dpo-cm needs DDPM transition densities"),
        ("cogvideox2b_sipo", [], {}, "set DATASET (or TRAIN_DATA_DIR) to a local video-pair folder or file"),
        ("cogvideox2b_sipo", ["--method=dpo"], {"DATASET": "/p"}, "unknown --method 'dpo'; choose one of:"),
        ("sd15_dspo", ["--method", "sipo"], {}, "--method is for the video recipes"),
    ],
)  # fmt: skip
def test_video_recipe_refusals_are_one_line(name, args, env, message):
    proc = run_script(name, "--dry-run", *args, NUM_GPUS="8", **env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_lora_through_the_pass_through_flags_on_one_gpu():
    """The README's one-GPU recipe: --lora_rank switches to an unscaled LoRA lr and AdamW (no forced Adafactor)."""
    opts, cfg, lines = dry_run("sdxl_diffusion_dpo", "--lora_rank", "8", NUM_GPUS="1", PER_GPU_BATCH="1",
                               GLOBAL_BATCH="16")  # fmt: skip
    assert cfg.lora_rank == 8 and cfg.learning_rate == 1e-5 and not cfg.scale_lr
    assert cfg.use_adafactor is None and cfg.gradient_checkpointing  # AdamW on the adapters; checkpointing kept
    assert (cfg.train_batch_size, cfg.gradient_accumulation_steps) == (1, 16) and opts["--num_processes"] == "1"
    assert cfg.use_winner_preserving and cfg.winner_preserving_mu == 0.6
    assert "LoRA: lr 1e-5 (not scaled), AdamW on the adapters" in "\n".join(lines)
    _, cfg, _ = dry_run("sdxl_diffusion_dpo", "--lora_rank", "8", "--learning_rate", "3e-5", NUM_GPUS="1")
    assert cfg.learning_rate == 3e-5  # a later flag still wins


def test_flux_with_lora_runs_unsharded():
    _, cfg, lines = dry_run("flux_diffusion_dpo", "--lora_rank=16", NUM_GPUS="8")
    assert cfg.lora_rank == 16 and cfg.learning_rate == 1e-5 and cfg.sharding == "none"
    assert not any("HSDP" in line for line in lines)
    proc = run_script("flux_diffusion_dpo", "--dry-run", "--lora_rank", "16", NUM_GPUS="8", SHARDING="fsdp")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "--lora_rank runs without sharding" in proc.stderr


@pytest.mark.parametrize("name, method, reward", [("sd15_online", "diffusion-dpo", "pickscore"),
                                                  ("cogvideox2b_online", "sipo", "temporal_flickering")])
def test_online_recipes_launch_the_round_driver(name, method, reward):
    """*_online.sh: the same launch as the offline recipes, with python -m sdpo.online in place of train.py, the
    IPO protocol's round settings, and one constant learning rate per round (no warmup restarting each round)."""
    from sdpo.online.options import command_parser

    proc = run_script(name, "--dry-run", NUM_GPUS="8", PROMPTS="train_prompts.txt")
    assert proc.returncode == 0, proc.stderr
    cmd = shlex.split(proc.stdout.strip().splitlines()[-1])
    assert cmd[:3] == ["accelerate", "launch", "--multi_gpu"] and cmd[cmd.index("--num_processes") + 1] == "8"
    i = cmd.index("--module")
    assert cmd[i + 1] == "sdpo.online" and "--dataset_name" not in cmd
    ns = command_parser().parse_args(cmd[i + 2 :])
    assert (ns.prompts, ns.rounds, ns.prompts_per_round, ns.samples_per_prompt, ns.epochs_per_round) == (
        "train_prompts.txt", 10, 3000, 2, 20)  # fmt: skip
    assert (ns.train_method, ns.reward, ns.lr_scheduler, ns.lr_warmup_steps) == (method, reward, "constant", 0)
    assert ns.heldout_reward not in (None, reward)
    missing = run_script(name, "--dry-run", NUM_GPUS="8")
    assert missing.returncode != 0 and "set PROMPTS to the training prompt file" in missing.stderr
