"""Bad input to eval/generate.py fails with one line that says what is wrong and what to do."""

from __future__ import annotations

import json
import os
import pickle

import pytest
from generate_helpers import SIZE, build_models, model_args, write_prompts

from eval.generate import main


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("models"))


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_sdxl_weights_without_sdxl_flag(models, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.json", [{"prompt": "a"}])
    argv = [
        "--unet_path",
        str(models["sdxl_unet"]),
        "--pretrain_path",
        str(models["sd15"]),
        "--test_json",
        str(prompts),
    ]
    err = _fails([*argv, "--output_path", str(tmp_path), "--height", str(SIZE), "--width", str(SIZE)], capsys)
    # no flag in the hint: --sdxl with this SD1.5 base would be refused too (the base model is what must change)
    assert "looks like an SDXL UNet (family sdxl), the model is an SD1.5/SD2-style UNet: give the base model" in err
    assert "--sdxl" not in err
    assert " missing, " in err and " unexpected, " in err and "wrong-shape" in err
    assert not any(tmp_path.glob("p_seed0*/*.png"))


def test_sdxl_flag_with_an_sd15_base_model(models, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.json", [{"prompt": "a"}])
    argv = [*model_args(models, "sd15"), "--sdxl", "--test_json", str(prompts), "--output_path", str(tmp_path)]
    assert "SD1.5-style base model but --sdxl is on: drop --sdxl" in _fails(argv, capsys)


@pytest.mark.parametrize(
    "content, message",
    [
        ([{"prompt": "a"}, {"text": "b"}], "entry 1 has no 'prompt'"),
        ([{"prompt": "a"}, "b"], "entry 1 is a str, expected an object with 'prompt'"),
        ([{"prompt": 3}], "entry 0: 'prompt' must be a string"),
        ({"prompt": "a"}, "expected a JSON list of objects with 'prompt', found a dict"),
    ],
)
def test_malformed_prompt_file_names_the_entry(models, tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(content))
    err = _fails([*model_args(models, "sd15"), "--test_json", str(bad), "--output_path", str(tmp_path)], capsys)
    assert str(bad) in err and message in err


class _Payload:
    """Unpickling this would run ``os.system`` and create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unsafe_pickle_is_never_executed(models, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "unet.pth"
    evil.write_bytes(pickle.dumps({"conv_in.weight": _Payload(marker)}))
    prompts = write_prompts(tmp_path / "p.json", [{"prompt": "a"}])
    argv = ["--unet_path", str(evil), "--pretrain_path", str(models["sd15"]), "--test_json", str(prompts)]
    err = _fails([*argv, "--height", str(SIZE), "--width", str(SIZE)], capsys)
    assert "refused to load" in err and str(evil) in err
    assert not marker.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--height", "72"], "multiples of 16, got 72x64"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--batch_size", "0"], "--batch_size must be at least 1"),
        (["--dtype", "fp8"], "unknown dtype 'fp8'"),
    ],
)
def test_bad_settings(models, tmp_path, capsys, flags, message):
    prompts = write_prompts(tmp_path / "p.json", [{"prompt": "a"}])
    argv = [*model_args(models, "sd15"), "--test_json", str(prompts), "--output_path", str(tmp_path), *flags]
    assert message in _fails(argv, capsys)


def test_missing_base_model_says_where(models, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.json", [{"prompt": "a"}])
    argv = ["--unet_path", str(models["sd15_unet"]), "--pretrain_path", str(tmp_path / "nowhere")]
    err = _fails([*argv, "--test_json", str(prompts), "--height", "64", "--width", "64"], capsys)
    assert "cannot load the base UNet from" in err and "nowhere" in err


def test_refuses_to_mix_settings_in_one_folder(models, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.json", [{"prompt": "a"}])
    argv = [*model_args(models, "sd15"), "--test_json", str(prompts), "--output_path", str(tmp_path), "--steps", "1"]
    main(argv)
    capsys.readouterr()
    err = _fails([*argv, "--sampler", "pipeline"], capsys)
    assert "holds images made with sampler='reference', this run has sampler='pipeline'" in err


def test_no_weights_and_no_output_path_says_how_to_sample_the_base(models, capsys):
    argv = ["--pretrain_path", str(models["sd15"]), "--test_json", "prompts/papv2.json"]
    assert "or --output_path to sample the base model itself (a baseline)" in _fails(argv, capsys)
    assert "--max_prompts must be at least 1, got 0" in _fails([*argv, "--output_path", "x", "--max_prompts", "0"],
                                                               capsys)  # fmt: skip
