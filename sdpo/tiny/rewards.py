"""A tiny, offline model root for all five reward models: the real file layout, random few-thousand-parameter nets.

Tests, the benchmark and the CPU demo point ``--model_root`` (or ``SDPO_REWARD_ROOT``) at a folder
written by :func:`build_tiny_reward_root`; the scorers then run exactly the code paths they run on
the real mirrored weights, only smaller. Nothing here touches the network.

    python -m eval.rewards.tiny OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import torch

from sdpo.rewards.imagereward import ImageRewardModel, text_config
from sdpo.rewards.mlp import RewardMLP
from sdpo.rewards.openclip import quiet
from sdpo.tiny.text import clip_tokenizer

IMAGE_SIZE = 32
EMBED = 16
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def _randomise(module: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    """Library inits are tuned for training (BLIP's vision init is 1e-10); random scores should vary visibly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def clip_image_processor(out: Path) -> None:
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=OPENAI_MEAN,
        image_std=OPENAI_STD,
    ).save_pretrained(out)


def hf_clip(out: Path, seed: int) -> None:
    """A transformers CLIPModel folder (PickScore_v1 or clip-vit-large-patch14 layout) with its processor."""
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=514,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=8,
        ),
        projection_dim=EMBED,
    )
    torch.manual_seed(seed)
    model = CLIPModel(cfg)
    _randomise(model, seed)
    model.save_pretrained(out)
    clip_tokenizer(out)
    clip_image_processor(out)


OPEN_CLIP_CFG = {
    "model_cfg": {
        "embed_dim": EMBED,
        "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest"},
}


def open_clip_state_dict(seed: int) -> dict[str, torch.Tensor]:
    import open_clip

    with tempfile.TemporaryDirectory() as tmp, quiet():
        (Path(tmp) / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CFG))
        model = open_clip.create_model(f"local-dir:{tmp}", load_weights=False)
    _randomise(model, seed, std=0.05)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def bert_tokenizer(out: Path):
    """A word-piece vocabulary of single characters (lower case): every ASCII prompt tokenizes."""
    from transformers import BertTokenizer

    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tok = BertTokenizer(str(Path(tmp) / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(out)
    return tok


TINY_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=IMAGE_SIZE,
    patch_size=8,
    hidden_act="gelu",
    layer_norm_eps=1e-6,
)
TINY_MED = {
    "architectures": ["BertModel"],
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 64,
    "vocab_size": 256,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "type_vocab_size": 2,
    "model_type": "bert",
    "encoder_width": 32,
    "add_cross_attention": True,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
}


# transformers BlipVisionModel names -> timm names of the released file (the converter's table, reversed by hand).
_TO_RELEASED = [
    (r"^embeddings\.class_embedding$", "cls_token"),
    (r"^embeddings\.position_embedding$", "pos_embed"),
    (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"blocks.\1.attn.qkv."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.projection\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
    (r"^post_layernorm\.", "norm."),
]


def to_released(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The key names ``ImageReward.pt`` uses, from :class:`ImageRewardModel`'s (for writing test checkpoints)."""
    out = {}
    for key, value in sd.items():
        group, rest = key.split(".", 1)
        if group == "vision":
            for pattern, repl in _TO_RELEASED:
                new, n = re.subn(pattern, repl, rest)
                if n:
                    out["blip.visual_encoder." + new] = value
                    break
            else:
                raise KeyError(key)
        elif group == "text":
            out["blip.text_encoder." + rest] = value
        else:
            out["mlp." + rest] = value
    return out


def imagereward_files(out: Path, seed: int) -> None:
    from transformers import BlipVisionConfig

    out.mkdir(parents=True, exist_ok=True)
    vision = BlipVisionConfig(**TINY_VISION)
    model = ImageRewardModel(vision, text_config(TINY_MED, vision.hidden_size))
    _randomise(model, seed)
    released = to_released(model.state_dict())
    released["blip.vision_proj.weight"] = torch.zeros(EMBED, 32)  # present (unused) in the released file
    torch.save(released, out / "ImageReward.pt")
    (out / "med_config.json").write_text(json.dumps(TINY_MED, indent=2))
    (out / "vision_config.json").write_text(json.dumps(TINY_VISION, indent=2))


def build_tiny_reward_root(out: str | Path, seed: int = 0) -> Path:
    """Write every file the five scorers look for under ``out`` (the ``--model_root`` layout); return ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    hf_clip(out / "yuvalkirstain/PickScore_v1", seed)
    hf_clip(out / "openai/clip-vit-large-patch14", seed + 1)
    laion = out / "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    clip_tokenizer(laion)
    clip_image_processor(laion)
    (laion / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CFG, indent=2))
    save_file(open_clip_state_dict(seed + 2), str(laion / "open_clip_model.safetensors"))
    hps = out / "xswu/HPSv2"
    hps.mkdir(parents=True, exist_ok=True)
    (hps / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CFG, indent=2))
    torch.save({"state_dict": open_clip_state_dict(seed + 3)}, hps / "HPS_v2_compressed.pt")
    torch.save({"state_dict": open_clip_state_dict(seed + 4)}, hps / "HPS_v2.1_compressed.pt")
    head = RewardMLP(EMBED)
    _randomise(head, seed + 5, std=0.1)
    (out / "improved-aesthetic-predictor").mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), out / "improved-aesthetic-predictor/sac+logos+ava1-l14-linearMSE.pth")
    imagereward_files(out / "THUDM/ImageReward", seed + 6)
    bert_tokenizer(out / "google-bert/bert-base-uncased")
    return out


def write_tiny_manifest(
    out: str | Path, set_name: str, prompts: list[str], size: int = 64, seed: int = 0, relative: bool = False
) -> Path:
    """Random-noise PNGs ``<out>/<set_name>/<i>_<H>x<W>.png`` and the manifest ``<out>/<set_name>.json`` that lists
    them, in eval/generate.py's format; ``relative`` writes image paths relative to the manifest's folder."""
    import numpy as np
    from PIL import Image

    out = Path(out)
    folder = out / set_name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = []
    for i, prompt in enumerate(prompts):
        path = folder / f"{i}_{size}x{size}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        shown = path.relative_to(out) if relative else path.resolve()
        entries.append(
            {"prompt": prompt, "gen_image_path": str(shown), "raw_image_path": None, "metadata": {"seed": seed}}
        )
    manifest = out / f"{set_name}.json"
    manifest.write_text(json.dumps(entries, indent=2))
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(build_tiny_reward_root(args.out, args.seed))


if __name__ == "__main__":
    main()
