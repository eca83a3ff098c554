"""Parity of the rebuilt reward models with the released packages' own code, on the same random weights.

ImageReward: the released package cannot run as it is on transformers 5 (see sdpo/rewards/imagereward.py), so
this test loads its BLIP code with the smallest shims, builds a tiny ImageReward through the
package's own ``ImageReward.__init__`` (only the ViT size, the crop size and the MLP width made
tiny), saves its state dict in the released format, and scores the same images and prompts with
both implementations. HPSv2: the ``hpsv2`` wheel's vendored open_clip (with the tokenizer vocabulary
it lacks copied in, in a temporary copy) scores a tiny model the way ``hpsv2.score`` does; ours loads
the same checkpoint file. The wheels are fetched once into ``.cache/wheels/`` (PyPI needed the first time).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".cache" / "wheels"  # gitignored; CI fills it on first run
TINY_SIZE = 32


def fetch_wheel(requirement: str, filename: str) -> Path:
    """The cached wheel, downloaded once with ``pip download --no-deps``; no network means a clear failure, not a skip."""
    path = WHEELS / filename
    if path.is_file():
        return path
    WHEELS.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(WHEELS), requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        proc = None
    if proc is None or proc.returncode != 0 or not path.is_file():
        why = "timed out" if proc is None else (proc.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.fail(
            f"parity test needs the {requirement} wheel: `{' '.join(cmd[2:])}` failed ({why}); "
            f"give this machine PyPI access once or put {filename} in {WHEELS}",
            pytrace=False,
        )
    return path


def _pkg(monkeypatch, name: str, path: Path) -> None:
    """Register a package without running its ``__init__`` (which imports OpenAI's clip and more)."""
    mod = types.ModuleType(name)
    mod.__path__ = [str(path)]
    monkeypatch.setitem(sys.modules, name, mod)


def _invert_attention_mask(self, mask):
    ext = mask[:, None, None, :] if mask.dim() == 2 else mask[:, None, :, :]
    ext = ext.to(dtype=self.dtype)
    return (1.0 - ext) * torch.finfo(self.dtype).min


def _get_head_mask(self, head_mask, num_hidden_layers, is_attention_chunked=False):
    assert head_mask is None
    return [None] * num_hidden_layers


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """The wheel's ImageReward module tree, importable under its own name, with transformers-5 shims."""
    wheel = fetch_wheel("image-reward==1.5", "image_reward-1.5-py3-none-any.whl")
    root = tmp_path_factory.mktemp("image_reward_wheel")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(root)
    mp = pytest.MonkeyPatch()
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    for name in ("apply_chunking_to_forward", "prune_linear_layer"):
        mp.setattr(mu, name, getattr(pu, name), raising=False)
    mp.setattr(mu, "find_pruneable_heads_and_indices", lambda *a: None, raising=False)
    # transformers 5 renamed additional_special_tokens to extra_special_tokens (BLIP's init_tokenizer reads the old one)
    from transformers import BertTokenizer

    mp.setattr(
        BertTokenizer, "additional_special_tokens_ids", property(lambda t: t.extra_special_tokens_ids), raising=False
    )
    fairscale = types.ModuleType("fairscale.nn.checkpoint.checkpoint_activations")
    fairscale.checkpoint_wrapper = lambda module, *a, **k: module
    for name in ("fairscale", "fairscale.nn", "fairscale.nn.checkpoint"):
        mp.setitem(sys.modules, name, types.ModuleType(name))
    mp.setitem(sys.modules, "fairscale.nn.checkpoint.checkpoint_activations", fairscale)
    _pkg(mp, "ImageReward", root / "ImageReward")
    _pkg(mp, "ImageReward.models", root / "ImageReward" / "models")
    _pkg(mp, "ImageReward.models.BLIP", root / "ImageReward" / "models" / "BLIP")
    med = importlib.import_module("ImageReward.models.BLIP.med")
    mp.setattr(med.BertPreTrainedModel, "invert_attention_mask", _invert_attention_mask, raising=False)
    mp.setattr(med.BertPreTrainedModel, "get_head_mask", _get_head_mask, raising=False)
    # transformers 4's init_weights: just apply the model's own _init_weights (5's needs post_init bookkeeping)
    mp.setattr(med.BertPreTrainedModel, "init_weights", lambda self: self.apply(self._init_weights))
    mods = types.SimpleNamespace(
        med=med,
        vit=importlib.import_module("ImageReward.models.BLIP.vit"),
        blip=importlib.import_module("ImageReward.models.BLIP.blip"),
        blip_pretrain=importlib.import_module("ImageReward.models.BLIP.blip_pretrain"),
        ir=importlib.import_module("ImageReward.ImageReward"),
    )
    yield mods
    mp.undo()
    for name in [n for n in sys.modules if n.startswith("ImageReward")]:
        del sys.modules[name]


def _tiny_released_model(mods, tmp: Path, tokenizer_dir: Path, monkeypatch):
    """The package's own ImageReward, built by its own __init__, with the ViT, crop and MLP made tiny."""
    from transformers import BertTokenizer

    from sdpo.tiny.rewards import TINY_MED, TINY_VISION, _randomise

    v = TINY_VISION
    tiny_vit = partial(
        mods.vit.VisionTransformer,
        img_size=v["image_size"],
        patch_size=v["patch_size"],
        embed_dim=v["hidden_size"],
        depth=v["num_hidden_layers"],
        num_heads=v["num_attention_heads"],
        mlp_ratio=v["intermediate_size"] / v["hidden_size"],
    )
    monkeypatch.setattr(mods.blip_pretrain, "create_vit", lambda *a, **k: (tiny_vit(), v["hidden_size"]))
    monkeypatch.setattr(
        mods.blip,
        "BertTokenizer",
        types.SimpleNamespace(from_pretrained=lambda _: BertTokenizer.from_pretrained(tokenizer_dir)),
    )
    monkeypatch.setattr(mods.ir, "_transform", lambda n, f=mods.ir._transform: f(TINY_SIZE))
    monkeypatch.setattr(mods.ir, "MLP", lambda n, cls=mods.ir.MLP: cls(TINY_MED["hidden_size"]))
    med_path = tmp / "med_config.json"
    med_path.write_text(json.dumps(TINY_MED))
    model = mods.ir.ImageReward(med_config=str(med_path), device="cpu").eval()
    _randomise(model, seed=7)
    return model


def test_imagereward_matches_released_code(released, tmp_path, monkeypatch):
    from sdpo.rewards import RewardConfig, load_scorer
    from sdpo.tiny.rewards import TINY_MED, TINY_VISION, bert_tokenizer

    root = tmp_path / "root"
    tok_dir = root / "google-bert/bert-base-uncased"
    bert_tokenizer(tok_dir)
    ir_dir = root / "THUDM/ImageReward"
    ir_dir.mkdir(parents=True)
    theirs = _tiny_released_model(released, tmp_path, tok_dir, monkeypatch)
    # The released file format: the package's own state_dict keys, saved as a plain dict of tensors.
    torch.save(theirs.state_dict(), ir_dir / "ImageReward.pt")
    (ir_dir / "med_config.json").write_text(json.dumps(TINY_MED))
    (ir_dir / "vision_config.json").write_text(json.dumps(TINY_VISION))
    ours = load_scorer("imagereward", "cpu", RewardConfig.make(root))

    rng = np.random.default_rng(0)
    sizes = [(64, 64), (48, 80), (100, 40), (33, 33), (64, 64)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    prompts = ["a red cube on a table", "Two dogs!", "", "a very long prompt " * 10, "sunset, 4k, trending"]
    with torch.no_grad():
        expected = [theirs.score(p, im) for p, im in zip(prompts, images)]
    got = ours.score(images, prompts)
    diff = max(abs(a - b) for a, b in zip(expected, got))
    print(f"imagereward parity: max abs diff {diff:.3g} over {len(got)} pairs, rewards {np.round(expected, 3)}")
    assert np.std(expected) > 0.05  # the random weights give distinguishable rewards, so equality means something
    assert diff < 1e-4
    # The released normalisation constants are the ones the package applies.
    assert (theirs.mean, theirs.std) == (0.16717362830052426, 1.0333394966054072)


@pytest.fixture(scope="module")
def hps_open_clip(tmp_path_factory):
    """The hpsv2 wheel's vendored open_clip, importable as ``hps_open_clip``, with the vocabulary it lacks."""
    import importlib.util
    import shutil

    import open_clip

    wheel = fetch_wheel("hpsv2==1.2.0", "hpsv2-1.2.0-py3-none-any.whl")
    root = tmp_path_factory.mktemp("hpsv2_wheel")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(root, [n for n in z.namelist() if n.startswith("hpsv2/src/open_clip/")])
    pkg = root / "hpsv2/src/open_clip"
    vocab = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    shutil.copy(vocab, pkg / vocab.name)  # the wheel ships without it, so its tokenizer fails at import
    mp = pytest.MonkeyPatch()
    turtle = types.ModuleType("turtle")  # factory.py does `from turtle import forward` (unused; needs tkinter)
    turtle.forward = None
    mp.setitem(sys.modules, "turtle", turtle)
    spec = importlib.util.spec_from_file_location(
        "hps_open_clip", pkg / "__init__.py", submodule_search_locations=[str(pkg)]
    )
    mod = importlib.util.module_from_spec(spec)
    mp.setitem(sys.modules, "hps_open_clip", mod)
    spec.loader.exec_module(mod)
    yield mod
    mp.undo()
    for name in [n for n in sys.modules if n.startswith("hps_open_clip")]:
        del sys.modules[name]


def test_hpsv2_matches_released_code(hps_open_clip, tmp_path):
    from sdpo.rewards import RewardConfig, load_scorer
    from sdpo.tiny.rewards import OPEN_CLIP_CFG, _randomise

    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir()
    (cfg_dir / "HPS-tiny.json").write_text(json.dumps(OPEN_CLIP_CFG["model_cfg"]))
    hps_open_clip.add_model_config(cfg_dir)
    # As hpsv2.img_score.initialize_model builds it, with a tiny architecture in place of ViT-H-14.
    model, _, preprocess_val = hps_open_clip.create_model_and_transforms(
        "HPS-tiny", None, precision="fp32", device="cpu", output_dict=True
    )
    _randomise(model, seed=3, std=0.05)
    model.eval()
    tokenizer = hps_open_clip.get_tokenizer("HPS-tiny")
    hps_dir = tmp_path / "root/xswu/HPSv2"
    hps_dir.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict()}, hps_dir / "HPS_v2_compressed.pt")
    (hps_dir / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CFG))
    ours = load_scorer("hpsv2", "cpu", RewardConfig.make(tmp_path / "root"))

    rng = np.random.default_rng(1)
    sizes = [(64, 64), (40, 90), (90, 40), (31, 37)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    prompts = ["a photo of a cat", "", "an astronaut riding a horse on the moon, digital art", "x " * 100]
    expected = []
    with torch.no_grad():
        for im, p in zip(images, prompts):  # hpsv2.score's loop body, on CPU
            out = model(preprocess_val(im).unsqueeze(0), tokenizer([p]))
            expected.append(float(torch.diagonal(out["image_features"] @ out["text_features"].T)[0]))
    got = ours.score(images, prompts)
    diff = max(abs(a - b) for a, b in zip(expected, got))
    print(f"hpsv2 parity: max abs diff {diff:.3g} over {len(got)} pairs, scores {np.round(expected, 3)}")
    assert np.std(expected) > 0.01
    assert diff < 1e-4


def test_hpsv2_vit_h14_layout_matches_wheel(hps_open_clip):
    """The full-size ViT-H-14 of the wheel and of current open_clip have the same keys and shapes (the
    HPS_v2_compressed.pt layout), built on the meta device so no memory is allocated."""
    import open_clip

    with torch.device("meta"):
        theirs = hps_open_clip.create_model("ViT-H-14", None, precision="fp32", device="meta")
        ours = open_clip.create_model("ViT-H-14", load_weights=False, device="meta")
    t = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    o = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    print(f"ViT-H-14 state dict: wheel {len(t)} keys, open_clip {len(o)} keys")
    assert sorted(set(t) ^ set(o)) == []
    assert t == o
    assert len(t) == 686
