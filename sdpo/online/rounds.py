"""The round driver: round 0 (the base model's held-out evaluation), then rounds 1..R of the algorithm's stages.

For every stage of every round: if its record says done, it is skipped (a finished round is never
recomputed); otherwise it runs in every launched process, its wall time and peak memory are measured, and the
main process records it as done, last.  A killed driver rerun with the same command so resumes inside the stage
it was in.  After a round: its summary (``summary.json``, one line of ``rounds.jsonl``), the image statistics,
and the reward-hacking check (one warning line; ``--stop_on_divergence`` ends the run there).
"""

from __future__ import annotations

import time
from pathlib import Path

from sdpo.online import layout, memory
from sdpo.online.algorithms import ALGORITHMS, EVAL
from sdpo.online.context import RoundContext
from sdpo.online.divergence import warning
from sdpo.online.media import make_media
from sdpo.online.options import identity, parse
from sdpo.online.procs import current
from sdpo.online.sample import remove_stale_temps


def say(procs, text: str) -> None:
    if procs.is_main:
        print(text, flush=True)


def run_stage(ctx: RoundContext, stage) -> bool:
    """Run ``stage`` unless done; returns whether it ran."""
    folder = ctx.folder
    ctx.procs.barrier()
    if folder.done(stage.name):
        ctx.results[stage.name] = folder.stages()[stage.name].get("result")
        return False
    ctx.procs = current()
    if ctx.procs.is_main:
        attempts = folder.stages().get(stage.name, {}).get("attempts", 0) + 1
        folder.record(stage.name, done=False, attempts=attempts)
    at_start = memory.reset_peak(ctx.procs.device)
    start = time.perf_counter()
    result = stage.run(ctx)
    seconds = time.perf_counter() - start
    ctx.procs = current()  # a training stage resets accelerate's state
    peak = memory.peak_mb(ctx.procs.device, at_start)
    if ctx.procs.is_main:
        folder.record(stage.name, done=True, seconds=round(seconds, 3), peak=peak, result=result)
        say(ctx.procs, f"[{folder.name}] {stage.name}: {seconds:.1f} s, peak {_peak_text(peak)}  {_brief(result)}")
    ctx.procs.barrier()
    ctx.results[stage.name] = folder.stages()[stage.name].get("result")
    return True


def _peak_text(peak: dict) -> str:
    text = f"host {peak['host_mb']:.0f} MB"
    if "host_start_mb" in peak:
        text += f" ({peak['host_mb'] - peak['host_start_mb']:+.0f} over its start)"
    return text + (f", device {peak['device_mb']:.0f} MB" if "device_mb" in peak else "")


def _brief(result: dict | None) -> str:
    if not result:
        return ""
    keys = ("samples", "reward_mean", "pairs_kept", "pairs_dropped", "steps", "mean_lambda", "kl", "heldout_reward_mean",
            "heldout_trained_reward_mean", "win_rate_vs_round0")  # fmt: skip
    return ", ".join(f"{k} {result[k]:.4g}" if isinstance(result[k], float) else f"{k} {result[k]}"
                     for k in keys if result.get(k) is not None)  # fmt: skip


def summarise(ctx: RoundContext) -> dict:
    """The round's line of rounds.jsonl: its stages' summaries flattened, plus time and memory per stage."""
    stages = ctx.folder.stages()
    res = {k: (v.get("result") or {}) for k, v in stages.items()}
    row: dict = {"round": ctx.round}
    sc = res.get("scores", {})
    if sc:
        row.update(prompts=res["samples"]["prompts"], samples=res["samples"]["samples"], reward=sc["reward"],
                   train_reward_mean=sc["reward_mean"], train_reward_max=sc["reward_max"],
                   train_reward_min=sc["reward_min"], saturation=sc.get("saturation"), contrast=sc.get("contrast"),
                   near_constant=sc.get("near_constant"))  # fmt: skip
    for key in ("pairs_kept", "pairs_dropped", "ties", "below_gap"):
        if key in res.get("pairs", {}):
            row[key] = res["pairs"][key]
    tr = res.get("train", {})
    for key in ("weights", "steps", "train_loss", "implicit_acc", "mean_lambda", "kl", "clipfrac"):
        if key in tr:
            row[key] = tr[key]
    row.update(res.get("eval", {}))
    row["seconds"] = {k: v.get("seconds") for k, v in stages.items()}
    row["peak_mb"] = {k: v.get("peak") for k, v in stages.items()}
    return row


def run_round(ctx: RoundContext, stages, stop_after: str | None) -> bool:
    """The round's stages; returns False when ``stop_after`` ended it early."""
    if ctx.procs.is_main:  # what a killed writer left behind (sdpo.atomic's temporary names)
        for folder in (ctx.folder.root, ctx.folder.pairs):
            remove_stale_temps(folder)
    for stage in stages:
        run_stage(ctx, stage)
        if stop_after == stage.name:
            return False
    if ctx.procs.is_main and ctx.folder.summary() is None:
        from sdpo.atomic import write_json

        write_json(ctx.folder.summary_file, summarise(ctx))
    ctx.procs.barrier()
    return True


def run_online(argv: list[str]) -> Path:
    """``python -m sdpo.online ARGV``: run or resume every round; returns the run folder."""
    from sdpo.sampling.prompts import read_prompt_spec

    opts, cfg = parse(argv)
    prompts = read_prompt_spec(opts.prompts, "--prompts")
    heldout = read_prompt_spec(opts.heldout_prompts, "--heldout_prompts") if opts.heldout_prompts else []
    procs = current()
    existed = layout.bind(opts.out, identity(opts, cfg, prompts, heldout), write=procs.is_main)  # before any write
    procs.barrier()
    algorithm = ALGORITHMS[opts.algorithm]
    media = make_media(cfg, opts)

    def context(r: int) -> RoundContext:
        return RoundContext(opts, cfg, media, opts.out, layout.RoundFolder(opts.out, r), prompts, heldout, current())

    rows = layout.read_jsonl(opts.out / layout.ROUNDS)
    done_rounds = {r["round"] for r in rows}
    last = max((r for r in done_rounds if r >= 1), default=0)
    if existed and last >= opts.rounds and (not heldout or 0 in done_rounds) and opts.stop_after is None:
        say(procs, f"{opts.out}: all {opts.rounds} rounds are done; nothing to do (raise --rounds to continue)")
        return opts.out
    if not heldout:
        say(procs, "note: no --heldout_prompts, so no held-out evaluation and no reward-hacking check")
    elif opts.stop_on_divergence and _diverged(opts, rows, procs):
        return opts.out
    tail = (EVAL,) if heldout else ()
    if heldout:
        run_round(context(0), (EVAL,), None)
    for r in range(1, opts.rounds + 1):
        ctx = context(r)
        stop = opts.stop_after if r == opts.rounds else None
        if not run_round(ctx, algorithm.stages + tail, stop):
            say(procs, f"stopped after {ctx.folder.name}'s {stop} stage (--stop_after); rerun without it to go on")
            return opts.out
        rows = layout.write_rounds(opts.out) if procs.is_main else []
        procs.barrier()
        rows = layout.read_jsonl(opts.out / layout.ROUNDS)
        if heldout and _diverged(opts, rows, procs) and opts.stop_on_divergence:
            return opts.out
    say(procs, f"{opts.out}: {opts.rounds} rounds done; per-round numbers in {opts.out / layout.ROUNDS}")
    if heldout:  # eval/ builds the page (the core never imports eval/)
        say(procs, f"report of the held-out images per round: python -m eval.report {opts.out} --out {opts.out / 'report'}")
    return opts.out


def _diverged(opts, rows: list[dict], procs) -> bool:
    line = warning(rows, opts.patience, opts.reward, opts.heldout_reward)
    if line is None:
        return False
    say(procs, line)
    if opts.stop_on_divergence:
        say(procs, f"stopped after round {rows[-1]['round']} (--stop_on_divergence); rerun without it to continue")
    return True
