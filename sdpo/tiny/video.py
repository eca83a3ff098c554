"""Tiny, offline stand-ins for the video models and video preference data (``python -m sdpo.tiny``).

Models: real diffusers CogVideoX / Wan2.1 pipeline folders (same classes, schedulers and layout as
the released ones) with transformers of a few ten thousand parameters.  At 32 px they sample 1 or 9
frames in about a second and take a DPO step in under a second on a CPU.

Data: short clips of a coloured shape moving across a plain background; the caption names the
shape, its colour and a direction, and the preferred clip moves that way while the other moves the
opposite way.  Written as the three index formats ``sdpo.data.video_pairs`` reads: a parquet table, a
VideoDPO ``pair.json`` (with its ``metadata.json``) or a VideoAlign CSV.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from sdpo.tiny.images import COLOURS, SHAPES
from sdpo.tiny.text import t5_encoder, t5_tokenizer

_TEXT_DIM = 32
_MAX_TEXT = 32  # CogVideoX's max_text_seq_length (226 in the real models)
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
OPPOSITE = {"right": "left", "left": "right", "down": "up", "up": "down"}
VIDEO_KINDS = ("cogvideox", "wan")


def _umt5_encoder():
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(vocab_size=128, d_model=_TEXT_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu")  # fmt: skip
    return UMT5EncoderModel(cfg).eval()


def cogvideox_scheduler(variant: str = "5b"):
    """The released CogVideoX-2b / -5b scheduler configs (v-prediction, zero-SNR, trailing spacing)."""
    from diffusers import CogVideoXDDIMScheduler

    return CogVideoXDDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True, steps_offset=0,
        timestep_spacing="trailing", snr_shift_scale={"2b": 3.0, "5b": 1.0}[variant],
    )  # fmt: skip


def build_tiny_video_model(kind: str, out: str | Path, seed: int = 0, variant: str = "5b") -> Path:
    """A tiny CogVideoX (``variant`` "5b": rotary embeddings, SNR shift 1; "2b": position embeddings,
    SNR shift 3) or Wan2.1 T2V pipeline folder."""
    out = Path(out)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tok = t5_tokenizer(Path(tmp) / "t5", max_length=_MAX_TEXT if kind == "cogvideox" else 32)
    if kind == "cogvideox":
        from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline, CogVideoXTransformer3DModel

        rotary = variant == "5b"
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
            text_embed_dim=_TEXT_DIM, num_layers=1, sample_width=4, sample_height=4, sample_frames=9,
            max_text_seq_length=_MAX_TEXT, use_rotary_positional_embeddings=rotary,
        )  # fmt: skip
        vae = AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                                     norm_num_groups=4, sample_height=32, sample_width=32,
                                     scaling_factor=0.7 if rotary else 1.15258426)  # fmt: skip
        pipe = CogVideoXPipeline(tokenizer=tok, text_encoder=t5_encoder(), vae=vae, transformer=transformer,
                                 scheduler=cogvideox_scheduler(variant))  # fmt: skip
    elif kind == "wan":
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=_TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
        )  # fmt: skip
        vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])  # fmt: skip
        # The released Wan2.1-T2V-1.3B folder's scheduler: UniPC on flow sigmas with shift 3.0.
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                            num_train_timesteps=1000)  # fmt: skip
        pipe = WanPipeline(tokenizer=tok, text_encoder=_umt5_encoder(), vae=vae, transformer=transformer,
                           scheduler=scheduler)  # fmt: skip
    else:
        raise ValueError(f"unknown video model kind {kind!r}: use one of {', '.join(VIDEO_KINDS)}")
    pipe.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- pair data


def moving_shape(shape: str, colour: tuple[int, int, int], direction: str, frames: int, size: int,
                 start: tuple[int, int] = (0, 0)) -> np.ndarray:  # fmt: skip
    """``uint8 (frames, size, size, 3)``: one shape crossing the frame in ``direction``."""
    from PIL import Image, ImageDraw

    dx, dy = DIRECTIONS[direction]
    r, step = size // 6, max(1, size // (2 * max(frames - 1, 1)))
    out = []
    for k in range(frames):
        cx = size // 2 + start[0] + dx * (k - frames // 2) * step
        cy = size // 2 + start[1] + dy * (k - frames // 2) * step
        img = Image.new("RGB", (size, size), (235, 235, 235))
        d = ImageDraw.Draw(img)
        (d.ellipse if shape == "circle" else d.rectangle)((cx - r, cy - r, cx + r, cy + r), fill=colour)
        out.append(np.asarray(img))
    return np.stack(out)


def tiny_video_rows(out: str | Path, n: int, frames: int = 9, size: int = 32, seed: int = 0,
                    tie_every: int = 8) -> list[dict]:  # fmt: skip
    """Write ``n`` clip pairs under ``out/videos/`` and return parquet-format rows (paths relative to
    ``out``): ``label_0`` 1 when ``video_0`` moves as the caption says, 0 when ``video_1`` does,
    0.5 (a tie) every ``tie_every``-th row."""
    from sdpo.atomic import atomic_path
    from sdpo.data.video_io import write_mp4

    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        shape, colour, direction = rng.choice(SHAPES), rng.choice(sorted(COLOURS)), rng.choice(sorted(DIRECTIONS))
        jitter = (rng.randint(-2, 2), rng.randint(-2, 2))
        good = moving_shape(shape, COLOURS[colour], direction, frames, size, jitter)
        bad = moving_shape(shape, COLOURS[colour], OPPOSITE[direction], frames, size, jitter)
        label = 0.5 if tie_every and i % tie_every == tie_every - 1 else float(rng.random() < 0.5)
        first, second = (good, bad) if label != 0.0 else (bad, good)
        names = [f"videos/{i}_0.mp4", f"videos/{i}_1.mp4"]
        for name, clip in zip(names, (first, second)):
            with atomic_path(out / name) as tmp:
                write_mp4(clip, tmp, fps=8)
        rows.append({"caption": f"a {colour} {shape} moving {direction}", "video_0": names[0], "video_1": names[1],
                     "label_0": label})  # fmt: skip
    return rows


def write_video_pairs(out: str | Path, rows: list[dict], fmt: str = "parquet") -> Path:
    """Write ``rows`` (from :func:`tiny_video_rows`) as ``fmt``'s index file in ``out``; returns the path
    to pass as ``--dataset_name`` (the folder; a VideoAlign CSV is passed as the file itself)."""
    import pandas as pd

    out = Path(out)
    if fmt == "parquet":
        (out / "data").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(out / "data" / "train-00000-of-00001.parquet", index=False)
        return out
    if fmt == "videodpo":
        # VideoDPO: metadata.json lists clips; pair.json names them by index, video1 preferred when label is 0.
        clips, pairs = [], []
        for r in rows:
            if r["label_0"] == 0.5:
                continue  # VideoDPO has no ties
            k = len(clips)
            clips += [{"basic": {"clip_path": r["video_0"]}, "misc": {"frame_caption": [r["caption"]]}},
                      {"basic": {"clip_path": r["video_1"]}, "misc": {"frame_caption": [r["caption"]]}}]  # fmt: skip
            pairs.append({"video1": k, "video2": k + 1, "label": 0 if r["label_0"] == 1.0 else 1,
                          "frame_caption": [r["caption"]]})  # fmt: skip
        (out / "metadata.json").write_text(json.dumps(clips, indent=1))
        (out / "pair.json").write_text(json.dumps(pairs, indent=1))
        return out
    if fmt == "videoalign":
        vote = {1.0: "A", 0.0: "B", 0.5: "same"}
        table = [{"path_A": r["video_0"], "path_B": r["video_1"], "prompt": r["caption"], "VQ": vote[r["label_0"]],
                  "MQ": vote[r["label_0"]], "TA": vote[r["label_0"]]} for r in rows]  # fmt: skip
        pd.DataFrame(table).to_csv(out / "train.csv", index=False)
        return out / "train.csv"
    raise ValueError(f"unknown video pair format {fmt!r}: use parquet, videodpo or videoalign")


def build_tiny_video_pairs(out: str | Path, n: int = 16, frames: int = 9, size: int = 32, seed: int = 0,
                           fmt: str = "parquet") -> Path:  # fmt: skip
    return write_video_pairs(out, tiny_video_rows(out, n, frames, size, seed), fmt)
