"""python -m eval.report: the page's numbers equal eval/summary.py's and eval/winrate.py's, rows pair as
winrate.align does, prompts are escaped, videos and GenEval results show, bad input is one line.

(The page in a real browser: tests/test_report_browser.py.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_helpers import STEM, geneval_results, parse, scored_manifest, video_manifest

import eval.summary as summary
import eval.winrate as winrate
from eval.report import media
from eval.report.cli import main as report_main
from eval.report.tables import line_up
from sdpo.rewards import METRICS

REPO = Path(__file__).resolve().parents[1]
A_PROMPTS = ["p", "q", "p", "r", "only in a", "p"]  # as tests/test_winrate.py: duplicates and unpaired prompts
B_PROMPTS = ["q", "p", "r", "p", "only in b"]


def _run(argv, capsys) -> tuple[int, str, str]:
    code = 0
    try:
        report_main([str(a) for a in argv] + ["--quiet"])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _page(out: Path):
    return parse((out / "report.html").read_text(encoding="utf-8"))


def _geneval_summary(folder: Path, stem: str, overall: float) -> Path:
    path = folder / f"{stem}.geneval.json"
    tags = {"single_object": {"score": overall, "correct": 1, "images": 2}}
    path.write_text(json.dumps({"overall": overall, "tags": tags, "images": 2, "prompts": 1}))
    return path


def test_summary_numbers_equal_summary_py(tmp_path, capsys):
    files = []
    for seed, model in enumerate(["sdpo", "dpo"]):
        for k, stem in enumerate([STEM, "papv2_seed0_32x32_50s_7.5cfg"]):
            files.append(scored_manifest(tmp_path / model, [f"{model} {i}" for i in range(3 + k)], 10 * seed + k, stem))
    gen = _geneval_summary(tmp_path / "sdpo", "geneval_seed0_32x32_50s_7.5cfg_4img", 0.625)
    code, out, err = _run([*files, gen, "--out", tmp_path / "rep", "--n_boot", 200], capsys)
    assert code == 0, err
    assert out.strip() == f"report: {tmp_path / 'rep' / 'report.html'}"
    page = _page(tmp_path / "rep")
    for model, manifest in [(0, files[0]), (0, files[1]), (1, files[2]), (1, files[3])]:
        _, means = summary.read_means(manifest)
        stored = json.loads((manifest.parent / f"{manifest.stem}.scores.json").read_text())["metrics"]
        for k in METRICS:
            key = f"summary/{model}/{manifest.stem}/{k}"
            assert page.num(f"{key}/mean") == means[k]  # the same float, not just the same digits
            assert page.texts[f"{key}/mean"] == f"{means[k]:.4f}"
            assert page.num(f"{key}/std") == stored[k]["std"] and page.num(f"{key}/n") == stored[k]["n"]
    # GenEval joins the rows of its model folder, as eval/summary.py joins it.
    assert page.num(f"summary/0/{STEM}/geneval/mean") == 0.625 and f"summary/1/{STEM}/geneval/mean" not in page.values
    # The Markdown block is eval/summary.py --markdown's output for the same files and labels, character for character.
    labels = [f"{m}/{Path(f).stem}" for m, f in zip(["sdpo", "sdpo", "dpo", "dpo"], files)]
    summary.main([*map(str, files), str(gen), "--markdown", "--labels", ",".join(labels)])
    assert capsys.readouterr().out.strip() in page.pres


@pytest.fixture
def ab(tmp_path):
    return (
        scored_manifest(tmp_path / "sdpo", A_PROMPTS, seed=1),
        scored_manifest(tmp_path / "dpo", B_PROMPTS, seed=2),
    )


def test_win_rates_equal_winrate_py_and_the_report_lands_beside_them(ab, tmp_path, capsys):
    a, b = ab
    argv = ["--json_a", a, "--json_b", b, "--label_a", "sdpo", "--label_b", "dpo", "--n_boot", "300", "--seed", "3"]
    winrate.main([*map(str, argv), "--outdir", str(tmp_path / "vs"), "--model_root", str(tmp_path / "no-models-here")])
    folder = Path(re.search(r"^results: (.+)$", capsys.readouterr().out, re.M).group(1))
    code, out, err = _run(["--winrate", folder], capsys)
    assert code == 0, err
    assert out.strip() == f"report: {folder / 'report.html'}"
    page, s = _page(folder), json.loads((folder / "summary.json").read_text())
    base = f"winrate/0/1/{STEM.split('_seed')[0]}"
    for k in METRICS:
        r = s["metrics"][k]
        for field in ("win_rate", "mean_a", "mean_b", "wins", "losses", "ties", "p_value"):
            assert page.num(f"{base}/{k}/{field}") == r[field], (k, field)
        assert [page.num(f"{base}/{k}/ci_lo"), page.num(f"{base}/{k}/ci_hi")] == r["ci95"]
    assert page.num(f"{base}/mean/win_rate") == s["mean"]["win_rate"]
    assert [page.num(f"{base}/mean/ci_lo"), page.num(f"{base}/mean/ci_hi")] == s["mean"]["ci95"]
    table = (folder / "table.txt").read_text().split("\n", 1)[1].strip()  # below the "A vs B: n pairs" header
    assert table in page.pres  # the console table, as eval/winrate.py printed it


def test_gallery_rows_pair_prompts_as_winrate_align(ab, tmp_path, capsys):
    a, b = ab
    code, _, err = _run([a, b, "--out", tmp_path / "rep", "--labels", "sdpo", "dpo", "--n_boot", 100], capsys)
    assert code == 0, err
    data = _page(tmp_path / "rep").data
    assert data["mode"] == "ab" and data["models"] == ["sdpo", "dpo"]
    cells = data["rows"]["cells"]
    pairs, only_a, only_b = winrate.align(A_PROMPTS, B_PROMPTS)
    assert [tuple(c) for c in cells if -1 not in c] == pairs
    assert [c[0] for c in cells if c[1] == -1] == only_a and [c[1] for c in cells if c[0] == -1] == only_b
    assert data["rows"]["prompt"] == [A_PROMPTS[i] if i >= 0 else B_PROMPTS[j] for i, j in cells]
    stored = json.loads((a.parent / f"{a.stem}.scores.json").read_text())["entries"]
    run_a = data["runs"][data["sets"][0]["runs"][0]]
    for k in METRICS:  # the page keeps 6 significant digits of every score
        assert run_a["scores"][k] == pytest.approx([e["scores"][k] for e in stored], rel=1e-5)
    assert line_up([["x", "x"], None, ["x"]]) == [("x", [0, -1, 0]), ("x", [1, -1, -1])]


MALICIOUS = [
    "</script><script>alert('prompt')</script>",
    '<img src=x onerror="alert(1)"> & "quotes"',
    "plain prompt",
]


def test_html_in_prompts_and_labels_is_escaped(tmp_path, capsys):
    a = scored_manifest(tmp_path / "a", MALICIOUS, seed=1)
    b = scored_manifest(tmp_path / "b", MALICIOUS, seed=2)
    label = "<b>bold</b>"
    code, _, err = _run([a, b, "--out", tmp_path / "rep", "--labels", label, "b", "--n_boot", 50], capsys)
    assert code == 0, err
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "<script>alert" not in html and "<img src=x" not in html and label not in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    page = parse(html)
    assert page.scripts == 2  # the data block and the page's own script, nothing from a prompt
    assert page.data["rows"]["prompt"] == MALICIOUS and page.data["models"] == [label, "b"]


def test_more_than_two_models_is_a_grid_against_the_first(tmp_path, capsys):
    prompts = [f"prompt {i}" for i in range(4)]
    files = [scored_manifest(tmp_path / m, prompts, seed=s) for s, m in enumerate(["base", "dpo", "sdpo"])]
    extra = scored_manifest(tmp_path / "sdpo", prompts[:2], seed=9, stem="papv2_seed0_32x32_50s_7.5cfg")
    code, _, err = _run([*files, extra, "--out", tmp_path / "rep", "--n_boot", 100], capsys)
    assert code == 0, err
    page = _page(tmp_path / "rep")
    assert page.data["mode"] == "grid" and page.data["models"] == ["base", "dpo", "sdpo"]
    assert [s["name"] for s in page.data["sets"]] == ["hpsv2", "papv2"]
    assert page.data["sets"][1]["runs"][:2] == [-1, -1]  # only sdpo has papv2
    assert all(len(c) == 3 for c in page.data["rows"]["cells"])
    # every model against the first, with eval/winrate.py's compare
    pairs = [(i, i) for i in range(4)]
    for k in (1, 2):
        a, b = (json.loads((f.parent / f"{f.stem}.scores.json").read_text())["entries"] for f in (files[k], files[0]))
        scores = [{m: [e["scores"][m] for e in x] for m in METRICS} for x in (a, b)]
        expected = winrate.compare(*scores, pairs, list(METRICS), n_boot=100, seed=0)
        assert page.num(f"winrate/{k}/0/hpsv2/mean/win_rate") == expected["mean"]["win_rate"]
        assert page.num(f"winrate/{k}/0/hpsv2/clip/p_value") == expected["clip"]["p_value"]
    assert not any(key.startswith("winrate/1/2") for key in page.values)


def test_video_manifests_play_as_clips_with_the_same_tables(tmp_path, capsys):
    a = video_manifest(tmp_path / "wan_sipo", ["a cat", "a dog"], seed=1)
    b = video_manifest(tmp_path / "wan_dpo", ["a cat", "a dog"], seed=2)
    capsys.readouterr()
    code, _, err = _run([a, b, "--out", tmp_path / "rep", "--n_boot", 100, "--embed", "never"], capsys)
    assert code == 0, err
    page = _page(tmp_path / "rep")
    run = page.data["runs"][0]
    assert run["media"] == "video" and run["video"] == {"dir": "report_files/r0/", "ext": ".mp4"}
    copied = tmp_path / "rep" / "report_files" / "r0" / "1.mp4"
    assert copied.read_bytes() == (a.parent / a.stem / "1_32x32.mp4").read_bytes()
    with Image.open(tmp_path / "rep" / "report_files" / "r0" / "1.jpg") as poster:  # the first frame, as a poster
        assert poster.size == (32, 32)
    saved = json.loads(a.with_name(a.stem + ".video_scores.json").read_text())
    assert page.num(f"summary/0/{a.stem}/temporal_flickering/mean") == saved["mean"]["temporal_flickering"]
    sa, sb = (json.loads(m.with_name(m.stem + ".video_scores.json").read_text())["videos"] for m in (a, b))
    o = winrate.outcomes(*(np.array([v["temporal_flickering"] for v in s]) for s in (sa, sb)))
    assert page.num("winrate/0/1/vbench/temporal_flickering/win_rate") == o.mean()


def test_geneval_task_scores_and_failing_cases_with_boxes(tmp_path, capsys):
    results = geneval_results(tmp_path / "sdpo")
    manifest = scored_manifest(tmp_path / "sdpo", ["a cat"], seed=3)
    code, _, err = _run([manifest, results, "--out", tmp_path / "rep", "--embed", "never"], capsys)
    assert code == 0, err
    html = (tmp_path / "rep" / "report.html").read_text()
    page = parse(html)
    expected = json.loads(results.with_suffix(".json").read_text())
    assert page.num("geneval/0/overall") == expected["overall"] == 0.25
    for tag, v in expected["tags"].items():
        assert page.num(f"geneval/0/{tag}/score") == v["score"] and page.num(f"geneval/0/{tag}/correct") == v["correct"]
    assert page.num(f"summary/0/{STEM}/geneval/mean") == expected["overall"]  # the summary's GenEval column
    assert html.count('<figure class="case">') == 3 and "a photo of a &lt;dog&gt;" in html
    drawn = tmp_path / "rep" / "report_files" / "g0" / "0_1.jpg"
    with Image.open(drawn) as im:
        edge = np.asarray(im.convert("RGB"))[20, 8].astype(int)  # on the box's left edge, in the class colour
    assert np.abs(edge - np.array(media.colour("dog"))).max() < 60 and edge.max() > 150
    assert not (tmp_path / "rep" / "report_files" / "g0" / "0_0.jpg").exists()  # the correct image is not listed


def test_thumbnails_are_embedded_when_few_and_files_when_many(ab, tmp_path, capsys, monkeypatch):
    a, b = ab
    code, _, _ = _run([a, b, "--out", tmp_path / "small", "--n_boot", 50], capsys)
    html = (tmp_path / "small" / "report.html").read_text()
    assert code == 0 and html.count("data:image/jpeg;base64,") == 11 and not (tmp_path / "small/report_files").exists()
    monkeypatch.setattr(media, "EMBED_LIMIT", 10)
    code, _, _ = _run([a, b, "--out", tmp_path / "big", "--n_boot", 50, "--thumb", 16], capsys)
    page = _page(tmp_path / "big")
    assert code == 0 and "data:image" not in (tmp_path / "big" / "report.html").read_text()
    run = page.data["runs"][0]
    assert run["thumbs"] == {"dir": "report_files/r0/", "ext": ".jpg"}
    with Image.open(tmp_path / "big" / "report_files" / "r0" / "5.jpg") as im:
        assert im.size == (16, 16)
    full = (tmp_path / "big" / (run["base"] + run["names"][5])).resolve()  # a relative link to the original image
    assert full == Path(json.loads(a.read_text())[5]["gen_image_path"]).resolve()


def test_bad_input_is_one_line_and_writes_nothing(ab, tmp_path, capsys):
    a, b = ab
    out = tmp_path / "rep"
    scores = a.parent / f"{a.stem}.scores.json"
    data = json.loads(scores.read_text())
    data["entries"][2]["prompt"] = "edited"
    bad_scores = tmp_path / "bad" / f"{STEM}.scores.json"
    bad_scores.parent.mkdir()
    (tmp_path / "bad" / f"{STEM}.json").write_text(a.read_text())
    bad_scores.write_text(json.dumps(data))
    cases = [
        ([tmp_path / "nope.json", "--out", out], "nope.json: no such file"),
        ([a, b, "--out", out, "--labels", "one"], "--labels has 1 names for 2 models"),
        ([tmp_path / "bad" / f"{STEM}.json", "--out", out], "do not match"),
        (["--winrate", tmp_path], "summary.json: no such file"),
        ([a], "--out DIR is required"),
        ([a, "--out", a], "exists and is not a folder"),
        (["--labels", "x", "y", a, b, "--out", out], "put --labels after the inputs"),
    ]
    for argv, message in cases:
        code, stdout, err = _run(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, (argv, err)
        assert not out.exists()
    (a.parent / a.stem / "3_32x32.png").unlink()
    code, _, err = _run([a, b, "--out", out], capsys)
    assert code == 2 and "1 of 6 images are missing" in err and not out.exists()


def test_test_vs_sh_prints_the_report_path(ab, tmp_path):
    """The shell hook: eval/winrate.py reuses the cached scores (no model loads), then the report lands beside."""
    a, b = ab
    cmd = ["bash", str(REPO / "scripts/eval/test_vs.sh"), "--json_a", str(a), "--json_b", str(b), "--n_boot", "50"]
    cmd += ["--outdir", str(tmp_path / "vs"), "--model_root", str(tmp_path / "no-models-here"), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = Path(re.search(r"^results: (.+)$", proc.stdout, re.M).group(1))
    assert proc.stdout.strip().splitlines()[-1] == f"report: {folder / 'report.html'}"
    assert (folder / "report.html").is_file() and "Mean" in proc.stdout


def test_joint_test_writes_a_report_beside_its_manifests(tmp_path):
    """The joint test scripts, on sets that already exist (generation and scoring skipped): the report is
    the last command, beside the manifests, and its path is printed."""
    from generate_helpers import cli_env

    (tmp_path / "unet.pth").write_bytes(b"")
    for s in ("papv2", "hpsv2"):
        scored_manifest(tmp_path, ["a red circle", "a blue square"], seed=len(s), stem=f"{s}_seed0_32x32_50s_7.5cfg")
    env = cli_env(KIND="sd15", SETS="papv2 hpsv2", SIZE="32", SCORE_PY=str(tmp_path / "absent.py"), PYTHON="python3")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    script = ["bash", str(REPO / "scripts/eval/joint_test.sh"), str(tmp_path / "unet.pth")]
    proc = subprocess.run(script, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    sets = " ".join(f"{tmp_path}/{s}_seed0_32x32_50s_7.5cfg.json" for s in ("papv2", "hpsv2"))
    lines = proc.stdout.strip().splitlines()
    assert lines[-2:] == [f"+ python3 -m eval.report {sets} --out {tmp_path}/report_32 --quiet",
                          f"report: {tmp_path}/report_32/report.html"]  # fmt: skip
    page = _page(tmp_path / "report_32")
    assert [s["name"] for s in page.data["sets"]] == ["papv2", "hpsv2"] and page.data["mode"] == "single"


def test_size_bench_quick_prints_sizes_and_times(capsys):
    """bench/report_size.py --quick: sizes always; browser timings where a browser runs (else the reason)."""
    from eval.report.browser import unavailable

    sys.path.insert(0, str(REPO))
    from bench.report_size import main as bench

    bench(["--quick"])
    out = capsys.readouterr().out
    assert "60 prompts x 2 models" in out and "report.html: " in out and "thumbnails: 120 files" in out
    if unavailable():
        assert f"browser: skipped ({unavailable()})" in out
    else:
        assert "load event" in out and "sort by a metric difference (5 metrics" in out and "page problems" in out
        assert "page problems (console errors, failed requests): 0" in out


def test_two_runs_of_one_set_in_one_folder_are_two_models(tmp_path, capsys):
    """Two cfg values from one checkpoint folder cannot be one model: each file is its own, named by its file."""
    a = scored_manifest(tmp_path / "ckpt", ["x", "y"], seed=1, stem="hpsv2_seed0_32x32_50s_5.0cfg")
    b = scored_manifest(tmp_path / "ckpt", ["x", "y"], seed=2, stem="hpsv2_seed0_32x32_50s_7.5cfg")
    code, _, err = _run([a, b, "--out", tmp_path / "rep", "--n_boot", 50], capsys)
    assert code == 0, err
    page = _page(tmp_path / "rep")
    assert page.data["models"] == [a.stem, b.stem] and page.data["mode"] == "ab"
    assert "winrate/0/1/hpsv2/mean/win_rate" in page.values
