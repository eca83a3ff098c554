"""A training run's validation images as report inputs: one model per validation step.

``train.py --validation_prompts`` writes ``RUN_DIR/validation/step-<step>.png`` (a grid) and ``.json``
(prompts, sampler settings, per-image scores; ``sdpo.training.validation``).  The core does not import
``eval/``, so it cannot build a report itself; instead ``python -m eval.report RUN_DIR --out DIR`` turns the
validations into what the report already reads: per step, the grid cut back into its tiles, a manifest in
``eval/generate.py``'s format and a score file written by ``eval/score.py``'s own writer.  The page then
shows the summary table (one row per step), the win rates of every step against step 0 and the per-prompt
grid across steps, with the same code as any other evaluation.

The staged inputs go under ``DIR/validation_inputs/`` (tiles of at most 256 px: small), so the report
folder stays self-contained.  Scores are the ones logged during training; nothing is rescored.
"""

from __future__ import annotations

import json
from pathlib import Path

from eval.report.inputs import classify
from sdpo.errors import UserError

STAGED = "validation_inputs"


def validation_folder(path: str | Path) -> Path | None:
    """The validation folder of a training run (the run folder or its ``validation/``), else ``None``."""
    from sdpo.training.validation import FOLDER

    p = Path(path)
    if not p.is_dir():
        return None
    folder = p if p.name == FOLDER else p / FOLDER
    return folder if folder.is_dir() and any(folder.glob("step-*.json")) else None


def _read(folder: Path) -> list[tuple[int, dict]]:
    """Every completed validation's record, checked before anything is written."""
    from sdpo.training.validation import completed

    steps = completed(folder)
    if not steps:
        raise UserError(f"{folder}: no completed validation (step-*.json); train with --validation_prompts")
    records = []
    for step, path in steps:
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            rec = {"name": path.stem, "prompts": [str(p) for p in meta["prompts"]], "grid": folder / meta["grid"],
                   "columns": int(meta["columns"]), "tile": int(meta["tile"]), "scores": dict(meta["scores"]),
                   "stem": f"validation_seed{meta['seed']}_{meta['resolution']}x{meta['resolution']}_"
                           f"{meta['steps']}s_{meta['guidance']}cfg"}  # fmt: skip
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UserError(f"{path}: not a validation record written by train.py") from None
        if not rec["grid"].is_file():
            raise UserError(f"{rec['grid']}: the grid of {path.name} is missing")
        records.append((step, rec))
    return records


def stage(folder: Path, out: Path) -> tuple[list[list[tuple[str, Path]]], list[str]]:
    """Write each completed validation as a scored manifest under ``out/validation_inputs`` (all or nothing);
    return the groups (one model per step, in step order) and their labels (``step N``)."""
    from PIL import Image

    import eval.score as score
    from sdpo.atomic import atomic_path
    from sdpo.rewards import METRICS, RewardConfig
    from sdpo.training.validation import grid_tile

    records = _read(folder)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    manifests = []
    with atomic_path(out / STAGED) as staged:
        for step, rec in records:
            step_dir = staged / rec["name"]
            images = step_dir / rec["stem"]
            images.mkdir(parents=True)
            with Image.open(rec["grid"]) as grid:
                grid.load()
                for i in range(len(rec["prompts"])):
                    grid_tile(grid, i, rec["columns"], rec["tile"]).save(images / f"{i}.png", format="PNG")
            entries = [{"prompt": p, "gen_image_path": f"{rec['stem']}/{i}.png", "raw_image_path": "",
                        "metadata": {"step": step}} for i, p in enumerate(rec["prompts"])]  # fmt: skip
            manifest = step_dir / f"{rec['stem']}.json"
            manifest.write_text(json.dumps(entries, indent=1), encoding="utf-8")
            m = score.open_manifest(manifest)
            m.scores = {k: [float(x) for x in rec["scores"][k]] for k in METRICS if k in rec["scores"]}
            if m.scores:
                score.write_scores(m, RewardConfig.make(None))
            manifests.append(out / STAGED / rec["name"] / manifest.name)
    groups = [[classify(m)] for m in manifests]
    return groups, [f"step {step}" for step, _ in records]
