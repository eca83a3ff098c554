"""Hand videos made here to the official VBench, which runs in its own environment.

VBench cannot be installed beside this project: its package pins ``transformers==4.33.2`` and
``numpy<2`` and downloads its model weights when it first runs.  Install it in a separate
environment (``pip install vbench``, see its README) and give it the videos in the layout it expects.

    # 1. VBench's prompt list (prompts/all_dimension.txt in its repository, one prompt per line) -> our prompt file
    python eval/vbench_layout.py prompts --txt all_dimension.txt --out prompts/vbench_all_dimension.json
    # 2. five samples per prompt, as VBench's protocol asks: one generation run per seed
    for s in 0 1 2 3 4; do python eval/generate.py ... --test_json prompts/vbench_all_dimension.json --seed $s; done
    # 3. the standard layout, {prompt}-{index}.mp4 (index = the manifests' order), as symbolic links
    python eval/vbench_layout.py videos --manifests M_seed0.json ... M_seed4.json --out vbench_videos/mymodel
    # 4. in the VBench environment
    vbench evaluate --videos_path vbench_videos/mymodel --dimension subject_consistency   # one per dimension

For the Total / Quality / Semantic scores, evaluate every dimension and use VBench's
``scripts/cal_final_score.py`` on the zipped results; its temporal flickering expects static videos
filtered out first (``static_filter.py``).  ``eval/video_score.py`` computes temporal flickering here.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402

from sdpo.atomic import write_json  # noqa: E402
from sdpo.errors import UserError, cli_main  # noqa: E402
from sdpo.sampling.prompts import read_manifest  # noqa: E402


def prompts_from_txt(txt: str | Path, out: str | Path) -> int:
    """VBench's one-prompt-per-line file -> a prompt JSON list; returns the count."""
    lines = [ln.strip() for ln in Path(txt).read_text(encoding="utf-8").splitlines()]
    prompts = [ln for ln in lines if ln]
    if not prompts:
        raise UserError(f"{txt}: no prompts")
    write_json(out, [{"prompt": p} for p in prompts])
    return len(prompts)


def lay_out(manifests: list[str | Path], out: str | Path, copy: bool = False) -> int:
    """``out/{prompt}-{k}.mp4`` for entry ``i`` of manifest ``k``; returns the number of videos.

    Manifests must list the same prompts; a prompt VBench could not use as a file name (with ``/``) and
    a prompt listed twice (two videos would claim one name) stop with one line."""
    from eval.video_score import video_of

    out = Path(out)
    runs = [(Path(m), read_manifest(m)) for m in manifests]
    prompts = [e["prompt"] for e in runs[0][1]]
    for m, entries in runs[1:]:
        if [e["prompt"] for e in entries] != prompts:
            raise UserError(f"{m}: lists other prompts than {runs[0][0]}; lay out runs of one prompt file together")
    bad = next((p for p in prompts if "/" in p or not p), None)
    if bad is not None:
        raise UserError(f"prompt {bad!r} cannot be a VBench file name (empty or containing '/')")
    dup = next((p for p in prompts if prompts.count(p) > 1), None)
    if dup is not None:
        raise UserError(f"prompt {dup!r} is listed twice; VBench names videos by prompt, so each must be unique")
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for k, (m, entries) in enumerate(runs):
        for e in entries:
            src, dst = video_of(e, m).resolve(), out / f"{e['prompt']}-{k}.mp4"
            if not src.is_file():
                raise UserError(f"{src}: missing (named in {m})")
            dst.unlink(missing_ok=True)
            if copy:
                shutil.copyfile(src, dst)
            else:
                os.symlink(src, dst)
            n += 1
    return n


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="eval/vbench_layout.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("prompts", help="VBench prompt .txt -> prompt JSON")
    a.add_argument("--txt", required=True)
    a.add_argument("--out", required=True)
    v = sub.add_parser("videos", help="manifests -> {prompt}-{index}.mp4")
    v.add_argument("--manifests", nargs="+", required=True, help="one per seed, in index order")
    v.add_argument("--out", required=True)
    v.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    args = p.parse_args(argv)
    if args.what == "prompts":
        print(f"{prompts_from_txt(args.txt, args.out)} prompts -> {args.out}")
    else:
        print(f"{lay_out(args.manifests, args.out, args.copy)} videos -> {args.out}")


if __name__ == "__main__":
    main()
