"""GenEval's object detector: mmdetection 2.x Mask2Former inference, rebuilt on transformers' Mask2Former.

The network is transformers' ``Mask2FormerModel`` plus the class head (:class:`Mask2FormerInstance`),
loaded with the official mmdetection weights (:mod:`eval.geneval.convert`). What decides the numbers
around it follows mmdetection's test pipeline for ``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco``,
not transformers' image processor or post-processing defaults:

- **Pre-processing** (:func:`preprocess`): resize keeping the aspect ratio so the image fits 1333 x 800
  (scale ``min(1333 / long side, 800 / short side)``, sizes rounded with ``int(x + 0.5)``), bilinear
  (OpenCV's ``INTER_LINEAR`` on 8-bit pixels, mmcv's call; without OpenCV a float bilinear resize,
  rounded to 8 bits, that differs by at most a grey level or two); pad right and bottom to a multiple
  of 32 with grey 128; then ``(x - mean) / std`` with ImageNet's mean (123.675, 116.28, 103.53) and
  std (58.395, 57.12, 57.375), RGB.
- **Post-processing** (:func:`postprocess`), per image, from the last decoder layer's outputs: class
  probabilities ``softmax(logits)[:, :-1]`` (no-object column dropped); the top 100 over all
  query x class pairs; their masks upsampled bilinearly (``align_corners=False``) to the padded input
  size, cropped to the resized image and upsampled again to the original size; mask = logit > 0;
  confidence = class probability x mean sigmoid inside the mask; box = the mask's extent
  ``(x_min, y_min, x_max + 1, y_max + 1)`` (zeros for an empty mask).

Only the selected queries' masks are upsampled (the same numbers, as bilinear upsampling treats
each mask alone), in chunks to bound memory. Images are batched only with images of the same padded
size, so the batch size never changes a result (mmdetection pads a batch to its largest image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from sdpo.errors import UserError

IMAGE_SCALE = (1333, 800)
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
SIZE_DIVISOR = 32
PAD_VALUE = 128
MAX_PER_IMAGE = 100
MASK_CHUNK = 16


class Mask2FormerInstance(nn.Module):
    """transformers' Mask2Former for instance segmentation: ``Mask2FormerModel`` + the class head, with the
    state-dict names of ``Mask2FormerForUniversalSegmentation`` but without its training criterion (which
    needs scipy, and which inference never uses)."""

    def __init__(self, config) -> None:
        super().__init__()
        from transformers import Mask2FormerModel

        self.config = config
        self.model = Mask2FormerModel(config)
        self.class_predictor = nn.Linear(config.hidden_dim, config.num_labels + 1)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits ``(B, Q, labels + 1)``, mask logits ``(B, Q, H/4, W/4)``) of the last decoder layer."""
        pixels = self.model.pixel_level_module(pixel_values=pixel_values)
        decoder = self.model.transformer_module(
            multi_scale_features=pixels.decoder_hidden_states,
            mask_features=pixels.decoder_last_hidden_state,
            output_hidden_states=True,  # the layer-normed output of each layer, which the class head reads
        )
        last = decoder.intermediate_hidden_states[-1].transpose(0, 1)
        return self.class_predictor(last), decoder.masks_queries_logits[-1]


# transformers 4.x named Swin's attention differently; these map our (5.x) names onto those.
_TRANSFORMERS_4_NAMES = (
    (".attention.q_proj.", ".attention.self.query."),
    (".attention.k_proj.", ".attention.self.key."),
    (".attention.v_proj.", ".attention.self.value."),
    (".attention.o_proj.", ".attention.output.dense."),
    (".attention.relative_position_bias.relative_position_bias_table", ".attention.self.relative_position_bias_table"),
)


def load_weights(model: Mask2FormerInstance, sd: dict[str, torch.Tensor], where: str | Path) -> Mask2FormerInstance:
    """Strictly load ``sd`` (our names) into ``model``; any mismatch is one line naming the first few keys."""
    own = model.state_dict()
    if not set(sd) <= set(own):  # an older transformers: rename, and keep its own constant index buffers
        renamed = {}
        for k, v in sd.items():
            for new, old in _TRANSFORMERS_4_NAMES:
                k = k.replace(new, old)
            renamed[k] = v
        sd = {**{k: v for k, v in own.items() if k.endswith("relative_position_index")}, **renamed}
    missing, extra = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = [k for k in set(own) & set(sd) if own[k].shape != sd[k].shape]
    if missing or extra or wrong:
        what = (
            f"shape of {wrong[0]}: {tuple(sd[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)}"
            if wrong
            else f"missing {missing[:3]}, unexpected {extra[:3]}"
        )
        raise UserError(f"geneval: {where} does not fit the Mask2Former detector ({what})")
    model.load_state_dict(sd, strict=True)
    return model


# ----------------------------------------------------------------------------- pre-processing


@dataclass(frozen=True)
class Meta:
    """Sizes (height, width) of one image: original, after the keep-ratio resize, after padding."""

    original: tuple[int, int]
    resized: tuple[int, int]
    padded: tuple[int, int]


def rescaled_size(height: int, width: int, scale: tuple[int, int] | None = None) -> tuple[int, int]:
    """(height, width) after mmcv's keep-ratio rescale to fit ``scale`` (long edge, short edge; default 1333 x 800)."""
    scale = scale or IMAGE_SCALE
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_backend(choice: str = "auto") -> str:
    """``cv2`` (mmcv's own call, bit-faithful) when OpenCV is importable, else ``torch``."""
    if choice not in ("auto", "cv2", "torch"):
        raise UserError(f"unknown resize backend {choice!r}: use auto, cv2 or torch")
    if choice == "torch":
        return "torch"
    try:
        import cv2  # noqa: F401
    except ImportError:
        if choice == "cv2":
            raise UserError("--resize cv2 needs OpenCV: pip install opencv-python-headless") from None
        return "torch"
    return "cv2"


def resize_bilinear(pixels: np.ndarray, height: int, width: int, backend: str) -> np.ndarray:
    """8-bit H x W x 3 pixels resized bilinearly (half-pixel centres, no antialiasing), still 8-bit."""
    if pixels.shape[:2] == (height, width):
        return pixels
    if backend == "cv2":
        import cv2

        return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def preprocess(image: Image.Image, backend: str) -> tuple[torch.Tensor, Meta]:
    """The detector's input for ``image`` (3 x H x W float32, padded) and its sizes."""
    pixels = np.asarray(image.convert("RGB"))
    h, w = pixels.shape[:2]
    rh, rw = rescaled_size(h, w)
    resized = resize_bilinear(pixels, rh, rw, backend)
    ph, pw = math.ceil(rh / SIZE_DIVISOR) * SIZE_DIVISOR, math.ceil(rw / SIZE_DIVISOR) * SIZE_DIVISOR
    padded = np.full((ph, pw, 3), PAD_VALUE, dtype=np.uint8)
    padded[:rh, :rw] = resized
    # mmcv subtracts the mean and multiplies by 1/std, in float32 (its float64 constants cast to float32).
    mean = np.asarray(MEAN, dtype=np.float32)
    inv_std = (1.0 / np.asarray(STD, dtype=np.float64)).astype(np.float32)
    x = (padded.astype(np.float32) - mean) * inv_std
    return torch.from_numpy(x).permute(2, 0, 1).contiguous(), Meta((h, w), (rh, rw), (ph, pw))


# ----------------------------------------------------------------------------- post-processing


@dataclass
class Instances:
    """Detections of one image, most confident first: labels (K,), scores (K,), boxes (K, 4) as float32
    ``x1, y1, x2, y2`` and masks (K, H, W) bool at the original size."""

    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``(x_min, y_min, x_max + 1, y_max + 1)`` of each boolean mask; zeros for an empty one."""
    n, h, w = masks.shape
    boxes = torch.zeros((n, 4), dtype=torch.float32, device=masks.device)
    if n == 0:
        return boxes
    cols, rows = masks.any(dim=1), masks.any(dim=2)
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    nonempty = cols.any(dim=1)
    x1 = torch.where(cols, xs, w).min(dim=1).values
    x2 = torch.where(cols, xs, -1).max(dim=1).values + 1
    y1 = torch.where(rows, ys, h).min(dim=1).values
    y2 = torch.where(rows, ys, -1).max(dim=1).values + 1
    boxes[nonempty] = torch.stack([x1, y1, x2, y2], dim=1)[nonempty].float()
    return boxes


def postprocess(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, meta: Meta, min_score: float | None = None
) -> Instances:
    """mmdetection's instance post-processing for one image (module docstring); detections whose confidence
    is not above ``min_score`` (when given) are dropped at the end (the rules never look at them)."""
    num_classes = class_logits.shape[-1] - 1
    probs = class_logits.float().softmax(-1)[:, :-1].flatten()
    top, index = probs.topk(min(MAX_PER_IMAGE, probs.numel()), sorted=True)
    labels, queries = index % num_classes, index // num_classes
    unique, inverse = torch.unique(queries, return_inverse=True)
    h, w = meta.original
    rh, rw = meta.resized
    kept_scores, kept_labels, kept_masks = [], [], []
    for start in range(0, len(top), MASK_CHUNK):
        sel = slice(start, start + MASK_CHUNK)
        q_needed, local = torch.unique(inverse[sel], return_inverse=True)
        m = mask_logits[unique[q_needed]].float()[None]
        m = F.interpolate(m, size=meta.padded, mode="bilinear", align_corners=False)[0, :, :rh, :rw]
        m = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0][local]
        binary = m > 0
        area = binary.flatten(1).sum(1)
        mask_score = (m.sigmoid() * binary).flatten(1).sum(1) / (area + 1e-6)
        score = top[sel] * mask_score
        keep = score > min_score if min_score is not None else torch.ones_like(score, dtype=torch.bool)
        kept_scores.append(score[keep])
        kept_labels.append(labels[sel][keep])
        kept_masks.append(binary[keep])
    scores = torch.cat(kept_scores)
    masks = torch.cat(kept_masks) if kept_masks else torch.zeros((0, h, w), dtype=torch.bool)
    order = torch.argsort(scores, descending=True, stable=True)
    masks = masks[order]
    return Instances(
        labels=torch.cat(kept_labels)[order].cpu().numpy(),
        scores=scores[order].cpu().numpy(),
        boxes=masks_to_boxes(masks).cpu().numpy(),
        masks=masks.cpu().numpy(),
    )


# ----------------------------------------------------------------------------- the detector


class Detector:
    """A loaded detector: ``detector(images, min_score)`` -> one :class:`Instances` per image."""

    def __init__(self, model: Mask2FormerInstance, device: torch.device, resize: str = "auto") -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = device
        self.resize = resize_backend(resize)

    @torch.inference_mode()
    def __call__(self, images: list[Image.Image], min_score: float | None = None) -> list[Instances]:
        prepared = [preprocess(im, self.resize) for im in images]
        results: list[Instances | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (_, meta) in enumerate(prepared):
            groups.setdefault(meta.padded, []).append(i)
        for members in groups.values():
            x = torch.stack([prepared[i][0] for i in members]).to(self.device)
            cls, masks = self.model(x)
            for j, i in enumerate(members):
                results[i] = postprocess(cls[j], masks[j], prepared[i][1], min_score)
        return results  # type: ignore[return-value]
