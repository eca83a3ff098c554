"""Runs as report inputs: a training run's in-training validations (one model per step) and an online run's
held-out evaluations (one model per round).

The core does not import ``eval/``, so it cannot build a report itself; instead ``python -m eval.report RUN_DIR
--out DIR`` turns what the run wrote into what the report already reads: per step or round, a manifest in
``eval/generate.py``'s format and a score file written by ``eval/score.py``'s own writer.  The page then shows
the summary table (a row per step or round), the win rates of each against the first and the per-prompt grid,
with the same code as any other evaluation.  Scores are the ones the run logged; nothing is rescored.

* ``train.py --validation_prompts`` writes ``RUN_DIR/validation/step-<step>.png`` (a grid) and ``.json``
  (prompts, sampler settings, per-image scores; ``sdpo.training.validation``): the grids are cut back into
  their tiles (at most 256 px) under ``DIR/run_inputs/``.
* ``python -m sdpo.online`` writes ``ONLINE_DIR/round-XXX/eval/`` (one image per held-out prompt, the same
  seed every round) and its ``scores.jsonl`` (``sdpo.online.evaluate``): the manifests point at those images.
  Only rewards among the five evaluation metrics reach the tables (the tiny world's colour rewards show in
  the grid's images alone).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from eval.report.inputs import classify
from sdpo.errors import UserError

STAGED = "run_inputs"


@dataclass
class Staged:
    """One model of the report: what a step or a round made."""

    name: str  # folder under run_inputs/
    label: str
    stem: str  # the manifest's name (its prompt set is the part before _seed)
    prompts: list[str]
    scores: dict[str, list[float]]
    files: list[Path] = field(default_factory=list)  # existing images (online), else tiles cut from ``grid``
    grid: tuple[Path, int, int] | None = None  # (grid file, columns, tile)


def run_kind(path: str | Path) -> str | None:
    """``"validation"`` (a run folder or its ``validation/``), ``"online"`` (an online run folder) or None."""
    from sdpo.training.validation import FOLDER

    p = Path(path)
    if not p.is_dir():
        return None
    if (p / "rounds.jsonl").is_file():
        return "online"
    folder = p if p.name == FOLDER else p / FOLDER
    return "validation" if folder.is_dir() and any(folder.glob("step-*.json")) else None


def _validations(path: Path) -> list[Staged]:
    """Every completed validation's record, checked before anything is written."""
    from sdpo.training.validation import FOLDER, completed

    folder = path if path.name == FOLDER else path / FOLDER
    steps = completed(folder)
    if not steps:
        raise UserError(f"{folder}: no completed validation (step-*.json); train with --validation_prompts")
    out = []
    for step, meta_path in steps:
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            prompts, res = [str(p) for p in meta["prompts"]], meta["resolution"]
            stem = f"validation_seed{meta['seed']}_{res}x{res}_{meta['steps']}s_{meta['guidance']}cfg"
            grid = (folder / meta["grid"], int(meta["columns"]), int(meta["tile"]))
            scores = {k: [float(x) for x in v] for k, v in dict(meta["scores"]).items()}
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UserError(f"{meta_path}: not a validation record written by train.py") from None
        if not grid[0].is_file():
            raise UserError(f"{grid[0]}: the grid of {meta_path.name} is missing")
        out.append(Staged(meta_path.stem, f"step {step}", stem, prompts, scores, grid=grid))
    return out


def _rounds(run_dir: Path) -> list[Staged]:
    """Every round's held-out evaluation (round 0: the base model), checked before anything is written."""
    from sdpo.online.layout import CONFIG, read_jsonl, round_name

    try:
        driver = json.loads((run_dir / CONFIG).read_text(encoding="utf-8"))["driver"]
        names = {"trained": driver["reward"], "heldout": driver.get("heldout_reward")}
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{run_dir / CONFIG}: not the record of a python -m sdpo.online run") from None
    out = []
    r = 0
    while (run_dir / round_name(r) / "eval" / "scores.jsonl").is_file():
        root = run_dir / round_name(r)
        rows = read_jsonl(root / "eval" / "scores.jsonl")
        files = [root / row["path"] for row in rows]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{root / 'eval'}: {len(missing)} of {len(files)} held-out images are missing ({missing[0]})")
        if any(f.suffix.lower() != ".png" for f in files):
            raise UserError(f"{run_dir}: a video run; its report is not supported yet (plot it: python -m sdpo.plot)")
        scores = {name: [float(row[key]) for row in rows] for key, name in names.items() if name and key in rows[0]}
        out.append(Staged(round_name(r), f"round {r}", "heldout_seed0", [row["prompt"] for row in rows], scores, files))
        r += 1
    if not out:
        raise UserError(f"{run_dir}: no round has finished its held-out evaluation yet (round-000/eval/scores.jsonl)")
    return out


def stage(path: str | Path, out: Path) -> tuple[list[list[tuple[str, Path]]], list[str]]:
    """Write each step's or round's manifest and score file under ``out/run_inputs`` (all or nothing); return
    the groups (one model each, in order) and their labels."""
    from PIL import Image

    import eval.score as score
    from sdpo.atomic import atomic_path
    from sdpo.rewards import METRICS, RewardConfig
    from sdpo.training.validation import grid_tile

    path = Path(path)
    models = _rounds(path) if run_kind(path) == "online" else _validations(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    manifests = []
    with atomic_path(out / STAGED) as staged:
        for m in models:
            folder = staged / m.name
            folder.mkdir(parents=True)
            if m.grid is not None:  # cut the grid back into its tiles
                (folder / m.stem).mkdir()
                grid_file, columns, tile = m.grid
                with Image.open(grid_file) as grid:
                    grid.load()
                    for i in range(len(m.prompts)):
                        grid_tile(grid, i, columns, tile).save(folder / m.stem / f"{i}.png", format="PNG")
                paths = [f"{m.stem}/{i}.png" for i in range(len(m.prompts))]
            else:
                paths = [str(f.resolve()) for f in m.files]
            entries = [{"prompt": p, "gen_image_path": f, "raw_image_path": "", "metadata": {"from": m.label}}
                       for p, f in zip(m.prompts, paths)]  # fmt: skip
            manifest = folder / f"{m.stem}.json"
            manifest.write_text(json.dumps(entries, indent=1), encoding="utf-8")
            opened = score.open_manifest(manifest)
            opened.scores = {k: v for k, v in m.scores.items() if k in METRICS}
            if opened.scores:
                score.write_scores(opened, RewardConfig.make(None))
            manifests.append(out / STAGED / m.name / manifest.name)
    return [[classify(f)] for f in manifests], [m.label for m in models]
