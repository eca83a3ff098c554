"""Elastic resume arithmetic, the sample layout it relies on, the launch guard and the sharding flags (no
processes started here: tests/test_sharding.py runs them)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sdpo.checkpoint import elastic
from sdpo.config import parse_args
from sdpo.data import pairs as data
from sdpo.distributed.topology import check_launch
from sdpo.errors import UserError


def _cfg(batch=1, accumulation=1, sharding="none", streaming=False):
    return SimpleNamespace(train_batch_size=batch, gradient_accumulation_steps=accumulation, sharding=sharding,
                           streaming=streaming)  # fmt: skip


def _saved(n, b, a, epoch_samples=8, sharding="none"):
    return {**elastic.position_state(3, epoch_samples, _cfg(b, a, sharding), sharding, n), "step": 4}


def adopt(cfg, saved, num_processes, where):
    """``elastic.adopt``, applied to ``cfg`` as the loop applies it (the accumulation it answers)."""
    accumulation, line = elastic.adopt(cfg, cfg.sharding, cfg.streaming, saved, num_processes, where)
    cfg.gradient_accumulation_steps = accumulation
    return line


def test_same_shape_changes_nothing():
    cfg = _cfg(2, 4)
    assert adopt(cfg, _saved(2, 2, 4), 2, "checkpoint-4") is None
    assert cfg.gradient_accumulation_steps == 4


@pytest.mark.parametrize("n0, b0, a0, n, b, a", [(2, 1, 1, 1, 1, 2), (1, 2, 1, 2, 1, 1), (8, 1, 4, 16, 1, 2),
                                                 (16, 1, 32, 8, 2, 32), (3, 2, 2, 4, 3, 1)])  # fmt: skip
def test_other_process_count_keeps_the_global_batch(n0, b0, a0, n, b, a):
    cfg = _cfg(b, 7)  # whatever accumulation the new launch passed
    line = adopt(cfg, _saved(n0, b0, a0, epoch_samples=24), n, "checkpoint-4")
    assert cfg.gradient_accumulation_steps == a and n * b * a == n0 * b0 * a0
    assert f"now {n} process{'es' if n > 1 else ''} x {b} x {a}" in line
    assert f"same global batch {n0 * b0 * a0}, continuing epoch 3 at sample 24" in line


def test_impossible_global_batch_says_what_would_work():
    with pytest.raises(UserError) as e:
        adopt(_cfg(4), _saved(2, 3, 1), 4, "checkpoint-4")  # global batch 6 on 4 processes x 4
    msg = str(e.value)
    assert "\n" not in msg and "global batch 6 (2 processes x batch 3 x accumulation 1)" in msg
    assert "4 processes x batch 4 cannot make 6" in msg
    assert "resume on 1, 2, 3 or 6 processes with --train_batch_size 1" in msg
    with pytest.raises(UserError, match=r"with 2 processes use --train_batch_size 1, 3 or 9"):
        adopt(_cfg(2), _saved(3, 3, 2), 2, "checkpoint-4")  # 18 = 2 x b x a for b in 1, 3, 9
    with pytest.raises(UserError, match=r"with --train_batch_size 2 resume on 1 or 2 processes"):
        adopt(_cfg(2), _saved(1, 4, 1), 3, "checkpoint-4")


def test_checkpoint_format_must_match_the_strategy():
    with pytest.raises(UserError, match="written with --sharding fsdp; resume it with --sharding fsdp or hsdp"):
        adopt(_cfg(), _saved(2, 1, 1, sharding="fsdp"), 2, "checkpoint-4")
    with pytest.raises(UserError, match="written with --sharding none; resume it with --sharding none"):
        adopt(_cfg(sharding="hsdp"), _saved(2, 1, 1), 2, "checkpoint-4")
    assert adopt(_cfg(sharding="hsdp"), _saved(2, 1, 1, sharding="fsdp"), 2, "c") is None  # DCP reshards
    with pytest.raises(UserError, match="resume --streaming runs on 2 processes"):
        adopt(_cfg(streaming=True), _saved(2, 1, 1), 1, "checkpoint-4")


def test_old_checkpoints_count_micro_batches_of_the_same_shape():
    old = {"epoch": 1, "epoch_batches": 5, "nonfinite_total": 0, "step": 5}
    assert adopt(_cfg(2), old, 4, "checkpoint-5") is None
    assert elastic.saved_epoch_samples(old, 2, 4) == 5 * 2 * 4


def test_sampler_continues_at_a_sample_on_any_layout():
    """Two processes x batch 2 stop after 3 global batches; one process x batch 1 and three x batch 2
    take the rest of the epoch's permutation from sample 12, nothing skipped or repeated."""
    n, seed = 41, 5
    before = [data.ShardedPairSampler(n, 2, r, 2, seed) for r in (0, 1)]
    for s in before:
        s.set_epoch(2)
    done = [i for batches in zip(*before) for rank in batches for _, i in rank][:12]
    for world, batch in ((1, 1), (3, 2)):
        after = [data.ShardedPairSampler(n, batch, r, world, seed) for r in range(world)]
        for s in after:
            s.set_epoch(2, start_sample=12)
        rest = [i for batches in zip(*after) for rank in batches for _, i in rank]
        tail = (n - 12) % (world * batch)  # an incomplete last global batch is dropped, as always
        assert len(done + rest) == len(set(done + rest)) == n - tail
        whole = data.ShardedPairSampler(n, 1, 0, 1, seed)
        whole.set_epoch(2)
        assert done + rest == [i for (b,) in whole for _, i in [b]][: n - tail]  # the epoch's own order


class _Acc:
    def __init__(self, n, r=0, kind="NO"):
        self.num_processes, self.process_index, self.local_process_index = n, r, r
        self.distributed_type = SimpleNamespace(value=kind)


def test_launch_guard():
    check_launch(_Acc(1), {})  # plain python train.py
    check_launch(_Acc(2, 1, "MULTI_CPU"), {"WORLD_SIZE": "2", "RANK": "1"})
    with pytest.raises(UserError, match=r"started 2 processes \(WORLD_SIZE=2\) but accelerate runs 1 .*alone"):
        check_launch(_Acc(1), {"WORLD_SIZE": "2", "RANK": "0"})
    with pytest.raises(UserError, match="calls this process rank 1 .* accelerate calls it 0"):
        check_launch(_Acc(2, 0, "MULTI_GPU"), {"WORLD_SIZE": "2", "RANK": "1"})
    with pytest.raises(UserError, match="local rank 1 \\(LOCAL_RANK\\) but accelerate calls it 0"):
        check_launch(_Acc(2, 0, "MULTI_GPU"), {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "1"})


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dp_replicate", "2"], "--dp_replicate is the HSDP replica count; it needs --sharding hsdp"),
        (["--sharding", "hsdp", "--dp_replicate", "0"], "--dp_replicate must be >= 1"),
        (["--fsdp_reduce_dtype", "bf16"], "--fsdp_reduce_dtype only acts with --sharding fsdp or hsdp"),
        (["--sharding", "fsdp", "--use_winner_preserving", "--winner_preserving_mode", "param"],
         "the parameter-space lambda"),
        (["--sharding", "fsdp", "--use_winner_preserving", "--log_param_lambda"], "the parameter-space lambda"),
        (["--sharding", "fsdp", "--use_adafactor"], "Adafactor does not run on sharded (DTensor) parameters"),
    ],
)  # fmt: skip
def test_sharding_flags_refused_in_one_line(flags, message, tiny_sd15):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_args(["--pretrained_model_name_or_path", str(tiny_sd15), *flags])


def test_sharded_sdxl_defaults_to_adamw(tiny_sdxl):
    base = ["--pretrained_model_name_or_path", str(tiny_sdxl)]
    assert parse_args(base).optim.use_adafactor and not parse_args([*base, "--sharding", "fsdp"]).optim.use_adafactor
    assert parse_args([*base, "--sharding", "fsdp"]).dist.fsdp_reduce_dtype == "fp32"


@pytest.mark.parametrize("kind", ["sd15", "sdxl", "sd3", "flux"])
def test_every_family_names_blocks_that_exist(kind, request):
    """The FSDP units: each class the family names is in its (tiny) denoiser and holds most of its weights."""
    from sdpo.families import get_family

    family = get_family(kind)
    folder = request.getfixturevalue(f"tiny_{kind}")
    model = family.denoiser_class().from_pretrained(folder, subfolder=family.denoiser_folder)
    assert set(family.shard_blocks) <= {type(m).__name__ for m in model.modules()}
    in_blocks = {id(p) for m in model.modules() if type(m).__name__ in family.shard_blocks for p in m.parameters()}
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in model.parameters() if id(p) in in_blocks) > 0.3 * total
