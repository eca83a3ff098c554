"""Score a GenEval image folder: one batched pass, per-image results cached, a summary beside it.

    python -m eval.geneval IMAGE_FOLDER [--outfile RESULTS.jsonl] [--batch_size 8] [--device cuda]
                                        [--model_root DIR] [--resize auto|cv2|torch] [--clip_amp auto|off]

IMAGE_FOLDER has GenEval's layout (``eval/generate.py --layout geneval`` writes it). Results:

- ``<IMAGE_FOLDER>.geneval.jsonl`` (``--outfile``): one row per image with the official evaluator's
  fields (``filename``, ``tag``, ``prompt``, ``correct``, ``reason``, ``metadata`` and ``details`` as JSON
  strings), so the official ``summary_scores.py`` reads it unchanged, plus ``index``, ``sample``, the
  image's fingerprint and the model sources used;
- ``<IMAGE_FOLDER>.geneval.json``: the six tag scores, their mean (the GenEval score), and counts;
  ``eval/summary.py`` puts its overall score beside the reward models' columns.

Rows are appended as images are scored, so a killed run resumes where it stopped: a rerun scores only
images without a valid row (same image file, same model sources and settings), then rewrites the
file in folder order.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # python eval/geneval/evaluate.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from eval.geneval import layout, rules  # noqa: E402
from sdpo.atomic import atomic_path, write_json  # noqa: E402
from sdpo.errors import UserError, cli_main  # noqa: E402

RESULTS_SUFFIX = ".geneval.jsonl"
SUMMARY_SUFFIX = ".geneval.json"
# Test hook: the process SIGKILLs itself after scoring this many images, to test resuming.
KILL_AFTER_ENV = "SDPO_GENEVAL_KILL_AFTER"


def default_outfile(folder: str | Path) -> Path:
    folder = Path(folder)
    return folder.parent / f"{folder.name}{RESULTS_SUFFIX}"


def summary_path(outfile: str | Path) -> Path:
    """``X.geneval.jsonl`` -> ``X.geneval.json`` (any other name: ``.json`` in place of its suffix)."""
    outfile = Path(outfile)
    return outfile.with_suffix(".json") if outfile.suffix == ".jsonl" else outfile.with_name(outfile.name + ".json")


def fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def _read_rows(path: Path) -> list[dict]:
    """Rows of a results file; a line cut short by a kill (or anything unreadable) is skipped."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "index" in row and "sample" in row:
            rows.append(row)
    return rows


def cached_rows(outfile: Path, samples: list[layout.Sample], settings: dict) -> dict[tuple[int, int], dict]:
    """Valid cached rows by (index, sample): same image file, same prompt metadata, same settings."""
    want = {(s.index, s.k): s for s in samples}
    out = {}
    for row in _read_rows(outfile):
        key = (row.get("index"), row.get("sample"))
        s = want.get(key)
        if s is None or row.get("settings") != settings or row.get("image") != fingerprint(s.path):
            continue
        if row.get("metadata") != json.dumps(s.metadata):
            continue
        out[key] = row
    return out


def result_row(sample: layout.Sample, correct: bool, reasons: list[str], objects: dict, settings: dict) -> dict:
    details = {name: [[*map(float, d.box), float(d.score)] for d in dets] for name, dets in objects.items()}
    return {
        "filename": sample.name,
        "tag": sample.metadata["tag"],
        "prompt": sample.metadata.get("prompt", ""),
        "correct": bool(correct),
        "reason": "\n".join(reasons),
        "metadata": json.dumps(sample.metadata),
        "details": json.dumps(details),
        "index": sample.index,
        "sample": sample.k,
        "image": fingerprint(sample.path),
        "settings": settings,
    }


def _open_image(path: Path):
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: unreadable image ({e})") from None


class Scorer:
    """Both models, loaded once (CLIP only if some prompt asks for a colour)."""

    def __init__(self, root: Path | None, device, resize: str, clip_amp: str, need_colour: bool) -> None:
        from eval.geneval.convert import load_model
        from eval.geneval.detector import Detector
        from eval.geneval.sources import detector_path

        model, _ = load_model(detector_path(root))
        self.names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        self.detector = Detector(model, device, resize)
        self.colours = None
        if need_colour:
            from eval.geneval.colors import load_clip

            self.colours = load_clip(root, device, clip_amp)

    def score(self, samples: list[layout.Sample], settings: dict) -> list[dict]:
        from eval.geneval.colors import object_crop

        images = [_open_image(s.path) for s in samples]
        found = self.detector(images, min_score=min(rules.THRESHOLD, rules.COUNTING_THRESHOLD))
        objects, requests = [], []
        for s, inst in zip(samples, found):
            candidates: dict[str, list[rules.Detection]] = {}
            for label, score, box, mask in zip(inst.labels, inst.scores, inst.boxes, inst.masks):
                candidates.setdefault(self.names[int(label)], []).append(
                    rules.Detection(tuple(box), float(score), mask)
                )
            objs = rules.keep_objects(candidates, s.metadata["tag"])
            objects.append(objs)
            requests.append(rules.colour_requests(objs, s.metadata))
        crops, owners = [], []
        for n, reqs in enumerate(requests):
            for clause, name, dets in reqs:
                crops += [object_crop(images[n], d) for d in dets]
                owners += [(n, clause, name)] * len(dets)
        colours = self.colours.classify(crops, [o[2] for o in owners]) if crops else []
        answers: list[dict[int, list[str]]] = [{} for _ in samples]
        for (n, clause, _), colour in zip(owners, colours):
            answers[n].setdefault(clause, []).append(colour)
        rows = []
        for s, objs, ans in zip(samples, objects, answers):
            correct, reasons = rules.evaluate(objs, s.metadata, ans)
            rows.append(result_row(s, correct, reasons, objs, settings))
        return rows


def format_summary(summary: dict) -> str:
    lines = [f"{tag:<16} {v['score']:.4f}  ({v['correct']} / {v['images']})" for tag, v in summary["tags"].items()]
    lines.append(f"{'overall':<16} {summary['overall']:.4f}  (mean over {len(summary['tags'])} tags)")
    lines.append(
        f"images {summary['images']} ({summary['correct_images']:.2%} correct), "
        f"prompts {summary['prompts']} ({summary['correct_prompts']:.2%} with a correct image)"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m eval.geneval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("image_folder", help="GenEval layout: <index:05d>/metadata.jsonl + <index:05d>/samples/<k>.png")
    ap.add_argument("--outfile", default=None, help="per-image results (default: <IMAGE_FOLDER>.geneval.jsonl)")
    ap.add_argument("--batch_size", type=int, default=8, help="images per detector pass; does not change results")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument(
        "--model_root", default=None, help="local mirror of both models (default: $SDPO_REWARD_ROOT); see sources.py"
    )
    ap.add_argument(
        "--resize", default="auto", choices=["auto", "cv2", "torch"], help="auto: OpenCV (as mmcv) when installed"
    )
    ap.add_argument(
        "--clip_amp", default="auto", choices=["auto", "off"], help="auto: fp16 autocast on CUDA, as the official"
    )
    ap.add_argument("--rescore", action="store_true", help="ignore cached per-image results")
    return ap


@cli_main
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    folder = Path(args.image_folder)
    samples = layout.scan(folder)  # a folder that is not the layout fails here, before any model loads
    names = layout.object_names()
    seen = set()
    for s in samples:
        if s.index not in seen:
            seen.add(s.index)
            rules.check_metadata(s.metadata, names, str(layout.prompt_folder(folder, s.index) / layout.METADATA_FILE))
    outfile = Path(args.outfile) if args.outfile else default_outfile(folder)

    import torch

    from eval.geneval.detector import resize_backend
    from eval.geneval.sources import describe_sources
    from sdpo.rewards.base import default_device
    from sdpo.rewards.sources import model_root_path

    root = model_root_path(args.model_root)
    device = default_device(args.device)
    resize = resize_backend(args.resize)
    settings = {
        **describe_sources(root),
        "resize": resize,
        "clip_amp": args.clip_amp if device.type == "cuda" else "off",
    }
    cache = {} if args.rescore else cached_rows(outfile, samples, settings)
    todo = [s for s in samples if (s.index, s.k) not in cache]
    print(f"{folder}: {len(samples)} images of {len(seen)} prompts, {len(cache)} already scored -> {outfile}")
    if resize == "torch" and args.resize == "auto":
        print("note: OpenCV is not installed, so images are resized with torch (within a grey level or two of")
        print("      mmcv's OpenCV resize); pip install opencv-python-headless for the official pixels")

    outfile.parent.mkdir(parents=True, exist_ok=True)
    _write_rows(outfile, sorted(cache.values(), key=lambda r: (r["index"], r["sample"])))
    start, scored = time.perf_counter(), 0
    if todo:
        from tqdm import tqdm

        need_colour = any("color" in c for s in todo for c in s.metadata.get("include", []))
        scorer = Scorer(root, device, resize, args.clip_amp, need_colour)
        kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
        with open(outfile, "a", encoding="utf-8") as f, tqdm(total=len(todo), desc="geneval", unit="img") as bar:
            for b in range(0, len(todo), args.batch_size):
                for row in scorer.score(todo[b : b + args.batch_size], settings):
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    cache[(row["index"], row["sample"])] = row
                    scored += 1
                    if kill_after and scored >= kill_after:
                        os.kill(os.getpid(), signal.SIGKILL)
                bar.update(len(todo[b : b + args.batch_size]))
        del scorer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rows = [cache[(s.index, s.k)] for s in samples]
    _write_rows(outfile, rows)
    summary = {"image_folder": folder.name, **rules.summarise(rows), "settings": settings}
    write_json(summary_path(outfile), summary)
    print(f"scored {scored} images ({len(samples) - scored} cached) in {time.perf_counter() - start:.1f} s")
    print(format_summary(summary))
    print(f"results {outfile}, summary {summary_path(outfile)}")
    return summary


def _write_rows(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
