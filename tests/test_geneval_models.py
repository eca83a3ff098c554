"""GenEval's models on tiny random weights: the mmdetection -> transformers converter, mmdetection's pre- and
post-processing, and the colour classifier, each against an independent computation.

(The converter against mmdetection's own model is the opt-in scripts/eval/geneval_mmdet_parity.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from eval.geneval import convert, detector
from eval.geneval.rules import COLORS, Detection
from eval.geneval.tiny import tiny_detector, write_mmdet_checkpoint, write_tiny_clip


@pytest.fixture(scope="module")
def model():
    return tiny_detector(seed=0)


def test_patch_merging_reorder_matches_unfold():
    """mmdetection merges 2x2 patches with nn.Unfold; transformers concatenates them. The same merged
    features come out of both once the norm and reduction are reordered by the converter."""
    from transformers.models.swin.modeling_swin import SwinPatchMerging

    torch.manual_seed(0)
    c, h, w = 3, 4, 6
    x = torch.randn(2, h, w, c)
    g, b, weight = torch.randn(4 * c), torch.randn(4 * c), torch.randn(2 * c, 4 * c)
    unfolded = torch.nn.Unfold(2, stride=2)(x.permute(0, 3, 1, 2)).transpose(1, 2)  # mmdetection's gathering
    expected = torch.nn.functional.layer_norm(unfolded, (4 * c,), g, b) @ weight.t()
    merging = SwinPatchMerging(dim=c)
    with torch.no_grad():
        merging.norm.weight.copy_(convert.unfold_to_concat(g))
        merging.norm.bias.copy_(convert.unfold_to_concat(b))
        merging.reduction.weight.copy_(convert.unfold_to_concat(weight))
        got = merging(x.reshape(2, h * w, c), (h, w))
    assert torch.allclose(got, expected, atol=1e-5)
    for t in (g, weight):
        assert torch.equal(convert.concat_to_unfold(convert.unfold_to_concat(t)), t)


def test_converter_round_trip_and_same_outputs(model, tmp_path):
    sd = model.state_dict()
    ckpt = write_mmdet_checkpoint(model, tmp_path / "tiny.pth")
    mm = convert.load_mmdet_checkpoint(ckpt)  # weights_only=True, the meta included
    assert any(k.endswith("attn.w_msa.qkv.weight") for k in mm) and "panoptic_head.cls_embed.weight" in mm
    config = convert.infer_config(mm)
    ours = model.config
    assert config.backbone_config.depths == ours.backbone_config.depths
    assert config.backbone_config.num_heads == ours.backbone_config.num_heads
    for key in ("num_queries", "hidden_dim", "encoder_layers", "decoder_layers", "num_attention_heads", "num_labels"):
        assert getattr(config, key) == getattr(ours, key), key
    back = convert.convert_state_dict(mm, config)
    assert set(back) == set(sd)
    for k in sd:
        if "swin.layernorm" not in k:  # unused by the backbone; the converter writes identity
            assert torch.equal(back[k], sd[k]), k
    loaded, kind = convert.load_model(ckpt)
    assert kind == "mmdetection"
    x = torch.randn(1, 3, 64, 96)
    assert not loaded.training
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # A converted folder loads the same weights.
    folder = convert.main([str(ckpt), str(tmp_path / "converted")])
    again, kind = convert.load_model(folder)
    assert kind == "folder" and all(torch.equal(v, again.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_preprocess_follows_mmdetection():
    im = Image.new("RGB", (60, 40), (200, 100, 50))  # w 60, h 40: scale min(1333/60, 800/40) = 20
    x, meta = detector.preprocess(im, "torch")
    assert meta == detector.Meta(original=(40, 60), resized=(800, 1200), padded=(800, 1216))
    assert x.shape == (3, 800, 1216) and x.dtype == torch.float32
    mean, std = np.array(detector.MEAN), np.array(detector.STD)
    inside = (np.array([200, 100, 50]) - mean) / std
    padding = (128 - mean) / std  # padded with grey 128 before normalising
    assert np.allclose(x[:, 400, 600].numpy(), inside, atol=1e-5)
    assert np.allclose(x[:, 400, 1210].numpy(), padding, atol=1e-5)
    assert detector.rescaled_size(512, 512) == (800, 800) and detector.rescaled_size(1024, 768) == (1067, 800)
    assert detector.rescaled_size(100, 1000) == (133, 1333)  # the long edge binds


def _reference_postprocess(cls, masks, meta):
    """mmdetection's procedure written plainly: all masks upsampled, top 100 over query x class, loops."""
    f = torch.nn.functional
    up = f.interpolate(masks[None], size=meta.padded, mode="bilinear", align_corners=False)[0]
    up = up[:, : meta.resized[0], : meta.resized[1]]
    up = f.interpolate(up[:, None], size=meta.original, mode="bilinear", align_corners=False)[:, 0]
    scores = cls.softmax(-1)[:, :-1]
    n_cls = scores.shape[1]
    top, idx = scores.flatten().topk(100, sorted=False)
    out = []
    for s, i in zip(top.tolist(), idx.tolist()):
        m = up[i // n_cls]
        binary = m > 0
        ms = float((m.sigmoid() * binary).sum() / (binary.sum() + 1e-6))
        ys, xs = np.nonzero(binary.numpy())
        box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else (0, 0, 0, 0)
        out.append((i % n_cls, s * ms, tuple(float(v) for v in box)))
    return sorted(out, key=lambda r: -r[1])


def test_postprocess_matches_the_plain_procedure():
    torch.manual_seed(1)
    cls = torch.randn(30, 81) * 3
    masks = torch.randn(30, 10, 12) * 2
    masks[3] = -5  # an empty mask: zero box, zero confidence
    meta = detector.Meta(original=(37, 45), resized=(40, 47), padded=(64, 64))
    got = detector.postprocess(cls, masks, meta)
    want = _reference_postprocess(cls, masks, meta)
    assert len(got.scores) == len(want) == 100
    assert np.allclose(got.scores, [w[1] for w in want], atol=1e-6)  # most confident first
    ours = sorted((int(c), round(float(s), 5), tuple(b)) for c, s, b in zip(got.labels, got.scores, got.boxes.tolist()))
    theirs = sorted((c, round(s, 5), b) for c, s, b in want)  # as sets: ties (the empty mask's zeros) may reorder
    assert ours == theirs
    assert (0.0, 0.0, 0.0, 0.0) in [w[2] for w in want]
    assert got.masks.shape == (100, 37, 45) and got.masks.dtype == bool
    kept = detector.postprocess(cls, masks, meta, min_score=0.3)
    assert np.array_equal(kept.scores, got.scores[got.scores > 0.3])


def test_colour_classifier_matches_open_clip(tmp_path):
    import open_clip

    from eval.geneval.colors import TEMPLATES, load_clip, object_crop

    folder = write_tiny_clip(tmp_path / "timm/vit_large_patch14_clip_224.openai")
    clf = load_clip(tmp_path, torch.device("cpu"), "auto")
    assert type(clf.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"  # as OpenAI's CLIP
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    mask = np.zeros((48, 40), dtype=bool)
    mask[10:30, 5:25] = True
    crop = object_crop(image, Detection((4.0, 8.0, 30.0, 34.0), 0.9, mask))
    assert crop.size == (26, 26)
    assert crop.getpixel((0, 0)) == (153, 153, 153)  # outside the mask: grey #999
    assert crop.getpixel((5, 5)) == image.getpixel((9, 13))
    crops = [crop] + [Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)) for i in range(5)]
    objects = ["car", "car", "dog", "car", "wine glass", "dog"]
    got = clf.logits(crops, objects)

    # Independent: open_clip used directly on the same files.
    from safetensors.torch import load_file

    ref, _, pre = open_clip.create_model_and_transforms(
        f"local-dir:{folder}", load_weights=False, force_quick_gelu=True
    )
    ref.load_state_dict(load_file(str(folder / "open_clip_model.safetensors")))
    ref.eval()
    tok = open_clip.get_tokenizer(f"local-dir:{folder}")
    with torch.no_grad():
        feats = ref.encode_image(torch.stack([pre(c) for c in crops]))
        feats = feats / feats.norm(dim=-1, keepdim=True)
        want = []
        for f, obj in zip(feats, objects):
            cols = []
            for colour in COLORS:
                t = ref.encode_text(tok([tpl.format(c=colour, obj=obj) for tpl in TEMPLATES]))
                t = (t / t.norm(dim=-1, keepdim=True)).mean(0)
                cols.append(t / t.norm())
            want.append(100 * f @ torch.stack(cols, 1))
        want = torch.stack(want)
    assert torch.allclose(got, want, atol=1e-4)
    assert want.std(dim=0).min() > 1e-3 and want.std(dim=1).min() > 1e-3  # not comparing constants
    names = clf.classify(crops, objects)
    assert names == [COLORS[k] for k in want.argmax(1).tolist()]
    assert clf.classify(crops[:1], objects[:1]) == names[:1]  # batch-invariant
