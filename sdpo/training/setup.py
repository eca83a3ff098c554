"""Everything the loop needs, made once: the accelerator, the data, the family's models, the optimizer and
schedule, the checkpoint format, and the position a resumed run continues from (``Run``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from sdpo.atomic import write_json
from sdpo.cache import reference as reference_cache
from sdpo.cache import store as cache
from sdpo.cache.reference import ReferenceLossLoader
from sdpo.checkpoint import elastic
from sdpo.checkpoint import store as checkpoint
from sdpo.checkpoint.identity import check_same_run, optimizer_settings, reapply_optimizer_settings, run_identity
from sdpo.checkpoint.sharded import ShardedState
from sdpo.config import RunConfig
from sdpo.config.resolve import unreachable_model
from sdpo.data import holdout
from sdpo.data import kto as kto_data
from sdpo.data import pairs as data
from sdpo.distributed import sharding
from sdpo.distributed.topology import check_launch
from sdpo.errors import UserError
from sdpo.families import load_family
from sdpo.lora import adapters as lora
from sdpo.losses import get_objective
from sdpo.training import heldout
from sdpo.training.metrics import JsonlLog
from sdpo.training.preemption import ignore_in_worker
from sdpo.training.validation import load_scorers

log = logging.getLogger("sdpo")
RUN_CONFIG = "run_config.json"  # every setting of the run by flag name, in its output folder
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def make_accelerator(cfg: RunConfig):
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration

    out, opt = Path(cfg.output.output_dir), cfg.optim
    accelerator = Accelerator(
        # A plugin, not gradient_accumulation_steps=: accelerate lets ACCELERATE_GRADIENT_ACCUMULATION_STEPS
        # (set by `accelerate launch` from a DeepSpeed config) silently override the latter, which would
        # change the global batch the launch scripts computed.  --gradient_accumulation_steps is the truth.
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=opt.gradient_accumulation_steps),
        mixed_precision=opt.mixed_precision,
        log_with=None if cfg.output.report_to == "none" else cfg.output.report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / cfg.output.logging_dir)),
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step, warmup in optimizer steps
    )
    if accelerator.state.deepspeed_plugin is not None:
        # DeepSpeed reads these from its own config: the micro batch because our dataloader is not
        # prepared (nothing to infer it from); accumulation because a different value there would win
        # over ours with only a warning; clipping because DeepSpeed clips inside its step and
        # accelerator.clip_grad_norm_ is a no-op under it (0 disables clipping in both).
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = opt.train_batch_size
        ds_config["gradient_accumulation_steps"] = opt.gradient_accumulation_steps
        ds_config["gradient_clipping"] = opt.max_grad_norm
    return accelerator


def set_accumulation(accelerator, steps: int) -> None:
    accelerator.gradient_accumulation_steps = steps
    if accelerator.state.deepspeed_plugin is not None:
        accelerator.state.deepspeed_plugin.deepspeed_config["gradient_accumulation_steps"] = steps


def make_optimizer(opt, params, num_processes: int):
    """AdamW, or Adafactor as the reference SDXL script (``opt``: the run's ``optim`` section)."""
    lr = opt.learning_rate
    if opt.scale_lr:
        lr *= opt.gradient_accumulation_steps * opt.train_batch_size * num_processes
    if opt.use_adafactor:
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, weight_decay=opt.adam_weight_decay, clip_threshold=1.0, scale_parameter=False,
                         relative_step=False, warmup_init=False)  # fmt: skip
    return torch.optim.AdamW(
        params, lr=lr, betas=(opt.adam_beta1, opt.adam_beta2), weight_decay=opt.adam_weight_decay, eps=opt.adam_epsilon
    )


def make_loader(cfg: RunConfig, hf, accelerator, rows: list[int] | None = None):
    """Map-style data: a sharded sampler of ``(epoch, index)`` keys over ``rows`` (None: every row).  Streaming:
    a per-rank stream."""
    d, batch = cfg.data, cfg.optim.train_batch_size
    transform, dataset, collate = data.PairTransform(d), data.PairDataset, data.collate
    if kto_data.wanted(d):  # kto: single labelled images (sdpo.data.kto)
        transform, dataset, collate = kto_data.loader_parts(d)
        if rows is not None and d.kto_label_column:  # a sample draws its image: hold rows out of the pools
            hf, rows = hf.select(rows), None
    rank, world = accelerator.process_index, accelerator.num_processes
    collate_fn = cache.collate if d.precomputed else collate
    kw = dict(num_workers=d.dataloader_num_workers, collate_fn=collate_fn, pin_memory=torch.cuda.is_available(),
              worker_init_fn=partial(ignore_in_worker, cfg.output.stop_signals) if d.dataloader_num_workers else None)  # fmt: skip
    if d.streaming:
        ds = data.StreamingPairs(hf, transform, rank, world, d.streaming_buffer_size, d.seed, d.max_bad_fraction)
        return torch.utils.data.DataLoader(ds, batch_size=batch, **kw), ds, None
    sampler = data.ShardedPairSampler(len(hf) if rows is None else len(rows), batch, rank, world, d.seed, rows)
    pairs = cache.CachedPairs(hf, transform) if d.precomputed else dataset(hf, transform)
    batches = cache.CheckedBatches(sampler, pairs) if d.precomputed else sampler  # cache files hashed on first use
    return torch.utils.data.DataLoader(pairs, batch_sampler=batches, **kw), None, sampler


def total_steps(opt, num_samples: int | None, num_processes: int) -> int:
    """``--max_train_steps``, or the optimizer steps in ``--num_train_epochs`` passes over the data: every
    micro-batch of those epochs, in whole accumulation windows (a window may span an epoch's end, as training
    continues there; a last partial window is not started); both given: they must agree."""
    if opt.num_train_epochs is None:  # (a stream: resolve refuses epochs)
        return opt.max_train_steps
    per_epoch = num_samples // (opt.train_batch_size * num_processes)  # as data.ShardedPairSampler lays them out
    batches = opt.num_train_epochs * per_epoch
    steps = batches // opt.gradient_accumulation_steps
    if steps < 1:
        raise UserError(f"--num_train_epochs {opt.num_train_epochs} is {batches} micro-batches here, fewer than one "
                        f"accumulation window of {opt.gradient_accumulation_steps}; raise it or lower the accumulation")  # fmt: skip
    if opt.max_train_steps is not None and opt.max_train_steps != steps:
        raise UserError(
            f"--num_train_epochs {opt.num_train_epochs} is {steps} optimizer steps here ({per_epoch} "
            f"micro-batches per epoch, accumulation {opt.gradient_accumulation_steps}), but --max_train_steps is "
            f"{opt.max_train_steps}; give one of them"
        )
    return steps


def precomputed_reference(cfg: RunConfig, cache_index, objective, accelerator, saved: dict):
    """The cache's reference losses for this run (``sdpo.cache.reference``), or None: checked against the
    positions the run will read from its start (or resume) point to its last step."""
    b, n, a = cfg.optim.train_batch_size, accelerator.num_processes, cfg.optim.gradient_accumulation_steps
    step, epoch = saved.get("step", 0), saved.get("epoch", 0)
    start = elastic.saved_epoch_samples(saved, b, n) if saved else 0
    needed = reference_cache.positions_needed(len(cache_index), b, n, (cfg.optim.max_train_steps - step) * a, epoch,
                                              start)  # fmt: skip
    losses = reference_cache.open_reference_losses(cfg, cache_index.index, objective, accelerator.mixed_precision,
                                                   needed, b, start)  # fmt: skip
    if losses is not None and accelerator.state.deepspeed_plugin is not None:
        log.warning("DeepSpeed casts the trained denoiser, so the step would feed the reference inputs in that dtype; "
                    "the precomputed reference losses were computed from fp32 inputs and differ by that rounding")  # fmt: skip
    return losses


@dataclass
class Run:
    """Everything the loop touches, and the position it has reached."""

    cfg: RunConfig
    accelerator: object
    family: object
    objective: object
    optimizer: object
    lr_scheduler: object
    loader: object
    sampler: object
    stream: object
    jsonl: JsonlLog
    weights: object  # which files hold the model: FullWeights, lora.AdapterWeights or ShardedState (sdpo.checkpoint)
    params: list  # the trained parameters (LoRA: the adapters only)
    shards: sharding.Sharding | None = None  # --sharding fsdp|hsdp: the device mesh
    heldout: object = None  # --heldout_pairs: the held-out rows (sdpo.data.holdout.HeldOutData)
    identity: dict = field(default_factory=dict)  # what defines the run, in every checkpoint (sdpo.checkpoint.identity)
    scorers: dict = field(default_factory=dict)  # validation's reward models (main process), loaded first
    step: int = 0
    epoch: int = 0
    epoch_samples: int = 0  # samples of this epoch consumed by all processes together
    nonfinite_total: int = 0
    nonfinite_run: int = 0


def prepare(cfg: RunConfig, accelerator, family, optimizer, lr_scheduler, shards):
    """Hand the trained parts to accelerate and pick what the run's checkpoints hold (``sdpo.checkpoint``):
    the whole denoiser, the LoRA adapters only, or DCP shards (a sharded denoiser is not wrapped again)."""
    if shards is None:
        family.denoiser, optimizer, lr_scheduler = accelerator.prepare(family.denoiser, optimizer, lr_scheduler)
        weights = (
            lora.AdapterWeights(family, cfg.model)
            if lora.enabled(cfg.model)
            else checkpoint.FullWeights(family.denoiser_folder)
        )
    else:
        optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)
        weights = ShardedState(family.denoiser, optimizer, lr_scheduler, family.denoiser_folder)
    weights.install(accelerator)
    return optimizer, lr_scheduler, weights


def setup(cfg: RunConfig) -> Run:
    from diffusers.optimization import get_scheduler

    accelerator = make_accelerator(cfg)
    check_launch(accelerator)  # launcher vs accelerate: before anything is read or written
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("accelerate.checkpointing").setLevel(logging.WARNING)  # one line per checkpoint: ours
    out_dir = Path(cfg.output.output_dir)
    if accelerator.is_main_process:
        checkpoint.remove_leftovers(out_dir)  # .partial folders and temporary files of a killed run
    if cfg.optim.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    objective = get_objective(cfg.objective.train_method)
    sharding.check_accelerator(cfg.dist, accelerator)
    if missing := unreachable_model(cfg.model.pretrained_model_name_or_path, cfg.model.revision):
        raise UserError(missing)  # (--model_family given: the config could not ask the folder)
    resume, notes = checkpoint.resume_point(out_dir, cfg.output.resume_from_checkpoint,
                                            checkpoint.shared_verify(accelerator))  # fmt: skip
    for note in notes:
        log.warning(note)
    saved = checkpoint.read_state(resume) if resume else {}
    if resume:  # an elastic resume keeps the saved global batch: the accumulation follows the process count
        accumulation, change = elastic.adopt(cfg.optim, cfg.dist.sharding, cfg.data.streaming, saved,
                                             accelerator.num_processes, resume.name)  # fmt: skip
        cfg = replace(cfg, optim=replace(cfg.optim, gradient_accumulation_steps=accumulation))
        if change:
            log.info(change)
    set_accumulation(accelerator, cfg.optim.gradient_accumulation_steps)

    # Data problems surface before any model is loaded.  kto: pairs or labelled images (sdpo.data.kto).
    if cfg.data.precomputed:  # the cache stands in for the data: no image decoded, no VAE or text encoder loaded
        hf = cache.open_cache(cfg, accelerator.mixed_precision)
    else:
        hf = (
            kto_data.load(cfg.data)
            if kto_data.wanted(cfg.data)
            else data.clean_pairs(data.load_pairs(cfg.data), cfg.data)
        )
    held = heldout.prepare_data(cfg, hf, accelerator, resume is not None)  # --heldout_pairs; split:N held back
    rows = holdout.training_rows(held)
    n_train = None if cfg.data.streaming else len(hf) if rows is None else len(rows)
    steps = total_steps(cfg.optim, n_train, accelerator.num_processes)
    cfg = replace(cfg, optim=replace(cfg.optim, max_train_steps=steps))  # before anything is written
    ref_losses = precomputed_reference(cfg, hf, objective, accelerator, saved) if cfg.data.precomputed else None
    if ref_losses is not None and rows is not None:  # the set was computed on the epochs of every pair
        raise UserError(f"--heldout_pairs {cfg.heldout.heldout_pairs}: a split of the training data changes the run's "
                        "batches, which the precomputed reference losses do not follow; pass "
                        "--no-precomputed_reference, or hold out a separate set (--heldout_pairs PATH)")  # fmt: skip
    identity = run_identity(cfg, None if cfg.data.streaming else len(hf))
    if resume:  # the same run, or a deliberate change (--allow_changed_flags): before any model loads
        for note in check_same_run(saved.get("run"), identity, frozenset(cfg.output.allow_changed_flags), resume.name):
            log.warning(note)
    scorers = load_scorers(cfg, accelerator)  # validation's reward models: a missing one is refused before the rest
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    weight_dtype = _DTYPES.get(accelerator.mixed_precision, torch.float32)
    sharded = cfg.dist.sharded
    needs_reference = objective.NEEDS_REFERENCE and ref_losses is None  # precomputed: the reference is never made
    family = load_family(cfg.model, accelerator.device, weight_dtype, needs_reference, shard_later=sharded)
    shards = sharding.Sharding(cfg.dist, accelerator) if sharded else None
    if shards is not None:
        shards.shard_family(family, weight_dtype)  # before the optimizer: it must see the sharded parameters
    params = [p for p in family.denoiser.parameters() if p.requires_grad]
    trained, total = lora.parameter_counts(family.denoiser)
    log.info("training %.2f M of the %s's %.2f M parameters%s", trained / 1e6, family.denoiser_folder, total / 1e6,
             f" (LoRA rank {cfg.model.lora_rank}; reference = adapters off)" if lora.enabled(cfg.model) else "")  # fmt: skip
    optimizer = make_optimizer(cfg.optim, params, accelerator.num_processes)
    loader, stream, sampler = make_loader(cfg, hf, accelerator, rows)
    if ref_losses is not None:
        loader = ReferenceLossLoader(loader, sampler, ref_losses)
    lr_scheduler = get_scheduler(cfg.optim.lr_scheduler, optimizer, num_warmup_steps=cfg.optim.lr_warmup_steps,
                                 num_training_steps=cfg.optim.max_train_steps)  # fmt: skip
    optimizer, lr_scheduler, weights = prepare(cfg, accelerator, family, optimizer, lr_scheduler, shards)

    fresh = optimizer_settings(optimizer)
    state = checkpoint.load(accelerator, resume, weights) if resume else {}
    if resume:
        log.info("resumed from %s at step %d", resume, state["step"])
        for note in reapply_optimizer_settings(optimizer, lr_scheduler, fresh):  # the flags given now apply
            log.warning("%s (flags given now apply)", note)
    if accelerator.is_main_process:  # once the models load: a refused run leaves no folder behind
        write_json(out_dir / RUN_CONFIG, cfg.flat())  # what this run is: sdpo.plot colours runs by it
    if accelerator.is_main_process and cfg.output.report_to != "none":
        accelerator.init_trackers(cfg.output.tracker_project_name, config=cfg.flat())
    jsonl = JsonlLog(out_dir, resume_step=state.get("step", 0), enabled=accelerator.is_main_process)
    n, b, a = accelerator.num_processes, cfg.optim.train_batch_size, cfg.optim.gradient_accumulation_steps
    unit = "images" if cfg.data.single_images else "pairs"
    log.info("%s %s; %d process(es) x batch %d x accumulation %d = global batch %d; %d optimizer steps",
             n_train if sampler else "streamed", unit, n, b, a, n * b * a, cfg.optim.max_train_steps)  # fmt: skip
    run = Run(cfg, accelerator, family, objective, optimizer, lr_scheduler, loader, sampler, stream, jsonl, weights,
              params, shards, heldout=held, identity=identity, scorers=scorers)  # fmt: skip
    for key in ("step", "epoch", "nonfinite_total"):
        setattr(run, key, state.get(key, 0))
    run.epoch_samples = elastic.saved_epoch_samples(state, b, n) if state else 0
    return run
