"""The run folder: what lives where, which configuration it belongs to, and what each round has finished.

    DIR/online.json                 the configuration the folder is bound to (driver and train.py settings)
    DIR/rounds.jsonl                one line per finished round (round 0: the base model's held-out evaluation)
    DIR/round-003/samples/          <prompt position>_<k>.png (or .mp4) and manifest.json (prompt, k, seed)
    DIR/round-003/scores.jsonl      every sample's reward and image statistics
    DIR/round-003/pairs/            pairs.parquet (the format train.py reads) and summary.json (kept/dropped)
    DIR/round-003/weights/          a train.py output folder: unet.pth / transformer.pth / LoRA adapters,
                                    checkpoints, metrics.jsonl
    DIR/round-003/eval/             held-out images, scores.jsonl, eval.json
    DIR/round-003/stages.json       per stage: done, attempts, seconds, peak memory, its summary
    DIR/round-003/summary.json      the round's line of rounds.jsonl

Everything is written by the main process, atomically (write, then rename), and a stage's record last: a
stage whose record says done is never run again, and one killed half-way runs again from what it left.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdpo.atomic import write_json
from sdpo.errors import UserError

CONFIG = "online.json"
ROUNDS = "rounds.jsonl"


def round_name(r: int) -> str:
    return f"round-{r:03d}"


class RoundFolder:
    def __init__(self, run_dir: Path, r: int):
        self.index = r
        self.root = Path(run_dir) / round_name(r)
        self.samples = self.root / "samples"
        self.scores = self.root / "scores.jsonl"
        self.pairs = self.root / "pairs"
        self.pairs_file = self.pairs / "pairs.parquet"
        self.weights = self.root / "weights"
        self.eval = self.root / "eval"
        self.stages_file = self.root / "stages.json"
        self.summary_file = self.root / "summary.json"

    @property
    def name(self) -> str:
        return self.root.name

    def stages(self) -> dict:
        return read_json(self.stages_file, {})

    def done(self, stage: str) -> bool:
        return bool(self.stages().get(stage, {}).get("done"))

    def record(self, stage: str, **values) -> None:
        """Update one stage's record (main process only)."""
        stages = self.stages()
        stages[stage] = {**stages.get(stage, {}), **values}
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.stages_file, stages)

    def summary(self) -> dict | None:
        return read_json(self.summary_file, None)


def read_json(path: Path, default):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


def read_jsonl(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    from sdpo.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def bind(run_dir: Path, identity: dict, write: bool) -> bool:
    """Check ``run_dir`` against ``identity`` before anything is written: a folder made with other settings, or
    one this driver did not make, is refused in one line; a new one is bound (``write``: the main process).
    Returns whether the folder already held a run."""
    from sdpo.online.options import mismatch

    cfg = run_dir / CONFIG
    if cfg.is_file():
        saved = read_json(cfg, {})
        diff = mismatch(saved, identity)
        if diff:
            raise UserError(f"--out {run_dir}: this run folder was made with {diff}; rerun with the same settings "
                            "(only --rounds, --patience, --stop_on_divergence, --stop_after, --score_batch_size and "
                            "train.py's logging/checkpoint flags may change) or pass another --out")  # fmt: skip
        return True
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(f"--out {run_dir}: exists and holds no {CONFIG} (not a python -m sdpo.online run folder); "
                        "pass a new or empty folder")  # fmt: skip
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(cfg, identity)
    return False


def write_rounds(run_dir: Path) -> list[dict]:
    """``rounds.jsonl`` from every finished round's summary, in order (rewritten whole: a rerun cannot duplicate)."""
    rows = []
    for folder in sorted(Path(run_dir).glob("round-[0-9][0-9][0-9]")):
        summary = read_json(folder / "summary.json", None)
        if summary is not None:
            rows.append(summary)
    write_jsonl(Path(run_dir) / ROUNDS, rows)
    return rows
