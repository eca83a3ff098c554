"""What text-to-video families (CogVideoX, Wan2.1) share: frame-count rules, video sizes, defaults.

A video sample reaches a family as pixels ``(F, 3, H, W)`` in [-1, 1] (frames first); each family
turns it into its own latent layout (CogVideoX ``(F', C, h, w)``, Wan ``(C, F', h, w)``).  Nothing
outside the family modules knows there is a frame axis: losses average over every non-batch axis.

Frame counts.  Both VAEs compress time by 4 causally: F frames become ``(F - 1) // 4 + 1`` latent
frames, so a count that is not ``4k + 1`` silently loses its last frames (2 or 3 frames give one
latent frame, like a single image).  Decoding gives ``4 (F' - 1) + 1`` frames back for Wan, so Wan
takes ``F = 4k + 1`` (its own: 81).  CogVideoX's VAE decodes latent frames in pairs and gives
``4 F'`` frames when ``F'`` is even, so only ``F = 8k + 1`` round-trips exactly (its own: 49);
those are the counts accepted.  (Measured on diffusers 0.42 with the tiny VAEs of ``sdpo.tiny``.)
Height and width must be multiples of 16 (VAE factor 8 times the transformer's 2x2 patches).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from sdpo.errors import UserError
from sdpo.families.base import from_pretrained
from sdpo.families.recipe import LaunchDefaults

SIZE_MULTIPLE = 16


class VideoFamily:
    """Mixin placed before the family's process base (``DDPMFamily`` or ``FlowFamily``)."""

    video: ClassVar[bool] = True
    heavy: ClassVar[bool] = True  # gradient checkpointing on by default
    joint_augment: ClassVar[bool] = True  # one frame window, resize and crop for winner and loser
    denoiser_folder: ClassVar[str] = "transformer"
    frame_step: ClassVar[int] = 4  # valid frame counts are frame_step * k + 1
    frame_rule: ClassVar[str] = ""  # why, in a clause, for the error message
    default_num_frames: ClassVar[int] = 81
    default_size: ClassVar[tuple[int, int]] = (480, 832)  # (height, width) the model was trained at
    default_fps: ClassVar[int] = 16
    guidance_kind: ClassVar[str | None] = "classifier-free guidance, diffusers scale"
    # SIPO paper, Table A1: lr 2e-5 constant (not scaled), Adam, 4 per GPU x 8 x 16 GPUs = 512, fp16.  Where it is
    # silent (our choices): no warmup, no weight decay (Adam), 1000 steps with a checkpoint every 250.
    launch: ClassVar[LaunchDefaults | None] = LaunchDefaults(
        lr=2e-5, scale_lr=False, global_batch=512, per_gpu_batch=4, precision="fp16", flags=("--no-use_adafactor",),
        schedule=("--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--max_train_steps", "1000",
                  "--checkpointing_steps", "250", "--adam_weight_decay", "0"), video=True)  # fmt: skip
    paper_methods: ClassVar[dict[str, tuple[float, float, tuple[str, ...]]]] = {}

    @classmethod
    def valid_frame_counts(cls) -> list[int]:
        return list(range(1, cls.default_num_frames + 1, cls.frame_step))

    @classmethod
    def check_num_frames(cls, n: int, flag: str = "--num_frames") -> None:
        if n < 1 or (n - 1) % cls.frame_step:
            valid = ", ".join(map(str, cls.valid_frame_counts()))
            raise UserError(
                f"{flag} {n} does not work for {cls.name}: {cls.frame_rule}; use one of {valid} "
                f"(or more in steps of {cls.frame_step}; the model's own is {cls.default_num_frames})"
            )

    @classmethod
    def check_size(cls, height: int, width: int, flags: str = "--height/--width") -> None:
        if height <= 0 or width <= 0 or height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise UserError(
                f"{flags} must be positive multiples of {SIZE_MULTIPLE} for {cls.name} (VAE factor 8 x 2x2 patches), "
                f"got {height}x{width}"
            )

    @classmethod
    def configure(cls, cfg) -> None:
        """Video defaults: the model's frame count and size (``--resolution R`` means R x R), stride 1."""
        if cfg.streaming:
            raise UserError(f"--streaming is not supported for video pairs ({cls.name}); use a local folder or file")
        cfg.num_frames = cls.default_num_frames if cfg.num_frames is None else cfg.num_frames
        cls.check_num_frames(cfg.num_frames)
        cfg.frame_stride = 1 if cfg.frame_stride is None else cfg.frame_stride
        if cfg.frame_stride < 1:
            raise UserError(f"--frame_stride must be >= 1, got {cfg.frame_stride}")
        square = cfg.resolution
        cfg.height = cfg.height or square or cls.default_size[0]
        cfg.width = cfg.width or square or cls.default_size[1]
        cls.check_size(cfg.height, cfg.width)
        cfg.resolution = cfg.resolution or cfg.height

    # ------------------------------------------------------------------ evaluation sampling (sdpo.sampling.video)

    @classmethod
    def load_sampling_components(cls, pretrain_path: str, weights_path: str | None, device, dtype: torch.dtype,
                                 vae_path: str | None = None, vae_dtype: torch.dtype = torch.float32,
                                 max_sequence_length: int | None = None, vae_tiling: bool = False):  # fmt: skip
        """The base pipeline from ``pretrain_path`` with the transformer's weights from ``weights_path``
        (``sdpo.sampling.video.VideoComponents``); ``vae_tiling`` decodes in tiles (less memory)."""
        from sdpo.sampling.video import VideoComponents

        vae = from_pretrained(cls.vae_class(), vae_path or pretrain_path, subfolder=None if vae_path else "vae",
                              torch_dtype=vae_dtype)  # fmt: skip
        pipe = from_pretrained(cls.pipeline_class(), pretrain_path, vae=vae, torch_dtype=dtype)
        if weights_path is not None:
            cls.load_weights_file(pipe.transformer, weights_path)
        for m in (pipe.transformer, pipe.text_encoder, pipe.vae):
            m.to(device).eval().requires_grad_(False)
        if pipe.vae.dtype != vae_dtype:
            pipe.vae.to(dtype=vae_dtype)
        if vae_tiling:
            pipe.vae.enable_tiling()
        pipe.set_progress_bar_config(disable=True)
        return VideoComponents(cls, pipe, cls.video_sequence_length(pipe, max_sequence_length))

    @classmethod
    def video_sequence_length(cls, pipe, given: int | None) -> int:
        """Text tokens the sampler encodes prompts to."""
        raise NotImplementedError

    @classmethod
    def sampling_latent_shape(cls, channels: int, frames: int, h: int, w: int) -> tuple[int, ...]:
        """One video's initial noise in the pipeline's layout."""
        raise NotImplementedError

    @classmethod
    def decode_sampled(cls, pipe, latent: torch.Tensor) -> torch.Tensor:
        """One video's denoised latents (batch axis of one) -> the VAE's video tensor."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shapes

    @property
    def temporal_compression(self) -> int:
        raise NotImplementedError

    @property
    def spatial_compression(self) -> int:
        raise NotImplementedError

    def latent_grid(self, pixel_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """``(latent frames, latent height, latent width)`` for one video's pixels ``(F, 3, H, W)``."""
        frames, _, height, width = pixel_shape
        self.check_num_frames(frames, "a video of")
        s = self.spatial_compression
        return (frames - 1) // self.temporal_compression + 1, height // s, width // s


def keep_fp32_modules(model: torch.nn.Module) -> torch.nn.Module:
    """Put back in fp32 the submodules a transformers model asks to keep there (T5's and UMT5's ``wo``
    projections overflow in fp16), after the blanket cast every frozen part gets; the model's own
    forward casts activations to those weights' dtype."""
    names = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(name == n or name.endswith("." + n) for n in names):
            module.float()
    return model
