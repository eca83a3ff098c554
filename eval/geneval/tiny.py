"""Tiny random stand-ins for GenEval's two models, in the real files' formats, for tests and CPU demos.

    python -m eval.geneval.tiny OUT_DIR      # then: python -m eval.geneval IMAGES --model_root OUT_DIR

Writes ``<OUT>/geneval/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth`` (an mmdetection-format
checkpoint of a tiny Swin Mask2Former, so loading goes through the converter) and
``<OUT>/timm/vit_large_patch14_clip_224.openai/`` (a tiny open_clip model folder). The class head is
biased towards a few classes so that random images get confident detections and every rule runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from eval.geneval.detector import Mask2FormerInstance
from eval.geneval.sources import CLIP, DETECTOR

FAVOURED = ("dog", "cat", "clock")


def tiny_config(num_queries: int = 6):
    """A Mask2Former config with a tiny Swin backbone (GroupNorm needs widths that are multiples of 32)."""
    from transformers import Mask2FormerConfig, SwinConfig

    from eval.geneval.layout import object_names

    names = object_names()
    swin = SwinConfig(
        embed_dim=16,
        depths=[1, 1, 2, 1],
        num_heads=[1, 1, 2, 2],
        window_size=7,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return Mask2FormerConfig(
        backbone_config=swin,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        num_queries=num_queries,
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        encoder_layers=1,
        decoder_layers=3,
        num_attention_heads=2,
    )


def tiny_detector(seed: int = 0, favoured: tuple[str, ...] = FAVOURED) -> Mask2FormerInstance:
    """Random weights; each query's class logits lean strongly to one of ``favoured`` (so some detections pass
    0.9), and mask logits are large enough to give real masks rather than near-0.5 noise."""
    from eval.geneval.layout import object_names

    names = object_names()
    torch.manual_seed(seed)
    model = Mask2FormerInstance(tiny_config()).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif "norm" in name:
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        # Queries must stay distinct through the decoder, or every query sees the same class.
        model.model.transformer_module.queries_features.weight.mul_(10.0)
        for p in model.model.transformer_module.decoder.layers.parameters():
            p.mul_(0.1)
        head = model.class_predictor
        head.weight.mul_(0.1)
        head.bias.fill_(-2.0)
        for name in favoured:  # queries disagree on which favoured class they see, each sure of it
            head.weight[names.index(name)] = torch.randn(head.weight.shape[1], generator=g) * 3.0
            head.bias[names.index(name)] = 4.0
    return model


def write_mmdet_checkpoint(model: Mask2FormerInstance, path: str | Path) -> Path:
    """``model`` saved as mmdetection saves a Mask2Former (its names, fused qkv, unfold order), with a meta."""
    from eval.geneval.convert import to_mmdet

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = to_mmdet(model.state_dict(), model.config)
    meta = {"mmdet_version": "2.x (tiny test model)", "CLASSES": tuple(model.config.id2label.values())}
    torch.save({"meta": meta, "state_dict": sd}, path)
    return path


def write_tiny_clip(out: str | Path, seed: int = 0) -> Path:
    """A tiny open_clip model folder (config + safetensors) laid out like the hub repo of ViT-L/14 openai."""
    from safetensors.torch import save_file

    from sdpo.tiny.rewards import OPEN_CLIP_CFG, open_clip_state_dict

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(json.dumps(OPEN_CLIP_CFG))
    cfg["model_cfg"]["quick_gelu"] = True
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    save_file(open_clip_state_dict(seed), str(out / "open_clip_model.safetensors"))
    return out


def build_tiny_geneval_root(out: str | Path, seed: int = 0) -> Path:
    """A ``--model_root`` with both tiny models where the real ones are looked for; returns ``out``."""
    out = Path(out)
    write_mmdet_checkpoint(tiny_detector(seed), out / DETECTOR.repo / DETECTOR.filename)
    write_tiny_clip(out / CLIP.repo, seed + 1)
    return out


def _main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(build_tiny_geneval_root(args.out, args.seed))


if __name__ == "__main__":
    _main()
