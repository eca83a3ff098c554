"""What a report shows, read from the files evaluation already wrote: manifests, the score files beside them
(``eval/score.py``, ``eval/video_score.py``) and GenEval results (``python -m eval.geneval``).

Nothing is scored here: the page is a view of the numbers the other tools computed, so it can never
disagree with them. Every input is read and checked before anything is written; a bad one fails with
one line naming the file.

Models: one model is one folder (the rule ``eval/summary.py`` uses to join a GenEval summary to its
rewards). A folder holding two runs of one prompt set (two cfg values, say) cannot be one model, so
then every input file is its own model, labelled by its file name.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from eval.geneval.evaluate import RESULTS_SUFFIX as GENEVAL_RESULTS
from eval.geneval.evaluate import SUMMARY_SUFFIX as GENEVAL_SUMMARY
from eval.outputs import SCORES_SUFFIX, scores_path
from eval.video_score import SUFFIX as VIDEO_SCORES
from eval.video_score import video_of
from sdpo.errors import UserError

_SET_RE = re.compile(r"^(?P<set>.+?)_seed\d+_\d+x\d+_")


@dataclass
class Run:
    """One generated set of one model: its manifest, media files and the scores written beside it."""

    model: int
    set_name: str
    manifest: Path
    media: str  # "image" or "video"
    prompts: list[str]
    files: list[Path]
    scores: dict[str, list[float]] = field(default_factory=dict)
    stats: dict[str, dict] = field(default_factory=dict)  # metric -> {"mean", "std", "n"}
    score_file: Path | None = None

    @property
    def stem(self) -> str:
        """The row label ``eval/summary.py`` gives this set."""
        return self.manifest.stem


@dataclass
class GenevalRun:
    """One model's GenEval results: per-image rows (when the ``.jsonl`` is there) and the benchmark's numbers."""

    model: int
    path: Path
    summary: dict
    rows: list[dict]
    image_folder: Path | None
    overall: float  # as eval/summary.py reads it from the summary file (else the rows' own)


@dataclass
class Inputs:
    labels: list[str]
    runs: list[Run]
    geneval: list[GenevalRun]

    @property
    def sets(self) -> list[str]:
        """Prompt sets in order of first appearance."""
        return list(dict.fromkeys(r.set_name for r in self.runs))

    def run(self, set_name: str, model: int) -> Run | None:
        return next((r for r in self.runs if r.set_name == set_name and r.model == model), None)


def set_name_of(manifest: Path) -> str:
    """The prompt set a manifest generated (``hpsv2`` for ``hpsv2_seed0_512x512_50s_7.5cfg.json``): runs of
    different models line up on it, whatever their size, steps or guidance."""
    m = _SET_RE.match(manifest.stem)
    return m.group("set") if m else manifest.stem


def classify(path: str | Path) -> tuple[str, Path]:
    """``("manifest" | "geneval", path)``: a score file stands for its manifest, a GenEval summary or image
    folder for its per-image results."""
    p = Path(path)
    name = p.name
    if p.is_dir():
        results = p.parent / f"{name}{GENEVAL_RESULTS}"
        if results.is_file():
            return "geneval", results
        raise UserError(f"{p}: a folder; pass a manifest (.json), its .scores.json, or a GenEval image folder "
                        f"with its {GENEVAL_RESULTS} beside it")  # fmt: skip
    if name.endswith(GENEVAL_RESULTS) or name.endswith(GENEVAL_SUMMARY):
        return "geneval", p
    if name.endswith(SCORES_SUFFIX):
        return "manifest", p.with_name(name.removesuffix(SCORES_SUFFIX) + ".json")
    if name.endswith(VIDEO_SCORES):
        return "manifest", p.with_name(name.removesuffix(VIDEO_SCORES) + ".json")
    if not p.is_file():
        raise UserError(f"{p}: no such file")
    return "manifest", p


def group_by_folder(paths: list[str | Path]) -> list[list[tuple[str, Path]]]:
    """Inputs grouped into models, one per folder (one per file when a folder repeats a prompt set)."""
    items = [classify(p) for p in paths]
    seen: set[Path] = set()
    unique = []
    for kind, p in items:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((kind, p))
    folders: dict[Path, list[tuple[str, Path]]] = {}
    for kind, p in unique:
        folders.setdefault(p.resolve().parent, []).append((kind, p))
    for group in folders.values():
        sets = Counter(set_name_of(p) for kind, p in group if kind == "manifest")
        if any(n > 1 for n in sets.values()):
            return [[item] for item in unique]
    return list(folders.values())


def default_labels(groups: list[list[tuple[str, Path]]]) -> list[str]:
    """Folder names; file names where every model is one file of one folder; ``model N`` when they repeat."""
    folders = [g[0][1].resolve().parent for g in groups]
    if len(set(folders)) < len(groups):
        names = [g[0][1].name.removesuffix(".json") for g in groups]
    else:
        names = [f.name for f in folders]
        if len(set(names)) < len(names):
            names = [f"{f.parent.name}/{f.name}" for f in folders]
    if len(set(names)) < len(names):
        names = [f"model {i + 1}" for i in range(len(groups))]
    return names


def collect(groups: list[list[tuple[str, Path]]], labels: list[str] | None = None) -> Inputs:
    """Read every group's manifests, scores and GenEval results (all checked before anything is written)."""
    if not groups:
        raise UserError("no inputs: pass one or more manifests")
    if labels is not None and len(labels) != len(groups):
        raise UserError(f"--labels has {len(labels)} names for {len(groups)} models (one model per folder)")
    labels = list(labels) if labels is not None else default_labels(groups)
    runs, geneval = [], []
    for model, group in enumerate(groups):
        for kind, path in group:
            if kind == "manifest":
                runs.append(read_run(model, path))
            else:
                geneval.append(read_geneval(model, path))
        sets = [r.set_name for r in runs if r.model == model]
        if len(sets) != len(set(sets)):
            raise UserError(f"model {labels[model]!r} has two runs of one prompt set; give each its own label")
    return Inputs(labels, runs, geneval)


def is_video(entries: list[dict]) -> bool:
    meta = entries[0].get("metadata") if entries else None
    return isinstance(meta, dict) and meta.get("media") == "video"


def read_run(model: int, manifest: Path) -> Run:
    """A manifest with its media checked (images as ``eval/score.py`` resolves them) and its cached scores."""
    from sdpo.sampling.prompts import read_manifest

    entries = read_manifest(manifest)
    if not entries:
        raise UserError(f"{manifest}: the manifest lists no images")
    if is_video(entries):
        files = [video_of(e, manifest) for e in entries]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise UserError(f"{manifest}: {len(missing)} of {len(files)} videos are missing (first: {missing[0]})")
        run = Run(model, set_name_of(manifest), manifest, "video", [e["prompt"] for e in entries], files)
        _read_video_scores(run)
        return run
    from eval.score import open_manifest

    m = open_manifest(manifest)  # resolves and checks every image, one line listing the missing ones
    run = Run(model, set_name_of(manifest), manifest, "image", m.prompts, m.images)
    _read_image_scores(run, entries)
    return run


def _mismatch(path: Path, manifest: Path, n: int, how: str) -> UserError:
    return UserError(f"{path}: scores {n} entries that do not match {manifest.name} ({how}); rescore it: "
                     f"python eval/score.py --json_path {manifest}")  # fmt: skip


def _read_image_scores(run: Run, entries: list[dict]) -> None:
    """Per-image scores and the summary's numbers from ``<stem>.scores.json`` (absent: the run is unscored)."""
    from eval.summary import read_means
    from sdpo.rewards import METRICS

    sp = scores_path(run.manifest)
    if not sp.is_file():
        return
    _, means = read_means(sp)  # the very numbers eval/summary.py prints (and its one-line error when malformed)
    data = json.loads(sp.read_text(encoding="utf-8"))
    cached = data.get("entries")
    if not isinstance(cached, list) or len(cached) != len(entries):
        raise _mismatch(sp, run.manifest, len(cached) if isinstance(cached, list) else 0, "count")
    for c, e in zip(cached, entries):
        if not isinstance(c, dict) or c.get("prompt") != e["prompt"] or c.get("gen_image_path") != e["gen_image_path"]:
            raise _mismatch(sp, run.manifest, len(cached), f"entry {cached.index(c)}")
    for k in METRICS:
        if k in means and all(k in c.get("scores", {}) for c in cached):
            run.scores[k] = [float(c["scores"][k]) for c in cached]
            info = data["metrics"][k]
            run.stats[k] = {"mean": means[k], "std": float(info.get("std", 0.0)), "n": int(info.get("n", len(cached)))}
    run.score_file = sp


def _read_video_scores(run: Run) -> None:
    """Per-video scores from ``<stem>.video_scores.json``; mean as written there, spread as eval/score.py's."""
    from eval.score import summarise

    sp = run.manifest.with_name(run.manifest.stem + VIDEO_SCORES)
    if not sp.is_file():
        return
    try:
        data = json.loads(sp.read_text(encoding="utf-8"))
        means, videos = dict(data["mean"]), list(data["videos"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{sp}: not a score file written by eval/video_score.py") from None
    if len(videos) != len(run.prompts) or any(v.get("prompt") != p for v, p in zip(videos, run.prompts)):
        raise UserError(f"{sp}: does not match {run.manifest.name}; rescore it: "
                        f"python eval/video_score.py --json_path {run.manifest}")  # fmt: skip
    for k, mean in means.items():
        values = [float(v[k]) for v in videos]
        run.scores[k] = values
        run.stats[k] = {**summarise(values), "mean": float(mean)}
    run.score_file = sp


def read_geneval(model: int, path: Path) -> GenevalRun:
    """GenEval results: the per-image rows when present (failing cases, boxes), the benchmark's numbers from
    ``eval.geneval.rules.summarise`` (what ``python -m eval.geneval`` wrote into its summary)."""
    from eval.geneval import rules

    results = path if path.name.endswith(GENEVAL_RESULTS) else path.with_name(path.name + "l")
    summary_file = results.with_suffix(".json")
    rows: list[dict] = []
    if results.is_file():
        for n, line in enumerate(results.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(
                    f"{results}: line {n} is not JSON (a run still writing it? rerun python -m eval.geneval)"
                ) from None
            if not isinstance(row, dict) or not {"tag", "correct", "metadata"} <= set(row):
                raise UserError(f"{results}: line {n} is not a row written by python -m eval.geneval")
            rows.append(row)
        summary = rules.summarise(rows)
    elif summary_file.is_file():
        try:
            summary = json.loads(summary_file.read_text(encoding="utf-8"))
            float(summary["overall"]), dict(summary["tags"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UserError(f"{summary_file}: not a GenEval summary written by python -m eval.geneval") from None
    else:
        raise UserError(f"{path}: no such file (write it with python -m eval.geneval IMAGE_FOLDER)")
    overall = float(summary["overall"])
    if summary_file.is_file():
        from eval.summary import read_geneval

        overall = read_geneval(summary_file)[1]["geneval"]
    folder = results.with_name(results.name.removesuffix(GENEVAL_RESULTS))
    path = results if rows else summary_file
    return GenevalRun(model, path, summary, rows, folder if folder.is_dir() else None, overall)
