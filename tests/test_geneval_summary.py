"""eval/summary.py puts GenEval's overall score beside the five rewards (the paper's Table 6 layout)."""

from __future__ import annotations

import json

import pytest

import eval.score as score
from eval.summary import main


def _scores(folder, name, means):
    man = folder / f"{name}.json"
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {k: {"source": "x", "mean": v, "std": 0.0, "n": 1} for k, v in means.items()}
    score.scores_path(man).write_text(json.dumps({"manifest": man.name, "metrics": metrics, "entries": []}))
    return man


def _geneval(folder, overall):
    path = folder / "geneval_seed0_1024x1024_50s_3.5cfg_4img.geneval.json"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"overall": overall, "tags": {}}))
    return path


def test_geneval_joins_the_rows_of_its_model_folder(tmp_path, capsys):
    base = _scores(tmp_path / "flux", "papv2_seed0_1024x1024_50s_3.5cfg", {"pickscore": 0.2252, "imagereward": 0.9916})
    gen_base = _geneval(tmp_path / "flux", 0.66)
    gen_only = _geneval(tmp_path / "sdpo", 0.71)  # no reward scores in this folder: its own row
    main([str(base), str(gen_base), str(gen_only), "--markdown"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| set | PickScore | HPS | Aes. | CLIP | IR | GenEval |"
    assert lines[2] == "| papv2_seed0_1024x1024_50s_3.5cfg | 0.2252 | - | - | - | 0.9916 | 0.6600 |"
    assert lines[3] == "| geneval_seed0_1024x1024_50s_3.5cfg_4img | - | - | - | - | - | 0.7100 |"
    assert len(lines) == 4


def test_not_a_geneval_summary(tmp_path, capsys):
    bad = tmp_path / "x.geneval.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit) as e:
        main([str(bad)])
    assert e.value.code == 2 and "not a GenEval summary" in capsys.readouterr().err
