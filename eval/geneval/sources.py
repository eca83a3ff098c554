"""Where GenEval's two models come from: an environment variable, a local model root, or their publishers.

Like the reward models (:mod:`sdpo.rewards.sources`): ``--model_root DIR`` / ``$SDPO_REWARD_ROOT`` mirrors

    DIR/geneval/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth    (or a folder written by eval.geneval.convert)
    DIR/timm/vit_large_patch14_clip_224.openai/                       open_clip_model.safetensors or
                                                                     open_clip_pytorch_model.bin (+ open_clip_config.json)

and ``$SDPO_GENEVAL_DETECTOR`` / ``$SDPO_GENEVAL_CLIP`` name one file or folder each. The detector is
not on the Hugging Face hub (mmdetection publishes it; GenEval's ``download_models.sh`` fetches it);
the CLIP weights are, as open_clip's ``ViT-L-14`` / ``openai`` tag.
"""

from __future__ import annotations

import os
from pathlib import Path

from sdpo.errors import UserError
from sdpo.rewards.sources import Source, describe, resolve_file

CHECKPOINT = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco"
DETECTOR = Source(
    "geneval",
    "SDPO_GENEVAL_DETECTOR",
    "geneval",
    f"{CHECKPOINT}.pth",
    on_hub=False,
    origin=(
        "https://download.openmmlab.com/mmdetection/v2.0/mask2former/"
        f"{CHECKPOINT}/{CHECKPOINT}_20220504_001756-743b7d99.pth (GenEval's evaluation/download_models.sh)"
    ),
)
CLIP = Source("geneval", "SDPO_GENEVAL_CLIP", "timm/vit_large_patch14_clip_224.openai")
CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def detector_path(root: Path | None) -> Path:
    """The checkpoint file or converted folder: $SDPO_GENEVAL_DETECTOR, else the model root's (a converted
    ``<CHECKPOINT>/`` folder beside the ``.pth`` wins, being faster to load), else one line saying where to get it."""
    if os.environ.get(DETECTOR.env):
        p = Path(os.environ[DETECTOR.env]).expanduser()
        if not p.exists():
            raise UserError(f"geneval: ${DETECTOR.env} = {p} does not exist; point it at {DETECTOR.filename}")
        return p
    if root is not None and (root / DETECTOR.repo / CHECKPOINT / "config.json").is_file():
        return root / DETECTOR.repo / CHECKPOINT
    return resolve_file(DETECTOR, root)


def clip_location(root: Path | None) -> tuple[str | Path, Path]:
    """(open_clip architecture: a folder with open_clip_config.json or ``ViT-L-14``, weight file)."""
    folder = None
    if os.environ.get(CLIP.env):
        p = Path(os.environ[CLIP.env]).expanduser()
        if p.is_file():
            return "ViT-L-14", p
        folder = p
    elif root is not None and (root / CLIP.repo).is_dir():
        folder = root / CLIP.repo
    if folder is not None:
        weights = next((folder / f for f in CLIP_FILES if (folder / f).is_file()), None)
        if weights is None:
            resolve_file(Source(CLIP.metric, CLIP.env, CLIP.repo, CLIP_FILES[0], on_hub=False), root)
        return (folder if (folder / "open_clip_config.json").is_file() else "ViT-L-14"), weights
    try:
        return "ViT-L-14", resolve_file(Source(CLIP.metric, CLIP.env, CLIP.repo, CLIP_FILES[0]), root)
    except UserError:
        return "ViT-L-14", resolve_file(Source(CLIP.metric, CLIP.env, CLIP.repo, CLIP_FILES[1]), root)


def describe_sources(root: Path | None) -> dict[str, str]:
    """Where each model resolves to, without loading (cached per-image results are reused only if equal)."""
    det = os.environ.get(DETECTOR.env) or (
        str((root / DETECTOR.repo / CHECKPOINT).resolve())
        if root is not None and (root / DETECTOR.repo / CHECKPOINT / "config.json").is_file()
        else describe(DETECTOR, root)
    )
    return {"detector": str(det), "clip": describe(CLIP, root)}
