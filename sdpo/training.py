"""The accelerate training loop: set up, step, log, checkpoint, resume, save ``unet.pth``."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sdpo import checkpoint, data
from sdpo.forward import preference_forward
from sdpo.losses import get_objective
from sdpo.metrics import JsonlLog, StepAverager, micro_step_scalars
from sdpo.models import load_components
from sdpo.rank_trace import RankTrace

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
    transform = data.PairTransform(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    kw = dict(num_workers=cfg.dataloader_num_workers, collate_fn=data.collate, pin_memory=torch.cuda.is_available())
    if cfg.streaming:
        ds = data.StreamingPairs(hf, transform, rank, world, cfg.streaming_buffer_size, cfg.seed)
        return torch.utils.data.DataLoader(ds, batch_size=cfg.train_batch_size, **kw), ds, None
    sampler = data.ShardedPairSampler(len(hf), cfg.train_batch_size, rank, world, cfg.seed)
    return torch.utils.data.DataLoader(data.PairDataset(hf, transform), batch_sampler=sampler, **kw), None, sampler


def set_position(sampler, stream, epoch: int, skip: int, batch_size: int) -> None:
    """Point the data at micro-batch ``skip`` of ``epoch`` without loading the skipped samples."""
    if sampler is not None:
        sampler.set_epoch(epoch, skip)
    else:
        stream.set_position(epoch, skip * batch_size)


def train(cfg) -> Path:
    from diffusers.optimization import get_scheduler

    accelerator = make_accelerator(cfg)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    out_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    objective = get_objective(cfg.train_method)

    hf = data.drop_ties(data.load_pairs(cfg), cfg.max_train_samples, cfg.seed)  # before any model is loaded
    weight_dtype = _DTYPES.get(accelerator.mixed_precision, torch.float32)
    comps = load_components(cfg, accelerator.device, weight_dtype, needs_reference=objective.NEEDS_REFERENCE)
    optimizer = make_optimizer(cfg, [p for p in comps.unet.parameters() if p.requires_grad], accelerator.num_processes)
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=cfg.lr_warmup_steps,
        num_training_steps=cfg.max_train_steps or 10**9,
    )
    comps.unet, optimizer, lr_scheduler = accelerator.prepare(comps.unet, optimizer, lr_scheduler)
    loader, stream, sampler = make_loader(cfg, hf, accelerator)

    accum = cfg.gradient_accumulation_steps
    if cfg.max_train_steps is None:  # count optimizer steps from epochs
        cfg.max_train_steps = cfg.num_train_epochs * math.ceil(sampler.batches_per_epoch / accum)
    resume = checkpoint.find_resume_point(out_dir, cfg.resume_from_checkpoint)
    state = checkpoint.load(accelerator, resume) if resume else {"step": 0, "epoch": 0, "epoch_batches": 0}
    global_step, epoch, epoch_batches = state["step"], state["epoch"], state["epoch_batches"]
    if resume:
        log.info("resumed from %s at step %d", resume, global_step)
    if accelerator.is_main_process and cfg.report_to != "none":
        accelerator.init_trackers(cfg.tracker_project_name, config=_tracker_config(cfg))
    jsonl = JsonlLog(out_dir, resume_step=global_step, enabled=accelerator.is_main_process)
    log.info(
        "%d pairs, %d process(es) x batch %d x accumulation %d = global batch %d; %d optimizer steps",
        len(hf) if sampler else -1,
        accelerator.num_processes,
        cfg.train_batch_size,
        accum,
        accelerator.num_processes * cfg.train_batch_size * accum,
        cfg.max_train_steps,
    )

    averager, trace = StepAverager(), RankTrace(accelerator)
    bar = tqdm(
        total=cfg.max_train_steps, initial=global_step, desc="steps", disable=not accelerator.is_local_main_process
    )
    while global_step < cfg.max_train_steps:
        set_position(sampler, stream, epoch, epoch_batches, cfg.train_batch_size)
        for batch in loader:
            with accelerator.accumulate(comps.unet), accelerator.autocast():
                terms = preference_forward(batch, comps, cfg, objective, accelerator.device)
                out = objective.loss(terms, cfg)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(comps.unet.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            epoch_batches += 1
            trace.batch(global_step + 1, batch)
            averager.add(accelerator, micro_step_scalars(terms, out))
            if not accelerator.sync_gradients:
                continue
            lr_scheduler.step()
            global_step += 1
            logs = {**averager.pop(), "lr": lr_scheduler.get_last_lr()[0]}
            accelerator.log(logs, step=global_step)
            jsonl.write(global_step, logs)
            bar.update(1)
            bar.set_postfix({k: f"{logs[k]:.4g}" for k in ("train_loss", "avg_lose_l_scale") if k in logs})
            if global_step % cfg.checkpointing_steps == 0 or global_step == cfg.max_train_steps:
                checkpoint.save(
                    accelerator,
                    comps.unet,
                    out_dir,
                    global_step,
                    {"epoch": epoch, "epoch_batches": epoch_batches},
                    cfg.checkpoints_total_limit,
                )
            if global_step >= cfg.max_train_steps:
                break
        else:
            epoch, epoch_batches = epoch + 1, 0
    bar.close()
    trace.weights(accelerator, comps.unet)
    checkpoint.save_final(accelerator, comps.unet, out_dir)
    accelerator.end_training()
    log.info("done: %s", out_dir / "unet.pth")
    return out_dir / "unet.pth"


def _tracker_config(cfg) -> dict:
    return {k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool))}
