"""GenEval's colour check: zero-shot classification of each object's crop with open_clip ViT-L/14 (OpenAI).

As the official evaluator does it (open_clip 2.20 + clip_benchmark 1.4.0, as pinned by GenEval):

- **Crop** (:func:`object_crop`): the image with everything outside the object's mask filled with grey
  ``#999``, cropped to the object's box (PIL rounds the box), then open_clip's validation transform
  (bicubic resize of the short side to 224, centre crop, OpenAI mean/std).
- **Classifier** (:meth:`ColourClassifier.weights`): for each of the 10 colours, the text embeddings of
  ``a photo of a {colour} {object}``, ``a photo of a {colour}-colored {object}`` and
  ``a photo of a {colour} object``, each L2-normalised, averaged, normalised again.
- **Decision**: ``argmax(100 * normalised image embedding @ classifier)``.
- **Model**: ``ViT-L-14`` with QuickGELU and fp32 weights (open_clip 2.20 loads the ``openai`` tag that
  way; open_clip 3.x builds ``ViT-L-14`` with plain GELU unless told, so :func:`load_clip` forces it).
- **Precision**: clip_benchmark's defaults (``amp=True``) run both the text and the image side under
  ``torch.cuda.amp.autocast`` (fp16) on CUDA; ``amp="auto"`` does the same, and nothing on a CPU,
  where that autocast had no effect either. ``amp="off"`` computes in fp32 everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from eval.geneval.rules import COLORS, Detection
from eval.geneval.sources import clip_location
from sdpo.errors import UserError

TEMPLATES = ("a photo of a {c} {obj}", "a photo of a {c}-colored {obj}", "a photo of a {c} object")
BACKGROUND = "#999"


def object_crop(image: Image.Image, det: Detection, background: str = BACKGROUND) -> Image.Image:
    """The object alone on grey, cropped to its box (the official crop; the box is rounded by PIL)."""
    image = image.convert("RGB")
    if det.mask is not None:
        if tuple(det.mask.shape) != (image.height, image.width):
            raise ValueError(f"mask of shape {tuple(det.mask.shape)} for an image of {image.width}x{image.height}")
        blank = Image.new("RGB", image.size, color=background)
        image = Image.composite(image, blank, Image.fromarray(det.mask))
    return image.crop(tuple(float(v) for v in det.box[:4]))


class ColourClassifier:
    """A loaded colour classifier; text classifiers are built once per object name."""

    def __init__(self, model, tokenizer, preprocess, device: torch.device, amp: str = "auto") -> None:
        if amp not in ("auto", "off"):
            raise UserError(f"unknown --clip_amp {amp!r}: use auto (as the official, fp16 on CUDA) or off")
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer, self.preprocess, self.device = tokenizer, preprocess, device
        self.amp = amp == "auto" and torch.device(device).type == "cuda"
        self._weights: dict[str, torch.Tensor] = {}

    def _autocast(self):
        if not self.amp:  # only on CUDA, as the official evaluator
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=torch.float16)

    @torch.no_grad()
    def weights(self, obj: str) -> torch.Tensor:
        """(embedding dim, 10) classifier for colours of ``obj``."""
        if obj not in self._weights:
            columns = []
            with self._autocast():
                for colour in COLORS:
                    texts = self.tokenizer([t.format(c=colour, obj=obj) for t in TEMPLATES]).to(self.device)
                    emb = F.normalize(self.model.encode_text(texts), dim=-1).mean(dim=0)
                    emb /= emb.norm()
                    columns.append(emb)
                self._weights[obj] = torch.stack(columns, dim=1)
        return self._weights[obj]

    @torch.no_grad()
    def logits(self, crops: Sequence[Image.Image], objects: Sequence[str]) -> torch.Tensor:
        """(crops, 10) colour logits; ``objects[i]`` is the class name crop ``i`` was detected as."""
        pixels = torch.stack([self.preprocess(c) for c in crops]).to(self.device)
        out = torch.zeros(len(crops), len(COLORS))
        with self._autocast():
            feats = F.normalize(self.model.encode_image(pixels), dim=-1)
            for obj in dict.fromkeys(objects):
                rows = [i for i, o in enumerate(objects) if o == obj]
                out[rows] = (100.0 * feats[rows] @ self.weights(obj)).float().cpu()
        return out

    def classify(self, crops: Sequence[Image.Image], objects: Sequence[str]) -> list[str]:
        """The colour of each crop (``objects[i]`` is the class name crop ``i`` was detected as)."""
        if not crops:
            return []
        return [COLORS[k] for k in self.logits(crops, objects).argmax(dim=1).tolist()]


def load_clip(root: Path | None, device: torch.device, amp: str = "auto") -> ColourClassifier:
    """ViT-L-14 (QuickGELU) with the OpenAI weights from :func:`eval.geneval.sources.clip_location`."""
    import open_clip

    from sdpo.rewards.base import load_state_dict, load_strict
    from sdpo.rewards.openclip import model_name, quiet

    arch, weights = clip_location(root)
    name = model_name(arch)
    with quiet():
        model, _, preprocess = open_clip.create_model_and_transforms(name, load_weights=False, force_quick_gelu=True)
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(weights))
    else:
        sd = load_state_dict(weights, "geneval")
    load_strict(model, sd, weights, "geneval")
    return ColourClassifier(model, open_clip.get_tokenizer(name), preprocess, device, amp)
