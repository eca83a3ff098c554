"""Per-GPU memory of the full fine-tunes under DDP, ZeRO-2, FSDP and HSDP (and of a LoRA run), from the real
model configs.

No GPU and no download: the denoisers, text encoders and VAEs are built from their published
configs on the meta device, so parameter counts and tensor shapes are exact.  Per GPU, in GB (1e9):

* weights and gradients: DDP keeps fp32 weights and gradients whole (plus DDP's fp32 gradient
  buckets); ZeRO-2 keeps bf16 weights whole and partitions fp32 master weights and gradients;
  FSDP/HSDP keep fp32 shards of both (``--sharding``; rank 0 holds the largest shard: FSDP2 cuts
  every tensor along dim 0 into ``ceil(rows / N)``-row pieces).
* optimizer: AdamW's two fp32 moments; Adafactor (the SDXL reference optimizer) keeps one factored
  second moment per tensor, which ZeRO's flat partitions cannot factor, and which transformers'
  Adafactor cannot compute on sharded parameters at all (``train.py`` refuses it under ``--sharding``).
* reference: the frozen copy of the denoiser in bf16, whole (DDP, ZeRO-2) or sharded like the policy.
* LoRA (``--lora_rank 16`` on the ``attn`` preset, DDP): the frozen base in bf16 is the policy's weights and
  the reference at once; the adapters keep fp32 weights, gradients, DDP buckets and AdamW moments.
* gathered: FSDP's transient full-size tensors: two bf16 units (the running block and the prefetched
  one) plus one unit's fp32 gradient before its reduce-scatter; the largest unit counts.
* encoders: text encoders and VAE in bf16, whole on every GPU (a latent/text cache removes them).
* activations: what autograd saves for backward, measured by running the real modules on the meta
  device at 1024 px with one preference pair per GPU (winner and loser rows) in bf16, attention
  counted as a flash kernel saves it (q, k, v, output, log-sum-exp); with per-block activation
  checkpointing, the block inputs plus twice the largest block's saved tensors (its recomputation
  and the gradients flowing through it).  Activations grow linearly with pairs per GPU.  Text is 512 tokens for
  FLUX.1, Qwen-Image, FLUX.2 and Z-Image (their pipelines' default length; the training conditioning is padded
  to it), 333 for SD3 (77 CLIP + 256 T5), 77 for SDXL.
* with a latent/text cache (``--precomputed``): the same totals without the encoders, one line per model.

Not counted: the CUDA context and allocator fragmentation (keep ~10% free), communication buffers
beyond the gathered units, and the reference's no-grad forward (one block's transient activations).
``--cross-check`` shards a scaled-down FLUX with the same code as ``train.py`` on a simulated
8- and 16-process mesh (torch's fake process group) and compares the shard and AdamW-state bytes
of rank 0 with the arithmetic used below.

    python bench/memory_plan.py [--gpu_gb 80] [--pairs 1 2 4] [--cross-check]
    python bench/memory_plan.py --quick        # the same tables for the --quick stand-in configs: seconds
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import model_configs as mc  # noqa: E402
from bench.model_configs import FLUX_DEV  # noqa: E402
from bench.quick import parse  # noqa: E402

GB = 1e9

VAE_16 = dict(mc.SD_VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)  # FLUX, SD3
VAE_4 = dict(mc.SD_VAE, latent_channels=4)  # SDXL


@dataclass
class Model:
    name: str
    family: str
    config: dict
    frozen: list[tuple[str, str, dict]]
    shapes: list[torch.Size] = field(default_factory=list)
    units: list[int] = field(default_factory=list)  # parameters per FSDP unit (blocks, then the root's rest)
    frozen_params: int = 0
    lora_params: int = 0  # adapter parameters at LORA_RANK on the family's default (attn) preset
    act_inputs: float = 0.0  # bytes saved at block boundaries (what activation checkpointing keeps)
    act_block_max: float = 0.0  # bytes one block saves for backward (the largest)
    act_all: float = 0.0  # bytes every block and the rest save without checkpointing
    act_outside: float = 0.0  # bytes saved outside the blocks (embeddings, final layers)

    @property
    def params(self) -> int:
        return sum(s.numel() for s in self.shapes)


def models(quick: bool = False) -> list[Model]:
    """FLUX.1-dev, SD3.5-large, SDXL, Qwen-Image, FLUX.2 [dev] and [klein] base 4B/9B and Z-Image from their published
    configs (``bench/model_configs.py``), or from ``--quick``'s stand-ins."""
    if quick:
        flux, sd3, sdxl = mc.FLUX_DEV_QUICK, mc.SD35_LARGE_QUICK, mc.SDXL_UNET_QUICK
        t5, clip_l, clip_g = mc.T5_XXL_QUICK, mc.CLIP_L_QUICK, mc.CLIP_G_QUICK
        vae_16, vae_4 = (dict(v, **mc.SD_VAE_QUICK) for v in (VAE_16, VAE_4))
        qwen, flux2, klein4, klein9, zimage = (mc.QWEN_IMAGE_QUICK, mc.FLUX2_DEV_QUICK, mc.FLUX2_KLEIN_4B_QUICK,
                                               mc.FLUX2_KLEIN_4B_QUICK, mc.Z_IMAGE_QUICK)  # fmt: skip
        qwen_vl, mistral, qwen3_4b, qwen3_8b = mc.QWEN25_VL_QUICK, mc.MISTRAL_QUICK, mc.QWEN3_QUICK, mc.QWEN3_QUICK
        qwen_vae, flux2_vae = mc.QWEN_VAE_QUICK, mc.FLUX2_VAE_QUICK
        tag = " (--quick stand-in)"
    else:
        flux, sd3, sdxl = mc.FLUX_DEV, mc.SD35_LARGE, mc.SDXL_UNET
        t5, clip_l, clip_g, vae_16, vae_4, tag = mc.T5_XXL, mc.CLIP_L, mc.CLIP_G, VAE_16, VAE_4, ""
        qwen, flux2, klein4, klein9 = mc.QWEN_IMAGE, mc.FLUX2_DEV, mc.FLUX2_KLEIN_4B, mc.FLUX2_KLEIN_9B
        zimage = mc.Z_IMAGE
        qwen_vl, mistral, qwen3_4b, qwen3_8b = mc.QWEN25_VL_7B, mc.MISTRAL_SMALL_31, mc.QWEN3_4B, mc.QWEN3_8B
        qwen_vae, flux2_vae = mc.QWEN_VAE, mc.FLUX2_VAE
    return [
        Model("FLUX.1-dev" + tag, "flux", flux, [("T5-XXL", "t5", t5), ("CLIP-L", "clip", clip_l), ("VAE", "vae", vae_16)]),
        Model("SD3.5-large" + tag, "sd3", sd3, [("T5-XXL", "t5", t5), ("CLIP-L", "clipp", clip_l),
                                                ("CLIP-G", "clipp", clip_g), ("VAE", "vae", vae_16)]),
        Model("SDXL" + tag, "sdxl", sdxl, [("CLIP-L", "clip", clip_l), ("CLIP-G", "clipp", clip_g), ("VAE", "vae", vae_4)]),
        Model("Qwen-Image" + tag, "qwenimage", qwen, [("Qwen2.5-VL-7B", "qwen25vl", qwen_vl),
                                                      ("VAE", "vae_qwen", qwen_vae)]),
        Model("FLUX.2-dev" + tag, "flux2", flux2, [("Mistral-Small-3.1-24B", "mistral3", mistral),
                                                   ("VAE", "vae_flux2", flux2_vae)]),
        Model("FLUX.2-klein-base-4B" + tag, "flux2", klein4, [("Qwen3-4B", "qwen3lm", qwen3_4b),
                                                              ("VAE", "vae_flux2", flux2_vae)]),
        Model("FLUX.2-klein-base-9B" + tag, "flux2", klein9, [("Qwen3-8B", "qwen3lm", qwen3_8b),
                                                              ("VAE", "vae_flux2", flux2_vae)]),
        Model("Z-Image" + tag, "zimage", zimage, [("Qwen3-4B", "qwen3", qwen3_4b), ("VAE", "vae", vae_16)]),
    ]  # fmt: skip


MODELS = models()


# ----------------------------------------------------------------------------- building on meta


def denoiser_class(family: str):
    from sdpo.families import get_family

    return get_family(family).denoiser_class()


def build(kind: str, config: dict):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    if kind == "t5":
        return T5EncoderModel(T5Config(**config))
    if kind in ("clip", "clipp"):
        return (CLIPTextModel if kind == "clip" else CLIPTextModelWithProjection)(CLIPTextConfig(**config))
    if kind == "vae":
        return AutoencoderKL(**config)
    if kind in LLM_ENCODERS:  # the 2026 families' LLM text encoders, the classes their pipelines load
        import transformers

        model_cls, config_cls = LLM_ENCODERS[kind]
        return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config))
    if kind in ("vae_qwen", "vae_flux2"):
        import diffusers

        name = {"vae_qwen": "AutoencoderKLQwenImage", "vae_flux2": "AutoencoderKLFlux2"}[kind]
        return getattr(diffusers, name)(**config)
    return denoiser_class(kind)(**config)


LLM_ENCODERS = {
    "qwen25vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig"),
    "mistral3": ("Mistral3ForConditionalGeneration", "Mistral3Config"),
    "qwen3lm": ("Qwen3ForCausalLM", "Qwen3Config"),  # FLUX.2 [klein]
    "qwen3": ("Qwen3Model", "Qwen3Config"),  # Z-Image
}


def measure(model: Model) -> None:
    """Shapes, unit sizes, frozen parameter counts and saved activations, all on the meta device."""
    from sdpo.families import get_family

    blocks = get_family(model.family).shard_blocks
    with torch.device("meta"):
        net = build(model.family, model.config).to(torch.bfloat16)
        model.frozen_params = sum(sum(p.numel() for p in build(k, c).parameters()) for _, k, c in model.frozen)
    model.shapes = [p.shape for p in net.parameters()]
    model.lora_params = lora_numel(model.family, net, LORA_RANK)
    units = [m for m in net.modules() if type(m).__name__ in blocks]
    in_units = {id(p) for u in units for p in u.parameters()}
    model.units = [sum(p.numel() for p in u.parameters()) for u in units]
    model.units.append(sum(p.numel() for p in net.parameters() if id(p) not in in_units))
    saved_activations(model, net, units)


class _FlashLikeAttention(torch.autograd.Function):
    """Saves what a flash-attention kernel saves: q, k, v, the output and the fp32 log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        ctx.save_for_backward(q, k, v, out, torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device))
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _sdpa(query, key, value, *args, **kwargs):
    return _FlashLikeAttention.apply(query, key, value)


def _inputs(model: Model, rows: int, dtype=torch.bfloat16) -> dict:
    """One 1024 px step's denoiser inputs for ``rows`` rows (a pair = winner + loser); widths from the config."""
    e = lambda *s, dt=dtype: torch.empty(*s, device="meta", dtype=dt)  # noqa: E731
    c = model.config
    if model.family == "flux":  # 128 x 128 latents packed 2 x 2 -> 4096 tokens; 512 T5 tokens
        return dict(
            hidden_states=e(rows, 4096, c["in_channels"]),
            timestep=e(rows),
            guidance=e(rows),
            pooled_projections=e(rows, c["pooled_projection_dim"]),
            encoder_hidden_states=e(rows, 512, c["joint_attention_dim"]),
            txt_ids=e(512, 3),
            img_ids=e(4096, 3),
            return_dict=False,
        )
    if model.family == "sd3":  # 2 x 2 patches -> 4096 tokens; 77 CLIP + 256 T5 tokens
        return dict(hidden_states=e(rows, c["in_channels"], 128, 128), timestep=e(rows),
                    encoder_hidden_states=e(rows, 333, c["joint_attention_dim"]),
                    pooled_projections=e(rows, c["pooled_projection_dim"]), return_dict=False)  # fmt: skip
    if model.family == "qwenimage":  # 2 x 2 patches -> 4096 tokens; the text padded to 512 tokens with its mask
        return dict(hidden_states=e(rows, 4096, c["in_channels"]), timestep=e(rows),
                    encoder_hidden_states=e(rows, 512, c["joint_attention_dim"]),
                    encoder_hidden_states_mask=e(rows, 512, dt=torch.bool), img_shapes=[[(1, 64, 64)]] * rows,
                    return_dict=False)  # fmt: skip
    if model.family == "flux2":  # 2 x 2 patches -> 4096 tokens of 128 channels; 512 text tokens
        return dict(hidden_states=e(rows, 4096, c["in_channels"]), timestep=e(rows),
                    guidance=e(rows) if c["guidance_embeds"] else None,
                    encoder_hidden_states=e(rows, 512, c["joint_attention_dim"]),
                    txt_ids=e(rows, 512, 4, dt=torch.long), img_ids=e(rows, 4096, 4, dt=torch.long), return_dict=False)  # fmt: skip
    if model.family == "zimage":  # lists: one (16, 1, 128, 128) latent and 512 caption tokens per row
        return dict(x=[e(c["in_channels"], 1, 128, 128) for _ in range(rows)], t=e(rows),
                    cap_feats=[e(512, c["cap_feat_dim"]) for _ in range(rows)], return_dict=False)  # fmt: skip
    pooled = c["projection_class_embeddings_input_dim"] - 6 * c["addition_time_embed_dim"]
    return dict(
        sample=e(rows, c["in_channels"], 128, 128),
        timestep=e(rows),
        encoder_hidden_states=e(rows, 77, c["cross_attention_dim"]),
        added_cond_kwargs=dict(text_embeds=e(rows, pooled), time_ids=e(rows, 6)),
        return_dict=False,
    )


def _bytes(t: torch.Tensor) -> int:
    base = t._base if t._base is not None else t
    return base.numel() * base.element_size()


def saved_activations(model: Model, net, units, rows: int = 2) -> None:
    """Bytes autograd saves, attributed to the innermost running unit; inputs of each unit recorded."""
    import torch.nn.functional as F

    stack, per_unit, outside, inputs, keep = [], {}, {}, {}, []

    def pre(module, args, kwargs):
        stack.append(id(module))
        for t in [*args, *kwargs.values(), *[x for v in kwargs.values() if isinstance(v, tuple) for x in v]]:
            if isinstance(t, torch.Tensor):
                keep.append(t)
                inputs[id(t._base if t._base is not None else t)] = _bytes(t)

    def post(module, args, kwargs, out):
        stack.pop()

    def pack(t):
        keep.append(t)
        key = id(t._base if t._base is not None else t)
        (per_unit.setdefault(stack[-1], {}) if stack else outside)[key] = _bytes(t)
        return t

    handles = [u.register_forward_pre_hook(pre, with_kwargs=True) for u in units]
    handles += [u.register_forward_hook(post, with_kwargs=True) for u in units]
    real_sdpa, F.scaled_dot_product_attention = F.scaled_dot_product_attention, _sdpa
    try:
        net.requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(**_inputs(model, rows))
    finally:
        F.scaled_dot_product_attention = real_sdpa
        for h in handles:
            h.remove()
    unit_saved = [sum(d.values()) for d in per_unit.values()]
    model.act_outside = sum(outside.values())
    model.act_all = model.act_outside + sum(unit_saved)
    model.act_block_max = max(unit_saved)
    model.act_inputs = sum(inputs.values())


# ----------------------------------------------------------------------------- the arithmetic


def shard_numel(shapes, n: int) -> int:
    """Elements rank 0 holds when every tensor is cut along dim 0 into ``ceil(rows / n)``-row shards."""
    return sum(math.ceil(s[0] / n) * (s.numel() // s[0]) if len(s) else 1 for s in shapes)


def adafactor_numel(shapes) -> int:
    """transformers' Adafactor: row + column statistics for >= 2-D tensors, a full second moment for 1-D."""
    return sum(s[:-1].numel() + s[:-2].numel() * s[-1] if len(s) >= 2 else s.numel() for s in shapes)


def lora_numel(family: str, net: torch.nn.Module, rank: int) -> int:
    """Adapter parameters ``train.py --lora_rank rank`` adds: ``rank * (in + out)`` per targeted layer."""
    from sdpo.families import get_family
    from sdpo.lora.adapters import matches, target_modules

    targets = target_modules(get_family(family), net, None)
    layers = [
        m for n, m in net.named_modules() if isinstance(m, torch.nn.Linear) and any(matches(n, t) for t in targets)
    ]
    return sum(rank * (m.in_features + m.out_features) for m in layers)


LORA_RANK = 16
STRATEGIES = [("DDP", 8, None), ("ZeRO-2", 8, None), ("FSDP", 8, 8), ("FSDP", 16, 16), ("HSDP 2x8", 16, 8),
              (f"LoRA r{LORA_RANK} (DDP)", 1, None)]  # fmt: skip


def plan(model: Model, strategy: str, gpus: int, shard: int | None, optimizer: str, pairs: int, checkpointing: bool,
         precomputed: bool = False):  # fmt: skip
    """Per-GPU bytes by component; ``None`` for a combination that does not run.  ``precomputed``: the run reads
    latents, text and the reference's per-sample losses from a cache (``train.py --precomputed`` after
    ``sdpo.precompute --reference_losses``): neither the reference copy nor any encoder is loaded."""
    p, shapes = model.params, model.shapes
    if strategy.startswith("LoRA"):  # the frozen bf16 base is also the reference; AdamW on the adapters
        if optimizer != "AdamW":
            return None
        a = model.lora_params
        weights, grads, extra, ref, gathered, optim = 2 * p + 4 * a, 4 * a, 4 * a, 0, 0, 8 * a
    elif strategy == "DDP":
        weights, grads, extra, ref, gathered = 4 * p, 4 * p, 4 * p, 2 * p, 0  # extra: DDP's gradient buckets
        optim = 8 * p if optimizer == "AdamW" else 4 * adafactor_numel(shapes)
    elif strategy == "ZeRO-2":
        weights, grads, extra, ref, gathered = 2 * p + 4 * p / gpus, 4 * p / gpus, 0, 2 * p, 0
        optim = (8 if optimizer == "AdamW" else 4) * p / gpus  # flat partitions: Adafactor unfactored
    else:
        if optimizer != "AdamW":
            return None
        s = shard_numel(shapes, shard)
        unit = max(model.units)
        weights, grads, extra, ref, optim = 4 * s, 4 * s, 0, 2 * s, 8 * s
        gathered = 2 * 2 * unit + 4 * unit
    act = model.act_inputs + 2 * model.act_block_max + model.act_outside if checkpointing else model.act_all
    encoders = 2 * model.frozen_params
    if precomputed:
        ref, encoders = 0, 0
    return dict(weights=weights, grads=grads + extra, optim=optim, reference=ref, gathered=gathered,
                encoders=encoders, activations=act * pairs)  # fmt: skip


def print_plan(model: Model, gpu_gb: float, pair_counts: list[int]) -> None:
    print(f"\n## {model.name}: {model.params / 1e9:.2f}B denoiser parameters, largest unit "
          f"{max(model.units[:-1]) / 1e6:.0f}M, frozen encoders + VAE {model.frozen_params / 1e9:.2f}B")  # fmt: skip
    print(f"activations per pair at 1024 px: {model.act_all / GB:.1f} GB without checkpointing, "
          f"{(model.act_inputs + 2 * model.act_block_max + model.act_outside) / GB:.1f} GB with per-block checkpointing "
          f"(block inputs {model.act_inputs / GB:.2f}, largest block {model.act_block_max / GB:.2f})")  # fmt: skip
    print_table(model, gpu_gb, precomputed=False)
    cached = []
    for strategy, gpus, shard in STRATEGIES:  # --precomputed: neither the text encoders nor the VAE are loaded
        row = plan(model, strategy, gpus, shard, "AdamW", 1, True)
        total = (sum(row.values()) - row["encoders"]) / GB
        cached.append(f"{strategy} x{gpus} {total:.1f} {'yes' if total <= 0.9 * gpu_gb else 'no'}")
    print("with a latent/text cache (no encoders), AdamW, 1 pair + AC, GB and fits: " + " | ".join(cached))
    print("\n### with precomputed reference losses (train.py --precomputed after python -m sdpo.precompute "
          "--reference_losses: latents, text and L_ref from the cache; no reference copy, no encoders)")  # fmt: skip
    print_table(model, gpu_gb, precomputed=True)
    print("\nHSDP 2x8 + AdamW, pairs per GPU -> total GB (with / without activation checkpointing):")
    for pairs in pair_counts:
        on = sum(plan(model, "HSDP 2x8", 16, 8, "AdamW", pairs, True).values()) / GB
        off = sum(plan(model, "HSDP 2x8", 16, 8, "AdamW", pairs, False).values()) / GB
        print(f"  {pairs} pair(s): {on:.1f} / {off:.1f}")


def print_table(model: Model, gpu_gb: float, precomputed: bool) -> None:
    cols = ["weights", "grads", "optim", "reference", "gathered", "encoders", "activations"]
    print(f"\n| strategy | GPUs | optimizer | {' | '.join(cols)} | total, 1 pair + AC | fits {gpu_gb:.0f} GB |"
          + (" saved: reference + encoders |" if precomputed else ""))  # fmt: skip
    print("|" + "---|" * (len(cols) + 5 + precomputed))
    for strategy, gpus, shard in STRATEGIES:
        for optimizer in ("AdamW",) if strategy.startswith("LoRA") else ("AdamW", "Adafactor"):
            row = plan(model, strategy, gpus, shard, optimizer, 1, True, precomputed)
            if row is None:
                print(f"| {strategy} | {gpus} | {optimizer} | " + " | ".join("-" * len(cols)) +
                      " | not runnable: transformers' Adafactor fails on sharded parameters | |"
                      + (" |" if precomputed else ""))  # fmt: skip
                continue
            total = sum(row.values()) / GB
            fits = "yes" if total <= 0.9 * gpu_gb else "no"
            saved = ""
            if precomputed:
                before = plan(model, strategy, gpus, shard, optimizer, 1, True)
                saved = f" {before['reference'] / GB:.1f} + {before['encoders'] / GB:.1f} GB |"
            print(f"| {strategy} | {gpus} | {optimizer} | " + " | ".join(f"{row[c] / GB:.1f}" for c in cols)
                  + f" | {total:.1f} | {fits} |{saved}")  # fmt: skip


# ----------------------------------------------------------------------------- cross-check


SMALL_FLUX = dict(FLUX_DEV, num_layers=2, num_single_layers=2, num_attention_heads=2, joint_attention_dim=512)


def cross_check() -> bool:
    """Shard a scaled-down FLUX (real head size, rope and layout) on a simulated mesh; compare rank 0's bytes."""
    import torch.distributed as dist
    from diffusers import FluxTransformer2DModel
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from sdpo.distributed.sharding import shard_module
    from sdpo.families import get_family

    blocks, ok = get_family("flux").shard_blocks, True
    for label, shape in (("FSDP over 8", (8,)), ("HSDP 2 x 8", (2, 8))):
        world = math.prod(shape)
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
        try:
            torch.manual_seed(0)
            policy, reference = FluxTransformer2DModel(**SMALL_FLUX), FluxTransformer2DModel(**SMALL_FLUX)
            shapes = [p.shape for p in policy.parameters()]
            mesh = init_device_mesh("cpu", shape, mesh_dim_names=("replicate", "shard")[-len(shape) :])
            shard_module(policy, blocks, mesh)
            shard_module(reference.to(torch.bfloat16).requires_grad_(False), blocks, mesh)
            opt = torch.optim.AdamW(policy.parameters())
            for q in policy.parameters():
                q.grad = torch.zeros_like(q)
            opt.step()
            local = lambda ts: sum(t.to_local().numel() * t.element_size() for t in ts)  # noqa: E731
            measured = dict(weights=local(policy.parameters()), reference=local(reference.parameters()),
                            optim=local(v for s in opt.state.values() for k, v in s.items() if k != "step"))  # fmt: skip
            s = shard_numel(shapes, shape[-1])
            arithmetic = dict(weights=4 * s, reference=2 * s, optim=8 * s)
        finally:
            dist.destroy_process_group()
        same = measured == arithmetic
        ok &= same
        print(f"cross-check {label} (rank 0 of {world}, {sum(x.numel() for x in shapes) / 1e6:.1f}M parameters): "
              f"measured {measured} bytes, arithmetic {arithmetic}: {'agree' if same else 'DIFFER'}")  # fmt: skip
    return ok


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu_gb", type=float, default=80.0)
    p.add_argument("--pairs", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--cross-check", action="store_true", help="also compare the arithmetic with real FSDP2 shards")
    args = parse(p, argv)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # casting meta modules to bf16 warns about fp32 modules none of them has
    if args.cross_check and not cross_check():
        sys.exit(1)
    for model in models(args.quick):
        measure(model)
        print_plan(model, args.gpu_gb, args.pairs)


if __name__ == "__main__":
    main()
