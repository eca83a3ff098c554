"""Video generation (batch invariance, manifest, resume), temporal flickering, the VBench layout."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from sdpo.data.video_io import mp4_comment, probe

PROMPTS = ["a red circle moving right", "a blue square moving up", "a red circle moving right"]


@pytest.mark.parametrize("family, frames", [("cogvideox", 9), ("wan", 5)])
def test_video_generation_is_batch_invariant_and_resumable(family, frames, tiny_cogvideox, tiny_wan, tmp_path,
                                                           capsys):  # fmt: skip
    from eval.generate import main

    model = {"cogvideox": tiny_cogvideox, "wan": tiny_wan}[family]
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([{"prompt": p} for p in PROMPTS]))
    base = ["--weights_path", str(model), "--pretrain_path", str(model), "--test_json", str(prompts), "--height", "32",
            "--width", "32", "--num_frames", str(frames), "--steps", "2"]  # fmt: skip
    manifests = [main([*base, "--batch_size", str(b), "--output_path", str(tmp_path / f"b{b}")]) for b in (1, 2)]
    cfg = {"cogvideox": 6.0, "wan": 5.0}[family]
    name = f"p_seed0_32x32_{frames}f_2s_{cfg}cfg"
    assert manifests[0] == tmp_path / "b1" / f"{name}.json"
    one, two = (sorted((tmp_path / f"b{b}" / name).glob("*.mp4")) for b in (1, 2))
    assert [p.name for p in one] == [p.name for p in two] == ["0_32x32.mp4", "1_32x32.mp4", "2_32x32.mp4"]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))  # batch 1 vs 2: byte-equal videos
    assert one[0].read_bytes() == one[2].read_bytes() != one[1].read_bytes()  # same prompt, same video
    assert probe(one[1]) == (frames, 32, 32) and mp4_comment(one[1]) == PROMPTS[1]
    entries = json.loads(manifests[0].read_text())
    assert [e["prompt"] for e in entries] == PROMPTS
    assert entries[1]["gen_video_path"] == str(one[1].absolute())
    assert entries[1]["metadata"] == {"model_family": family, "media": "video", "num_frames": frames,
                                      "fps": {"cogvideox": 8, "wan": 16}[family], "guidance": cfg,
                                      "guidance_kind": "classifier-free guidance, diffusers scale"}  # fmt: skip
    # resume: a deleted video is the only one made again
    before = {p.name: p.stat().st_mtime_ns for p in one}
    one[1].unlink()
    capsys.readouterr()
    main([*base, "--output_path", str(tmp_path / "b1")])
    assert "generated 1 videos (2 already present)" in capsys.readouterr().out
    assert one[1].read_bytes() == two[1].read_bytes()
    assert {p.name: p.stat().st_mtime_ns for p in (one[0], one[2])} == {
        k: before[k] for k in (one[0].name, one[2].name)
    }


def test_wrong_generation_frame_count_is_one_line(tiny_wan, tmp_path, capsys):
    from eval.generate import main

    with pytest.raises(SystemExit) as e:
        main(["--weights_path", str(tiny_wan), "--pretrain_path", str(tiny_wan), "--num_frames", "6"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--num_frames 6 does not work for wan" in err


def _frame_folder(folder, frames: np.ndarray):
    folder.mkdir()
    for k, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{k:02d}.png")


def test_temporal_flickering_equals_a_hand_computation(tmp_path):
    from eval.temporal_flickering import temporal_flickering
    from eval.video_score import main as score

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 3, 5, 3), dtype=np.uint8)
    # by hand: mean over consecutive pairs of the mean absolute difference over every pixel and channel
    diffs = []
    for t in range(3):
        total = 0
        for y in range(3):
            for x in range(5):
                for c in range(3):
                    total += abs(int(frames[t + 1, y, x, c]) - int(frames[t, y, x, c]))
        diffs.append(total / 45)
    expected = (255 - sum(diffs) / 3) / 255
    assert temporal_flickering(frames) == pytest.approx(expected, rel=1e-6)
    steady = np.stack([np.full((3, 5, 3), v, dtype=np.uint8) for v in (10, 30, 20)])
    assert temporal_flickering(steady) == pytest.approx((255 - 15) / 255, rel=1e-6)

    # the CLI, on a manifest whose "videos" are frame folders (lossless, so the numbers are exact)
    _frame_folder(tmp_path / "a", frames)
    _frame_folder(tmp_path / "b", steady)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"prompt": "x", "gen_image_path": "a", "gen_video_path": "a"},
                                    {"prompt": "y", "gen_image_path": "b"}]))  # fmt: skip
    result = score(["--json_path", str(manifest)])
    assert [r["temporal_flickering"] for r in result["videos"]] == pytest.approx([expected, 240 / 255], rel=1e-6)
    saved = json.loads((tmp_path / "m.video_scores.json").read_text())
    assert saved["mean"]["temporal_flickering"] == pytest.approx((expected + 240 / 255) / 2, rel=1e-6)


def test_vbench_layout_names_videos_prompt_dash_index(tmp_path):
    from eval.vbench_layout import lay_out, main, prompts_from_txt

    (tmp_path / "v").mkdir()
    manifests = []
    for k in range(2):
        entries = []
        for i, p in enumerate(("a cat", "a dog")):
            f = tmp_path / "v" / f"{k}_{i}.mp4"
            f.write_bytes(f"{k}{i}".encode())
            entries.append({"prompt": p, "gen_image_path": str(f), "gen_video_path": str(f)})
        manifests.append(tmp_path / f"m{k}.json")
        manifests[-1].write_text(json.dumps(entries))
    assert lay_out(manifests, tmp_path / "out") == 4
    assert (tmp_path / "out" / "a dog-1.mp4").read_bytes() == b"11"
    assert os.path.islink(tmp_path / "out" / "a cat-0.mp4")
    (tmp_path / "p.txt").write_text("a cat\n\na dog\n")
    assert prompts_from_txt(tmp_path / "p.txt", tmp_path / "p.json") == 2
    assert json.loads((tmp_path / "p.json").read_text()) == [{"prompt": "a cat"}, {"prompt": "a dog"}]
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps([{"prompt": "a cat", "gen_image_path": "x"}] * 2))
    with pytest.raises(SystemExit):
        main(["videos", "--manifests", str(dup), "--out", str(tmp_path / "o2")])
