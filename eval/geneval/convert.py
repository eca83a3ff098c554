"""mmdetection's Mask2Former checkpoint -> transformers' Mask2Former weights (GenEval's detector).

    python -m eval.geneval.convert mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth OUT_DIR

GenEval's detector is mmdetection 2.x's ``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco`` (checkpoint
``..._20220504_001756-743b7d99.pth``). Its weights fit transformers' ``Mask2FormerModel`` + class
head (Swin-S backbone, 80 labels, 100 queries) name for name, except:

- Swin attention: mmdetection's fused ``qkv`` projection is split into ``q_proj``/``k_proj``/``v_proj``
  (rows in q, k, v order); its ``relative_position_index`` buffer is checked against transformers'
  (same convention) and dropped.
- Swin patch merging: mmdetection gathers each 2x2 patch with ``nn.Unfold`` (channel-major: channel c
  at kernel position (row, col) is input ``4c + 2row + col``), transformers concatenates the four
  positions (position-major, in the order (0,0), (1,0), (0,1), (1,1): input ``pC + c``). The
  merging norm and reduction columns are reordered accordingly (mmdetection's own converter from
  the original Swin weights applies the inverse reordering).
- Transformer decoder self-attention: ``nn.MultiheadAttention``'s ``in_proj`` is split into q/k/v;
  the masked cross-attention is an ``nn.MultiheadAttention`` on both sides and copies as is.
- transformers' Swin has a final ``layernorm`` that its backbone never uses; it is set to identity.

The architecture (depths, widths, heads, queries, layers) is read off the tensor shapes, so tiny
test checkpoints convert through the same code. The file is loaded with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # python eval/geneval/convert.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from eval.geneval.detector import Mask2FormerInstance, load_weights  # noqa: E402
from sdpo.errors import UserError, cli_main  # noqa: E402

UNFOLD_TO_CONCAT = [0, 2, 1, 3]  # kernel position (2row + col) of concatenated block p; its own inverse
MSDA_LEVELS, MSDA_POINTS = 3, 4  # fixed in transformers' pixel decoder, as in GenEval's config
BACKBONE = "model.pixel_level_module.encoder."
PIXEL_DECODER = "model.pixel_level_module.decoder."
TRANSFORMER = "model.transformer_module."


@dataclass(frozen=True)
class Pair:
    """One mmdetection tensor and where it goes: ``op`` is copy, unfold_w / unfold_v (patch-merging reorder)
    or q / k / v (that third of a fused projection, along dim 0)."""

    mm: str
    hf: str
    op: str = "copy"


def _copy(pairs: list[Pair], mm: str, hf: str, names=("weight", "bias")) -> None:
    pairs.extend(Pair(f"{mm}.{n}", f"{hf}.{n}") for n in names)


def key_plan(config) -> list[Pair]:
    """Every tensor of the mmdetection model, paired with its transformers name, for ``config``."""
    sw, p = config.backbone_config, []
    _copy(p, "backbone.patch_embed.projection", BACKBONE + "swin.embeddings.patch_embeddings.projection")
    _copy(p, "backbone.patch_embed.norm", BACKBONE + "swin.embeddings.norm")
    for i, depth in enumerate(sw.depths):
        for j in range(depth):
            mm, hf = f"backbone.stages.{i}.blocks.{j}", f"{BACKBONE}swin.encoder.layers.{i}.blocks.{j}"
            _copy(p, f"{mm}.norm1", f"{hf}.layernorm_before")
            for n in ("weight", "bias"):
                p += [Pair(f"{mm}.attn.w_msa.qkv.{n}", f"{hf}.attention.{x}_proj.{n}", x) for x in "qkv"]
            p.append(
                Pair(
                    f"{mm}.attn.w_msa.relative_position_bias_table",
                    f"{hf}.attention.relative_position_bias.relative_position_bias_table",
                )
            )
            _copy(p, f"{mm}.attn.w_msa.proj", f"{hf}.attention.o_proj")
            _copy(p, f"{mm}.norm2", f"{hf}.layernorm_after")
            _copy(p, f"{mm}.ffn.layers.0.0", f"{hf}.mlp.fc1")
            _copy(p, f"{mm}.ffn.layers.1", f"{hf}.mlp.fc2")
        if i < len(sw.depths) - 1:
            mm, hf = f"backbone.stages.{i}.downsample", f"{BACKBONE}swin.encoder.layers.{i}.downsample"
            p += [Pair(f"{mm}.norm.{n}", f"{hf}.norm.{n}", "unfold_v") for n in ("weight", "bias")]
            p.append(Pair(f"{mm}.reduction.weight", f"{hf}.reduction.weight", "unfold_w"))
    for k in range(len(sw.depths)):
        _copy(p, f"backbone.norm{k}", f"{BACKBONE}hidden_states_norms.stage{k + 1}")

    mm, hf = "panoptic_head.pixel_decoder", PIXEL_DECODER.rstrip(".")
    for i in range(MSDA_LEVELS):
        _copy(p, f"{mm}.input_convs.{i}.conv", f"{hf}.input_projections.{i}.0")
        _copy(p, f"{mm}.input_convs.{i}.gn", f"{hf}.input_projections.{i}.1")
    for i in range(config.encoder_layers):
        a, b = f"{mm}.encoder.layers.{i}", f"{hf}.encoder.layers.{i}"
        for name in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
            _copy(p, f"{a}.attentions.0.{name}", f"{b}.self_attn.{name}")
        _copy(p, f"{a}.norms.0", f"{b}.self_attn_layer_norm")
        _copy(p, f"{a}.ffns.0.layers.0.0", f"{b}.fc1")
        _copy(p, f"{a}.ffns.0.layers.1", f"{b}.fc2")
        _copy(p, f"{a}.norms.1", f"{b}.final_layer_norm")
    p.append(Pair(f"{mm}.level_encoding.weight", f"{hf}.level_embed"))
    _copy(p, f"{mm}.lateral_convs.0.conv", f"{hf}.adapter_1.0", ("weight",))  # one FPN level (stride 4)
    _copy(p, f"{mm}.lateral_convs.0.gn", f"{hf}.adapter_1.1")
    _copy(p, f"{mm}.output_convs.0.conv", f"{hf}.layer_1.0", ("weight",))
    _copy(p, f"{mm}.output_convs.0.gn", f"{hf}.layer_1.1")
    _copy(p, f"{mm}.mask_feature", f"{hf}.mask_projection")

    mm, hf = "panoptic_head", TRANSFORMER.rstrip(".")
    p.append(Pair(f"{mm}.query_embed.weight", f"{hf}.queries_embedder.weight"))
    p.append(Pair(f"{mm}.query_feat.weight", f"{hf}.queries_features.weight"))
    p.append(Pair(f"{mm}.level_embed.weight", f"{hf}.level_embed.weight"))
    if config.enforce_input_projection:
        for i in range(MSDA_LEVELS):
            _copy(p, f"{mm}.decoder_input_projs.{i}", f"{hf}.input_projections.{i}")
    for i in range(config.decoder_layers - 1):
        a, b = f"{mm}.transformer_decoder.layers.{i}", f"{hf}.decoder.layers.{i}"
        for n in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
            p.append(Pair(f"{a}.attentions.0.attn.{n}", f"{b}.cross_attn.{n}"))  # operation order: cross first
        for n, m in (("in_proj_weight", "weight"), ("in_proj_bias", "bias")):
            p += [Pair(f"{a}.attentions.1.attn.{n}", f"{b}.self_attn.{x}_proj.{m}", x) for x in "qkv"]
        _copy(p, f"{a}.attentions.1.attn.out_proj", f"{b}.self_attn.out_proj")
        _copy(p, f"{a}.norms.0", f"{b}.cross_attn_layer_norm")
        _copy(p, f"{a}.norms.1", f"{b}.self_attn_layer_norm")
        _copy(p, f"{a}.ffns.0.layers.0.0", f"{b}.fc1")
        _copy(p, f"{a}.ffns.0.layers.1", f"{b}.fc2")
        _copy(p, f"{a}.norms.2", f"{b}.final_layer_norm")
    _copy(p, f"{mm}.transformer_decoder.post_norm", f"{hf}.decoder.layernorm")
    for j, k in ((0, 0), (2, 1), (4, 2)):  # Linear, ReLU, Linear, ReLU, Linear
        _copy(p, f"{mm}.mask_embed.{j}", f"{hf}.decoder.mask_predictor.mask_embedder.{k}.0")
    _copy(p, f"{mm}.cls_embed", "class_predictor")
    return p


def unfold_to_concat(t: torch.Tensor) -> torch.Tensor:
    """Patch-merging columns (or a norm vector) from mmdetection's unfold order to transformers' concat order."""
    if t.dim() == 1:
        c = t.numel() // 4
        return t.reshape(c, 4)[:, UNFOLD_TO_CONCAT].t().reshape(-1)
    out, c = t.shape[0], t.shape[1] // 4
    return t.reshape(out, c, 4)[:, :, UNFOLD_TO_CONCAT].transpose(1, 2).reshape(out, 4 * c)


def concat_to_unfold(t: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`unfold_to_concat` (used to write mmdetection-format test checkpoints)."""
    if t.dim() == 1:
        c = t.numel() // 4
        return t.reshape(4, c)[UNFOLD_TO_CONCAT].t().reshape(-1)
    out, c = t.shape[0], t.shape[1] // 4
    return t.reshape(out, 4, c)[:, UNFOLD_TO_CONCAT].transpose(1, 2).reshape(out, 4 * c)


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.fullmatch(k))})


def infer_config(sd: dict[str, torch.Tensor], where: str = "checkpoint"):
    """The transformers config of the mmdetection Mask2Former whose state dict is ``sd`` (from tensor shapes)."""
    from transformers import Mask2FormerConfig, SwinConfig

    from eval.geneval.layout import object_names

    def get(key: str) -> torch.Tensor:
        if key not in sd:
            raise UserError(f"{where}: no {key!r}; not an mmdetection Mask2Former Swin checkpoint")
        return sd[key]

    embed = get("backbone.patch_embed.projection.weight")
    stages = _count(sd, r"backbone\.stages\.(\d+)\..*")
    depths = [_count(sd, rf"backbone\.stages\.{i}\.blocks\.(\d+)\..*") for i in range(stages)]
    tables = [get(f"backbone.stages.{i}.blocks.0.attn.w_msa.relative_position_bias_table") for i in range(stages)]
    window = (int(round(tables[0].shape[0] ** 0.5)) + 1) // 2
    fc1 = get("backbone.stages.0.blocks.0.ffn.layers.0.0.weight")
    offsets = get("panoptic_head.pixel_decoder.encoder.layers.0.attentions.0.sampling_offsets.weight")
    heads, rest = divmod(offsets.shape[0], MSDA_LEVELS * MSDA_POINTS * 2)
    if rest:
        raise UserError(f"{where}: sampling_offsets has {offsets.shape[0]} rows, not heads x 3 levels x 4 points x 2")
    cls = get("panoptic_head.cls_embed.weight")
    names = object_names()
    if cls.shape[0] - 1 != len(names):
        raise UserError(
            f"{where}: the class head has {cls.shape[0] - 1} classes, GenEval's detector has {len(names)} (COCO)"
        )
    query = get("panoptic_head.query_feat.weight")
    backbone = SwinConfig(
        embed_dim=embed.shape[0],
        patch_size=embed.shape[-1],
        num_channels=embed.shape[1],
        depths=depths,
        num_heads=[t.shape[1] for t in tables],
        window_size=window,
        mlp_ratio=fc1.shape[0] / fc1.shape[1],
        qkv_bias="backbone.stages.0.blocks.0.attn.w_msa.qkv.bias" in sd,
        out_features=[f"stage{i + 1}" for i in range(stages)],
    )
    return Mask2FormerConfig(
        backbone_config=backbone,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        num_queries=query.shape[0],
        hidden_dim=query.shape[1],
        feature_size=get("panoptic_head.pixel_decoder.input_convs.0.conv.weight").shape[0],
        mask_feature_size=get("panoptic_head.pixel_decoder.mask_feature.weight").shape[0],
        encoder_layers=_count(sd, r"panoptic_head\.pixel_decoder\.encoder\.layers\.(\d+)\..*"),
        encoder_feedforward_dim=get("panoptic_head.pixel_decoder.encoder.layers.0.ffns.0.layers.0.0.weight").shape[0],
        decoder_layers=_count(sd, r"panoptic_head\.transformer_decoder\.layers\.(\d+)\..*") + 1,
        dim_feedforward=get("panoptic_head.transformer_decoder.layers.0.ffns.0.layers.0.0.weight").shape[0],
        num_attention_heads=heads,
        enforce_input_projection=any(k.startswith("panoptic_head.decoder_input_projs.") for k in sd),
    )


def _check_index(sd: dict, key: str, window: int, where: str) -> None:
    from transformers.models.swin.modeling_swin import SwinRelativePositionBias

    theirs = SwinRelativePositionBias(1, (window, window))._create_relative_position_index()
    if not torch.equal(sd[key].long().reshape(theirs.shape), theirs):
        raise UserError(f"{where}: {key} differs from transformers' relative position index (unknown Swin variant)")


def convert_state_dict(sd: dict[str, torch.Tensor], config, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """transformers' state dict (``Mask2FormerInstance``'s names) from mmdetection's, every tensor accounted for."""
    out: dict[str, torch.Tensor] = {}
    used = set()
    for pair in key_plan(config):
        if pair.mm not in sd:
            raise UserError(f"{where}: missing {pair.mm!r}; not the Mask2Former layout this converter knows")
        t = sd[pair.mm]
        if pair.op in ("q", "k", "v"):
            if t.shape[0] % 3:
                raise UserError(f"{where}: {pair.mm} has shape {tuple(t.shape)}, not 3 stacked projections")
            t = t.chunk(3, dim=0)["qkv".index(pair.op)]
        elif pair.op == "unfold_w" or pair.op == "unfold_v":
            t = unfold_to_concat(t)
        out[pair.hf] = t.contiguous().clone()
        used.add(pair.mm)
    index_keys = [k for k in sd if k.endswith(".attn.w_msa.relative_position_index")]
    for key in index_keys:
        _check_index(sd, key, config.backbone_config.window_size, where)
    extra = sorted(set(sd) - used - set(index_keys))
    if extra:
        raise UserError(f"{where}: {len(extra)} tensors this converter does not know, e.g. {extra[:3]}")
    width = config.backbone_config.embed_dim * 2 ** (len(config.backbone_config.depths) - 1)
    out[BACKBONE + "swin.layernorm.weight"] = torch.ones(width)  # unused by the backbone
    out[BACKBONE + "swin.layernorm.bias"] = torch.zeros(width)
    return out


def to_mmdet(hf: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """mmdetection's state dict from ours: the exact inverse of :func:`convert_state_dict` (tests use it to
    write checkpoints in the released format)."""
    from transformers.models.swin.modeling_swin import SwinRelativePositionBias

    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for pair in key_plan(config):
        t = hf[pair.hf]
        if pair.op in ("q", "k", "v"):
            parts.setdefault(pair.mm, {})[pair.op] = t
            if len(parts[pair.mm]) == 3:
                out[pair.mm] = torch.cat([parts[pair.mm][x] for x in "qkv"])
            continue
        out[pair.mm] = concat_to_unfold(t) if pair.op.startswith("unfold") else t.clone()
    w = config.backbone_config.window_size
    index = SwinRelativePositionBias(1, (w, w))._create_relative_position_index()
    for i, depth in enumerate(config.backbone_config.depths):
        for j in range(depth):
            out[f"backbone.stages.{i}.blocks.{j}.attn.w_msa.relative_position_index"] = index.clone()
    return out


def load_mmdet_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an mmdetection checkpoint, loaded with ``weights_only=True`` (plain data only)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    # mmcv may write numpy scalars into the checkpoint's meta; they are data, so allow exactly those (under
    # numpy 1's module name too, which files written then carry).
    scalar = (getattr(np, "_core", None) or np.core).multiarray.scalar
    numpy_data = [np.dtype, scalar, (scalar, "numpy.core.multiarray.scalar")]
    numpy_data += [type(np.dtype(t)) for t in ("int64", "int32", "float64", "float32", "bool")]
    try:
        with torch.serialization.safe_globals(numpy_data):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused, truncated file, not a torch file: all one answer
        first = re.sub(r"\x1b\[[0-9;]*m", "", (str(e).strip().splitlines() or [type(e).__name__])[0])[:200]
        raise UserError(f"{path}: cannot be loaded as a checkpoint with weights_only=True ({first})") from None
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path}: not an mmdetection checkpoint (expected a dict with 'state_dict' of tensors)")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def convert_checkpoint(path: str | Path):
    """(config, transformers state dict) of the mmdetection checkpoint at ``path``."""
    sd = load_mmdet_checkpoint(path)
    config = infer_config(sd, str(path))
    return config, convert_state_dict(sd, config, str(path))


def save_converted(config, sd: dict[str, torch.Tensor], out: str | Path) -> Path:
    """A transformers folder: ``config.json`` + ``model.safetensors`` (loadable by this package, and by
    ``Mask2FormerForUniversalSegmentation.from_pretrained`` where scipy is installed)."""
    from safetensors.torch import save_file

    from sdpo.atomic import atomic_path

    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        config.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / "model.safetensors"))
    return out


def load_model(path: str | Path) -> tuple[Mask2FormerInstance, str]:
    """The detector from an mmdetection ``.pth`` (converted on the fly) or a converted folder; (model, kind)."""
    path = Path(path)
    if path.is_dir():
        from safetensors.torch import load_file
        from transformers import Mask2FormerConfig

        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise UserError(f"{path}: a converted detector folder needs config.json and model.safetensors")
        config = Mask2FormerConfig.from_pretrained(path)
        model = load_weights(Mask2FormerInstance(config), load_file(str(path / "model.safetensors")), path)
        return model.eval(), "folder"
    config, sd = convert_checkpoint(path)
    return load_weights(Mask2FormerInstance(config), sd, path).eval(), "mmdetection"


@cli_main
def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m eval.geneval.convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="mmdetection Mask2Former .pth (GenEval's detector)")
    ap.add_argument("out", help="folder to write (config.json + model.safetensors)")
    args = ap.parse_args(argv)
    config, sd = convert_checkpoint(args.checkpoint)
    load_weights(Mask2FormerInstance(config), sd, args.checkpoint)  # fails here, not at evaluation time
    out = save_converted(config, sd, args.out)
    print(f"{args.checkpoint} -> {out} ({sum(v.numel() for v in sd.values()) / 1e6:.1f}M parameters)")
    return out


if __name__ == "__main__":
    main()
