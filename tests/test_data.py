"""Pairs reach the loss winner-first, without ties, with shared timestep and noise."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sdpo.config import parse_args
from sdpo.data import pairs as data
from sdpo.tiny import tiny_pair_rows, write_pairs


def cfg_for(pairs, **over):
    c = SimpleNamespace(
        dataset_name=str(pairs), train_data_dir=None, split="train", cache_dir=None, streaming=False,
        dataset_config_name=None, resolution=64, random_crop=False, no_hflip=True, joint_augment=False, video=False,
        proportion_empty_prompts=0.0, seed=0,
    )  # fmt: skip
    c.__dict__.update(over)
    return c


def test_ties_are_dropped_and_counted(tiny_pairs, caplog):
    raw = data.load_pairs(cfg_for(tiny_pairs))
    n_ties = sum(1 for lab in raw["label_0"] if lab == 0.5)
    assert n_ties > 0
    with caplog.at_level("INFO"):
        kept = data.drop_ties(raw)
    assert len(kept) == len(raw) - n_ties
    assert set(kept["label_0"]) <= {0.0, 1.0}
    assert f"dropped {n_ties}/{len(raw)} tied pairs" in caplog.text


def test_max_train_samples_applies_after_ties(tiny_pairs):
    kept = data.drop_ties(data.load_pairs(cfg_for(tiny_pairs)), max_samples=5, seed=0)
    assert len(kept) == 5 and 0.5 not in kept["label_0"]


def _colour_at_centre(pixels: torch.Tensor) -> np.ndarray:
    return ((pixels[:, 28:36, 28:36].mean(dim=(1, 2)) + 1) * 127.5).numpy()


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_preferred_image_comes_first(label):
    from sdpo.tiny import COLOURS

    row = next(r for r in tiny_pair_rows(40, seed=1) if r["label_0"] == label)
    sample = data.PairTransform(cfg_for("unused"))(row, epoch=0, index=0)
    assert sample["pixel_values"].shape == (2, 3, 64, 64)
    good = np.array(COLOURS[row["caption"].split()[1]], dtype=float)
    winner, loser = (_colour_at_centre(x) for x in sample["pixel_values"])
    assert np.abs(winner - good).max() < 25  # the caption's colour (JPEG tolerance)
    assert np.abs(loser - good).max() > 60


def test_empty_prompt_dropout_is_per_sample_and_deterministic():
    row = tiny_pair_rows(1)[0]
    t = data.PairTransform(cfg_for("unused", proportion_empty_prompts=0.2))
    blanks = [t(row, 0, i)["caption"] == "" for i in range(400)]
    assert 0.14 < np.mean(blanks) < 0.26
    assert blanks == [t(row, 0, i)["caption"] == "" for i in range(400)]
    assert blanks != [t(row, 1, i)["caption"] == "" for i in range(400)]  # a new epoch draws anew
    assert all(t.__class__(cfg_for("u", proportion_empty_prompts=1.0))(row, 0, i)["caption"] == "" for i in range(5))


def test_sampler_shards_global_batches_without_duplicates():
    single = data.ShardedPairSampler(20, batch_size=4, rank=0, world=1, seed=3)
    ranks = [data.ShardedPairSampler(20, batch_size=2, rank=r, world=2, seed=3) for r in (0, 1)]
    for s in (single, *ranks):
        s.set_epoch(1)
    for whole, part0, part1 in zip(single, *ranks):
        assert part0 + part1 == whole
        assert not set(part0) & set(part1)
    assert len(list(single)) == 5
    ranks[0].set_epoch(1, start_batch=3)  # resume: skip by arithmetic
    full = data.ShardedPairSampler(20, 2, 0, 2, 3)
    full.set_epoch(1)
    assert list(ranks[0]) == list(full)[3:]


def test_winner_and_loser_share_timestep_and_noise(tiny_sd15, tiny_pairs):
    from sdpo.families import load_family as load_components
    from sdpo.losses import get_objective
    from sdpo.training.step import preference_forward

    cfg = parse_args(["--pretrained_model_name_or_path", str(tiny_sd15), "--dataset_name", str(tiny_pairs),
                      "--resolution", "64"])  # fmt: skip
    comps = load_components(cfg.model, torch.device("cpu"), torch.float32, needs_reference=True)
    hf = data.drop_ties(data.load_pairs(cfg.data))
    ds = data.PairDataset(hf, data.PairTransform(cfg.data))
    batch = data.collate([ds[(0, i)] for i in range(3)])
    terms = preference_forward(batch, comps, cfg, get_objective("diffusion-dpo"), torch.device("cpu"))
    t = terms.timesteps
    assert torch.equal(t[:3], t[3:])
    abar = comps.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    noise = (terms.noisy_latents - abar.sqrt() * terms.latents) / (1 - abar).sqrt()  # invert add_noise
    torch.testing.assert_close(noise[:3], noise[3:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(noise, terms.target, atol=1e-4, rtol=1e-4)  # epsilon target
    assert not torch.allclose(terms.latents[:3], terms.latents[3:])  # different images
    # Same sample -> same draws, wherever it sits in a batch.
    again = preference_forward(data.collate([ds[(0, 2)]]), comps, cfg, get_objective("diffusion-dpo"), "cpu")
    assert again.timesteps[0] == t[2]
    torch.testing.assert_close(again.target[0], terms.target[2])


def test_missing_columns_named(tmp_path):
    rows = [{"caption": "x", "jpg_0": b"", "label_0": 1.0}]
    write_pairs(rows, tmp_path / "bad")
    from sdpo.errors import UserError

    with pytest.raises(UserError, match=r"lacks column\(s\) \['jpg_1'\]"):
        data.load_pairs(cfg_for(tmp_path / "bad"))
