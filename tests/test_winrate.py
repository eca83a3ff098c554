"""eval/winrate.py and scripts/eval/test_vs.sh: pairing, ties, unpaired prompts, symmetry, statistics, outputs."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import eval.score as score
import eval.winrate as winrate
from sdpo.rewards import METRICS, RewardConfig
from sdpo.tiny.rewards import build_tiny_reward_root, write_tiny_manifest

REPO = Path(__file__).resolve().parents[1]
A_PROMPTS = ["p", "q", "p", "r", "only in a", "p"]  # "p" three times in A, twice in B
B_PROMPTS = ["q", "p", "r", "p", "only in b"]
PAIRS = [(0, 1), (1, 0), (2, 3), (3, 2)]  # k-th "p" of A with k-th "p" of B, in A's order
OUTCOMES = {  # per metric, the outcome of each pair in PAIRS (1 A wins, 0.5 tie, 0 B wins)
    "pickscore": [1, 0.5, 0.5, 0],
    "hpsv2": [1, 1, 1, 1],
    "aesthetics": [0, 0, 0, 0.5],
    "clip": [1, 1, 0, 0.5],
    "imagereward": [0.5, 0.5, 0.5, 0.5],
}


@pytest.fixture
def hand_made(tmp_path, monkeypatch):
    """Two manifests with hand-made cached scores (models never load: load_scorer fails if called)."""
    cfg = RewardConfig.make(tmp_path / "no-models-here")
    b_scores = {k: [1.0 + 0.1 * j for j in range(len(B_PROMPTS))] for k in METRICS}  # distinct per B entry
    a_scores = {k: [9.0] * len(A_PROMPTS) for k in METRICS}  # unpaired entries keep 9.0
    for k in METRICS:
        for (i, j), o in zip(PAIRS, OUTCOMES[k]):
            a_scores[k][i] = b_scores[k][j] + (o - 0.5) * 0.05 if o != 0.5 else b_scores[k][j]
    manifests = []
    for name, prompts, scores in (("a", A_PROMPTS, a_scores), ("b", B_PROMPTS, b_scores)):
        m = score.open_manifest(write_tiny_manifest(tmp_path / name, "set", prompts, size=8))
        m.scores = scores
        score.write_scores(m, cfg)
        manifests.append(m.path)

    def fail(*a, **k):
        raise AssertionError("a reward model was loaded although both manifests have cached scores")

    monkeypatch.setattr(score, "load_scorer", fail)
    return manifests[0], manifests[1], tmp_path / "no-models-here"


def _main(argv, capsys):
    code = 0
    try:
        winrate.main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _result_dir(out: str) -> Path:
    return Path(re.search(r"^results: (.+)$", out, re.M).group(1))


def test_align_pairs_duplicates_in_order_and_reports_the_rest():
    assert winrate.align(A_PROMPTS, B_PROMPTS) == (PAIRS, [4, 5], [4])
    assert winrate.align(["x", "x"], ["x", "x", "x"]) == ([(0, 0), (1, 1)], [], [2])


def test_win_rates_from_hand_made_score_files(hand_made, tmp_path, capsys):
    a, b, root = hand_made
    argv = ["--json_a", str(a), "--json_b", str(b), "--label_a", "sdpo", "--label_b", "dpo"]
    argv += ["--outdir", str(tmp_path / "out"), "--model_root", str(root), "--n_boot", "2000"]
    code, out, err = _main(argv, capsys)
    assert code == 0, err
    folder = _result_dir(out)
    assert re.fullmatch(r"sdpo_vs_dpo_\d{8}-\d{6}", folder.name) and folder.parent == tmp_path / "out"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n_pairs"] == 4
    assert summary["only_in_a"] == {
        "count": 2,
        "entries": [{"index": 4, "prompt": "only in a"}, {"index": 5, "prompt": "p"}],
    }
    assert summary["only_in_b"] == {"count": 1, "entries": [{"index": 4, "prompt": "only in b"}]}
    assert "4 paired prompts (2 entries only in sdpo, 1 only in dpo)" in out
    for k, o in OUTCOMES.items():
        r = summary["metrics"][k]
        assert r["win_rate"] == pytest.approx(np.mean(o))
        assert (r["wins"], r["losses"], r["ties"]) == (o.count(1), o.count(0), o.count(0.5))
        assert r["ci95"][0] <= r["win_rate"] <= r["ci95"][1]
        pairs = json.loads((folder / f"{k}.json").read_text())
        assert [(p["index_a"], p["index_b"], p["outcome"]) for p in pairs] == [
            (i, j, float(x)) for (i, j), x in zip(PAIRS, o)
        ]
        assert [p["prompt"] for p in pairs] == ["p", "q", "p", "r"]
        assert all(p["score_a"] != 9.0 for p in pairs)
    assert summary["metrics"]["hpsv2"]["p_value"] == pytest.approx(0.125)  # 4 wins of 4: 2 / 2**4
    assert summary["metrics"]["hpsv2"]["ci95"] == [1.0, 1.0]
    assert summary["metrics"]["imagereward"]["p_value"] == 1.0  # all ties: no evidence either way
    assert summary["mean"]["win_rate"] == pytest.approx(np.mean([np.mean(o) for o in OUTCOMES.values()]))  # 0.55
    table = (folder / "table.txt").read_text()
    assert table.splitlines()[1].split()[:2] == ["metric", "win"]
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["PickScore", "HPS", "Aes.", "CLIP", "IR", "Mean"]
    assert "Mean         0.5500" in out
    with Image.open(folder / "winrate.png") as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_swapping_a_and_b_complements_every_win_rate(hand_made, tmp_path, capsys):
    a, b, root = hand_made
    common = ["--outdir", str(tmp_path / "out"), "--model_root", str(root), "--n_boot", "500"]
    ab = json.loads(
        (_result_dir(_main(["--json_a", str(a), "--json_b", str(b)] + common, capsys)[1]) / "summary.json").read_text()
    )
    ba = json.loads(
        (_result_dir(_main(["--json_a", str(b), "--json_b", str(a)] + common, capsys)[1]) / "summary.json").read_text()
    )
    for k in METRICS:
        x, y = ab["metrics"][k], ba["metrics"][k]
        assert x["win_rate"] + y["win_rate"] == pytest.approx(1.0)
        assert (x["wins"], x["losses"], x["ties"]) == (y["losses"], y["wins"], y["ties"])
        assert x["p_value"] == y["p_value"]
        assert (x["mean_a"], x["mean_b"]) == pytest.approx((y["mean_b"], y["mean_a"]))
    assert ab["mean"]["win_rate"] + ba["mean"]["win_rate"] == pytest.approx(1.0)
    assert ab["label_a"] == ba["label_b"] == "a"  # default labels: the folders holding the manifests


def test_sign_test_is_the_exact_binomial():
    def brute(w, n):
        pmf = [math.comb(n, k) / 2**n for k in range(n + 1)]
        return min(1.0, sum(p for p in pmf if p <= pmf[w] * (1 + 1e-12)))

    assert winrate.sign_test(9, 1) == pytest.approx(2 * 11 / 1024)
    assert winrate.sign_test(0, 0) == 1.0 and winrate.sign_test(5, 5) == 1.0
    for w, n in [(3, 10), (60, 100), (1500, 3200), (1, 1)]:
        assert winrate.sign_test(w, n - w) == pytest.approx(brute(w, n), rel=1e-9)


def test_bootstrap_interval_has_the_binomial_width():
    rng = np.random.default_rng(1)
    o = (rng.random(400) < 0.6).astype(float)
    lo, hi = np.percentile(winrate.bootstrap(o[:, None], 4000, seed=0), [2.5, 97.5])
    se = math.sqrt(o.mean() * (1 - o.mean()) / len(o))
    assert lo < o.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.1)
    again = winrate.bootstrap(o[:, None], 4000, seed=0)
    assert np.array_equal(again, winrate.bootstrap(o[:, None], 4000, seed=0))  # seeded: reproducible


def test_missing_images_stop_before_models_load(hand_made, tmp_path, capsys):
    a, b, root = hand_made
    (b.parent / "set" / "2_8x8.png").unlink()
    code, _, err = _main(["--json_a", str(a), "--json_b", str(b), "--outdir", str(tmp_path / "out")], capsys)
    assert code == 2 and "1 of 5 images are missing" in err and "2_8x8.png" in err
    assert not (tmp_path / "out").exists()


def test_test_vs_sh_end_to_end_on_tiny_manifests(tmp_path):
    """Two generated sets (generate.py's layout), scored by tiny reward models through the shell script."""
    root = build_tiny_reward_root(tmp_path / "rewards")
    prompts = ["a red cube", "a blue ball", "a red cube", "a green tree", "a cat"]
    ma = write_tiny_manifest(tmp_path / "sdpo/checkpoint-2000", "papv2_seed0_64x64_50s_7.5cfg", prompts, seed=1)
    mb = write_tiny_manifest(
        tmp_path / "dpo/checkpoint-2000", "papv2_seed0_64x64_50s_7.5cfg", prompts[:4] + ["a dog"], seed=2
    )
    cmd = ["bash", str(REPO / "scripts/eval/test_vs.sh"), "--json_a", str(ma), "--json_b", str(mb)]
    cmd += ["--label_a", "sdpo", "--label_b", "dpo", "--device", "cpu", "--batch_size", "2"]
    cmd += ["--outdir", str(tmp_path / "vs"), "--model_root", str(root), "--n_boot", "200"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = _result_dir(proc.stdout)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{k}.json" for k in METRICS] + ["summary.json", "table.txt", "winrate.png", "report.html"]
    )  # report.html: the HTML report test_vs.sh writes beside the results (tests/test_report.py)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n_pairs"] == 4 and summary["only_in_a"]["count"] == 1 and summary["only_in_b"]["count"] == 1
    assert set(summary["metrics"]) == set(METRICS)
    # Scores were cached beside both manifests, and the win rates agree with them.
    for m in (ma, mb):
        assert len(json.loads(score.scores_path(m).read_text())["entries"]) == 5
    ca, cb = (json.loads(score.scores_path(m).read_text())["entries"] for m in (ma, mb))
    o = [
        0.5 if x == y else float(x > y)
        for x, y in ((ca[i]["scores"]["clip"], cb[i]["scores"]["clip"]) for i in range(4))
    ]
    assert summary["metrics"]["clip"]["win_rate"] == pytest.approx(np.mean(o))
    assert proc.stdout.count("\n") >= 8 and "Mean" in proc.stdout
