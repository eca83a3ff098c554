"""The accelerate training loop: set up, step, log, checkpoint, resume, save the weights.

The loop talks to the model only through its family (``sdpo.families``): ``run.family.denoiser`` is
the trained module, whatever the family."""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sdpo.cache import store as cache
from sdpo.checkpoint import elastic
from sdpo.checkpoint import store as checkpoint
from sdpo.checkpoint.sharded import ShardedState
from sdpo.data import kto as kto_data
from sdpo.data import pairs as data
from sdpo.distributed import sharding
from sdpo.distributed.rank_trace import RankTrace
from sdpo.distributed.topology import check_launch
from sdpo.errors import UserError
from sdpo.families import get_family
from sdpo.lora import adapters as lora
from sdpo.losses import get_objective
from sdpo.training.metrics import JsonlLog, StepAverager, micro_step_scalars
from sdpo.training.step import preference_forward
from sdpo.training.validation import make_validator

log = logging.getLogger("sdpo")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def make_accelerator(cfg):
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration

    out = Path(cfg.output_dir)
    accelerator = Accelerator(
        # A plugin, not gradient_accumulation_steps=: accelerate lets ACCELERATE_GRADIENT_ACCUMULATION_STEPS
        # (set by `accelerate launch` from a DeepSpeed config) silently override the latter, which would
        # change the global batch the launch scripts computed.  --gradient_accumulation_steps is the truth.
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=cfg.gradient_accumulation_steps),
        mixed_precision=cfg.mixed_precision,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / cfg.logging_dir)),
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step, warmup in optimizer steps
    )
    if accelerator.state.deepspeed_plugin is not None:
        # DeepSpeed reads these from its own config: the micro batch because our dataloader is not
        # prepared (nothing to infer it from); accumulation because a different value there would win
        # over ours with only a warning; clipping because DeepSpeed clips inside its step and
        # accelerator.clip_grad_norm_ is a no-op under it (0 disables clipping in both).
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = cfg.train_batch_size
        ds_config["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
        ds_config["gradient_clipping"] = cfg.max_grad_norm
    return accelerator


def set_accumulation(accelerator, steps: int) -> None:
    accelerator.gradient_accumulation_steps = steps
    if accelerator.state.deepspeed_plugin is not None:
        accelerator.state.deepspeed_plugin.deepspeed_config["gradient_accumulation_steps"] = steps


def make_optimizer(cfg, params, num_processes: int):
    lr = cfg.learning_rate
    if cfg.scale_lr:
        lr *= cfg.gradient_accumulation_steps * cfg.train_batch_size * num_processes
    if cfg.use_adafactor:
        from transformers.optimization import Adafactor

        return Adafactor(
            params,
            lr=lr,
            weight_decay=cfg.adam_weight_decay,
            clip_threshold=1.0,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
        )
    return torch.optim.AdamW(
        params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon
    )


def make_loader(cfg, hf, accelerator):
    """Map-style data: a sharded sampler of ``(epoch, index)`` keys.  Streaming: a per-rank stream."""
    transform, dataset, collate = data.PairTransform(cfg), data.PairDataset, data.collate
    if kto_data.wanted(cfg):  # kto: single labelled images (sdpo.data.kto)
        transform, dataset, collate = kto_data.loader_parts(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    collate_fn = cache.collate if cfg.precomputed else collate
    kw = dict(num_workers=cfg.dataloader_num_workers, collate_fn=collate_fn, pin_memory=torch.cuda.is_available())
    if cfg.streaming:
        ds = data.StreamingPairs(hf, transform, rank, world, cfg.streaming_buffer_size, cfg.seed, cfg.max_bad_fraction)
        return torch.utils.data.DataLoader(ds, batch_size=cfg.train_batch_size, **kw), ds, None
    sampler = data.ShardedPairSampler(len(hf), cfg.train_batch_size, rank, world, cfg.seed)
    pairs = cache.CachedPairs(hf, transform) if cfg.precomputed else dataset(hf, transform)
    return torch.utils.data.DataLoader(pairs, batch_sampler=sampler, **kw), None, sampler


def set_position(sampler, stream, epoch: int, start_sample: int, num_processes: int) -> None:
    """Point the data at sample ``start_sample`` of ``epoch`` (counted over all processes) without loading
    the skipped samples."""
    if sampler is not None:
        sampler.set_epoch(epoch, start_sample=start_sample)
    else:
        stream.set_position(epoch, start_sample // num_processes)  # rows of this process's split


@dataclass
class Run:
    """Everything the loop touches, and the position it has reached."""

    cfg: argparse.Namespace
    accelerator: object
    family: object
    objective: object
    optimizer: object
    lr_scheduler: object
    loader: object
    sampler: object
    stream: object
    jsonl: JsonlLog
    weights: (
        object  # which files hold the model: FullWeights, lora.AdapterWeights or ShardedState (sdpo.checkpoint.store)
    )
    params: list  # the trained parameters (LoRA: the adapters only)
    shards: sharding.Sharding | None = None  # --sharding fsdp|hsdp: the device mesh
    step: int = 0
    epoch: int = 0
    epoch_samples: int = 0  # samples of this epoch consumed by all processes together
    nonfinite_total: int = 0
    nonfinite_run: int = 0


def prepare(cfg, accelerator, family, optimizer, lr_scheduler, shards):
    """Hand the trained parts to accelerate and pick what the run's checkpoints hold (``sdpo.checkpoint.store``):
    the whole denoiser, the LoRA adapters only, or DCP shards (a sharded denoiser is not wrapped again)."""
    if shards is None:
        family.denoiser, optimizer, lr_scheduler = accelerator.prepare(family.denoiser, optimizer, lr_scheduler)
        weights = (
            lora.AdapterWeights(family, cfg) if lora.enabled(cfg) else checkpoint.FullWeights(family.denoiser_folder)
        )
    else:
        optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)
        weights = ShardedState(family.denoiser, optimizer, lr_scheduler, family.denoiser_folder)
    weights.install(accelerator)
    return optimizer, lr_scheduler, weights


def setup(cfg) -> Run:
    from diffusers.optimization import get_scheduler

    accelerator = make_accelerator(cfg)
    check_launch(accelerator)  # launcher vs accelerate: before anything is read or written
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    out_dir = Path(cfg.output_dir)
    if cfg.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    objective = get_objective(cfg.train_method)
    sharding.check_accelerator(cfg, accelerator)
    resume = checkpoint.find_resume_point(out_dir, cfg.resume_from_checkpoint)
    saved = checkpoint.read_state(resume) if resume else {}
    change = elastic.adopt(cfg, saved, accelerator.num_processes, resume.name) if resume else None
    set_accumulation(accelerator, cfg.gradient_accumulation_steps)  # an elastic resume may have changed it
    if change:
        log.info(change)

    # Data problems surface before any model is loaded.  kto: pairs or labelled images (sdpo.data.kto).
    if cfg.precomputed:  # the cache stands in for the data: no image decoded, no VAE or text encoder loaded
        hf = cache.open_cache(cfg, accelerator.mixed_precision)
    else:
        hf = kto_data.load(cfg) if kto_data.wanted(cfg) else data.clean_pairs(data.load_pairs(cfg), cfg)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    weight_dtype = _DTYPES.get(accelerator.mixed_precision, torch.float32)
    sharded = sharding.is_sharded(cfg)
    family = get_family(cfg.model_family).load(cfg, accelerator.device, weight_dtype, objective.NEEDS_REFERENCE,
                                               shard_later=sharded)  # fmt: skip
    shards = sharding.Sharding(cfg, accelerator) if sharded else None
    if shards is not None:
        shards.shard_family(family, weight_dtype)  # before the optimizer: it must see the sharded parameters
    params = [p for p in family.denoiser.parameters() if p.requires_grad]
    trained, total = lora.parameter_counts(family.denoiser)
    log.info("training %.2f M of the %s's %.2f M parameters%s", trained / 1e6, family.denoiser_folder, total / 1e6,
             f" (LoRA rank {cfg.lora_rank}; reference = adapters off)" if lora.enabled(cfg) else "")  # fmt: skip
    optimizer = make_optimizer(cfg, params, accelerator.num_processes)
    loader, stream, sampler = make_loader(cfg, hf, accelerator)
    if cfg.max_train_steps is None:  # count optimizer steps from epochs
        cfg.max_train_steps = cfg.num_train_epochs * math.ceil(
            sampler.batches_per_epoch / cfg.gradient_accumulation_steps
        )
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=cfg.max_train_steps)  # fmt: skip
    optimizer, lr_scheduler, weights = prepare(cfg, accelerator, family, optimizer, lr_scheduler, shards)

    state = checkpoint.load(accelerator, resume, weights) if resume else {}
    if resume:
        log.info("resumed from %s at step %d", resume, state["step"])
    if accelerator.is_main_process and cfg.report_to != "none":
        accelerator.init_trackers(cfg.tracker_project_name, config=_tracker_config(cfg))
    jsonl = JsonlLog(out_dir, resume_step=state.get("step", 0), enabled=accelerator.is_main_process)
    n, b, a = accelerator.num_processes, cfg.train_batch_size, cfg.gradient_accumulation_steps
    log.info("%s pairs; %d process(es) x batch %d x accumulation %d = global batch %d; %d optimizer steps",
             len(hf) if sampler else "streamed", n, b, a, n * b * a, cfg.max_train_steps)  # fmt: skip
    run = Run(cfg, accelerator, family, objective, optimizer, lr_scheduler, loader, sampler, stream, jsonl, weights,
              params, shards)  # fmt: skip
    for key in ("step", "epoch", "nonfinite_total"):
        setattr(run, key, state.get(key, 0))
    run.epoch_samples = elastic.saved_epoch_samples(state, cfg, n) if state else 0
    return run


def train(cfg) -> Path:
    """Run (or resume) training; returns the path of the final weights (``unet.pth``, ``transformer.pth``;
    LoRA: ``pytorch_lora_weights.safetensors``)."""
    run = setup(cfg)
    averager, window_ok, trace = StepAverager(), True, RankTrace(run.accelerator)
    validator = make_validator(run)  # images and rewards at step 0, every N steps and at the end (if asked)
    validator.start(run)
    bar = tqdm(total=cfg.max_train_steps, initial=run.step, desc="steps",
               disable=not run.accelerator.is_local_main_process)  # fmt: skip
    while run.step < cfg.max_train_steps:
        set_position(run.sampler, run.stream, run.epoch, run.epoch_samples, run.accelerator.num_processes)
        for batch in run.loader:
            scalars, finite = micro_step(run, batch)
            run.epoch_samples += cfg.train_batch_size * run.accelerator.num_processes
            trace.batch(run.step + 1, batch)
            window_ok &= finite
            averager.add(run.accelerator, scalars)
            if run.accelerator.sync_gradients:
                finish_step(run, window_ok, averager.pop())
                window_ok = True
                bar.update(1)
                validator.after_step(run)
                if run.step >= cfg.max_train_steps:
                    break
        else:
            run.epoch, run.epoch_samples = run.epoch + 1, 0
    bar.close()
    trace.weights(run.accelerator, run.family.denoiser)
    path = run.weights.save_final(run.accelerator, run.family.denoiser, cfg.output_dir)
    run.accelerator.end_training()
    if run.shards is not None:
        run.shards.close()
    log.info("done: %s", path)
    return path


def micro_step(run: Run, batch: dict) -> tuple[dict, bool]:
    """Forward and backward of one micro-batch.  A non-finite loss on any process skips the backward
    on every process (so DDP stays in step) and marks the optimizer step as skipped."""
    acc = run.accelerator
    with acc.accumulate(run.family.denoiser), acc.autocast():
        terms = preference_forward(batch, run.family, run.cfg, run.objective, acc.device)
        out = run.objective.loss(terms, run.cfg)
        finite = torch.isfinite(out.loss.detach()).float()
        if acc.num_processes > 1:
            finite = acc.reduce(finite, reduction="sum") / acc.num_processes
        ok = bool(finite.item() == 1.0)
        if ok:
            acc.backward(out.loss)
    return micro_step_scalars(terms, out), ok


def finish_step(run: Run, ok: bool, logs: dict) -> None:
    """Optimizer step (or its skip), logging and checkpointing at an accumulation boundary."""
    cfg, acc = run.cfg, run.accelerator
    if ok:
        if cfg.max_grad_norm > 0:
            clip = sharding.clip_grad_norm_ if run.shards is not None else acc.clip_grad_norm_
            clip(run.params, cfg.max_grad_norm)
        run.optimizer.step()
        run.lr_scheduler.step()
        run.nonfinite_run = 0
    else:
        run.nonfinite_total += 1
        run.nonfinite_run += 1
        log.warning("step %d: non-finite loss, optimizer step skipped (%d in a row)", run.step + 1, run.nonfinite_run)
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    logs.update(lr=run.lr_scheduler.get_last_lr()[0], nonfinite_steps=run.nonfinite_total)
    acc.log(logs, step=run.step)
    run.jsonl.write(run.step, logs)
    stop = run.nonfinite_run >= cfg.max_nonfinite_steps
    if stop or run.step % cfg.checkpointing_steps == 0 or run.step == cfg.max_train_steps:
        state = {**elastic.position_state(run.epoch, run.epoch_samples, cfg, acc.num_processes),
                 "nonfinite_total": run.nonfinite_total}  # fmt: skip
        path = checkpoint.save(acc, run.family.denoiser, cfg.output_dir, run.step, state, cfg.checkpoints_total_limit,
                               weights=run.weights)  # fmt: skip
        if stop:
            raise UserError(
                f"{run.nonfinite_run} consecutive optimizer steps had a non-finite loss (up to step {run.step}); "
                f"the last good weights are in {path}; lower --learning_rate / --beta_dpo or check the data"
            )


def _tracker_config(cfg) -> dict:
    return {k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool))}
