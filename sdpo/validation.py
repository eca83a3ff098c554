"""Validation while training: the current policy's images and their reward scores, every N steps.

Researchers stop a bad run early by watching its samples: the paper's Figure 9 shows Diffusion-DPO
drifting to over-saturated images over training while SDPO stays coherent, and its FLUX run at lr 1e-5
collapses.  With ``--validation_prompts`` the loop generates one image per prompt with the current
policy at step 0, every ``--validation_steps`` and at the end, through the evaluation sampler
(``eval/sampling.py``, ``eval/flow_sampling.py``: same guidance formula, same seeded initial latent for
every prompt), and scores the images with ``--validation_metrics`` (the five reward models of
``eval/rewards``).  With the default sampler settings and fp32, the last validation's images are the
images ``eval/generate.py`` makes from the final weights.

Outputs (main process), in ``output_dir/validation/``:

* ``step-<step>.png``: a grid of the images, prompt order, rows of up to 8 tiles of at most 256 px;
* ``step-<step>.json``: prompts, sampler settings, grid layout and per-image scores.  Written last: a
  validation is complete when its JSON exists (a resumed run redoes an incomplete one);
* ``val/<metric>`` means in ``metrics.jsonl`` (a row of their own at the step) and the trackers, and the
  grid to the trackers as the image ``validation``.

Training does not notice (the tests compare weights and checkpoint files with and without it):

* the parts are the training family's own modules (the unwrapped denoiser, VAE, text encoders); the
  sampler's scheduler is a separate instance loaded from the model folder, never the training one;
* every draw comes from the sampler's own seeded generator, and the global RNG states (torch CPU and
  accelerator, Python, NumPy) are put back afterwards, so checkpoints hold the same RNG state;
* the denoiser's train/eval flags are restored module by module; generation runs under
  ``torch.inference_mode`` (no graph, no gradients);
* reward models load once, on the main process, and wait on the CPU between validations: each moves to
  the accelerator only to score, one at a time.  The training step's memory peak is unchanged
  (``bench/validation_memory.py``).

Prompt ``i`` is generated on process ``i % N``; shards are padded (with a repeat of a prompt whose image
is then dropped) so that every process makes the same number of sampler calls, which a sharded
denoiser whose forward is a collective needs.  Every prompt starts from the same latent, so an image
depends neither on the number of processes nor on the step at which it is drawn, only on the weights;
nor on ``--validation_batch_size`` on a CPU, where the sampler denoises each prompt in a call of its own
(a CPU matmul rounds a row by the call's row count: ``eval/sampling.py``, "Batch invariance").
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdpo.atomic import atomic_path, write_json
from sdpo.errors import UserError

log = logging.getLogger("sdpo")
PROMPT_SETS = Path(__file__).resolve().parents[1] / "prompts"
FOLDER = "validation"
MAX_COLUMNS = 8
MAX_TILE = 256
DEFAULT_STEPS = 50  # the evaluation protocol's (REFERENCE.md section 5)
PREFIX = "val/"


# ----------------------------------------------------------------------------- flags


def prompt_sets() -> list[str]:
    return sorted(p.stem for p in PROMPT_SETS.glob("*.json"))


def read_prompts(spec: str) -> list[str]:
    """``--validation_prompts``: a prompt file (a JSON list of ``{"prompt": ...}`` as in ``prompts/``, or
    text with one prompt per line), or a set in ``prompts/`` with an optional count (``papv2:64``).

    A count takes prompts spread evenly over the set (indices ``i * len // count``): hpsv2 lists its four
    styles one after another, and its first 64 prompts would all be anime."""
    path = Path(spec).expanduser()
    if path.is_file():
        return _read_file(path, spec)
    name, sep, count = spec.partition(":")
    if name not in prompt_sets():
        raise UserError(
            f"--validation_prompts {spec}: no such file, and {name!r} is not a prompt set "
            f"(sets: {', '.join(prompt_sets())}; e.g. papv2:64)"
        )
    prompts = _read_file(PROMPT_SETS / f"{name}.json", spec)
    if not sep:
        return prompts
    try:
        n = int(count)
    except ValueError:
        n = 0
    if not 1 <= n <= len(prompts):
        raise UserError(f"--validation_prompts {spec}: the count must be a whole number in 1..{len(prompts)}")
    return [prompts[i * len(prompts) // n] for i in range(n)]


def _read_file(path: Path, spec: str) -> list[str]:
    from eval.manifest import read_prompts as read_json_prompts

    if path.suffix.lower() == ".json":
        prompts = read_json_prompts(path)
    else:
        prompts = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not prompts:
        raise UserError(f"--validation_prompts {spec}: the file holds no prompts (a JSON list of objects with "
                        "'prompt', or one prompt per line)")  # fmt: skip
    return prompts


def parse_metrics(spec: str | None) -> list[str]:
    """``none`` (the default) or the reward-model names ``eval.rewards.parse_metrics`` accepts (``all`` too)."""
    from eval.rewards import METRICS
    from eval.rewards import parse_metrics as parse

    if spec is None or spec.strip().lower() in ("", "none"):
        return []
    try:
        return parse(spec)
    except UserError:
        raise UserError(f"--validation_metrics {spec}: unknown reward model; use none, all or a comma list of "
                        f"{', '.join(METRICS)}") from None  # fmt: skip


def check_flags(cfg, family) -> None:
    """Fill the sampler defaults and reject bad validation flags, before any model loads (one line each)."""
    flags = ("validation_steps", "validation_metrics", "validation_model_root", "validation_num_inference_steps",
             "validation_guidance", "validation_resolution", "validation_seed", "validation_batch_size")  # fmt: skip
    given = [f"--{f}" for f in flags if getattr(cfg, f, None) is not None]
    if not cfg.validation_prompts:
        if given:
            raise UserError(f"{', '.join(given)} only act with --validation_prompts; add it or drop them")
        return
    read_prompts(cfg.validation_prompts)
    cfg.validation_metrics = ",".join(parse_metrics(cfg.validation_metrics)) or "none"
    if cfg.validation_model_root and not Path(cfg.validation_model_root).expanduser().is_dir():
        raise UserError(f"--validation_model_root {cfg.validation_model_root}: no such folder")
    defaults = dict(validation_steps=100, validation_num_inference_steps=DEFAULT_STEPS, validation_seed=0,
                    validation_guidance=family.sampling_guidance, validation_resolution=cfg.resolution,
                    validation_batch_size=4)  # fmt: skip
    for name, value in defaults.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
    for name in ("validation_steps", "validation_num_inference_steps", "validation_batch_size"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    res = cfg.validation_resolution
    if res < 16 or res % 16:
        raise UserError(f"--validation_resolution must be a positive multiple of 16 (the sampler's latent grid), "
                        f"got {res}; pass --validation_resolution")  # fmt: skip


# ----------------------------------------------------------------------------- what training must not notice


@contextmanager
def untouched_rng(device: torch.device) -> Iterator[None]:
    """Put back every global random state afterwards: torch CPU and ``device``'s, Python's, NumPy's."""
    py, npy = random.getstate(), np.random.get_state()
    device = torch.device(device)
    cpu = device.type == "cpu"
    try:
        with torch.random.fork_rng(
            devices=[] if cpu else [device.index or 0], device_type=None if cpu else device.type
        ):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """``module.eval()`` for the block, then every submodule's own train/eval flag as it was."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def padded_shard(n: int, rank: int, world: int) -> tuple[list[int], int]:
    """Prompt indices for ``rank`` (``i % world == rank``), padded by repeats to ``ceil(n / world)``;
    returns ``(indices, how many are real)``."""
    mine = list(range(rank, n, world))
    real = len(mine)
    mine += [mine[-1] if mine else 0] * (math.ceil(n / world) - real)
    return mine, real


# ----------------------------------------------------------------------------- grid


def grid_layout(n: int, resolution: int) -> tuple[int, int]:
    """``(columns, tile size)`` of the grid for ``n`` images."""
    return min(n, MAX_COLUMNS), min(resolution, MAX_TILE)


def make_grid(images: list[Image.Image], columns: int, tile: int) -> Image.Image:
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * tile, rows * tile), "white")
    for i, im in enumerate(images):
        im = im if im.size == (tile, tile) else im.resize((tile, tile), Image.Resampling.LANCZOS)
        grid.paste(im.convert("RGB"), ((i % columns) * tile, (i // columns) * tile))
    return grid


def grid_tile(grid: Image.Image, index: int, columns: int, tile: int) -> Image.Image:
    """Image ``index`` cut back out of a grid written by :func:`make_grid`."""
    x, y = (index % columns) * tile, (index // columns) * tile
    return grid.crop((x, y, x + tile, y + tile))


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def completed(folder: Path) -> list[tuple[int, Path]]:
    """``(step, record path)`` of the finished validations in ``folder``, by step."""
    found = []
    for p in Path(folder).glob("step-*.json"):
        try:
            found.append((int(p.stem.removeprefix("step-")), p))
        except ValueError:
            continue
    return sorted(found)


def log_image(accelerator, name: str, image: Image.Image, step: int) -> None:
    """The grid to every tracker that takes images (tensorboard wants an NHWC array, wandb PIL images)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({name: np.asarray(image)[None]}, step, dataformats="NHWC")
        elif hasattr(tracker, "log_images"):
            tracker.log_images({name: [image]}, step)


def drop_rows(jsonl, step: int) -> None:
    """Remove ``val/*`` rows logged at ``step`` by a validation that did not finish (it is redone)."""
    from sdpo.metrics import read_jsonl

    if not (jsonl.enabled and jsonl.path.is_file()):
        return
    rows = read_jsonl(jsonl.path)
    keep = [r for r in rows if not (r["step"] == step and any(k.startswith(PREFIX) for k in r))]
    if len(keep) != len(rows):
        with atomic_path(jsonl.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))


# ----------------------------------------------------------------------------- the validator


class NoValidation:
    """What the loop calls when ``--validation_prompts`` is not given."""

    def start(self, run) -> None:
        pass

    def after_step(self, run) -> None:
        pass


class Validator:
    """Loaded once at the start of training: prompts, the sampler's scheduler, the reward models."""

    def __init__(self, run):
        cfg, acc, family = run.cfg, run.accelerator, run.family
        self.prompts = read_prompts(cfg.validation_prompts)
        self.every, self.last = cfg.validation_steps, cfg.max_train_steps
        self.resolution, self.steps = cfg.validation_resolution, cfg.validation_num_inference_steps
        self.guidance, self.seed = cfg.validation_guidance, cfg.validation_seed
        self.batch_size = cfg.validation_batch_size
        self.folder = Path(cfg.output_dir) / FOLDER
        self.parts, self.own_parts = family, False
        if family.vae is None or not family.text_encoders:
            # Training from cached latents and text needs neither: load them for sampling, kept on the CPU.
            self.parts, self.own_parts = _load_sampling_parts(family), True
        self.scheduler = self.parts.sampling_scheduler()
        self.scorers = {}
        if acc.is_main_process:
            from eval.rewards import RewardConfig, load_scorer

            rewards = RewardConfig.make(cfg.validation_model_root)
            cpu = torch.device("cpu")
            self.scorers = {m: load_scorer(m, cpu, rewards) for m in parse_metrics(cfg.validation_metrics)}
            self.folder.mkdir(parents=True, exist_ok=True)

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last

    def start(self, run) -> None:
        """Step 0 of a new run, or a resumed run's step if its validation is due and did not finish."""
        step = run.step
        if not self.due(step) or (step > 0 and (self.folder / f"{step_name(step)}.json").is_file()):
            return
        if run.accelerator.is_main_process:
            drop_rows(run.jsonl, step)
        self.validate(run)

    def after_step(self, run) -> None:
        if self.due(run.step):
            self.validate(run)

    def validate(self, run) -> dict[str, float]:
        """Generate (sharded), gather on the main process, score, write; returns the means (main process)."""
        acc, step = run.accelerator, run.step
        start = time.perf_counter()
        with untouched_rng(acc.device):
            mine = self._generate(acc, acc.unwrap_model(run.family.denoiser))
            images = _gather(acc, mine)
            means = {}
            if acc.is_main_process:
                scores = self._score(images, acc.device)
                means = self._write(run, step, images, scores)
                log.info("validation at step %d: %d images in %.1f s%s", step, len(images),
                         time.perf_counter() - start, "".join(f"; {k} {v:.4f}" for k, v in means.items()))  # fmt: skip
        acc.wait_for_everyone()
        return means

    def _generate(self, acc, denoiser) -> list[tuple[int, Image.Image]]:
        from tqdm.auto import tqdm

        from eval.sampling import generate_images

        indices, real = padded_shard(len(self.prompts), acc.process_index, acc.num_processes)
        out: list[Image.Image] = []
        bar = tqdm(total=len(indices), desc="validation", leave=False, disable=not acc.is_local_main_process)
        with eval_mode(denoiser), torch.inference_mode(), self._parts_on(acc.device):
            comp = self.parts.sampling_components(denoiser, self.scheduler)
            for b in range(0, len(indices), self.batch_size):
                chunk = [self.prompts[i] for i in indices[b : b + self.batch_size]]
                with acc.autocast():
                    out += generate_images(comp, chunk, self.resolution, self.resolution, self.steps, self.guidance,
                                           self.seed)  # fmt: skip
                bar.update(len(chunk))
        bar.close()
        return list(zip(indices[:real], out[:real]))

    @contextmanager
    def _parts_on(self, device):
        """Sampling parts this validator loaded itself live on the CPU between validations."""
        if not self.own_parts:
            yield
            return
        modules = [self.parts.vae, *self.parts.text_encoders]
        for m in modules:
            m.to(device)
        try:
            yield
        finally:
            for m in modules:
                m.to("cpu")
            _empty_cache(device)

    def _score(self, images: list[Image.Image], device) -> dict[str, list[float]]:
        scores = {}
        for name, scorer in self.scorers.items():
            scorer.to(device)
            try:
                scores[name] = [v for b in range(0, len(images), self.batch_size)
                                for v in scorer.score(images[b : b + self.batch_size],
                                                      self.prompts[b : b + self.batch_size])]  # fmt: skip
            finally:
                scorer.to("cpu")
                _empty_cache(device)
        return scores

    def _write(self, run, step: int, images: list[Image.Image], scores: dict[str, list[float]]) -> dict[str, float]:
        means = {f"{PREFIX}{k}": float(np.mean(v)) for k, v in scores.items()}
        if means:
            run.jsonl.write(step, means)
            run.accelerator.log(means, step=step)
        columns, tile = grid_layout(len(images), self.resolution)
        grid = make_grid(images, columns, tile)
        with atomic_path(self.folder / f"{step_name(step)}.png") as tmp:
            grid.save(tmp, format="PNG")
        log_image(run.accelerator, "validation", grid, step)
        write_json(self.folder / f"{step_name(step)}.json", {
            "step": step, "prompts": self.prompts, "seed": self.seed, "steps": self.steps, "guidance": self.guidance,
            "resolution": self.resolution, "columns": columns, "tile": tile, "grid": f"{step_name(step)}.png",
            "means": means, "scores": scores,
        })  # fmt: skip
        return means


def make_validator(run) -> Validator | NoValidation:
    """The validator for ``run`` (loading draws random initial weights before the real ones: the global
    random state is put back, so the run's RNG stays the one it would have been without validation)."""
    if not getattr(run.cfg, "validation_prompts", None):
        return NoValidation()
    with untouched_rng(run.accelerator.device):
        return Validator(run)


def _load_sampling_parts(family):
    """A second instance of the family holding only the VAE and text encoders, frozen, on the CPU."""
    from sdpo.families.base import freeze

    parts = type(family)(family.cfg, torch.device("cpu"), family.weight_dtype)
    parts.load_text_encoders()
    parts.vae = parts.load_vae()
    for m in (parts.vae, *parts.text_encoders):
        freeze(m, "cpu", family.weight_dtype)
    parts.after_load()
    return parts


def _gather(acc, mine: list[tuple[int, Image.Image]]) -> list[Image.Image]:
    """Every process's ``(index, image)`` pairs, in prompt order (on every process)."""
    if acc.num_processes > 1:
        from accelerate.utils import gather_object

        mine = gather_object(mine)
    return [im for _, im in sorted(mine, key=lambda p: p[0])]


def _empty_cache(device) -> None:
    """Hand the reward model's freed blocks back, so the next training step starts from the same pool."""
    if torch.device(device).type != "cpu":
        torch.accelerator.empty_cache()
