"""eval/generate.py --images_per_prompt and --layout geneval on a tiny SD1.5: GenEval's folder layout from its
metadata JSONL, image k of every prompt from seed + k, and images that do not depend on the batch size."""

from __future__ import annotations

import json

import pytest
import torch
from generate_helpers import SIZE, STEPS, build_models, model_args

from eval.generate import build_parser, main
from eval.geneval import layout
from sdpo.sampling.prompts import read_manifest

ROWS = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "pink"}], "prompt": "a photo of a pink car"},
    {
        "tag": "single_object",
        "include": [{"class": "bench", "count": 2}],
        "prompt": "a photo of a bench",
    },  # same prompt
]
NAME = f"geneval_seed0_{SIZE}x{SIZE}_{STEPS}s_7.5cfg_2img"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("models"), ("sd15",))


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "evaluation_metadata.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_a_seed_per_prompt_draws_each_latent_alone(models):
    from sdpo.families import get_family
    from sdpo.sampling.images import generate_images

    comp = get_family("sd15").load_sampling_components(str(models["sd15"]), None, "cpu", torch.float32)
    both = generate_images(comp, ["a red cube", "a blue ball"], SIZE, SIZE, STEPS, 7.5, [3, 5])
    alone = [
        generate_images(comp, [p], SIZE, SIZE, STEPS, 7.5, s)[0] for p, s in (("a red cube", 3), ("a blue ball", 5))
    ]
    assert [im.tobytes() for im in both] == [im.tobytes() for im in alone]
    same_seed = generate_images(comp, ["a red cube", "a red cube"], SIZE, SIZE, STEPS, 7.5, [3, 4])
    assert same_seed[0].tobytes() == both[0].tobytes() and same_seed[1].tobytes() != both[0].tobytes()
    with pytest.raises(ValueError, match="2 seeds for 1 prompts"):
        generate_images(comp, ["x"], SIZE, SIZE, STEPS, 7.5, [1, 2])


def test_geneval_layout_from_the_official_metadata(models, metadata, tmp_path, capsys):
    args = [
        *model_args(models, "sd15"),
        "--test_json",
        str(metadata),
        "--layout",
        "geneval",
        "--images_per_prompt",
        "2",
    ]
    manifest = main([*args, "--batch_size", "4", "--output_path", str(tmp_path / "a")])
    folder = tmp_path / "a" / NAME
    assert manifest == tmp_path / "a" / f"{NAME}.json"
    assert "generated 6 images (0 already present)" in capsys.readouterr().out
    for i, row in enumerate(ROWS):
        assert json.loads((folder / f"{i:05d}" / "metadata.jsonl").read_text()) == row  # the row itself
        assert sorted(p.name for p in (folder / f"{i:05d}" / "samples").iterdir()) == ["0000.png", "0001.png"]
    # The evaluator reads the folder as it is (the official one would too: digit folders, \d+.png).
    samples = layout.scan(folder)
    assert [(s.index, s.k, s.metadata) for s in samples] == [(i, k, ROWS[i]) for i in range(3) for k in range(2)]
    # One manifest entry per image, so the reward models can score the same images.
    entries = read_manifest(manifest)
    assert [(e["prompt"], e["metadata"]) for e in entries] == [
        (r["prompt"], {**r, "sample": k}) for r in ROWS for k in range(2)
    ]
    assert entries[3]["gen_image_path"] == str(folder / "00001" / "samples" / "0001.png")

    # Batch size 1 elsewhere: the same bytes. Image k of every prompt starts from seed + k: the repeated
    # prompt's images equal the first's, and a prompt's two images differ.
    main([*args, "--batch_size", "1", "--output_path", str(tmp_path / "b")])
    png = lambda root, i, k: layout.sample_path(root / NAME, i, k).read_bytes()  # noqa: E731
    for i in range(3):
        for k in range(2):
            assert png(tmp_path / "a", i, k) == png(tmp_path / "b", i, k), f"prompt {i} image {k} depends on batching"
    assert png(tmp_path / "a", 2, 0) == png(tmp_path / "a", 0, 0) and png(tmp_path / "a", 2, 1) == png(
        tmp_path / "a", 0, 1
    )
    assert png(tmp_path / "a", 0, 0) != png(tmp_path / "a", 0, 1)

    # A rerun has nothing to do.
    main([*args, "--output_path", str(tmp_path / "a")])
    assert "generated 0 images (6 already present)" in capsys.readouterr().out


def test_several_images_in_the_reference_layout_and_defaults(models, tmp_path):
    a = build_parser().parse_args(["--unet_path", "x", "--layout", "geneval"])
    from eval.generate import _validate, image_path, layout_set_name

    _validate(a)
    assert a.images_per_prompt == 4  # GenEval's protocol
    assert layout_set_name("prompts/geneval/evaluation_metadata.jsonl") == "geneval"
    assert image_path(tmp_path, "reference", 3, 1, 2, 64, 64).name == "3_1_64x64.png"
    assert image_path(tmp_path, "reference", 3, 0, 1, 64, 64).name == "3_64x64.png"  # one image: unchanged names
    assert image_path(tmp_path, "geneval", 3, 1, 4, 64, 64) == tmp_path / "00003" / "samples" / "0001.png"
