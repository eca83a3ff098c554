"""What a stage of a round is handed: the settings, the round's folder, its plan and the weights it starts from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sdpo.config import RunConfig
from sdpo.online.layout import RoundFolder, read_json
from sdpo.online.media import ImageMedia, Policy, VideoMedia
from sdpo.online.plan import Sample, round_samples
from sdpo.online.procs import Procs


@dataclass
class RoundContext:
    opts: object  # sdpo.online.options.OnlineOptions
    cfg: RunConfig  # train.py's configuration for the user's flags (round 1's)
    media: ImageMedia | VideoMedia
    run_dir: Path
    folder: RoundFolder
    prompts: list[str]  # the whole prompt file
    heldout: list[str]
    procs: Procs
    results: dict = field(default_factory=dict)  # this round's finished stages' summaries, by stage

    @property
    def round(self) -> int:
        return self.folder.index

    def crash_name(self, stage: str) -> str:
        """The fault-injection point of a stage (``SDPO_CRASH_AT``, ``sdpo.checkpoint.store.crash_point``)."""
        return f"online:{self.folder.name}/{stage}"

    def samples(self) -> list[Sample]:
        o = self.opts
        return round_samples(self.prompts, self.round, o.samples_per_prompt, o.prompts_per_round, o.sample_seed)

    def weights_after(self, r: int) -> Path | None:
        """The weights round ``r`` trained (None for round 0: the base)."""
        if r == 0:
            return None
        rec = read_json(RoundFolder(self.run_dir, r).stages_file, {}).get("train", {})
        if not rec.get("done"):
            raise RuntimeError(f"round {r} has not finished training")
        return RoundFolder(self.run_dir, r).root / rec["result"]["weights"]

    def policy(self, weights: Path | None) -> Policy:
        """The sampler's weights: the base (with train.py's --unet_init) or a round's, full or LoRA on top."""
        m = self.cfg.model
        full, lora = m.unet_init, None
        if weights is not None:
            full, lora = (m.unet_init, str(weights)) if m.lora_rank else (str(weights), None)
        return Policy(m.pretrained_model_name_or_path, full, lora, m.pretrained_vae_model_name_or_path)
