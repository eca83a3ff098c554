"""Validation while training: the current policy's images and their reward scores, every N steps.

Researchers stop a bad run early by watching its samples: the paper's Figure 9 shows Diffusion-DPO
drifting to over-saturated images over training while SDPO stays coherent, and its FLUX run at lr 1e-5
collapses.  With ``--validation_prompts`` the loop generates one image per prompt with the current
policy at step 0, every ``--validation_steps`` and at the end, through the evaluation sampler
(``sdpo.sampling.images`` and the family's sampler: same guidance formula, same seeded initial latent for
every prompt), and scores the images with ``--validation_metrics`` (the five reward models of
``sdpo.rewards``).  With the default sampler settings and fp32, the last validation's images are the
images ``eval/generate.py`` makes from the final weights.

Outputs (main process), in ``output_dir/validation/``:

* ``step-<step>.png``: a grid of the images, prompt order, rows of up to 8 tiles of at most 256 px;
* ``step-<step>.json``: prompts, sampler settings, grid layout and per-image scores.  Written last: a
  validation is complete when its JSON exists (a resumed run redoes an incomplete one);
* at the end, a log line with the command of an HTML report of every validation (``python -m eval.report
  RUN_DIR --out RUN_DIR/validation/report``: one column per step, each step's win rates against step 0);
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
(a CPU matmul rounds a row by the call's row count: ``sdpo.sampling.images``, "Batch invariance").
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

log = logging.getLogger("sdpo")
FOLDER = "validation"
REPORT_DIR = "report"  # where the end-of-run log line suggests the validation report (python -m eval.report RUN_DIR)
MAX_COLUMNS = 8
MAX_TILE = 256
PREFIX = "val/"


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


def drop_rows(jsonl, step: int, prefix: str = PREFIX) -> None:
    """Remove ``val/*`` (``prefix``) rows logged at ``step`` by a validation that did not finish (it is redone)."""
    from sdpo.training.metrics import read_jsonl

    if not (jsonl.enabled and jsonl.path.is_file()):
        return
    rows = read_jsonl(jsonl.path)
    keep = [r for r in rows if not (r["step"] == step and any(k.startswith(prefix) for k in r))]
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
        v, acc, family = run.cfg.validation, run.accelerator, run.family
        self.prompts = list(v.prompts)
        self.every, self.last = v.steps, run.cfg.optim.max_train_steps
        self.resolution, self.steps, self.guidance, self.seed = v.resolution, v.num_inference_steps, v.guidance, v.seed
        self.batch_size = v.batch_size
        self.folder = Path(run.cfg.output.output_dir) / FOLDER
        self.parts, self.own_parts = family, False
        if family.vae is None or not family.text_encoders:
            # Training from cached latents and text needs neither: load them for sampling, kept on the CPU.
            self.parts, self.own_parts = _load_sampling_parts(family), True
        self.scheduler = self.parts.sampling_scheduler()
        self.scorers = getattr(run, "scorers", None) or load_scorers(run.cfg, acc)  # setup loads them first
        if acc.is_main_process:
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
            if run.step == self.last and run.accelerator.is_main_process:  # eval/ builds it: the core never imports eval
                out = Path(run.cfg.output.output_dir)
                log.info("validation report: python -m eval.report %s --out %s", out, self.folder / REPORT_DIR)

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

        from sdpo.sampling.images import generate_images

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


def load_scorers(cfg, accelerator) -> dict:
    """The validation reward models (main process only; none elsewhere).  ``setup`` calls this before the trained
    model loads, so a missing reward root is refused in one line before the long part, naming
    ``--validation_model_root``; the global random state is put back (scorers draw initial weights)."""
    v = cfg.validation
    if not (v.enabled and v.metrics and accelerator.is_main_process):
        return {}
    from sdpo.rewards import RewardConfig, load_scorer
    from sdpo.rewards.sources import root_flag

    with untouched_rng(accelerator.device), root_flag("--validation_model_root"):
        rewards = RewardConfig.make(v.model_root)
        return {m: load_scorer(m, torch.device("cpu"), rewards) for m in v.metrics}


def make_validator(run) -> Validator | NoValidation:
    """The validator for ``run`` (loading draws random initial weights before the real ones: the global
    random state is put back, so the run's RNG stays the one it would have been without validation)."""
    if not run.cfg.validation.enabled:
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
