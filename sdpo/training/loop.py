"""The training loop: step, log, checkpoint, save the weights (everything it needs is made by ``setup``).

The loop talks to the model only through its family (``sdpo.families``): ``run.family.denoiser`` is the
trained module, whatever the family; one micro-batch's forward passes are ``sdpo.training.step``."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sdpo.checkpoint import elastic
from sdpo.checkpoint import store as checkpoint
from sdpo.config import RunConfig
from sdpo.distributed import sharding
from sdpo.distributed.rank_trace import RankTrace
from sdpo.errors import UserError
from sdpo.training.metrics import StepAverager, micro_step_scalars
from sdpo.training.setup import Run, setup
from sdpo.training.step import preference_forward
from sdpo.training.validation import make_validator

log = logging.getLogger("sdpo")


def set_position(sampler, stream, epoch: int, start_sample: int, num_processes: int) -> None:
    """Point the data at sample ``start_sample`` of ``epoch`` (counted over all processes) without loading
    the skipped samples."""
    if sampler is not None:
        sampler.set_epoch(epoch, start_sample=start_sample)
    else:
        stream.set_position(epoch, start_sample // num_processes)  # rows of this process's split


def train(cfg: RunConfig, keep_process_group: bool = False) -> Path:
    """Run (or resume) training; returns the path of the final weights (``unet.pth``, ``transformer.pth``;
    LoRA: ``pytorch_lora_weights.safetensors``).  ``keep_process_group``: a caller that trains in-process and
    goes on working with the same launched processes (``sdpo.online``'s rounds) keeps the process group, which
    accelerate's ``end_training`` would destroy."""
    run = setup(cfg)
    steps, acc = run.cfg.optim.max_train_steps, run.accelerator
    averager, window_ok, trace = StepAverager(), True, RankTrace(acc)
    validator = make_validator(run)  # images and rewards at step 0, every N steps and at the end (if asked)
    validator.start(run)
    bar = tqdm(total=steps, initial=run.step, desc="steps", disable=not acc.is_local_main_process)
    while run.step < steps:
        set_position(run.sampler, run.stream, run.epoch, run.epoch_samples, acc.num_processes)
        for batch in run.loader:
            scalars, finite = micro_step(run, batch)
            run.epoch_samples += run.cfg.optim.train_batch_size * acc.num_processes
            trace.batch(run.step + 1, batch)
            window_ok &= finite
            averager.add(acc, scalars)
            if acc.sync_gradients:
                finish_step(run, window_ok, averager.pop())
                window_ok = True
                bar.update(1)
                validator.after_step(run)
                if run.step >= steps:
                    break
        else:
            run.epoch, run.epoch_samples = run.epoch + 1, 0  # an accumulation window may run on into it
    bar.close()
    trace.weights(acc, run.family.denoiser)
    path = run.weights.save_final(acc, run.family.denoiser, run.cfg.output.output_dir)
    if keep_process_group:
        for tracker in acc.trackers:
            tracker.finish()
    else:
        acc.end_training()
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
        out = run.objective.loss(terms, run.cfg.objective.params)
        finite = torch.isfinite(out.loss.detach()).float()
        if acc.num_processes > 1:
            finite = acc.reduce(finite, reduction="sum") / acc.num_processes
        ok = bool(finite.item() == 1.0)
        if ok:
            acc.backward(out.loss)
    return micro_step_scalars(terms, out), ok


def finish_step(run: Run, ok: bool, logs: dict) -> None:
    """Optimizer step (or its skip), logging and checkpointing at an accumulation boundary."""
    opt, out, acc = run.cfg.optim, run.cfg.output, run.accelerator
    if ok:
        if opt.max_grad_norm > 0:
            clip = sharding.clip_grad_norm_ if run.shards is not None else acc.clip_grad_norm_
            clip(run.params, opt.max_grad_norm)
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
    stop = run.nonfinite_run >= opt.max_nonfinite_steps
    if stop or run.step % out.checkpointing_steps == 0 or run.step == opt.max_train_steps:
        state = {**elastic.position_state(run.epoch, run.epoch_samples, opt, run.cfg.dist.sharding, acc.num_processes),
                 "nonfinite_total": run.nonfinite_total}  # fmt: skip
        path = checkpoint.save(acc, run.family.denoiser, out.output_dir, run.step, state, out.checkpoints_total_limit,
                               weights=run.weights)  # fmt: skip
        if stop:
            raise UserError(
                f"{run.nonfinite_run} consecutive optimizer steps had a non-finite loss (up to step {run.step}); "
                f"the last good weights are in {path}; lower --learning_rate / --beta_dpo or check the data"
            )
