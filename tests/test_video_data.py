"""Video preference pairs: the three index formats, broken videos, frame sampling, winner first."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sdpo.data import pairs as data
from sdpo.data.video_io import read_frames, write_mp4
from sdpo.tiny.video import moving_shape, tiny_video_rows, write_video_pairs


def vcfg(source, **over):
    c = SimpleNamespace(
        dataset_name=str(source), train_data_dir=None, split="train", cache_dir=None, streaming=False,
        model_family="cogvideox", video_pairs_format="auto", videoalign_dimension="VQ", num_frames=9, frame_stride=1,
        height=32, width=32, resolution=32, random_crop=False, no_hflip=False, joint_augment=True, video=True,
        proportion_empty_prompts=0.0, seed=0, data_check=True, max_bad_fraction=0.5, max_train_samples=None,
        dataloader_num_workers=0,
    )  # fmt: skip
    c.__dict__.update(over)
    return c


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Six clip pairs (the last a tie) written once; each test writes its own index over them."""
    root = tmp_path_factory.mktemp("clips")
    return root, tiny_video_rows(root, n=6, frames=9, size=32, seed=3, tie_every=6)


def _pairs(ds) -> set[tuple[str, str, str]]:
    """(caption, winner, loser) for the non-tie rows."""
    out = set()
    for r in ds:
        if r["label_0"] in (0.0, 1.0):
            w, l_ = (r["video_0"], r["video_1"]) if r["label_0"] == 1.0 else (r["video_1"], r["video_0"])
            out.add((r["caption"], w, l_))
    return out


def test_the_three_formats_load_the_same_pairs(clips):
    root, rows = clips
    loaded = {}
    for fmt in ("parquet", "videodpo", "videoalign"):
        source = write_video_pairs(root, rows, fmt)
        loaded[fmt] = data.clean_pairs(data.load_pairs(vcfg(source, video_pairs_format=fmt)), vcfg(source))
    expected = {(r["caption"], str(root / (r["video_0"] if r["label_0"] == 1.0 else r["video_1"])),
                 str(root / (r["video_1"] if r["label_0"] == 1.0 else r["video_0"]))) for r in rows if r["label_0"] != 0.5}  # fmt: skip
    assert len(expected) == 5
    for fmt, ds in loaded.items():
        assert len(ds) == 5 and _pairs(ds) == expected, fmt
    # auto-detection: pair.json wins in a folder holding all three; a .csv file is VideoAlign
    from sdpo.data.video_pairs import detect_format

    assert detect_format(root) == "videodpo" and detect_format(root / "train.csv") == "videoalign"
    assert detect_format(root / "data") == "parquet"


def test_videoalign_dimension_chooses_the_vote_and_same_is_a_tie(tmp_path, clips):
    import pandas as pd

    root, rows = clips
    r = rows[0]
    table = [{"path_A": str(root / r["video_0"]), "path_B": str(root / r["video_1"]), "prompt": "p", "VQ": "A",
              "MQ": "B", "TA": "same"}, {"path_A": str(root / r["video_0"]), "path_B": str(root / r["video_1"]),
              "prompt": "q", "VQ": "invalid", "MQ": "A", "TA": "A"}]  # fmt: skip
    pd.DataFrame(table).to_csv(tmp_path / "x.csv", index=False)
    labels = {d: list(data.load_pairs(vcfg(tmp_path / "x.csv", videoalign_dimension=d))["label_0"])
              for d in ("VQ", "MQ", "TA")}  # fmt: skip
    assert labels["MQ"] == [0.0, 1.0] and labels["TA"][0] == 0.5
    assert labels["VQ"][0] == 1.0 and np.isnan(labels["VQ"][1])  # 'invalid' -> a bad label, dropped by the check


def test_videodpo_indices_resolve_through_metadata_and_label_0_means_video1_wins(clips):
    root, rows = clips
    write_video_pairs(root, rows, "videodpo")
    pairs = json.loads((root / "pair.json").read_text())
    ds = data.load_pairs(vcfg(root, video_pairs_format="videodpo"))
    first = next(i for i, p in enumerate(pairs) if p["label"] == 1)
    meta = json.loads((root / "metadata.json").read_text())
    assert ds[first]["video_0"] == str(root / meta[pairs[first]["video1"]]["basic"]["clip_path"])
    assert ds[first]["label_0"] == 0.0  # label 1: video2 preferred
    del pairs[0]["label"]  # VideoDPO's own loader: no label -> video1 is the winner
    (root / "pair.json").write_text(json.dumps(pairs))
    assert data.load_pairs(vcfg(root, video_pairs_format="videodpo"))[0]["label_0"] == 1.0


def test_broken_videos_are_dropped_and_counted(tmp_path, clips, caplog):
    root, rows = clips
    (tmp_path / "garbage.mp4").write_bytes(b"not a video" * 20)
    with_short = tmp_path / "short.mp4"
    write_mp4(moving_shape("circle", (200, 0, 0), "left", 3, 32), with_short, fps=8)
    good = [dict(r, video_0=str(root / r["video_0"]), video_1=str(root / r["video_1"])) for r in rows[:5]]
    bad = [dict(good[0], video_1=str(tmp_path / "garbage.mp4")), dict(good[1], video_0=str(tmp_path / "nope.mp4")),
           dict(good[2], video_0=str(with_short))]  # fmt: skip
    source = write_video_pairs(tmp_path, good + bad, "parquet")
    with caplog.at_level("WARNING"):
        ds = data.clean_pairs(data.load_pairs(vcfg(source)), vcfg(source))
    assert len(ds) == 5
    assert "skipped 3/8 broken rows" in caplog.text
    for reason, row in (("undecodable video: 1 (rows 5)", 5), ("missing video file: 1 (rows 6)", 6),
                        ("video too short: 1 (rows 7)", 7)):  # fmt: skip
        assert reason in caplog.text, (row, caplog.text)


def _centroid_x(frames: torch.Tensor) -> np.ndarray:
    """x position of the coloured pixels per frame (the background is light grey)."""
    x = (frames + 1) * 127.5  # (F, 3, H, W)
    mask = (x.max(dim=1).values - x.min(dim=1).values) > 80  # saturated colour
    cols = torch.arange(x.shape[-1], dtype=torch.float32)
    return np.array([float((m.float() * cols).sum() / m.float().sum()) for m in mask])


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_winner_first_moves_as_the_caption_says_and_frames_follow_the_stride(tmp_path, label):
    from sdpo.data.video_pairs import VideoPairTransform

    right = moving_shape("square", (40, 70, 220), "right", 9, 48)
    left = moving_shape("square", (40, 70, 220), "left", 9, 48)
    paths = [tmp_path / "r.mp4", tmp_path / "l.mp4"]
    for p, clip in zip(paths, (right, left)):
        write_mp4(clip, p, fps=8)
    v0, v1 = (paths[0], paths[1]) if label == 1.0 else (paths[1], paths[0])
    row = {"video_0": str(v0), "video_1": str(v1), "label_0": label, "caption": "a blue square moving right"}
    sample = VideoPairTransform(vcfg("unused", num_frames=5, frame_stride=2))(row, epoch=0, index=0)
    pixels = sample["pixel_values"]
    assert pixels.shape == (2, 5, 3, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1
    assert np.all(np.diff(_centroid_x(pixels[0])) > 0) and np.all(np.diff(_centroid_x(pixels[1])) < 0)
    # frames 0, 2, 4, 6, 8 of the winner, scaled from 48 to 32 px (a 48 px square needs no crop)
    import torchvision.transforms.v2.functional as TF

    ref = torch.from_numpy(read_frames(paths[0], [0, 2, 4, 6, 8])).permute(0, 3, 1, 2)
    ref = TF.resize(ref, [32, 32], interpolation=TF.InterpolationMode.BILINEAR, antialias=True).float() / 127.5 - 1
    torch.testing.assert_close(pixels[0], ref)


def test_frame_folders_read_like_videos(tmp_path):
    from PIL import Image

    clip = moving_shape("circle", (220, 40, 40), "down", 5, 32)
    (tmp_path / "f").mkdir()
    for k, f in enumerate(clip):
        Image.fromarray(f).save(tmp_path / "f" / f"{k:03d}.png")
    assert np.array_equal(read_frames(tmp_path / "f"), clip)
    assert np.array_equal(read_frames(tmp_path / "f", [4, 1]), clip[[4, 1]])
