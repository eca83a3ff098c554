"""Bad input to python -m eval.geneval: one line on stderr, exit status 2, nothing scored."""

from __future__ import annotations

import argparse

import pytest
import torch
from PIL import Image

import eval.geneval.evaluate as evaluate
from eval.geneval import layout
from eval.geneval.sources import CHECKPOINT
from eval.geneval.tiny import tiny_detector, write_mmdet_checkpoint


def one_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        evaluate.main([*map(str, argv), "--device", "cpu"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def folder_with(tmp_path, row=None, image=True):
    root = tmp_path / "imgs"
    layout.write_prompt_metadata(
        root, 0, row or {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a dog"}
    )
    if image:
        Image.new("RGB", (32, 32)).save(layout.sample_path(root, 0, 0))
    return root


def test_missing_layout_folders(tmp_path, capsys):
    assert "no such folder" in one_error(capsys, tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "0_64x64.png")  # a reference-layout folder
    assert "no <index:05d>/ prompt folders" in one_error(capsys, tmp_path / "flat")
    root = folder_with(tmp_path)
    (root / "00000" / "metadata.jsonl").unlink()
    assert "00000/metadata.jsonl: missing" in one_error(capsys, root)
    root = folder_with(tmp_path / "b", image=False)
    assert "samples: missing or holds no <k>.png images" in one_error(capsys, root)


def test_unknown_class_names(tmp_path, capsys):
    row = {
        "tag": "two_object",
        "include": [{"class": "dog", "count": 1}, {"class": "dragon", "count": 1}],
        "prompt": "x",
    }
    err = one_error(capsys, folder_with(tmp_path, row))
    assert "00000/metadata.jsonl: include[1]: unknown class 'dragon'" in err
    assert not (tmp_path / "imgs.geneval.jsonl").exists()


@pytest.fixture(scope="module")
def tiny_sd():
    model = tiny_detector()
    return model, model.state_dict()


def _root_with(tmp_path, model, edit=None) -> str:
    path = write_mmdet_checkpoint(model, tmp_path / "models" / "geneval" / f"{CHECKPOINT}.pth")
    if edit:
        ckpt = torch.load(path, weights_only=True)
        edit(ckpt["state_dict"])
        torch.save(ckpt, path)
    return str(tmp_path / "models")


def test_checkpoint_of_the_wrong_shape(tmp_path, capsys, tiny_sd):
    model, _ = tiny_sd
    root = folder_with(tmp_path)

    def widen_qkv(sd):
        w = sd["backbone.stages.0.blocks.0.attn.w_msa.qkv.weight"]
        sd["backbone.stages.0.blocks.0.attn.w_msa.qkv.weight"] = torch.zeros(w.shape[0], w.shape[1] + 1)

    err = one_error(capsys, root, "--model_root", _root_with(tmp_path / "a", model, widen_qkv))
    assert "does not fit the Mask2Former detector (shape of" in err and "_proj.weight: (16, 17) vs (16, 16)" in err

    def fewer_classes(sd):
        for k in ("panoptic_head.cls_embed.weight", "panoptic_head.cls_embed.bias"):
            sd[k] = sd[k][:51]

    err = one_error(capsys, root, "--model_root", _root_with(tmp_path / "b", model, fewer_classes))
    assert "the class head has 50 classes, GenEval's detector has 80 (COCO)" in err


def test_checkpoint_that_is_not_plain_data_is_refused(tmp_path, capsys):
    root = folder_with(tmp_path)
    models = tmp_path / "models" / "geneval"
    models.mkdir(parents=True)
    torch.save({"state_dict": {}, "meta": argparse.Namespace(x=1)}, models / f"{CHECKPOINT}.pth")  # any object
    err = one_error(capsys, root, "--model_root", tmp_path / "models")
    assert "cannot be loaded as a checkpoint with weights_only=True" in err


def test_missing_detector_says_where_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SDPO_GENEVAL_DETECTOR", raising=False)
    err = one_error(capsys, folder_with(tmp_path), "--model_root", tmp_path / "empty")
    assert f"{CHECKPOINT}.pth not found" in err and "743b7d99" in err and "SDPO_GENEVAL_DETECTOR" in err
