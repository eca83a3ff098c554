"""Everything the page shows, as plain data: the static tables (rendered into the HTML, so they read with
JavaScript off) and the gallery's rows (a JSON block the page's script pages, sorts and filters).

The gallery data is columnar and numbers are rounded to 6 significant digits (the page shows 4
decimals), which keeps a 3,000-prompt A/B page well under a megabyte; thumbnails are named by entry
index, so their URLs are not stored either.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from eval.report import media, tables
from eval.report.inputs import Inputs

PAGE_SIZE = 50


@dataclass
class Page:
    context: dict
    jobs: list[media.Job] = field(default_factory=list)


def _url(path: Path, out: Path) -> str:
    """A relative URL from the report's folder (works from file:// and from a web server alike)."""
    return quote(Path(os.path.relpath(path.resolve(), out.resolve())).as_posix())


def _num(x: float) -> float | None:
    return float(f"{x:.6g}") if math.isfinite(x) else None


def _mode(n_models: int) -> str:
    return {1: "single", 2: "ab"}.get(n_models, "grid")


def gallery(inputs: Inputs, out: Path) -> tuple[dict, list[media.Job]]:
    """The gallery's JSON data (thumbnails still to be filled in) and the pictures it needs."""
    jobs: list[media.Job] = []
    runs, sets = [], []
    rows: dict[str, list] = {"set": [], "prompt": [], "cells": []}
    for s_index, s in enumerate(inputs.sets):
        per_model = [inputs.run(s, m) for m in range(len(inputs.labels))]
        run_ids = []
        for r in per_model:
            if r is None:
                run_ids.append(-1)
                continue
            ri = len(runs)
            run_ids.append(ri)
            entry = {
                "media": r.media,
                "n": len(r.files),
                "scores": {k: [_num(v) for v in vals] for k, vals in r.scores.items()},
            }
            if r.media == "video":
                ext = r.files[0].suffix or ".mp4"
                entry["video"] = {"dir": f"{media.FILES}/r{ri}/", "ext": ext}
                jobs += [media.Job("video", f, f"r{ri}/{i}{ext}") for i, f in enumerate(r.files)]
                jobs += [media.Job("poster", f, f"r{ri}/{i}.jpg") for i, f in enumerate(r.files)]
            else:
                parents = {f.parent for f in r.files}
                if len(parents) == 1:
                    entry["base"] = _url(r.files[0].parent, out) + "/"
                    entry["names"] = [quote(f.name) for f in r.files]
                else:
                    entry["base"], entry["names"] = "", [_url(f, out) for f in r.files]
                jobs += [media.Job("image", f, f"r{ri}/{i}.jpg") for i, f in enumerate(r.files)]
            entry["thumbs"] = {"dir": f"{media.FILES}/r{ri}/", "ext": ".jpg"}
            runs.append(entry)
        media_kind = "video" if any(r is not None and r.media == "video" for r in per_model) else "image"
        sets.append({"name": s, "media": media_kind, "runs": run_ids})
        for prompt, cells in tables.line_up([r.prompts if r is not None else None for r in per_model]):
            rows["set"].append(s_index)
            rows["prompt"].append(prompt)
            rows["cells"].append(cells)
    keys = [k for k in tables.metric_columns(inputs) if any(k in r["scores"] for r in runs)]
    data = {
        "mode": _mode(len(inputs.labels)),
        "models": inputs.labels,
        "metrics": [{"key": k, "label": tables.metric_label(k)} for k in keys],
        "sets": sets,
        "runs": runs,
        "rows": rows,
        "pageSize": PAGE_SIZE,
    }
    return data, jobs


def geneval_section(inputs: Inputs, out: Path) -> tuple[dict | None, list[media.Job]]:
    """Per-task accuracy per model, and every failing image with its detections drawn."""
    if not inputs.geneval:
        return None, []
    from eval.geneval.rules import TAGS

    tags = list(dict.fromkeys([t for t in TAGS if any(t in g.summary["tags"] for g in inputs.geneval)] +
                              [t for g in inputs.geneval for t in g.summary["tags"]]))  # fmt: skip
    jobs, models = [], []
    for gi, g in enumerate(inputs.geneval):
        failing: dict[str, list[dict]] = {}
        for row in g.rows:
            if row["correct"]:
                continue
            case = {"prompt": row.get("prompt", ""), "reason": row.get("reason", ""), "file": row.get("filename", "")}
            if g.image_folder is not None and case["file"] and (g.image_folder / case["file"]).is_file():
                src = g.image_folder / case["file"]
                name = f"g{gi}/{row.get('index', 0)}_{row.get('sample', 0)}.jpg"
                details = row.get("details") or "{}"
                details = json.loads(details) if isinstance(details, str) else details
                boxes = tuple((cls, tuple(b)) for cls, bs in details.items() for b in bs if len(b) == 5)
                jobs.append(media.Job("geneval", src, name, boxes))
                case["thumb"], case["full"] = name, _url(src, out)
            failing.setdefault(row["tag"], []).append(case)
        models.append({
            "label": inputs.labels[g.model], "path": g.path, "summary": g.summary, "overall": g.overall,
            "failing": [(t, failing[t]) for t in tags if t in failing], "has_rows": bool(g.rows),
        })  # fmt: skip
    return {"tags": tags, "models": models}, jobs


def build_page(inputs: Inputs, comparisons: list[tables.Comparison], out: Path, command: str) -> Page:
    """The template's context and the pictures it needs (thumbnail URLs are filled in after they are made)."""
    data, jobs = gallery(inputs, out)
    gen, gen_jobs = geneval_section(inputs, out)
    rows = tables.summary_rows(inputs)
    columns = [k for k in tables.metric_columns(inputs) if any(k in r.stats for r in rows)]
    unscored = [r.manifest for r in inputs.runs if not r.stats]
    labels = inputs.labels
    title = " vs ".join(labels) if len(labels) <= 4 else f"{len(labels)} models"
    context = {
        "title": title,
        "labels": labels,
        "mode": data["mode"],
        "inputs": [(labels[r.model], r.manifest, r.score_file) for r in inputs.runs]
        + [(labels[g.model], g.path, None) for g in inputs.geneval],
        "unscored": unscored,
        "columns": [(k, tables.metric_label(k)) for k in columns],
        "summary": rows,
        "markdown": tables.summary_markdown(rows) if rows and any(r.stats for r in rows) else "",
        "comparisons": comparisons,
        "metric_label": tables.metric_label,
        "geneval": gen,
        "data": data,
        "has_gallery": bool(data["rows"]["prompt"]),
        "has_images": any(r.media == "image" for r in inputs.runs),
        "command": command,
    }
    return Page(context, jobs + gen_jobs)
