"""Score a video manifest (``eval/generate.py`` on cogvideox / wan) with the metrics that run here.

    python eval/video_score.py --json_path MANIFEST.json

Today that is VBench's temporal flickering (``eval/temporal_flickering.py``); the rest of VBench
needs its own environment (``eval/vbench_layout.py``).  Per-video scores land beside the manifest in
``<manifest stem>.video_scores.json`` (entry order, prompt, video path, score) and the mean is printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import argparse  # noqa: E402
import statistics  # noqa: E402

from eval.temporal_flickering import temporal_flickering  # noqa: E402
from sdpo.atomic import write_json  # noqa: E402
from sdpo.errors import UserError, cli_main  # noqa: E402
from sdpo.sampling.prompts import read_manifest  # noqa: E402

METRICS = {"temporal_flickering": temporal_flickering}
SUFFIX = ".video_scores.json"


def video_of(entry: dict, manifest: Path) -> Path:
    """``gen_video_path`` (else ``gen_image_path``), relative paths against the manifest's folder."""
    p = Path(entry.get("gen_video_path") or entry["gen_image_path"]).expanduser()
    return p if p.is_absolute() else manifest.parent / p


def score_manifest(path: str | Path, metrics: list[str] | None = None) -> dict:
    """``{"mean": {metric: value}, "videos": [{prompt, video, metric: score}, ...]}`` for one manifest."""
    from tqdm import tqdm

    from sdpo.data.video_io import VideoError, read_frames

    path = Path(path)
    metrics = metrics or list(METRICS)
    entries = read_manifest(path)
    videos = [video_of(e, path) for e in entries]
    missing = [str(v) for v in videos if not v.exists()]
    if missing:
        raise UserError(f"{path}: {len(missing)} videos missing (first: {missing[0]}); generate them first")
    rows = []
    for e, v in zip(entries, tqdm(videos, desc="scoring videos")):
        try:
            frames = read_frames(v)
        except VideoError as err:
            raise UserError(f"{v}: {err}") from None
        rows.append({"prompt": e["prompt"], "video": str(v), **{m: METRICS[m](frames) for m in metrics}})
    return {"mean": {m: statistics.fmean(r[m] for r in rows) for m in metrics}, "videos": rows}


@cli_main
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="eval/video_score.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--json_path", required=True, help="a video manifest written by eval/generate.py")
    p.add_argument("--metrics", default="all", help=f"all, or a comma list of: {', '.join(METRICS)}")
    a = p.parse_args(argv)
    metrics = list(METRICS) if a.metrics == "all" else [m.strip() for m in a.metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UserError(f"unknown metric(s) {unknown}; choose from: {', '.join(METRICS)}")
    result = score_manifest(a.json_path, metrics)
    out = Path(a.json_path).with_name(Path(a.json_path).stem + SUFFIX)
    write_json(out, result)
    for m, v in result["mean"].items():
        print(f"{m}: {v:.6f} over {len(result['videos'])} videos -> {out}")
    return result


if __name__ == "__main__":
    main()
