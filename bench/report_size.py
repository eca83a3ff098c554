"""Size and speed of a large A/B report: 3,000 prompts x 2 models (the first 3,000 HPSv2 prompts).

    python bench/report_size.py [--n 3000] [--size 512] [--thumb 256] [--keep DIR] [--quick]

Writes two models' manifests and score files (random scores around the paper's typical values, written
by eval/score.py's own writer), builds the report with ``python -m eval.report``'s code, and prints the
files' sizes and the build time; then opens it in headless Chromium (eval/report/browser.py) and prints
the time to the load event and to the first gallery page, the time to sort by each metric's difference
(change event to two animation frames later, so layout and paint are in), to turn a page and to filter.
It asserts no timing: the numbers are for the record.

The images are synthetic: smooth blobs plus finer texture at the size SD1.5 generates (JPEG thumbnails of
pure noise would be several times larger than those of real pictures, and of flat colour far smaller).
Each model has ``--distinct`` different pictures, hard-linked under every entry's own file name, so the
sources cost little disk; every thumbnail is still decoded and encoded from its own entry.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TYPICAL = {"pickscore": (0.215, 0.012), "hpsv2": (0.275, 0.012), "aesthetics": (5.6, 0.4), "clip": (0.355, 0.03),
           "imagereward": (0.3, 0.8)}  # fmt: skip


def picture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random picture with some detail: 8 x 8 colour blobs plus 64 x 64 texture, upsampled."""
    from PIL import Image

    def up(res: int, amp: float) -> np.ndarray:
        small = rng.normal(0, amp, (res, res, 3)).astype(np.float32)
        layers = [
            Image.fromarray(small[..., c], mode="F").resize((size, size), Image.Resampling.BICUBIC) for c in range(3)
        ]
        return np.stack([np.asarray(im) for im in layers], axis=-1)

    x = 128 + up(8, 60) + up(64, 18)
    return np.clip(x, 0, 255).astype(np.uint8)


def write_model(folder: Path, prompts: list[str], size: int, distinct: int, seed: int) -> Path:
    """``distinct`` pictures hard-linked as ``<i>_<S>x<S>.png`` for every prompt, and the manifest listing them."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    stem = f"hpsv2_seed0_{size}x{size}_50s_7.5cfg"
    images = folder / stem
    pool = folder / "pool"
    images.mkdir(parents=True)
    pool.mkdir()
    sources = []
    for k in range(min(distinct, len(prompts))):
        sources.append(pool / f"{k}.png")
        Image.fromarray(picture(rng, size)).save(sources[-1], compress_level=1)
    entries = []
    for i, prompt in enumerate(prompts):
        path = images / f"{i}_{size}x{size}.png"
        os.link(sources[i % len(sources)], path)
        entries.append({"prompt": prompt, "gen_image_path": str(path), "raw_image_path": None, "metadata": {}})
    manifest = folder / f"{stem}.json"
    manifest.write_text(json.dumps(entries))
    return manifest


def write_scores(manifests: list[Path], root: Path, seed: int) -> None:
    """Random scores around each metric's typical value; model B a little lower, as a fine-tune's baseline."""
    import eval.score as score
    from sdpo.rewards import METRICS, RewardConfig

    rng = np.random.default_rng(seed)
    cfg = RewardConfig.make(root / "no-models-here")
    shared = {k: rng.normal(*TYPICAL[k], size=len(score.open_manifest(manifests[0]).entries)) for k in METRICS}
    for j, path in enumerate(manifests):
        m = score.open_manifest(path)
        m.scores = {k: list(shared[k] + rng.normal(-0.2 * j * TYPICAL[k][1], TYPICAL[k][1], len(m.entries)))
                    for k in METRICS}  # fmt: skip
        score.write_scores(m, cfg)


def folder_size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return len(files), sum(p.stat().st_size for p in files)


SORT_JS = """async ([sel, value]) => {
  const el = document.querySelector(sel);
  const t0 = performance.now();
  el.value = value;
  el.dispatchEvent(new Event("change"));
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return [performance.now() - t0, +document.getElementById("rows").dataset.renderMs];
}"""
CLICK_JS = """async (sel) => {
  const t0 = performance.now();
  document.querySelector(sel).click();
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return [performance.now() - t0, +document.getElementById("rows").dataset.renderMs];
}"""


def measure_browser(html: Path) -> list[str]:
    """Load, first render, sort, page and filter times in headless Chromium, as printable lines."""
    from eval.report import browser

    reason = browser.unavailable()
    if reason:
        return [f"browser: skipped ({reason})"]
    t0 = time.perf_counter()
    with browser.open_report(html) as (page, problems):
        wall = time.perf_counter() - t0
        nav = page.evaluate("(() => { const n = performance.getEntriesByType('navigation')[0];"
                            " return [n.domContentLoadedEventEnd, n.loadEventEnd]; })()")  # fmt: skip
        first = page.evaluate("performance.getEntriesByName('report-rendered')[0].startTime")
        rows = page.evaluate("document.querySelectorAll('.row[data-row]').length")
        t1 = time.perf_counter()
        page.wait_for_load_state("networkidle")
        idle = time.perf_counter() - t1
        metrics = page.eval_on_selector_all("#f-sort option", "els => els.map(e => e.value)")
        sorts = [page.evaluate(SORT_JS, ["#f-sort", v]) for v in metrics if v.startswith("diff:")]
        pages = [page.evaluate(CLICK_JS, "#f-next") for _ in range(3)]
        page.fill("#f-text", "a")
        page.wait_for_timeout(400)
        filtered = float(page.evaluate("document.getElementById('rows').dataset.renderMs"))
        heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : 0")
        version = page.context.browser.version
    ms = lambda xs: f"median {statistics.median(xs):.0f} ms, max {max(xs):.0f} ms"  # noqa: E731
    return [
        f"headless Chromium {version}: load event {nav[1]:.0f} ms after navigation start (DOM ready {nav[0]:.0f} ms), "
        f"first gallery page ({rows} rows) rendered at {first:.0f} ms; goto() returned after {wall:.2f} s "
        f"(browser start included); thumbnails on screen loaded {idle:.2f} s later",
        f"sort by a metric difference ({len(sorts)} metrics, change event to painted): {ms([s[0] for s in sorts])}; "
        f"the script's sort + render alone: {ms([s[1] for s in sorts])}",
        f"next page: {ms([p[0] for p in pages])}; filter by text: sort + render {filtered:.0f} ms; "
        f"JS heap {heap / 2**20:.1f} MiB",
        f"page problems (console errors, failed requests): {len(problems)}",
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="prompts (the first n of prompts/hpsv2.json)")
    ap.add_argument("--size", type=int, default=512, help="source image side (SD1.5: 512)")
    ap.add_argument("--thumb", type=int, default=256, help="thumbnail side")
    ap.add_argument("--distinct", type=int, default=100, help="different pictures per model")
    ap.add_argument("--n_boot", type=int, default=10000, help="bootstrap resamples (eval/winrate.py's default)")
    ap.add_argument("--keep", default=None, help="build in this folder and keep it (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="60 prompts of 64 px, 200 resamples: seconds (the test)")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.size, a.distinct, a.n_boot = 60, 64, 10, 200
    from eval.report.cli import make_report
    from eval.report.inputs import group_by_folder

    prompts = [e["prompt"] for e in json.loads((REPO / "prompts" / "hpsv2.json").read_text())][: a.n]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.keep) if a.keep else Path(tmp)
        t0 = time.perf_counter()
        manifests = [write_model(root / name, prompts, a.size, a.distinct, seed) for seed, name in
                     enumerate(["sdpo", "dpo"])]  # fmt: skip
        write_scores(manifests, root, seed=0)
        made = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        html = make_report(group_by_folder(manifests), root / "report", n_boot=a.n_boot, thumb=a.thumb,
                           command="bench/report_size.py")  # fmt: skip
        built, cpu = time.perf_counter() - t0, time.process_time() - c0
        files, size = folder_size(root / "report" / "report_files")
        raw = html.read_bytes()
        print(f"{len(prompts)} prompts x 2 models, {a.size}x{a.size} sources, {a.thumb} px thumbnails, "
              f"{a.n_boot} bootstrap resamples ({made:.1f} s to write the inputs)")  # fmt: skip
        print(f"report built in {built:.1f} s ({cpu:.1f} s of CPU, all threads) on {os.cpu_count()} CPU(s)")
        print(f"report.html: {len(raw) / 1024:.1f} KiB ({len(gzip.compress(raw)) / 1024:.1f} KiB gzipped)")
        print(f"thumbnails: {files} files, {size / 2**20:.1f} MiB ({size / max(files, 1) / 1024:.1f} KiB each)"
              if files else "thumbnails: embedded in report.html")  # fmt: skip
        for line in measure_browser(html):
            print(line)
        if a.keep:
            print(f"kept: {html}")


if __name__ == "__main__":
    main()
