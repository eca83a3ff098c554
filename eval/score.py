"""Score a generation manifest with the five reward models in one pass, and cache the per-image scores.

    python eval/score.py --json_path MANIFEST.json [--metrics all|pickscore,hpsv2,...]
                         [--batch_size 16] [--device cuda] [--model_root DIR] [--hps_version v2.0]
    python eval/score.py --summary A.json B.json ...      # set x metric table (see eval/summary.py)

Each image is decoded once and every requested metric scores the same batch, so adding a metric
costs its forward passes only. Scores land beside the manifest in ``<manifest stem>.scores.json``
(same entry order, prompt and image path), which later runs and ``eval/winrate.py`` reuse: a
metric is rescored only when its weights resolve elsewhere, or an image changed (size or
modification time), or ``--rescore`` is given.

Relative ``gen_image_path`` values are resolved against the manifest's folder first, then the
current directory (the reference scripts wrote paths relative to where they were launched); a
path that exists in neither place (absolute ones included) falls back to the file of the same
name in the image folder named like the manifest beside it (a results folder copied elsewhere).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from PIL import Image  # noqa: E402

from eval.outputs import SCORES_SUFFIX, scores_path  # noqa: E402, F401  (scores_path: part of this module's API)
from sdpo.atomic import write_json  # noqa: E402
from sdpo.errors import UserError, cli_main  # noqa: E402
from sdpo.rewards import LABELS, METRICS, RewardConfig, Scorer, load_scorer, parse_metrics, source_of  # noqa: E402
from sdpo.sampling.prompts import read_manifest  # noqa: E402

SHOW_MISSING = 5


def resolve_image(raw: str, manifest: Path) -> Path:
    """The first existing candidate of the rule in the module docstring (else the first, reported as missing)."""
    p = Path(raw).expanduser()
    beside = manifest.parent / manifest.stem / p.name  # the image folder named like the manifest, beside it
    candidates = [p, beside] if p.is_absolute() else [manifest.parent / p, Path.cwd() / p, beside]
    return next((c for c in candidates if c.is_file()), candidates[0])


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


@dataclass
class Manifest:
    """A manifest with its images resolved and checked; ``scores`` holds what is cached or computed so far."""

    path: Path
    entries: list[dict]
    images: list[Path]
    scores: dict[str, list[float]]

    @property
    def prompts(self) -> list[str]:
        return [e["prompt"] for e in self.entries]


def open_manifest(path: str | Path) -> Manifest:
    """Read ``path`` and resolve its images; missing ones are listed (first few + count) before any model loads."""
    path = Path(path)
    entries = read_manifest(path)
    if not entries:
        raise UserError(f"{path}: the manifest lists no images")
    images = [resolve_image(str(e["gen_image_path"]), path) for e in entries]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:SHOW_MISSING]) + (", ..." if len(missing) > SHOW_MISSING else "")
        raise UserError(
            f"{path}: {len(missing)} of {len(images)} images are missing: {shown} "
            "(generate them first, or fix gen_image_path: relative paths resolve against the manifest's folder, "
            "then the current directory)"
        )
    for p in images:  # cheap header check: a truncated or non-image file fails now, not after the models load
        try:
            with Image.open(p):
                pass
        except (OSError, SyntaxError) as e:
            raise UserError(f"{p}: unreadable image ({e})") from None
    return Manifest(path, entries, images, {})


def load_cached(m: Manifest, metrics: Sequence[str], cfg: RewardConfig) -> None:
    """Fill ``m.scores`` with the cached metrics still valid: same entries, same image files, same weights."""
    sp = scores_path(m.path)
    if not sp.is_file():
        return
    try:
        data = json.loads(sp.read_text(encoding="utf-8"))
        cached = data["entries"]
        sources = {k: v["source"] for k, v in data["metrics"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        print(f"warning: {sp} is not a score file this tool wrote; rescoring", file=sys.stderr)
        return
    if len(cached) != len(m.entries):
        return
    for c, e, img in zip(cached, m.entries, m.images):
        if c.get("prompt") != e["prompt"] or c.get("gen_image_path") != e["gen_image_path"]:
            return
        if c.get("image") != _fingerprint(img):
            return
    for metric in metrics:
        if sources.get(metric) == source_of(metric, cfg) and all(metric in c.get("scores", {}) for c in cached):
            m.scores[metric] = [float(c["scores"][metric]) for c in cached]


def _read(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: unreadable image ({e})") from None


def score_images(
    images: Sequence[Path],
    prompts: Sequence[str],
    scorers: dict[str, Scorer],
    batch_size: int,
    desc: str = "scoring",
    progress: bool = True,
) -> dict[str, list[float]]:
    """Decode each image once per batch and run every scorer on that batch (the single pass)."""
    from tqdm import tqdm

    out: dict[str, list[float]] = {name: [] for name in scorers}
    with tqdm(total=len(images), desc=desc, unit="img", dynamic_ncols=True, disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            batch = [_read(p) for p in images[start : start + batch_size]]
            texts = list(prompts[start : start + batch_size])
            for name, scorer in scorers.items():
                out[name].extend(scorer.score(batch, texts))
            bar.update(len(batch))
    return out


def summarise(values: Sequence[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def write_scores(m: Manifest, cfg: RewardConfig) -> Path:
    """Write every metric in ``m.scores`` beside the manifest, keeping other still-valid cached metrics."""
    sp = scores_path(m.path)
    metrics = [k for k in METRICS if k in m.scores]
    data = {
        "manifest": m.path.name,
        "metrics": {k: {"source": source_of(k, cfg), **summarise(m.scores[k])} for k in metrics},
        "entries": [
            {
                "index": i,
                "prompt": e["prompt"],
                "gen_image_path": e["gen_image_path"],
                "image": _fingerprint(img),
                "scores": {k: m.scores[k][i] for k in metrics},
            }
            for i, (e, img) in enumerate(zip(m.entries, m.images))
        ],
    }
    write_json(sp, data)
    return sp


def load_scorers(names: Sequence[str], device: str | None, cfg: RewardConfig) -> dict[str, Scorer]:
    return {name: load_scorer(name, device, cfg) for name in names}


def score_manifests(
    manifests: Sequence[Manifest],
    metrics: Sequence[str],
    cfg: RewardConfig,
    device: str | None = None,
    batch_size: int = 16,
    rescore: bool = False,
) -> None:
    """Bring every manifest's ``scores`` up to ``metrics``: reuse caches, load only the models still needed, once."""
    for m in manifests:
        load_cached(m, METRICS, cfg)  # all metrics: still-valid ones not asked for stay in the rewritten file
        if rescore:
            for k in metrics:
                m.scores.pop(k, None)
    needed = [k for k in metrics if any(k not in m.scores for m in manifests)]
    if not needed:
        return
    scorers = load_scorers(needed, device, cfg)
    for m in manifests:
        todo = {k: s for k, s in scorers.items() if k not in m.scores}
        if todo:
            m.scores.update(score_images(m.images, m.prompts, todo, batch_size, desc=f"{m.path.name}"))
            write_scores(m, cfg)


def summary_lines(m: Manifest, metrics: Sequence[str]) -> list[str]:
    lines = []
    for k in metrics:
        s = summarise(m.scores[k])
        lines.append(f"{k:<12} {LABELS[k]:<10} mean {s['mean']:.4f}  std {s['std']:.4f}  n {s['n']}")
    return lines


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """The flags every scoring entry point shares (score.py, winrate.py)."""
    ap.add_argument("--metrics", default="all", help=f"'all' or a comma list of: {', '.join(METRICS)}")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument(
        "--model_root",
        default=None,
        help="local mirror of the reward models' hub repos as <root>/<org>/<name>/ (default: $SDPO_REWARD_ROOT)",
    )
    ap.add_argument(
        "--hps_version", default=None, choices=["v2.0", "v2.1"], help="default: $SDPO_HPSV2_VERSION or v2.0"
    )
    ap.add_argument("--rescore", action="store_true", help="ignore cached per-image scores")


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json_path", help="generation manifest (JSON list of prompt/gen_image_path entries)")
    ap.add_argument("--summary", nargs="+", metavar="FILE", help="first flag: the table of eval/summary.py")
    add_model_args(ap)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--summary":  # everything after it belongs to eval/summary.py (--labels, --markdown...)
        from eval.summary import main as summary_main

        return summary_main(argv[1:])
    args = ap.parse_args(argv)
    if not args.json_path:
        ap.error("--json_path is required (or --summary FILE ... as the first flag)")
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    metrics = parse_metrics(args.metrics)
    cfg = RewardConfig.make(args.model_root, args.hps_version)
    m = open_manifest(args.json_path)
    score_manifests([m], metrics, cfg, args.device, args.batch_size, args.rescore)
    print(f"{m.path}: {len(m.entries)} images -> {scores_path(m.path)}")
    print("\n".join(summary_lines(m, metrics)))


if __name__ == "__main__":
    main()
