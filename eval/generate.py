"""Generate one image per prompt of a prompt set from a ``unet.pth``, as the paper's evaluation did.

    python eval/generate.py --weights_path RUN/checkpoint-2000/unet.pth --test_json prompts/hpsv2.json
    accelerate launch eval/generate.py --weights_path ... --sdxl --batch_size 8
    python eval/generate.py --weights_path RUN/transformer.pth --model_family flux   # FLUX.1-dev, guidance 3.5

Without ``--weights_path`` and ``--lora_path`` the base model itself is sampled (a baseline for win rates;
``--output_path`` then says where the images go).  ``--max_prompts N`` takes the first N prompts of the file
(a quick look, a smoke test); the folder and manifest names get an ``_<N>p`` suffix, so a partial set never
mixes with the whole one.

``--weights_path`` (alias ``--unet_path``) takes a ``unet.pth`` / ``transformer.pth``, a checkpoint
folder or a diffusers folder.  ``--lora_path`` adds a LoRA in diffusers' format (a LoRA run's folder or
checkpoint, or its ``pytorch_lora_weights.safetensors``) on top of the base model (or of
``--weights_path``), weighted by ``--lora_scale``.  SD3 and FLUX use their own pipelines' samplers and guidance
(the family's ``sample_latents``): ``--cfg`` is then the model's own guidance scale (FLUX: the distilled
guidance embedding, not classifier-free guidance; default 3.5 for both), and the manifest's
``metadata`` says which kind it was.

Images go to ``<set>_seed<seed>_<H>x<W>_<steps>s_<cfg>cfg/<index>_<H>x<W>.png`` (prompt in the PNG's
EXIF ImageDescription) and the manifest to ``<set>_seed<seed>_<H>x<W>_<steps>s_<cfg>cfg.json``
beside that folder, by default in the folder holding ``unet.pth`` (REFERENCE.md section 5). The cfg
prints as Python prints a float (7.5 -> ``7.5cfg``, 5 -> ``5.0cfg``), like the reference scripts.

``--cfg`` is the reference scripts' guidance weight: ``pred = cond + cfg * (cond - uncond)``, i.e.
diffusers' ``guidance_scale = cfg + 1`` (cfg 7.5 here is guidance_scale 8.5 in a diffusers pipeline).

A rerun skips images already written and complete, so an interrupted run is resumed by running the
same command again; the manifest is written (atomically) once every image exists. Under
``accelerate launch`` image ``j`` (in manifest order) goes to process ``j % num_processes`` and the main
process writes the one manifest, in prompt-file order.

On a CPU the PNGs are byte-identical whatever ``--batch_size`` and the number of processes: prompts are
encoded, denoised and decoded one at a time there, because a CPU matmul's row rounds by the call's row
count (MKL on an AMD EPYC: 1, 2-3 and 4+ rows round differently even with ``MKL_CBWR=AUTO,STRICT``,
measured; ``sdpo/sampling/images.py`` has the numbers).  On an accelerator ``--batch_size`` prompts share
each denoiser call, for speed.

``--images_per_prompt K`` makes K images of each prompt; image ``k`` of every prompt starts from the
reference latent of seed ``seed + k`` (with K = 1 that is today's one shared latent). GenEval's own
generator reseeds before each prompt and draws its K latents one after another, so there too image
``k`` of every prompt shares one latent; the draws themselves differ (other generator calls), and
deriving each from its own seed keeps every image independent of the batch size. The folder gets a
``_<K>img`` suffix and the manifest one entry per image (``metadata.sample`` = k).

``--layout geneval`` writes GenEval's layout instead (``<folder>/<index:05d>/metadata.jsonl`` +
``samples/<k:04d>.png``, 4 images per prompt unless told), which the official evaluator and
``python -m eval.geneval`` read as it is; ``--test_json`` may then be GenEval's metadata JSONL
(``prompts/geneval/evaluation_metadata.jsonl``; the set is named ``geneval``): each row's ``prompt``
is generated and the row itself becomes that folder's ``metadata.jsonl``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
# MKL's reproducibility mode: fixed code path and static scheduling, and in STRICT mode gemm results that
# do not depend on the thread count (Intel code branches).  It is read at MKL's first call, so set it early.
# It does NOT make a matmul's row independent of the call's row count (on an AMD EPYC no MKL_CBWR value
# does: 1, 2-3 and 4+ rows round differently, measured); CPU images do not depend on --batch_size because
# the denoiser runs one prompt per call on a CPU (sdpo/sampling/images.py, "Batch invariance").
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import argparse  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

from PIL import ExifTags, Image  # noqa: E402

from eval.outputs import (  # noqa: E402
    KILL_AFTER_ENV,
    SETTINGS_FILE,
    attach_lora,
    check_settings,
    cpu_only,
    default_output_path,
    prompts_suffix,
    remove_stale_temps,
    set_name,
    shard,
    weight_settings,
)
from eval.video_generate import add_video_arguments, main_video, validate_video  # noqa: E402
from sdpo.atomic import atomic_path, write_json  # noqa: E402
from sdpo.checkpoint.weights import check_readable  # noqa: E402
from sdpo.diskspace import reporting_disk_full  # noqa: E402
from sdpo.errors import UserError, cli_main  # noqa: E402
from sdpo.families import (  # noqa: E402
    DEFAULT_FAMILY,
    add_family_arguments,
    family_of_index,
    get_family,
    read_model_index,
    requested_family,
    resolve_family,
)
from sdpo.sampling.prompts import read_entries, read_manifest  # noqa: E402

_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last 12 bytes of every complete PNG


# ----------------------------------------------------------------------------- names and paths


def run_name(set_: str, seed: int, height: int, width: int, steps: int, cfg: float) -> str:
    """``<set>_seed<seed>_<H>x<W>_<steps>s_<cfg>cfg``; cfg is formatted as a Python float (7.5, 5.0)."""
    return f"{set_}_seed{seed}_{height}x{width}_{steps}s_{float(cfg)}cfg"


def image_name(index: int, height: int, width: int) -> str:
    return f"{index}_{height}x{width}.png"


# ----------------------------------------------------------------------------- several images per prompt, layouts

LAYOUTS = ("reference", "geneval")
GENEVAL_METADATA_STEM = "evaluation_metadata"  # GenEval's own file name: the set is called "geneval"


def layout_set_name(test_json: str | Path) -> str:
    """:func:`set_name`, except that GenEval's ``evaluation_metadata.jsonl`` names the ``geneval`` set."""
    name = set_name(test_json)
    return "geneval" if name == GENEVAL_METADATA_STEM else name


def images_suffix(images_per_prompt: int) -> str:
    """Appended to the run name when a prompt has several images, so such a folder never mixes with a one-image one."""
    return "" if images_per_prompt == 1 else f"_{images_per_prompt}img"


def sample_seed(seed: int, k: int) -> int:
    """The seed of image ``k`` of every prompt (see the module docstring)."""
    return seed + k


def image_items(n_prompts: int, images_per_prompt: int) -> list[tuple[int, int]]:
    """(prompt index, image index) of every image, in manifest order (prompt-major)."""
    return [(i, k) for i in range(n_prompts) for k in range(images_per_prompt)]


def image_path(image_dir: Path, layout: str, i: int, k: int, images_per_prompt: int, height: int, width: int) -> Path:
    """Where image ``k`` of prompt ``i`` goes: ``<i>_<H>x<W>.png`` (reference, one image), ``<i>_<k>_<H>x<W>.png``
    (reference, several), or GenEval's ``<i:05d>/samples/<k:04d>.png``."""
    if layout == "geneval":
        from eval.geneval.layout import sample_path

        return sample_path(image_dir, i, k)
    if images_per_prompt == 1:
        return image_dir / image_name(i, height, width)
    return image_dir / f"{i}_{k}_{height}x{width}.png"


def read_prompt_file(path: str | Path) -> list[dict]:
    """A prompt file: the reference JSON list, or a GenEval metadata JSONL (``.jsonl``), whose rows are kept whole."""
    if str(path).endswith(".jsonl"):
        from eval.geneval.layout import read_metadata

        return read_metadata(path)
    return read_entries(path)


def write_layout_metadata(image_dir: Path, layout: str, entries: list[dict]) -> None:
    """GenEval's layout: each prompt's folder, its ``samples/`` and ``metadata.jsonl`` (the row, or ``{"prompt"}``)."""
    if layout != "geneval":
        return
    from eval.geneval.layout import write_prompt_metadata

    for i, e in enumerate(entries):
        write_prompt_metadata(image_dir, i, e)


def png_is_complete(path: str | Path, width: int, height: int) -> bool:
    """A PNG of the right size whose last chunk is IEND: what a finished write leaves, and what a
    truncated copy or an interrupted writer does not."""
    try:
        with Image.open(path) as im:
            if im.format != "PNG" or im.size != (width, height):
                return False
        with open(path, "rb") as f:
            f.seek(-len(_IEND), os.SEEK_END)
            return f.read() == _IEND
    except (OSError, ValueError, SyntaxError):
        return False


def save_png(image: Image.Image, path: str | Path, prompt: str) -> None:
    """Write ``image`` with ``prompt`` in EXIF ImageDescription, atomically (temp file, then rename).

    EXIF text is ASCII: given a str, Pillow replaces other characters with '?' (what the reference
    scripts' files hold), so a non-ASCII prompt is stored as its UTF-8 bytes instead; read it back
    with :func:`png_prompt`."""
    exif = Image.Exif()
    exif[ExifTags.Base.ImageDescription] = prompt if prompt.isascii() else prompt.encode("utf-8")
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", exif=exif)


def png_prompt(path: str | Path) -> str:
    """The prompt stored by :func:`save_png` (Pillow decodes EXIF text as Latin-1; undo that)."""
    with Image.open(path) as im:
        text = im.getexif().get(ExifTags.Base.ImageDescription, "")
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def manifest_entries(
    entries: list[dict],
    image_dir: Path,
    height: int,
    width: int,
    images_per_prompt: int = 1,
    layout: str = "reference",
    extra: dict | None = None,
) -> list[dict]:
    """The reference manifest: one entry per image in prompt-file order. Image paths are absolute so
    the manifest works from any working directory; raw_image_path and metadata come from the prompt file
    (a GenEval row is itself the metadata); with several images per prompt, ``metadata.sample`` is k."""
    out = []
    for i, k in image_items(len(entries), images_per_prompt):
        e = entries[i]
        metadata = e.get("metadata", e if layout == "geneval" and "tag" in e else {})
        if images_per_prompt > 1:
            metadata = {**metadata, "sample": k}
        if extra:
            metadata = {**metadata, **extra}
        path = image_path(image_dir, layout, i, k, images_per_prompt, height, width)
        out.append(
            {
                "prompt": e["prompt"],
                "gen_image_path": str(path.absolute()),
                "raw_image_path": e.get("raw_image_path", ""),
                "metadata": metadata,
            }
        )
    return out


def _manifest_still_valid(path: Path, entries: list[dict], width: int, height: int) -> bool:
    """An existing manifest (ours or the reference scripts') is kept byte for byte when it lists the
    same prompts in order and every image it names is complete."""
    try:
        old = read_manifest(path)
    except UserError:
        return False
    if [e["prompt"] for e in old] != [e["prompt"] for e in entries]:
        return False
    for e in old:
        p = Path(e["gen_image_path"])
        if not png_is_complete(p, width, height) and not png_is_complete(path.parent / p, width, height):
            return False
    return True


def _zip_folder(folder: Path) -> None:
    with atomic_path(folder.with_suffix(".zip")) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(folder.rglob("*.png")):
                if not p.name.startswith("."):
                    zf.write(p, p.relative_to(folder).as_posix())


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eval/generate.py", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--weights_path",
        "--unet_path",
        dest="unet_path",
        default=None,
        help="unet.pth / transformer.pth, a checkpoint folder, or a diffusers folder (--unet_path: the old name)",
    )
    p.add_argument(
        "--lora_path", default=None, help="a LoRA (diffusers format): run folder, checkpoint or .safetensors"
    )
    p.add_argument("--lora_scale", type=float, default=1.0, help="weight of the LoRA (1: as trained)")
    p.add_argument(
        "--pretrain_path",
        default=None,
        help="base model hub id or folder (default: the family's own, e.g. stable-diffusion-v1-5/stable-diffusion-v1-5)",
    )
    add_family_arguments(
        p.add_argument, "auto: from --pretrain_path's model_index.json (SD1.5 when there is none to read)"
    )
    p.add_argument("--max_sequence_length", type=int, default=None, help="SD3/FLUX: T5 tokens (pipeline default)")
    p.add_argument(
        "--vae_path",
        default=None,
        help="VAE folder or hub id (default: the family's evaluation VAE: SDXL fp16-fix, else the model's)",
    )
    p.add_argument("--test_json", default="prompts/papv2.json", help="prompt file: a JSON list of {'prompt': ...}")
    p.add_argument("--height", type=int, default=None, help="default 512 (SD1.5) or 1024 (SDXL); a multiple of 16")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument(
        "--cfg",
        type=float,
        default=None,
        help="SD1.5/SDXL: cond + cfg*(cond - uncond), i.e. diffusers guidance cfg+1 (default 7.5); "
        "SD3/FLUX: the pipeline's own guidance scale (default 3.5; FLUX: distilled embedding, not CFG)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_path", default=None, help="where the image folder and manifest go (default: by unet.pth)")
    p.add_argument("--batch_size", type=int, default=1, help="prompts per sampler call; does not change the images")
    p.add_argument(
        "--dtype", default="auto", help="UNet and text encoders: auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16"
    )
    p.add_argument("--vae_dtype", default="fp32", help="VAE decode dtype (the paper: fp32)")
    p.add_argument(
        "--sampler",
        default="reference",
        choices=["reference", "pipeline"],
        help="SD1.5/SDXL: the reference loop or the diffusers pipeline (sdpo/families/sd15.py)",
    )
    p.add_argument(
        "--images_per_prompt",
        type=int,
        default=None,
        help="images per prompt, seed+k for image k (default 1; geneval 4)",
    )
    p.add_argument(
        "--layout", default="reference", choices=LAYOUTS, help="reference: <i>_<H>x<W>.png; geneval: GenEval's folders"
    )
    p.add_argument(
        "--max_prompts", type=int, default=None, help="only the first N prompts of the file (names get _<N>p)"
    )
    p.add_argument("--zip", action="store_true", help="also write <folder>.zip of the images, as the reference did")
    p.add_argument(
        "--print_manifest_path", action="store_true", help="print where the manifest goes and exit (for scripts)"
    )
    add_video_arguments(p)  # cogvideox / wan: eval/video_generate.py
    return p


def _family(a: argparse.Namespace) -> str:
    """The family: named by ``--model_family`` or an alias flag (``--sdxl``), else read from --pretrain_path's
    folder or hub config; with no base model named, or a hub id that cannot be read offline, the default family."""
    requested, flag = requested_family(a)
    if requested != "auto" and flag != "--model_family":
        return requested  # an alias: a base folder of another family is caught by the loader, with the SD-era message
    if a.pretrain_path is None:
        return DEFAULT_FAMILY if requested == "auto" else requested
    if requested == "auto" and not Path(a.pretrain_path).expanduser().exists():
        return family_of_index(read_model_index(a.pretrain_path)) or DEFAULT_FAMILY
    return resolve_family(a.pretrain_path, requested)


def _validate(a: argparse.Namespace) -> None:
    if a.unet_path is None and a.lora_path is None and a.output_path is None:
        raise UserError(
            "pass --weights_path (a unet.pth / transformer.pth) or --lora_path (a LoRA run), or --output_path to "
            "sample the base model itself (a baseline)"
        )
    if a.max_prompts is not None and a.max_prompts < 1:
        raise UserError(f"--max_prompts must be at least 1, got {a.max_prompts}")
    a.model_family = _family(a)
    fam = get_family(a.model_family)
    a.pretrain_path = a.pretrain_path or fam.default_model
    if a.lora_path is not None:  # a LoRA of another family stops here, before any model loads
        from sdpo.lora.adapters import check_lora_file

        check_lora_file(a.lora_path, fam)
    if fam.video:
        return validate_video(a)
    a.cfg = fam.sampling_guidance if a.cfg is None else a.cfg
    size = fam.default_resolution
    a.height = a.height or size
    a.width = a.width or size
    if a.height % 16 or a.width % 16 or a.height <= 0 or a.width <= 0:
        raise UserError(f"--height/--width must be positive multiples of 16, got {a.height}x{a.width}")
    if a.steps < 1:
        raise UserError(f"--steps must be at least 1, got {a.steps}")
    if a.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {a.batch_size}")
    if a.images_per_prompt is None:
        a.images_per_prompt = 4 if a.layout == "geneval" else 1
    if a.images_per_prompt < 1:
        raise UserError(f"--images_per_prompt must be at least 1, got {a.images_per_prompt}")


@cli_main
def main(argv: list[str] | None = None) -> Path:
    """Generate the set and return the manifest path."""
    args = build_parser().parse_args(argv)
    _validate(args)
    if get_family(args.model_family).video:
        return main_video(args)
    name = run_name(layout_set_name(args.test_json), args.seed, args.height, args.width, args.steps, args.cfg)
    name += images_suffix(args.images_per_prompt) + prompts_suffix(args.max_prompts)
    out = Path(args.output_path) if args.output_path else default_output_path(args.unet_path or args.lora_path)
    image_dir, manifest = out / name, out / f"{name}.json"
    if args.print_manifest_path:
        print(manifest)
        return manifest
    entries = read_prompt_file(args.test_json)[: args.max_prompts]  # a malformed file fails here, before models load

    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState(cpu=cpu_only())

    from sdpo.sampling.images import resolve_dtype

    dtype = resolve_dtype(args.dtype, state.device)
    vae_dtype = resolve_dtype(args.vae_dtype, state.device)
    settings = {
        **weight_settings(args),
        "pretrain_path": args.pretrain_path,
        "vae_path": args.vae_path,
        "model_family": args.model_family,
        "dtype": str(dtype).removeprefix("torch."),
        "vae_dtype": str(vae_dtype).removeprefix("torch."),
        "sampler": args.sampler,
        "layout": args.layout,
    }
    check_settings(image_dir, settings)
    if args.unet_path:
        check_readable(args.unet_path, "--weights_path")  # a damaged file is refused before the folder is made
    image_dir.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    if state.is_main_process:
        write_json(image_dir / SETTINGS_FILE, settings)
        write_layout_metadata(image_dir, args.layout, entries)
    state.wait_for_everyone()

    items = image_items(len(entries), args.images_per_prompt)
    paths = {
        it: image_path(image_dir, args.layout, *it, args.images_per_prompt, args.height, args.width) for it in items
    }
    mine = [items[j] for j in shard(list(range(len(items))), state.process_index, state.num_processes)]
    remove_stale_temps([paths[it] for it in mine])
    todo = [it for it in mine if not png_is_complete(paths[it], args.width, args.height)]
    if state.is_main_process:
        done = len(mine) - len(todo)
        print(
            f"{name}: {len(entries)} prompts x {args.images_per_prompt} images, "
            f"{done} of this process's {len(mine)} already done -> {image_dir}"
        )

    start, written, sampling = time.perf_counter(), 0, 0.0
    if todo:
        written, sampling = _generate(args, entries, todo, paths, dtype, vae_dtype, state)
    state.wait_for_everyone()
    total_written = sum(gather_object([written]))
    sampling = max(gather_object([sampling]))
    if state.is_main_process:
        _finish(args, entries, image_dir, manifest)
        print(
            f"generated {total_written} images ({len(items) - total_written} already present) in {sampling:.1f} s, "
            f"{total_written / max(sampling, 1e-9):.2f} images/s on {state.num_processes} process(es) "
            f"({time.perf_counter() - start:.1f} s with model loading); manifest {manifest}",
            flush=True,
        )
    state.wait_for_everyone()
    return manifest


def _generate(args, entries, todo, paths, dtype, vae_dtype, state) -> tuple[int, float]:
    """Generate this process's ``todo`` (prompt, image) items into ``paths``; return (images written, seconds
    spent sampling)."""
    from tqdm import tqdm

    from sdpo.sampling.images import generate_images

    comp = get_family(args.model_family).load_sampling_components(
        args.pretrain_path, args.unet_path, state.device, dtype, vae_path=args.vae_path, vae_dtype=vae_dtype,
        max_sequence_length=args.max_sequence_length,
    )  # fmt: skip
    attach_lora(comp.unet, args)
    kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
    written, start = 0, time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"generate[{state.process_index}]", disable=not state.is_main_process)
    for b in range(0, len(todo), args.batch_size):
        batch = todo[b : b + args.batch_size]
        prompts = [entries[i]["prompt"] for i, _ in batch]
        seeds = [sample_seed(args.seed, k) for _, k in batch]
        images = generate_images(comp, prompts, args.height, args.width, args.steps, args.cfg, seeds, args.sampler)
        for it, prompt, image in zip(batch, prompts, images):
            with reporting_disk_full(paths[it].parent, "images", after=f"; {written} written by this process are kept"):
                save_png(image, paths[it], prompt)
            written += 1
            if kill_after and written >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        bar.update(len(batch))
    bar.close()
    return written, time.perf_counter() - start


def guidance_metadata(args) -> dict | None:
    """SD3/FLUX manifests say what their guidance number means (FLUX's is a distilled embedding); SD1.5/SDXL
    manifests stay byte-compatible with the reference scripts' (no ``guidance_kind``: None here)."""
    kind = get_family(args.model_family).guidance_kind
    return None if kind is None else {"model_family": args.model_family, "guidance": args.cfg, "guidance_kind": kind}


def _finish(args, entries: list[dict], image_dir: Path, manifest: Path) -> None:
    """Check every image exists, then write the manifest (unless an equivalent one is already there)."""
    k_max = args.images_per_prompt
    missing = [
        it
        for it in image_items(len(entries), k_max)
        if not png_is_complete(
            image_path(image_dir, args.layout, *it, k_max, args.height, args.width), args.width, args.height
        )
    ]
    if missing:
        raise UserError(
            f"{image_dir}: {len(missing)} images missing or incomplete after generation "
            f"(indices {missing[:5]}{' ...' if len(missing) > 5 else ''}); rerun the same command to finish"
        )
    listed = manifest_entries(entries, image_dir, args.height, args.width, k_max, args.layout, guidance_metadata(args))
    if not (manifest.is_file() and _manifest_still_valid(manifest, listed, args.width, args.height)):
        write_json(manifest, listed)
    if args.zip:
        _zip_folder(image_dir)


if __name__ == "__main__":
    main()
