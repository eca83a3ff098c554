"""Diffusion-KTO: the loss by hand, its reference point across processes, the single labelled images
it trains on (from pairs and from a per-image dataset), a tiny run that resumes, and refusals."""

from __future__ import annotations

import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_flags
from test_cli import one_error_line, run_cli
from test_data import _colour_at_centre

from sdpo.data import kto as kto_data
from sdpo.errors import UserError
from sdpo.losses import PreferenceTerms, get_objective
from sdpo.tiny import COLOURS, tiny_pair_rows, write_pairs
from sdpo.training.metrics import read_jsonl

kto = get_objective("kto")

# Per-image losses: policy M, reference R.  g = R - M has mean +0.0125 (z > 0) in POS and -0.0125 in NEG.
M = [0.30, 0.52, 0.11, 0.47]
R_POS = [0.33, 0.50, 0.14, 0.48]
R_NEG = [0.27, 0.54, 0.08, 0.46]
LABELS = {"desirable": [1, 1, 1, 1], "undesirable": [0, 0, 0, 0], "mixed": [1, 0, 0, 1]}


def kto_cfg(**over):
    c = SimpleNamespace(kto_beta=100.0, halo="sigmoid", lambda_d_kto=1.0, lambda_u_kto=1.0)
    c.__dict__.update(over)
    return c


def kto_terms(model, ref, labels, requires_grad=False):
    mw = torch.tensor(model, dtype=torch.float64, requires_grad=requires_grad)
    n = len(model)
    return PreferenceTerms(
        model_pred=torch.zeros(n, 1, 2, 2, dtype=torch.float64),
        target=torch.zeros(n, 1, 2, 2, dtype=torch.float64),
        timesteps=torch.zeros(n, dtype=torch.long),
        model_w=mw,
        ref_w=torch.tensor(ref, dtype=torch.float64),
        labels=torch.tensor(labels, dtype=torch.bool),
    )


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def by_hand(model, ref, labels, beta, halo="sigmoid", lam_d=1.0, lam_u=1.0):
    """(loss, z, x per image) in Python floats."""
    g = [r - m for m, r in zip(model, ref)]
    z = max(0.0, sum(g) / len(g))
    total, xs = 0.0, []
    for gi, y in zip(g, labels):
        s = 1.0 if y else -1.0
        v = beta * (gi - z)
        x = s * v
        h = {
            "sigmoid": sigmoid(x),
            "loss_averse": log_sigmoid(x),
            "risk_seeking_1": -s * log_sigmoid(-v),
            "risk_seeking_2": s * math.exp(v / 100) - 1,
            "risk_seeking_3": -log_sigmoid(-x),
        }[halo]
        total += (lam_d if y else lam_u) * (1 - h)
        xs.append(x)
    return total / len(g), z, xs


@pytest.mark.parametrize("ref", [R_POS, R_NEG], ids=["z_positive", "z_clamped"])
@pytest.mark.parametrize("which", sorted(LABELS))
def test_loss_matches_hand_computation(which, ref):
    labels = LABELS[which]
    out = kto.loss(kto_terms(M, ref, labels), kto_cfg())
    loss, z, xs = by_hand(M, ref, labels, beta=100.0)
    assert out.loss.item() == pytest.approx(loss, rel=1e-12)
    assert out.inside.tolist() == pytest.approx(xs, rel=1e-12)
    assert out.logs["kto_kl"].item() == pytest.approx(z, abs=1e-15)
    assert (z > 0) == (ref is R_POS)
    g = [r - m for m, r in zip(M, ref)]
    pos = [gi - z for gi, y in zip(g, labels) if y]
    neg = [gi - z for gi, y in zip(g, labels) if not y]
    assert out.logs["kto_diff_pos"].item() == pytest.approx(sum(pos) / len(pos) if pos else 0.0, abs=1e-9)
    assert out.logs["kto_diff_neg"].item() == pytest.approx(sum(neg) / len(neg) if neg else 0.0, abs=1e-9)
    assert out.logs["kto_desirable_fraction"].item() == sum(labels) / len(labels)


@pytest.mark.parametrize("halo", sorted(kto.HALOS))
def test_every_halo_and_class_weights_by_hand(halo):
    labels = LABELS["mixed"]
    cfg = kto_cfg(halo=halo, kto_beta=1000.0, lambda_d_kto=1.5, lambda_u_kto=0.5)
    out = kto.loss(kto_terms(M, R_POS, labels), cfg)
    loss, _, _ = by_hand(M, R_POS, labels, 1000.0, halo, 1.5, 0.5)
    assert out.loss.item() == pytest.approx(loss, rel=1e-12)


def test_reference_point_is_a_constant_for_the_gradient():
    """d loss / d L_theta,i = w_i sigmoid'(x_i) s_i beta / B with z held fixed (z > 0 here, so a z that
    carried gradient would add -1/B terms to every image)."""
    labels, beta = LABELS["mixed"], 100.0
    t = kto_terms(M, R_POS, labels, requires_grad=True)
    (grad,) = torch.autograd.grad(kto.loss(t, kto_cfg()).loss, t.model_w)
    _, _, xs = by_hand(M, R_POS, labels, beta)
    expected = [sigmoid(x) * (1 - sigmoid(x)) * (1.0 if y else -1.0) * beta / 4 for x, y in zip(xs, labels)]
    assert grad.tolist() == pytest.approx(expected, rel=1e-10)


def test_reference_point_is_the_mean_over_all_processes(monkeypatch):
    """2 processes x 2 images see the z (and, averaged, the loss) of 1 process x 4 images, as the public
    code's reduce-mean does; each half alone would give another z.  The all-reduce is simulated: rank r's
    sum is its own batch mean plus the other rank's."""
    halves = [slice(0, 2), slice(2, 4)]
    local = [sum(R_POS[i] - M[i] for i in range(4)[h]) / 2 for h in halves]
    loss, z, _ = by_hand(M, R_POS, LABELS["mixed"], 100.0)
    assert abs(max(0.0, local[0]) - z) > 1e-3 and abs(max(0.0, local[1]) - z) > 1e-3
    results = []
    for rank, h in enumerate(halves):
        fake = SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True, get_world_size=lambda: 2,
                               all_reduce=lambda t, r=rank: t.add_(local[1 - r]))  # fmt: skip
        monkeypatch.setattr(kto, "dist", fake)
        results.append(kto.loss(kto_terms(M[h], R_POS[h], LABELS["mixed"][h]), kto_cfg()))
    for r in results:
        assert r.logs["kto_kl"].item() == pytest.approx(z, rel=1e-12)
    assert (results[0].loss.item() + results[1].loss.item()) / 2 == pytest.approx(loss, rel=1e-12)


# ----------------------------------------------------------------------------- data


def data_cfg(**over):
    c = SimpleNamespace(resolution=64, random_crop=False, no_hflip=True, joint_augment=False, video=False, proportion_empty_prompts=0.0,
                        seed=0, positive_ratio=0.8)  # fmt: skip
    c.__dict__.update(over)
    return c


def has_caption_colour(pixels: torch.Tensor, caption: str) -> bool:
    """The image shows the colour its caption names (the winner), or clearly another one (the loser)."""
    gap = np.abs(_colour_at_centre(pixels) - np.array(COLOURS[caption.split()[1]], dtype=float)).max()
    assert gap < 25 or gap > 60, gap  # JPEG tolerance either side
    return bool(gap < 25)


def test_pairs_become_labelled_images_at_the_positive_ratio():
    rows = [r for r in tiny_pair_rows(16, seed=2) if r["label_0"] != 0.5]
    assert {r["label_0"] for r in rows} == {0.0, 1.0}  # both column orders are exercised
    t = kto_data.KtoTransform(data_cfg())
    samples = [t(rows[i % len(rows)], epoch=0, index=i) for i in range(300)]
    labels = [s["label"] for s in samples]
    assert 0.72 < np.mean(labels) < 0.88  # binomial(300, 0.8): sd 0.023
    for i, s in enumerate(samples):
        assert s["pixel_values"].shape == (3, 64, 64)
        assert has_caption_colour(s["pixel_values"], rows[i % len(rows)]["caption"]) == s["label"]
    assert labels == [t(rows[i % len(rows)], 0, i)["label"] for i in range(300)]  # a pure function of the key
    assert labels != [t(rows[i % len(rows)], 1, i)["label"] for i in range(300)]  # a new epoch draws anew
    assert not any(kto_data.KtoTransform(data_cfg(positive_ratio=0.0))(rows[0], 0, i)["label"] for i in range(20))
    batch = kto_data.collate(samples[:3])
    assert batch["pixel_values"].shape == (3, 3, 64, 64) and batch["labels"].dtype == torch.bool
    assert batch["labels"].tolist() == labels[:3]


def labelled_rows(n_pairs: int, seed: int, losers_per_winner: int = 3) -> list[dict]:
    """Single images: a pair's winner (desirable) for every ``losers_per_winner + 1``-th pair, its loser
    otherwise; so desirable images are the minority."""
    rows = []
    for i, r in enumerate(x for x in tiny_pair_rows(n_pairs, seed=seed) if x["label_0"] != 0.5):
        won = i % (losers_per_winner + 1) == 0
        jpeg = r["jpg_0"] if (r["label_0"] == 1.0) == won else r["jpg_1"]
        rows.append({"image": jpeg, "caption": r["caption"], "desirable": won})
    return rows


def image_cfg(path, **over):
    c = data_cfg(dataset_name=str(path), train_data_dir=None, split="train", cache_dir=None, streaming=False,
                 dataset_config_name=None, data_check=True, max_bad_fraction=0.1, max_train_samples=None,
                 dataloader_num_workers=0, kto_label_column="desirable", kto_image_column="image")  # fmt: skip
    c.__dict__.update(over)
    return c


def test_labelled_images_are_drawn_at_the_positive_ratio(tmp_path):
    rows = labelled_rows(24, seed=5)
    write_pairs(rows, tmp_path / "images")
    cfg = image_cfg(tmp_path / "images")
    hf = kto_data.load(cfg)
    assert len(hf) == len(rows) and 0 < sum(hf["desirable"]) < len(rows) / 3  # desirable are rare in the data
    transform, make_dataset, _ = kto_data.loader_parts(cfg)
    ds = make_dataset(hf, transform)
    samples = [ds[(0, i)] for i in range(300)]
    assert 0.72 < np.mean([s["label"] for s in samples]) < 0.88  # ... but drawn at the ratio
    drawn = [pool[pos] for pool, pos in (ds.draw(0, i) for i in range(300))]
    assert len(set(drawn)) > len(rows) // 2  # rows within a class are spread, not one per class
    for s, r in zip(samples, drawn):
        assert s["label"] == rows[r]["desirable"] == has_caption_colour(s["pixel_values"], rows[r]["caption"])
    assert [s["label"] for s in samples] == [ds[(0, i)]["label"] for i in range(300)]

    for r in rows[:3]:
        r["desirable"] = 0.5  # a label that is not a label
    write_pairs(rows, tmp_path / "bad_labels")
    with pytest.raises(UserError, match=r"row 0 of label column 'desirable' is 0.5; a KTO label is true"):
        kto_data.load(image_cfg(tmp_path / "bad_labels"))


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("source", ["pairs", "labelled_images"])
def test_tiny_run_writes_strict_weights_and_resumes_bit_identical(source, tiny_sd15, tiny_pairs, tmp_path, run_train,
                                                                   monkeypatch, caplog):  # fmt: skip
    from diffusers import UNet2DConditionModel

    import sdpo.training.loop

    data, extra = tiny_pairs, []
    if source == "labelled_images":
        data, extra = write_pairs(labelled_rows(24, seed=5), tmp_path / "images"), ["--kto_label_column", "desirable"]
    out = tmp_path / "run"
    flags = tiny_flags(tiny_sd15, data, out, "--train_method", "kto", "--positive_ratio", "0.8",
                       "--max_train_steps", "2", "--checkpointing_steps", "1", *extra)  # fmt: skip
    state = torch.load(run_train(*flags), map_location="cpu", weights_only=True)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
    init = {k: v.clone() for k, v in unet.state_dict().items()}
    assert unet.load_state_dict(state, strict=True).missing_keys == []
    assert any(not torch.equal(state[k], init[k]) for k in init)  # training moved the weights
    logs = read_jsonl(out)
    assert [r["step"] for r in logs] == [1, 2]
    assert logs[0]["train_loss"] == pytest.approx(0.5)  # policy == reference at step 1: sigmoid(0) for all
    assert logs[0]["kto_kl"] == 0.0 and logs[0]["ref_mse_unaccumulated"] == logs[0]["model_mse_unaccumulated"]
    assert {"kto_diff_pos", "kto_diff_neg", "kto_desirable_fraction", "implicit_acc_accumulated"} <= set(logs[1])

    shutil.rmtree(out / "checkpoint-2")  # second invocation resumes from checkpoint-1
    (out / "unet.pth").unlink()
    calls, forward = [], sdpo.training.loop.preference_forward
    monkeypatch.setattr(sdpo.training.loop, "preference_forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    with caplog.at_level("INFO", logger="sdpo"):
        resumed = torch.load(run_train(*flags), map_location="cpu", weights_only=True)
    assert "checkpoint-1 at step 1" in caplog.text and len(calls) == 1  # only step 2 was trained again
    assert all(torch.equal(resumed[k], state[k]) for k in state), "resumed run differs from the uninterrupted one"
    assert read_jsonl(out) == logs


# ----------------------------------------------------------------------------- refusals


def test_kto_refuses_the_safeguard_in_one_line(tiny_sd15, tiny_pairs, tmp_path):
    line = one_error_line(run_cli("--pretrained_model_name_or_path", tiny_sd15, "--dataset_name", tiny_pairs,
                                  "--output_dir", tmp_path / "o", "--train_method", "kto", "--use_winner_preserving",
                                  "--winner_preserving_mu", "0.9"))  # fmt: skip
    assert "--use_winner_preserving" in line and "needs a winner/loser pair" in line and "kto" in line
    assert not (tmp_path / "o").exists()


def test_labelled_images_without_the_label_column_fail_before_model_load(tmp_path):
    write_pairs([{k: v for k, v in r.items() if k != "desirable"} for r in labelled_rows(4, 0)], tmp_path / "images")
    empty_model = tmp_path / "model"
    (empty_model / "unet").mkdir(parents=True)  # loading this would fail with another message
    line = one_error_line(run_cli("--pretrained_model_name_or_path", empty_model, "--dataset_name",
                                  tmp_path / "images", "--output_dir", tmp_path / "o", "--report_to", "none",
                                  "--train_method", "kto", "--kto_label_column", "desirable"))  # fmt: skip
    assert "lacks column(s) ['desirable']" in line and "--kto_label_column" in line
    assert not (tmp_path / "o").exists()
