"""The driver's own flags, the train.py flags it passes on, and what a run folder's configuration is.

    python -m sdpo.online --out DIR --rounds R --prompts FILE --samples_per_prompt K
        (--steps_per_round S | --epochs_per_round E) --reward NAME [--reward_model_root DIR]
        [--heldout_prompts FILE --heldout_reward NAME] [driver flags] [train.py flags]

Every flag the driver does not know goes to ``train.py`` and is checked by its parser now, before anything is
loaded or written (with the round's data and output folder filled in).  The flags the driver sets itself each
round (the data, the output folder, the length, the initial weights) are refused when given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from sdpo.config import RunConfig, parse_args
from sdpo.errors import UserError

REFERENCES = ("base", "previous")
PAIRINGS = ("best_worst", "all")
# train.py flags the driver sets per round: given by the user they would be silently replaced.
DRIVER_OWNED = {
    "--dataset_name": "the round's pairs", "--train_data_dir": "the round's pairs", "--output_dir": "--out",
    "--max_train_steps": "--steps_per_round", "--num_train_epochs": "--epochs_per_round",
    "--resume_from_checkpoint": "the driver's own resume", "--policy_init": "the previous round's weights",
}  # fmt: skip
# train.py flags whose data path does not fit pairs that change every round.
REFUSED = {
    "--precomputed": "the pairs change every round, so a latent cache would have to be rebuilt each round",
    "--streaming": "the round's pairs are a small local file",
}
# Settings that change neither samples nor weights: a rerun may change them (rounds may be added, too).
FREE = {"out", "rounds", "patience", "stop_on_divergence", "stop_after", "score_batch_size"}
FREE_TRAIN = {"output_dir", "dataset_name", "logging_dir", "report_to", "tracker_project_name", "dataloader_num_workers",
              "checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint", "max_train_steps",
              "num_train_epochs"}  # fmt: skip
STAGE_NAMES = ("samples", "scores", "pairs", "train", "eval")
GRPO_ONLY = ("rollout_noise", "clip_range", "adv_clip_max", "kl_beta", "timestep_fraction", "advantage_std")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse API
        raise UserError(f"{message} (see: python -m sdpo.online --help)")


@dataclass(frozen=True)
class OnlineOptions:
    """The driver's settings (flag names); ``train_args``: the train.py flags as given."""

    out: Path
    rounds: int
    prompts: str
    samples_per_prompt: int
    steps_per_round: int | None
    epochs_per_round: int | None
    reward: str
    reward_model_root: str | None
    heldout_prompts: str | None
    heldout_reward: str | None
    algorithm: str
    reference: str
    prompts_per_round: int | None
    pairs: str
    min_reward_gap: float
    sample_steps: int
    sample_guidance: float | None
    sample_resolution: int | None
    sample_seed: int
    sample_dtype: str
    prompts_per_call: int
    score_batch_size: int
    patience: int
    stop_on_divergence: bool
    stop_after: str | None
    train_args: tuple[str, ...]
    # --algorithm grpo only (sdpo.online.grpo_settings): None = the process's default
    rollout_noise: float | None = None
    clip_range: float = 1e-4
    adv_clip_max: float = 5.0
    kl_beta: float = 0.04
    timestep_fraction: float | None = None
    advantage_std: str = "global"

    def identity(self) -> dict:
        """The settings a run folder is bound to (what decides its samples and weights); a ``dpo`` run's does not
        hold the GRPO settings (it does not use them)."""
        skip = FREE | {"train_args"} | (set() if self.algorithm == "grpo" else set(GRPO_ONLY))
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}


def build_parser(strict: bool = True) -> argparse.ArgumentParser:
    """The driver's flags (prefixes are not expanded: what the driver does not know exactly goes to train.py).
    ``strict=False``: nothing required (the launch scripts check a partial command line)."""
    from sdpo.online.algorithms import ALGORITHMS

    p = _Parser(prog="python -m sdpo.online", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                epilog="Any other flag goes to train.py (python train.py --help).")  # fmt: skip
    a = p.add_argument_group("rounds").add_argument
    a("--out", required=strict, help="the run folder: round-XXX/{samples,scores.jsonl,pairs,weights,eval}, rounds.jsonl")
    a("--rounds", type=int, required=strict, help="rounds to run (a rerun with more continues the run)")
    a("--algorithm", default="dpo", choices=sorted(ALGORITHMS), help="what a round does with its samples")
    a("--reference", default="base", choices=REFERENCES,
      help="the objective's reference model each round: the original base (the SDPO/SIPO objectives' definition) "
      "or the previous round's weights")  # fmt: skip
    length = p.add_mutually_exclusive_group(required=strict)
    length.add_argument("--steps_per_round", type=int, default=None, help="optimizer steps per round")
    length.add_argument("--epochs_per_round", type=int, default=None, help="passes over the round's pairs")
    a = p.add_argument_group("sampling").add_argument
    a("--prompts", required=strict, help="prompt file (JSON list of {prompt} or one per line) or a set (papv2:64)")
    a("--prompts_per_round", type=int, default=None,
      help="prompts per round, taken in turn from a seeded shuffle of the file (default: all, every round)")  # fmt: skip
    a("--samples_per_prompt", type=int, required=strict, help="K >= 2 samples of each prompt per round")
    a("--sample_steps", type=int, default=None, help="sampler steps (dpo: the evaluation protocol's 50; grpo: the "
      "rollout's, Flow-GRPO's 10 for flow families and DDPO's 50 for DDPM ones; held-out images use the same)")
    a("--sample_guidance", type=float, default=None, help="guidance (default: the family's evaluation value)")
    a("--sample_resolution", type=int, default=None, help="image size (default: the training --resolution)")
    a("--sample_seed", type=int, default=0, help="every sample's seed derives from it, the round, prompt and k")
    a("--sample_dtype", default="auto", help="denoiser and text encoders while sampling: auto (bf16 on an "
      "accelerator, fp32 on a CPU), fp32, bf16, fp16")  # fmt: skip
    a("--prompts_per_call", type=int, default=1,
      help="prompts per denoiser call, each with its K samples (cond and uncond rows in the same call); a "
      "sample depends on its call's rows, so this is part of the run's configuration")  # fmt: skip
    a = p.add_argument_group("rewards and pairs").add_argument
    a("--reward", required=strict, help="the reward the round ranks samples by (see the list in docs/online.md)")
    a("--reward_model_root", default=None, help="the reward models' mirror (sdpo.rewards.sources)")
    a("--pairs", default="best_worst", choices=PAIRINGS,
      help="best vs worst sample per prompt, or every pair of a prompt's samples")  # fmt: skip
    a("--min_reward_gap", type=float, default=0.0,
      help="pairs whose reward gap is below this are dropped (ties always are), and counted")  # fmt: skip
    a("--score_batch_size", type=int, default=16, help="images per reward-model call")
    a = p.add_argument_group("held-out evaluation and reward hacking").add_argument
    a("--heldout_prompts", default=None, help="prompts scored after every round (and for the base, round 0)")
    a("--heldout_reward", default=None, help="a reward other than --reward, for the held-out images")
    a("--patience", type=int, default=2,
      help="warn when --reward rose and --heldout_reward fell on the held-out images this many rounds in a row")  # fmt: skip
    a("--stop_on_divergence", action="store_true", help="stop the run when that warning fires")
    a("--stop_after", default=None, choices=STAGE_NAMES, help="end the run after this stage of its last round "
      "(inspect samples, scores or pairs before training)")  # fmt: skip
    a = p.add_argument_group("GRPO (--algorithm grpo: docs/grpo.md; the winner-preserving option is train.py's "
                             "--use_winner_preserving and --winner_preserving_mu)").add_argument
    a("--rollout_noise", type=float, default=None,
      help="the rollout's stochasticity: Flow-GRPO's noise_level a for flow families (default 0.7), DDIM's eta for "
      "DDPM ones (default 1.0, DDPO)")  # fmt: skip
    a("--clip_range", type=float, default=1e-4, help="the policy ratio's clip range (Flow-GRPO)")
    a("--adv_clip_max", type=float, default=5.0, help="advantages are clipped to [-this, this] (Flow-GRPO)")
    a("--kl_beta", type=float, default=0.04, help="the KL-to-reference coefficient (Flow-GRPO's GenEval/OCR configs)")
    a("--timestep_fraction", type=float, default=None,
      help="the fraction of rollout steps trained (flow: 0.99, the first ones, Flow-GRPO; DDPM: 1.0 in a random "
      "order per sample, DDPO)")  # fmt: skip
    a("--advantage_std", default="global", choices=("global", "group"),
      help="advantages divide by the std of every reward of the round (Flow-GRPO's configs) or of the group (its "
      "paper)")  # fmt: skip
    return p


def command_parser() -> argparse.ArgumentParser:
    """The driver's flags and train.py's in one parser: what a whole ``python -m sdpo.online`` command line may
    hold, flag by flag (the docs' command checks and the launch scripts use it; the driver itself splits the two
    and checks the combination in :func:`parse`)."""
    from sdpo.config import build_parser as train_parser

    parents = [build_parser(), train_parser()]
    for parent in parents:  # one -h/--help between them
        parent._actions = [a for a in parent._actions if "-h" not in a.option_strings]
        parent._option_string_actions.pop("-h", None)
        parent._option_string_actions.pop("--help", None)
    return _Parser(prog="python -m sdpo.online", parents=parents, allow_abbrev=False)


def split_args(args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """``(the driver's flags, the rest)`` of a partial command line (nothing required)."""
    return build_parser(strict=False).parse_known_args(args)


def parse(argv: list[str]) -> tuple[OnlineOptions, RunConfig]:
    """The driver's options and a train.py configuration template (round 1's), all checked: one line per problem."""
    from sdpo.online.rewards import check_reward

    ns, rest = build_parser().parse_known_args(argv)
    for flag in rest:
        name = flag.split("=", 1)[0]
        if name in DRIVER_OWNED:
            raise UserError(f"{name} is set by the driver each round (from {DRIVER_OWNED[name]}); drop it")
        if name in REFUSED:
            raise UserError(f"{name} does not combine with python -m sdpo.online: {REFUSED[name]}")
    _check_numbers(ns)
    if ns.sample_steps is None:
        ns.sample_steps = 50 if ns.algorithm == "dpo" else 0  # grpo: the process's default, set below
    opts = OnlineOptions(out=Path(ns.out).expanduser(), train_args=tuple(rest),
                         **{k: v for k, v in vars(ns).items() if k not in ("out",)})  # fmt: skip
    cfg = template_config(opts)
    media = "video" if _is_video(cfg) else "image"
    if opts.algorithm == "grpo":
        from sdpo.online.grpo_settings import check_grpo

        opts = check_grpo(opts, cfg, media)
    check_reward(opts.reward, media, "--reward")
    if opts.heldout_prompts is not None or opts.heldout_reward is not None:
        if not (opts.heldout_prompts and opts.heldout_reward):
            missing = "--heldout_reward" if opts.heldout_prompts else "--heldout_prompts"
            raise UserError(f"{missing} is needed too: held-out evaluation scores the held-out prompts' images with a "
                            "reward other than --reward")  # fmt: skip
        if opts.heldout_reward == opts.reward:
            raise UserError(f"--heldout_reward {opts.heldout_reward} is the reward the rounds train on; pick another "
                            "one, so that gaming --reward shows up on held-out prompts")  # fmt: skip
        check_reward(opts.heldout_reward, media, "--heldout_reward")
    _check_train(opts, cfg, media)
    return opts, cfg


def _check_numbers(ns: argparse.Namespace) -> None:
    if ns.samples_per_prompt < 2:
        raise UserError(f"--samples_per_prompt must be >= 2 (a pair needs two samples of a prompt), "
                        f"got {ns.samples_per_prompt}")  # fmt: skip
    for flag in ("rounds", "steps_per_round", "epochs_per_round", "prompts_per_round", "sample_steps",
                 "prompts_per_call", "score_batch_size", "patience"):  # fmt: skip
        value = getattr(ns, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag} must be >= 1, got {value}")
    if ns.min_reward_gap < 0:
        raise UserError(f"--min_reward_gap must be >= 0, got {ns.min_reward_gap}")
    if ns.sample_resolution is not None and (ns.sample_resolution < 16 or ns.sample_resolution % 16):
        raise UserError(f"--sample_resolution must be a positive multiple of 16, got {ns.sample_resolution}")
    from sdpo.sampling.images import DTYPES

    if ns.sample_dtype not in ("auto", *DTYPES):
        raise UserError(f"--sample_dtype {ns.sample_dtype}: use auto, {', '.join(DTYPES)}")
    if ns.reward_model_root and not Path(ns.reward_model_root).expanduser().is_dir():
        raise UserError(f"--reward_model_root {ns.reward_model_root}: no such folder")


def template_config(opts: OnlineOptions) -> RunConfig:
    """train.py's configuration for the user's flags (the data and output are placeholders: a hub-style id and
    round 1's weights folder, so nothing is read or checked on disk for them)."""
    from sdpo.online.train_round import round_train_args

    flags = round_train_args(opts, Path("online/pairs"), opts.out / "round-001" / "weights", None, {})
    if not any(a.split("=", 1)[0] == "--pretrained_model_name_or_path" for a in opts.train_args):
        raise UserError("--pretrained_model_name_or_path is needed (the model the rounds start from)")
    return parse_args(flags)


def _is_video(cfg: RunConfig) -> bool:
    return cfg.data.video


def _check_train(opts: OnlineOptions, cfg: RunConfig, media: str) -> None:
    from sdpo.losses import get_objective

    if opts.algorithm == "dpo" and getattr(get_objective(cfg.objective.train_method), "NEEDS_LABELS", False):
        raise UserError(f"--train_method {cfg.objective.train_method} trains on labelled single images; the {opts.algorithm} "
                        "rounds build preference pairs (use diffusion-dpo, dmpo, dspo, sipo, ...)")  # fmt: skip
    if opts.reference == "previous" and cfg.model.lora_rank:
        raise UserError("--reference previous with --lora_rank: a LoRA run's reference is its base with the "
                        "adapters off; use --reference base (the default) or train the whole denoiser")  # fmt: skip
    if media == "video" and opts.prompts_per_call != 1:
        raise UserError("--prompts_per_call > 1 is for image families (a video is sampled one prompt per call)")
    if media == "video" and opts.sample_resolution is not None:
        raise UserError("--sample_resolution is for image families; videos are sampled at the training --height "
                        "and --width")  # fmt: skip


def prompt_digest(prompts: list[str]) -> str:
    """A prompt list by content (its file may move; an edited file is another run)."""
    import hashlib

    return f"{len(prompts)} prompts, sha256 {hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]}"


def identity(opts: OnlineOptions, cfg: RunConfig, prompts: list[str], heldout: list[str]) -> dict:
    """What ``online.json`` records: the driver's settings (the prompt files by content) and train.py's resolved
    ones, by flag name; ``paths``: where the prompt files were (for people, not compared)."""
    driver = {**opts.identity(), "prompts": prompt_digest(prompts),
              "heldout_prompts": prompt_digest(heldout) if heldout else None}  # fmt: skip
    train = {k: v for k, v in cfg.flat().items() if k not in FREE_TRAIN}
    return {"driver": driver, "train": train, "paths": {"prompts": opts.prompts, "heldout_prompts": opts.heldout_prompts}}
