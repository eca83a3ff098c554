"""Each scorer computes its documented formula (recomputed here independently) and ignores batching."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from sdpo.errors import UserError
from sdpo.rewards import METRICS, RewardConfig, load_scorer, parse_metrics
from sdpo.rewards.base import default_device
from sdpo.rewards.imagereward import REWARD_MEAN, REWARD_STD, convert_state_dict
from sdpo.tiny.rewards import IMAGE_SIZE, OPENAI_MEAN, OPENAI_STD, build_tiny_reward_root

PROMPTS = ["a red cube on a table", "Two dogs playing!", "", "sunset over the sea, 4k, " * 8, "a cat"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_tiny_reward_root(tmp_path_factory.mktemp("rewards"))


@pytest.fixture(scope="module")
def cfg(root):
    return RewardConfig.make(root)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (48, 80), (80, 48), (33, 41), (64, 64)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def _pil_clip_pixels(images, size=IMAGE_SIZE) -> torch.Tensor:
    """CLIP preprocessing by hand: PIL bicubic resize of the short side, centre crop, scale, mean/std."""
    out = []
    for im in images:
        w, h = im.size
        s = size / min(w, h)
        nw, nh = (size, int(h * s)) if w <= h else (int(w * s), size)  # transformers truncates the long side
        r = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        x = np.asarray(r.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
        out.append(((x - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)).transpose(2, 0, 1))
    return torch.tensor(np.stack(out), dtype=torch.float32)


def _batch_invariant(scorer, images, prompts) -> list[float]:
    full = scorer.score(images, prompts)
    singles = [scorer.score([im], [p])[0] for im, p in zip(images, prompts)]
    split = scorer.score(images[:2], prompts[:2]) + scorer.score(images[2:], prompts[2:])
    assert len(full) == len(images) and all(isinstance(x, float) for x in full)
    np.testing.assert_allclose(full, singles, atol=1e-5)
    np.testing.assert_allclose(full, split, atol=1e-5)
    assert np.std(full) > 1e-4, "random tiny weights should give different scores to different images"
    return full


def test_parse_metrics_order_and_errors():
    assert parse_metrics("all") == list(METRICS) == ["pickscore", "hpsv2", "aesthetics", "clip", "imagereward"]
    assert parse_metrics("imagereward, PickScore") == ["pickscore", "imagereward"]  # paper order, any case
    with pytest.raises(
        UserError, match=r"unknown metric hps; valid: all, pickscore, hpsv2, aesthetics, clip, imagereward"
    ):
        parse_metrics("pickscore,hps")
    with pytest.raises(UserError, match="unknown metric"):
        load_scorer("nope", "cpu")


def test_pickscore_is_cosine_without_logit_scale(root, cfg, images):
    from transformers import AutoTokenizer, CLIPModel

    scorer = load_scorer("pickscore", "cpu", cfg)
    got = _batch_invariant(scorer, images, PROMPTS)
    model = CLIPModel.from_pretrained(root / "yuvalkirstain/PickScore_v1").eval()
    tok = AutoTokenizer.from_pretrained(root / "laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
    text = tok(PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=_pil_clip_pixels(images), **text)
    expected = (torch.diagonal(out.logits_per_image) / model.logit_scale.exp()).tolist()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_clip_score_matches_open_clip_own_loading(root, cfg, images):
    import open_clip

    scorer = load_scorer("clip", "cpu", cfg)
    got = _batch_invariant(scorer, images, PROMPTS)
    folder = f"local-dir:{root / 'laion/CLIP-ViT-H-14-laion2B-s32B-b79K'}"
    model, _, preprocess = open_clip.create_model_and_transforms(folder)  # open_clip finds and loads the weights
    tokenizer = open_clip.get_tokenizer(folder)
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True)
        txt = model.encode_text(tokenizer(PROMPTS), normalize=True)
    np.testing.assert_allclose(got, (img * txt).sum(-1).tolist(), atol=1e-5)


def test_hpsv2_cosine_with_tensor_first_preprocessing(root, cfg, images):
    import open_clip

    scorer = load_scorer("hpsv2", "cpu", cfg)
    got = _batch_invariant(scorer, images, PROMPTS)
    folder = root / "xswu/HPSv2"
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False).eval()
    model.load_state_dict(torch.load(folder / "HPS_v2_compressed.pt", weights_only=True)["state_dict"])
    pixels = []
    for im in images:  # the hpsv2 package's val transform: to tensor, then resize and crop the tensor
        t = TF.resize(TF.to_tensor(im), IMAGE_SIZE, InterpolationMode.BICUBIC, antialias=True)
        pixels.append(TF.normalize(TF.center_crop(t, IMAGE_SIZE), OPENAI_MEAN, OPENAI_STD))
    with torch.no_grad():
        img = model.encode_image(torch.stack(pixels), normalize=True)
        txt = model.encode_text(open_clip.get_tokenizer("ViT-H-14")(PROMPTS), normalize=True)
    np.testing.assert_allclose(got, (img * txt).sum(-1).tolist(), atol=1e-5)
    v21 = load_scorer("hpsv2", "cpu", RewardConfig.make(root, "v2.1"))
    assert "HPS_v2.1_compressed.pt" in v21.source
    assert max(abs(a - b) for a, b in zip(got, v21.score(images, PROMPTS))) > 1e-3  # other weights, other scores
    with pytest.raises(UserError, match="unknown version 'v3'"):
        RewardConfig.make(root, "v3")


def test_aesthetics_is_mlp_of_unit_clip_embedding(root, cfg, images):
    from transformers import CLIPModel

    scorer = load_scorer("aesthetics", "cpu", cfg)
    got = _batch_invariant(scorer, images, PROMPTS)
    assert scorer.score(images[:1], ["anything else"]) == pytest.approx(got[:1], abs=1e-6)  # the prompt is unused
    clip = CLIPModel.from_pretrained(root / "openai/clip-vit-large-patch14").eval()
    with torch.no_grad():
        pooled = clip.vision_model(pixel_values=_pil_clip_pixels(images)).pooler_output
        emb = (pooled @ clip.visual_projection.weight.T).numpy().astype(np.float64)
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sd = torch.load(root / "improved-aesthetic-predictor/sac+logos+ava1-l14-linearMSE.pth", weights_only=True)
    for i in (0, 2, 4, 6, 7):  # five linear layers, no activations (dropouts are identity at inference)
        x = x @ sd[f"layers.{i}.weight"].double().numpy().T + sd[f"layers.{i}.bias"].double().numpy()
    np.testing.assert_allclose(got, x[:, 0], atol=1e-5)


def test_imagereward_normalised_head_on_text_cls(root, cfg, images):
    scorer = load_scorer("imagereward", "cpu", cfg)
    got = _batch_invariant(scorer, images, PROMPTS)
    tok = scorer.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tok.input_ids.shape == (len(PROMPTS), 35)
    assert (tok.input_ids[:, 0] == scorer.tokenizer.cls_token_id).all()
    assert scorer.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [
        len(scorer.tokenizer) - 2,
        len(scorer.tokenizer) - 1,
    ]
    cls = []
    hook = scorer.model.text.register_forward_hook(lambda m, i, o: cls.append(o.last_hidden_state[:, 0]))
    try:
        scorer.score(images, PROMPTS)
    finally:
        hook.remove()
    x = cls[0].double().numpy()
    released = torch.load(root / "THUDM/ImageReward/ImageReward.pt", weights_only=True)
    for i in (0, 2, 4, 6, 7):
        x = (
            x @ released[f"mlp.layers.{i}.weight"].double().numpy().T
            + released[f"mlp.layers.{i}.bias"].double().numpy()
        )
    np.testing.assert_allclose(got, (x[:, 0] - 0.16717362830052426) / 1.0333394966054072, atol=1e-5)
    assert (REWARD_MEAN, REWARD_STD) == (0.16717362830052426, 1.0333394966054072)


def test_imagereward_converter_key_mapping():
    t = torch.zeros(1)
    released = {
        "blip.visual_encoder.cls_token": t,
        "blip.visual_encoder.pos_embed": t,
        "blip.visual_encoder.patch_embed.proj.weight": t,
        "blip.visual_encoder.blocks.11.norm1.bias": t,
        "blip.visual_encoder.blocks.11.attn.qkv.weight": t,
        "blip.visual_encoder.blocks.11.attn.proj.bias": t,
        "blip.visual_encoder.blocks.11.norm2.weight": t,
        "blip.visual_encoder.blocks.11.mlp.fc2.weight": t,
        "blip.visual_encoder.norm.weight": t,
        "blip.text_encoder.encoder.layer.0.crossattention.self.key.weight": t,
        "blip.text_encoder.embeddings.position_ids": t,
        "blip.vision_proj.weight": t,
        "mlp.layers.7.bias": t,
    }
    converted, ignored = convert_state_dict(released)
    assert sorted(converted) == sorted(
        [
            "vision.embeddings.class_embedding",
            "vision.embeddings.position_embedding",
            "vision.embeddings.patch_embedding.weight",
            "vision.encoder.layers.11.layer_norm1.bias",
            "vision.encoder.layers.11.self_attn.qkv.weight",
            "vision.encoder.layers.11.self_attn.projection.bias",
            "vision.encoder.layers.11.layer_norm2.weight",
            "vision.encoder.layers.11.mlp.fc2.weight",
            "vision.post_layernorm.weight",
            "text.encoder.layer.0.crossattention.self.key.weight",
            "head.layers.7.bias",
        ]
    )
    assert sorted(ignored) == ["blip.text_encoder.embeddings.position_ids", "blip.vision_proj.weight"]


def test_missing_weights_name_file_and_places(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    for env in ("SDPO_HPSV2_CHECKPOINT", "SDPO_REWARD_ROOT", "SDPO_AESTHETICS_HEAD"):
        monkeypatch.delenv(env, raising=False)
    empty = RewardConfig.make(tmp_path / "mirror")
    with pytest.raises(UserError) as e:
        load_scorer("hpsv2", "cpu", empty)
    msg = str(e.value)
    assert "\n" not in msg
    assert "HPS_v2_compressed.pt not found" in msg
    assert str(tmp_path / "mirror/xswu/HPSv2/HPS_v2_compressed.pt") in msg and "SDPO_HPSV2_CHECKPOINT" in msg
    with pytest.raises(UserError, match=r"sac\+logos\+ava1-l14-linearMSE.pth not found.*improved-aesthetic-predictor"):
        load_scorer("aesthetics", "cpu", empty)
    monkeypatch.setenv("SDPO_HPSV2_CHECKPOINT", str(tmp_path / "nowhere.pt"))
    with pytest.raises(UserError, match=r"nowhere.pt does not exist"):
        load_scorer("hpsv2", "cpu", empty)


def test_checkpoint_with_python_objects_is_refused(root, tmp_path, monkeypatch):
    bad = tmp_path / "HPS_v2_compressed.pt"
    sd = torch.load(root / "xswu/HPSv2/HPS_v2_compressed.pt", weights_only=True)
    torch.save({**sd, "args": argparse.Namespace(lr=1.0)}, bad)  # a training checkpoint with pickled objects
    monkeypatch.setenv("SDPO_HPSV2_CHECKPOINT", str(bad))
    with pytest.raises(UserError, match=r"HPS_v2_compressed.pt: refused to load"):
        load_scorer("hpsv2", "cpu", RewardConfig.make(root))


def test_env_var_overrides_model_root(root, tmp_path, monkeypatch, images):
    """A per-file variable wins over the model root (here: the v2.1 file passed as the v2.0 checkpoint)."""
    monkeypatch.setenv("SDPO_HPSV2_CHECKPOINT", str(root / "xswu/HPSv2/HPS_v2.1_compressed.pt"))
    overridden = load_scorer("hpsv2", "cpu", RewardConfig.make(root)).score(images, PROMPTS)
    monkeypatch.delenv("SDPO_HPSV2_CHECKPOINT")
    v21 = load_scorer("hpsv2", "cpu", RewardConfig.make(root, "v2.1")).score(images, PROMPTS)
    assert overridden == v21


def test_default_device_never_hard_codes_cuda(monkeypatch):
    assert default_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device(None) == torch.device("cuda")
