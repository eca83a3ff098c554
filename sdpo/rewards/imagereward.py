"""ImageReward v1.0 rebuilt on maintained code: transformers' BLIP vision and text models plus the MLP head.

The released ``image-reward`` package cannot be the runtime path (it pins timm 0.6, needs OpenAI's
``clip`` package and imports helpers transformers 5 removed), but its network is plain BLIP:
a ViT-L/16 at 224 px whose patch tokens a BERT-base text encoder cross-attends to; the reward
is a linear MLP on the text [CLS] state, standardised with the released mean and std. The
released ``ImageReward.pt`` is converted here key by key (:func:`convert_state_dict`); the test
suite checks the rebuilt model against the package's own code on random weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from sdpo.errors import UserError
from sdpo.rewards.base import Scorer, load_state_dict, load_strict, rgb
from sdpo.rewards.mlp import RewardMLP
from sdpo.rewards.sources import RewardConfig, Source, describe, load_pretrained, resolve_file

# Released normalisation of the raw MLP output (ImageReward v1.0).
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_TOKENS = 35
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CHECKPOINT = Source("imagereward", "SDPO_IMAGEREWARD_CHECKPOINT", "THUDM/ImageReward", "ImageReward.pt")
MED_CONFIG = Source("imagereward", "SDPO_IMAGEREWARD_MED_CONFIG", "THUDM/ImageReward", "med_config.json")
TOKENIZER = Source("imagereward", "SDPO_IMAGEREWARD_TOKENIZER", "google-bert/bert-base-uncased")
# Optional, beside ImageReward.pt: a BlipVisionConfig JSON for checkpoints other than the released ViT-L/16.
VISION_CONFIG_FILE = "vision_config.json"
RELEASED_VISION = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=224,
    patch_size=16,
    hidden_act="gelu",
    layer_norm_eps=1e-6,
)

# timm ViT names (BLIP's visual encoder) -> transformers BlipVisionModel names.
_VISION_RENAMES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
]


def _rename_vision(key: str) -> str:
    for pattern, repl in _VISION_RENAMES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise KeyError(key)


def convert_state_dict(released: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a released ``ImageReward.pt`` state dict onto :class:`ImageRewardModel`; also return the ignored keys.

    ``blip.visual_encoder.*`` is renamed timm -> BLIP-in-transformers, ``blip.text_encoder.*`` keeps
    its names (the ``position_ids`` buffer is rebuilt by transformers), ``mlp.*`` becomes ``head.*``.
    Everything else (BLIP's unused ``vision_proj``/``text_proj``) is ignored and listed.
    """
    out, ignored = {}, []
    for key, value in released.items():
        if key.startswith("blip.visual_encoder."):
            try:
                out["vision." + _rename_vision(key.removeprefix("blip.visual_encoder."))] = value
            except KeyError:
                ignored.append(key)
        elif key.startswith("blip.text_encoder."):
            rest = key.removeprefix("blip.text_encoder.")
            if rest == "embeddings.position_ids":
                ignored.append(key)
            else:
                out["text." + rest] = value
        elif key.startswith("mlp."):
            out["head." + key.removeprefix("mlp.")] = value
        else:
            ignored.append(key)
    return out, ignored


def text_config(med_config: dict, vision_width: int):
    """BLIP's ``med_config.json`` (a BERT config with cross-attention) as a transformers ``BlipTextConfig``."""
    from transformers import BlipTextConfig

    keys = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
        "hidden_act",
        "layer_norm_eps",
        "pad_token_id",
        "bos_token_id",
    )
    kwargs = {k: med_config[k] for k in keys if k in med_config}
    # is_decoder=True is how transformers' BLIP text model builds its cross-attention layers; the forward
    # pass runs it bidirectionally (is_decoder=False), as ImageReward runs BLIP's BERT encoder.
    return BlipTextConfig(**kwargs, encoder_hidden_size=vision_width, is_decoder=True)


class ImageRewardModel(nn.Module):
    """BLIP ViT -> BERT with cross-attention -> MLP on [CLS] -> standardised reward."""

    def __init__(self, vision_config, text_cfg) -> None:
        super().__init__()
        from transformers import BlipTextModel, BlipVisionModel

        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_cfg, add_pooling_layer=False)
        self.head = RewardMLP(text_cfg.hidden_size)

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        image_tokens = self.vision(pixel_values=pixel_values).last_hidden_state
        image_mask = torch.ones(image_tokens.shape[:-1], dtype=torch.long, device=image_tokens.device)
        text = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=image_mask,
            is_decoder=False,
        ).last_hidden_state
        raw = self.head(text[:, 0].float()).squeeze(-1)
        return (raw - REWARD_MEAN) / REWARD_STD


def blip_tokenizer(where: str, **kwargs):
    """bert-base-uncased with BLIP's two added tokens ([DEC] as bos, [ENC]): the vocabulary the weights expect."""
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(where, **kwargs)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def image_transform(size: int) -> T.Compose:
    """ImageReward's preprocessing: bicubic resize of the PIL image, centre crop, CLIP mean/std."""
    return T.Compose(
        [
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


def sources(cfg: RewardConfig) -> str:
    return " ".join(f"{s.filename or 'tokenizer'}={describe(s, cfg.root)}" for s in (CHECKPOINT, MED_CONFIG, TOKENIZER))


def load_model(checkpoint: Path, med_config: Path) -> ImageRewardModel:
    """Build the model for a released checkpoint (plus optional ``vision_config.json`` beside it) and load it."""
    from transformers import BlipVisionConfig

    vision_kwargs = dict(RELEASED_VISION)
    if (checkpoint.parent / VISION_CONFIG_FILE).is_file():
        vision_kwargs.update(json.loads((checkpoint.parent / VISION_CONFIG_FILE).read_text()))
    vision_cfg = BlipVisionConfig(**vision_kwargs)
    try:
        med = json.loads(Path(med_config).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"imagereward: {med_config} is not a readable JSON config ({e})") from None
    model = ImageRewardModel(vision_cfg, text_config(med, vision_cfg.hidden_size))
    converted, _ = convert_state_dict(load_state_dict(checkpoint, "imagereward"))
    load_strict(model, converted, checkpoint, "imagereward")
    return model.eval()


class ImageReward(Scorer):
    name = "imagereward"

    def __init__(self, device: torch.device, cfg: RewardConfig) -> None:
        super().__init__(device)
        self.source = sources(cfg)
        checkpoint = resolve_file(CHECKPOINT, cfg.root)
        med_config = resolve_file(MED_CONFIG, cfg.root)
        self.tokenizer = load_pretrained(blip_tokenizer, TOKENIZER, cfg.root, "bert-base-uncased tokenizer")
        self.model = load_model(checkpoint, med_config).to(device)
        self.preprocess = image_transform(self.model.vision.config.image_size)

    @torch.inference_mode()
    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        self._check(images, prompts)
        pixels = torch.stack([self.preprocess(im) for im in rgb(images)]).to(self.device)
        text = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        return self.model(pixels, text.input_ids.to(self.device), text.attention_mask.to(self.device)).tolist()
