"""The video path of ``eval/generate.py``: one MP4 per prompt for CogVideoX and Wan2.1.

    python eval/generate.py --weights_path RUN/transformer.pth --pretrain_path THUDM/CogVideoX-2b \\
        --test_json prompts/vbench.json [--num_frames 49 --height 480 --width 720 --fps 8 --save_frames]

``eval/generate.py`` hands over here once it knows the family is a video one; the rules are the
image ones (same initial latent for every prompt, batch-invariant, sharded by prompt index, resumable,
one manifest in prompt-file order written by the main process).  Output:

    <set>_seed<seed>_<H>x<W>_<F>f_<steps>s_<cfg>cfg/<index>_<H>x<W>.mp4   (H.264, prompt in its metadata)
    <set>_seed<seed>_<H>x<W>_<F>f_<steps>s_<cfg>cfg/<index>_<H>x<W>/<k>.png   (with --save_frames)
    <set>_seed<seed>_<H>x<W>_<F>f_<steps>s_<cfg>cfg.json                    (the manifest)

A manifest entry has the image manifests' keys (``gen_image_path`` is the MP4: the image reward
models do not apply) plus ``gen_video_path``; ``metadata`` says the family, frames, fps and guidance.
Score it with ``eval/video_score.py`` (temporal flickering) or lay it out for the official VBench
with ``eval/vbench_layout.py``.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

from sdpo.errors import UserError


def add_video_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("video families")
    g.add_argument("--num_frames", type=int, default=None, help="frames per video (default: cogvideox 49, wan 81)")
    g.add_argument("--fps", type=int, default=None, help="frame rate written into the MP4 (default: 8 / 16)")
    g.add_argument("--negative_prompt", default="", help="negative prompt for classifier-free guidance")
    g.add_argument("--save_frames", action="store_true", help="also write every frame as a PNG")
    g.add_argument("--vae_tiling", action="store_true", help="decode in tiles (less memory, slightly other pixels)")


def validate_video(a: argparse.Namespace) -> None:
    """Video defaults (the model's frames, size, fps, guidance) and one-line refusals."""
    from sdpo.families import get_family

    fam = get_family(a.model_family)
    a.num_frames = a.num_frames or fam.default_num_frames
    fam.check_num_frames(a.num_frames)
    a.height, a.width = a.height or fam.default_size[0], a.width or fam.default_size[1]
    fam.check_size(a.height, a.width)
    a.fps = a.fps or fam.default_fps
    a.cfg = fam.sampling_guidance if a.cfg is None else a.cfg
    if a.steps < 1:
        raise UserError(f"--steps must be at least 1, got {a.steps}")
    if a.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {a.batch_size}")
    if a.fps < 1:
        raise UserError(f"--fps must be at least 1, got {a.fps}")


def run_name(set_: str, seed: int, height: int, width: int, frames: int, steps: int, cfg: float) -> str:
    return f"{set_}_seed{seed}_{height}x{width}_{frames}f_{steps}s_{float(cfg)}cfg"


def video_name(index: int, height: int, width: int) -> str:
    return f"{index}_{height}x{width}.mp4"


def frames_dir(video_dir: Path, index: int, height: int, width: int) -> Path:
    return video_dir / f"{index}_{height}x{width}"


def _complete(args, video_dir: Path, i: int) -> bool:
    from sdpo.data.video_io import mp4_is_complete

    h, w, f = args.height, args.width, args.num_frames
    if not mp4_is_complete(video_dir / video_name(i, h, w), f, h, w):
        return False
    return not args.save_frames or len(list(frames_dir(video_dir, i, h, w).glob("*.png"))) == f


def manifest_entries(args, entries: list[dict], video_dir: Path) -> list[dict]:
    from sdpo.families import get_family

    meta = {"model_family": args.model_family, "media": "video", "num_frames": args.num_frames, "fps": args.fps,
            "guidance": args.cfg, "guidance_kind": get_family(args.model_family).guidance_kind}  # fmt: skip
    out = []
    for i, e in enumerate(entries):
        path = str((video_dir / video_name(i, args.height, args.width)).absolute())
        out.append({"prompt": e["prompt"], "gen_image_path": path, "gen_video_path": path,
                    "raw_image_path": e.get("raw_image_path", ""), "metadata": {**e.get("metadata", {}), **meta}})  # fmt: skip
    return out


def main_video(args: argparse.Namespace) -> Path:
    """Generate the set's videos and return the manifest path (``eval/generate.py``'s main, for video)."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from eval import outputs as g
    from sdpo.atomic import write_json
    from sdpo.sampling.images import resolve_dtype
    from sdpo.sampling.prompts import read_entries

    name = run_name(g.set_name(args.test_json), args.seed, args.height, args.width, args.num_frames, args.steps,
                    args.cfg) + g.prompts_suffix(args.max_prompts)  # fmt: skip
    out = Path(args.output_path) if args.output_path else g.default_output_path(args.unet_path or args.lora_path)
    video_dir, manifest = out / name, out / f"{name}.json"
    if args.print_manifest_path:
        print(manifest)
        return manifest
    entries = read_entries(args.test_json)[: args.max_prompts]
    state = PartialState(cpu=g.cpu_only())
    dtype, vae_dtype = resolve_dtype(args.dtype, state.device), resolve_dtype(args.vae_dtype, state.device)
    settings = {
        **g.weight_settings(args), "pretrain_path": args.pretrain_path,
        "model_family": args.model_family, "dtype": str(dtype).removeprefix("torch."),
        "vae_dtype": str(vae_dtype).removeprefix("torch."), "fps": args.fps, "negative_prompt": args.negative_prompt,
        "vae_tiling": args.vae_tiling,
    }  # fmt: skip
    g.check_settings(video_dir, settings)
    video_dir.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    if state.is_main_process:
        write_json(video_dir / g.SETTINGS_FILE, settings)
    mine = g.shard(list(range(len(entries))), state.process_index, state.num_processes)
    g.remove_stale_temps([video_dir / video_name(i, args.height, args.width) for i in mine])
    todo = [i for i in mine if not _complete(args, video_dir, i)]
    if state.is_main_process:
        print(f"{name}: {len(entries)} prompts, {len(mine) - len(todo)} of this process's {len(mine)} already done "
              f"-> {video_dir}")  # fmt: skip
    start, written = time.perf_counter(), 0
    if todo:
        written = _generate(args, entries, todo, video_dir, dtype, vae_dtype, state)
    state.wait_for_everyone()
    total = sum(gather_object([written]))
    if state.is_main_process:
        missing = [i for i in range(len(entries)) if not _complete(args, video_dir, i)]
        if missing:
            raise UserError(f"{video_dir}: {len(missing)} videos missing or incomplete after generation (indices "
                            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}); rerun the same command to finish")  # fmt: skip
        write_json(manifest, manifest_entries(args, entries, video_dir))
        print(f"generated {total} videos ({len(entries) - total} already present) in "
              f"{time.perf_counter() - start:.1f} s on {state.num_processes} process(es); manifest {manifest}",
              flush=True)  # fmt: skip
    state.wait_for_everyone()
    return manifest


def _generate(args, entries, todo, video_dir: Path, dtype, vae_dtype, state) -> int:
    from tqdm import tqdm

    from eval.outputs import KILL_AFTER_ENV, attach_lora
    from sdpo.atomic import atomic_path
    from sdpo.data.video_io import write_mp4
    from sdpo.families import get_family
    from sdpo.sampling.video import generate_videos

    comp = get_family(args.model_family).load_sampling_components(
        args.pretrain_path, args.unet_path, state.device, dtype, vae_dtype=vae_dtype,
        max_sequence_length=args.max_sequence_length, vae_tiling=args.vae_tiling,
    )  # fmt: skip
    attach_lora(comp.pipe.transformer, args)
    kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
    h, w, written = args.height, args.width, 0
    bar = tqdm(total=len(todo), desc=f"generate[{state.process_index}]", disable=not state.is_main_process)
    for b in range(0, len(todo), args.batch_size):
        idx = todo[b : b + args.batch_size]
        prompts = [entries[i]["prompt"] for i in idx]
        videos = generate_videos(comp, prompts, h, w, args.num_frames, args.steps, args.cfg, args.seed,
                                 args.negative_prompt)  # fmt: skip
        for i, prompt, frames in zip(idx, prompts, videos):
            if args.save_frames:
                _save_frames(frames, frames_dir(video_dir, i, h, w))
            with atomic_path(video_dir / video_name(i, h, w)) as tmp:
                write_mp4(frames, tmp, fps=args.fps, description=prompt)
            written += 1
            if kill_after and written >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        bar.update(len(idx))
    bar.close()
    return written


def _save_frames(frames, folder: Path) -> None:
    from PIL import Image

    from sdpo.atomic import atomic_path

    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for k, f in enumerate(frames):
            Image.fromarray(f).save(tmp / f"{k:04d}.png")
