"""End-to-end tiny runs of train.py for every core objective: outputs, logs, checkpoints, resume."""

import json
import shutil

import pytest
import torch
from conftest import tiny_flags
from diffusers import UNet2DConditionModel

from sdpo.training.metrics import read_jsonl

METHODS = ["diffusion-dpo", "dspo", "dmpo", "sft"]


def extra_for(method):
    flags = ["--train_method", method]
    if method != "sft":
        flags += ["--use_winner_preserving", "--winner_preserving_mu", "0.9" if method != "dspo" else "0.2"]
    if method == "dspo":
        flags += ["--beta_dpo", "0.001"]
    if method == "dmpo":
        flags += ["--dmpo_alpha", "0.01"]
    return flags


@pytest.mark.parametrize("method", METHODS)
def test_tiny_run_writes_loadable_unet_logs_lambda_and_resumes(method, tiny_sd15, tiny_pairs, tmp_path, run_train,
                                                               monkeypatch, caplog):  # fmt: skip
    out = tmp_path / "run"
    flags = tiny_flags(tiny_sd15, tiny_pairs, out, *extra_for(method))
    final = run_train(*flags)

    assert final == out / "unet.pth"
    assert json.loads((out / "run_config.json").read_text())["train_method"] == method  # what the run was
    state = torch.load(final, map_location="cpu", weights_only=True)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
    init = {k: v.clone() for k, v in unet.state_dict().items()}
    assert unet.load_state_dict(state, strict=True).missing_keys == []
    assert any(not torch.equal(state[k], init[k]) for k in init)  # training moved the weights
    reloaded = UNet2DConditionModel.from_pretrained(out / "unet")  # the diffusers copy matches
    assert all(torch.equal(v, state[k]) for k, v in reloaded.state_dict().items())

    logs = read_jsonl(out)
    assert [r["step"] for r in logs] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in logs)
    if method != "sft":
        for r in logs:
            assert 0.0 <= r["avg_lose_l_scale"] <= 1.0
            assert {"implicit_acc_accumulated", "avg_win_diff_loss", "avg_lose_diff_loss"} <= set(r)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert json.loads((out / "checkpoint-2" / "training_state.json").read_text())["step"] == 2

    # Second invocation: lose the last checkpoint and the final weights, resume from checkpoint-2.
    shutil.rmtree(out / "checkpoint-4")
    (out / "unet.pth").unlink()
    import sdpo.training.loop

    calls = []
    real_forward = sdpo.training.loop.preference_forward
    monkeypatch.setattr(
        sdpo.training.loop, "preference_forward", lambda *a, **k: calls.append(1) or real_forward(*a, **k)
    )
    with caplog.at_level("INFO", logger="sdpo"):
        run_train(*flags)
    assert "resumed from" in caplog.text and "checkpoint-2 at step 2" in caplog.text
    assert len(calls) == 2  # only steps 3 and 4 were trained again
    resumed = torch.load(out / "unet.pth", map_location="cpu", weights_only=True)
    assert all(torch.equal(resumed[k], state[k]) for k in state), "resumed run differs from the uninterrupted one"
    assert [r["step"] for r in read_jsonl(out)] == [1, 2, 3, 4]


def test_gradient_accumulation_matches_bigger_batch(tiny_sd15, tiny_pairs, tmp_path, run_train):
    """batch 2 x accumulation 2 takes the same first step as batch 4 for a per-pair-mean objective.

    The two gradients are equal up to float32 summation order only (two micro-batch sums added, or one
    sum): up to 1.1e-5 apart where |g| reaches 2.9, and a gradient of +-2e-8 can come out with either
    sign (measured).  AdamW's first step is ``lr * g / (|g| + eps)``: with the default eps 1e-8 that
    turns such a sign into +-lr (the weights then differ by up to 1.3e-4, or 2.6e-6, depending on which
    MKL kernels ran), so no tolerance below 2 lr would hold.  eps 1e-2 makes the step a function of g
    with slope at most lr / eps, so the weights differ by at most 1e-4 * 1.1e-5 / 1e-2 = 1.1e-7 (2e-8
    measured).  The step also stays proportional to g below |g| ~ 1e-2, so a wrong accumulation scale
    moves those weights by far more than the tolerance (the default step is nearly scale-free)."""
    common = ["--train_method", "diffusion-dpo", "--max_train_steps", "1", "--max_grad_norm", "0",
              "--adam_epsilon", "1e-2"]  # fmt: skip
    a = run_train(*tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "a", *common, "--gradient_accumulation_steps", "2"))
    b = run_train(*tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "b", *common, "--train_batch_size", "4"))
    sa, sb = (torch.load(p, weights_only=True) for p in (a, b))
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=1e-6, rtol=1e-5)


def test_streaming_run_trains_and_resumes(tiny_sd15, tmp_path, run_train, caplog):
    """--streaming reads the parquet shards as a stream (no full download) and resumes by row count."""
    from sdpo.tiny import build_tiny_pairs

    pairs = build_tiny_pairs(tmp_path / "pairs", n=40, seed=4)
    out = tmp_path / "run"
    flags = tiny_flags(tiny_sd15, pairs, out, "--streaming", "--streaming_buffer_size", "16", "--max_train_steps", "3",
                       "--checkpointing_steps", "2")  # fmt: skip
    run_train(*flags)
    assert [r["step"] for r in read_jsonl(out)] == [1, 2, 3]
    assert json.loads((out / "checkpoint-2" / "training_state.json").read_text())["epoch_batches"] == 2
    shutil.rmtree(out / "checkpoint-3")
    with caplog.at_level("INFO", logger="sdpo"):
        run_train(*flags)
    assert "checkpoint-2 at step 2" in caplog.text
    assert (out / "checkpoint-3").is_dir() and (out / "unet.pth").is_file()


def test_num_train_epochs_is_one_pass_over_the_non_tie_pairs(tiny_sd15, tmp_path, run_train, monkeypatch):
    """--num_train_epochs 1 on 32 tiny pairs (4 ties) at batch 2: 14 steps, every kept pair exactly once; with a
    --max_train_steps that disagrees, one line before any step."""
    from sdpo.errors import UserError
    from sdpo.tiny import build_tiny_pairs

    pairs = build_tiny_pairs(tmp_path / "pairs", n=32)
    flags = tiny_flags(tiny_sd15, pairs, tmp_path / "run", "--train_method", "sft", "--checkpointing_steps", "100")
    at = flags.index("--max_train_steps")
    del flags[at : at + 2]
    monkeypatch.setenv("SDPO_RANK_TRACE_DIR", str(tmp_path / "trace"))
    run_train(*flags, "--num_train_epochs", "1")
    assert [r["step"] for r in read_jsonl(tmp_path / "run")] == list(range(1, 15))
    batches = [json.loads(line) for line in (tmp_path / "trace" / "rank0.jsonl").read_text().splitlines()]
    assert sorted(i for b in batches for i in b["indices"]) == list(range(28))  # 28 non-tie pairs, once each
    monkeypatch.delenv("SDPO_RANK_TRACE_DIR")
    with pytest.raises(UserError, match=r"--num_train_epochs 1 is 14 optimizer steps here .*--max_train_steps is 5"):
        run_train(*[f if f != str(tmp_path / "run") else str(tmp_path / "other") for f in flags],
                  "--num_train_epochs", "1", "--max_train_steps", "5")  # fmt: skip
    assert not (tmp_path / "other").exists()
