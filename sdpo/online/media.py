"""What differs between image and video families in a round: how a prompt's samples are drawn, stored, read
back and written into a pair dataset.  Everything else in ``sdpo.online`` is the same for both.

Images are sampled with the evaluation protocol's sampler (``sdpo.sampling.images``: the family's sampler,
its guidance formula, one seeded initial latent per sample) and stored as PNG, so the scored pixels are the
trained pixels; the pairs are Pick-a-Pic rows (``jpg_0``/``jpg_1`` hold those PNG bytes: train.py decodes any
image format) written to one parquet file.  Videos go through the family's own pipeline
(``sdpo.sampling.video``) into H.264 MP4s (``sdpo.data.video_io``), and the pairs are the video parquet
format (``video_0``/``video_1`` paths relative to the pairs file; ``sdpo.data.video_pairs``).

One call samples a group of prompts with all K samples of each (``prompts_per_call`` prompts x K rows, cond
and uncond in the same denoiser forward): the group is fixed by the prompts' positions alone, so a sample is
the same whichever process draws it and whether or not the run was resumed in between.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdpo.atomic import atomic_path
from sdpo.config import RunConfig
from sdpo.families import get_family


@dataclass(frozen=True)
class Policy:
    """The weights a round samples with: the base model, full denoiser weights (None: the base's own) and a
    LoRA on top (None: none)."""

    base: str
    full: str | None = None
    lora: str | None = None
    vae: str | None = None

    def describe(self) -> dict:
        return {"full": self.full, "lora": self.lora}


class ImageMedia:
    kind = "image"
    suffix = ".png"

    def __init__(self, cfg: RunConfig, steps: int, guidance: float | None, resolution: int | None, dtype: str):
        self.family = get_family(cfg.model.model_family)
        self.steps = steps
        self.guidance = self.family.sampling_guidance if guidance is None else guidance
        self.size = resolution or cfg.model.resolution
        self.dtype_name = dtype

    def settings(self) -> dict:
        return {"steps": self.steps, "guidance": self.guidance, "size": self.size}

    def load(self, policy: Policy, device: torch.device):
        """The sampler's parts with ``policy``'s weights, loaded once for a whole stage."""
        from sdpo.sampling.images import resolve_dtype

        vae = policy.vae or (policy.base if Path(policy.base).is_dir() else None)
        comp = self.family.load_sampling_components(policy.base, policy.full, device,
                                                    resolve_dtype(self.dtype_name, device), vae_path=vae)  # fmt: skip
        if policy.lora:
            from sdpo.lora.adapters import attach

            attach(comp.denoiser, self.family, policy.lora)
        return comp

    def generate(self, comp, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        """One denoiser call for all of ``prompts`` (one entry per sample: a prompt repeated K times is encoded
        once)."""
        from sdpo.sampling.images import generate_images

        return generate_images(comp, prompts, self.size, self.size, self.steps, self.guidance, list(seeds),
                               rows_per_call=len(prompts))  # fmt: skip

    def save(self, sample: Image.Image, path: Path, prompt: str) -> None:
        with atomic_path(path) as tmp:
            sample.save(tmp, format="PNG")

    def read(self, path: Path) -> Image.Image:
        with Image.open(path) as im:
            return im.convert("RGB")

    def stats_frames(self, sample: Image.Image) -> np.ndarray:
        return np.asarray(sample)[None]

    def pair_row(self, win: dict, lose: dict, root: Path, pairs_dir: Path) -> dict:
        return {"jpg_0": (root / win["path"]).read_bytes(), "jpg_1": (root / lose["path"]).read_bytes()}


class VideoMedia:
    kind = "video"
    suffix = ".mp4"

    def __init__(self, cfg: RunConfig, steps: int, guidance: float | None, resolution: int | None, dtype: str):
        self.family = get_family(cfg.model.model_family)
        self.steps = steps
        self.guidance = self.family.sampling_guidance if guidance is None else guidance
        self.height, self.width, self.frames = cfg.model.height, cfg.model.width, cfg.model.num_frames
        self.fps = self.family.default_fps
        self.dtype_name = dtype

    def settings(self) -> dict:
        return {"steps": self.steps, "guidance": self.guidance, "height": self.height, "width": self.width,
                "frames": self.frames, "fps": self.fps}  # fmt: skip

    def load(self, policy: Policy, device: torch.device):
        from sdpo.sampling.images import resolve_dtype

        comp = self.family.load_sampling_components(policy.base, policy.full, device,
                                                    resolve_dtype(self.dtype_name, device), vae_path=policy.vae)  # fmt: skip
        if policy.lora:
            from sdpo.lora.adapters import attach

            attach(comp.unet, self.family, policy.lora)
        return comp

    def generate(self, comp, prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        """One pipeline call per prompt for its K videos (the driver gives one prompt per call)."""
        from sdpo.sampling.video import decode_video, sample_video_group

        latents = sample_video_group(comp, prompts[0], list(seeds), self.height, self.width, self.frames,
                                     self.steps, self.guidance)  # fmt: skip
        return [decode_video(comp, latents[i : i + 1]) for i in range(latents.shape[0])]

    def save(self, sample: np.ndarray, path: Path, prompt: str) -> None:
        from sdpo.data.video_io import write_mp4

        with atomic_path(path) as tmp:
            write_mp4(sample, tmp, self.fps, description=prompt)

    def read(self, path: Path) -> np.ndarray:
        from sdpo.data.video_io import read_frames

        return read_frames(path)

    def stats_frames(self, sample: np.ndarray) -> np.ndarray:
        return sample

    def pair_row(self, win: dict, lose: dict, root: Path, pairs_dir: Path) -> dict:
        import os

        rel = lambda p: os.path.relpath(root / p, pairs_dir)  # noqa: E731 - relative: the run folder may move
        return {"video_0": rel(win["path"]), "video_1": rel(lose["path"])}


def make_media(cfg: RunConfig, opts) -> ImageMedia | VideoMedia:
    cls = VideoMedia if cfg.data.video else ImageMedia
    return cls(cfg, opts.sample_steps, opts.sample_guidance, opts.sample_resolution, opts.sample_dtype)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
