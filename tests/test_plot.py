"""sdpo.plot.curves: curves of logged scalars from metrics.jsonl files, and its errors for missing logs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sdpo.errors import UserError
from sdpo.plot.curves import DEFAULT_METRICS, load_run, main, plot_runs, series, smooth


def _write_run(folder, n=12, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    with (folder / "metrics.jsonl").open("w") as f:
        for step in range(1, n + 1):
            row = {
                "step": step,
                "train_loss": float(rng.random()),
                "avg_win_diff_loss": 0.01 * step,
                "avg_lose_diff_loss": 0.03 * step,
                "avg_lose_l_scale": 0.2,
                "implicit_acc_accumulated": 0.5,
                "lr": 1e-5,
            }
            f.write(json.dumps(row) + "\n")
    return folder


def test_png_has_the_expected_size_one_panel_per_metric(tmp_path):
    runs = [_write_run(tmp_path / "dpo"), _write_run(tmp_path / "dpo+sdpo", seed=1)]
    out = plot_runs(runs, tmp_path / "figs" / "curves.png", DEFAULT_METRICS, smooth_window=3)
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == (1350, 640)  # 3 x 2 panels of 4.5 x 3.2 inches at 100 dpi
    out2 = plot_runs(runs[:1], tmp_path / "one.png", ("margin",))
    with Image.open(out2) as img:
        assert img.size == (450, 320)


def test_margin_is_winner_minus_loser_and_skips_rows_without_it(tmp_path):
    rows = load_run(_write_run(tmp_path / "run", n=4)) + [{"step": 5, "train_loss": 1.0}]
    steps, margin = series(rows, "margin")
    assert steps.tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(margin, [-0.02, -0.04, -0.06, -0.08])
    assert series(rows, "train_loss")[0].tolist() == [1, 2, 3, 4, 5]


def test_smoothing_is_a_trailing_moving_average():
    x = np.array([1.0, 3.0, 5.0, 7.0, 9.0])
    expected = [np.mean(x[max(0, i - 2) : i + 1]) for i in range(len(x))]
    np.testing.assert_allclose(smooth(x, 3), expected)
    np.testing.assert_array_equal(smooth(x, 1), x)


def test_folder_without_log_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "not_a_run").mkdir()
    with pytest.raises(UserError, match=r"not_a_run: no metrics.jsonl found; pass the --output_dir of a train.py run"):
        load_run(tmp_path / "not_a_run")
    with pytest.raises(SystemExit) as exc:
        main([str(_write_run(tmp_path / "ok")), str(tmp_path / "not_a_run"), "--out", str(tmp_path / "x.png")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not_a_run: no metrics.jsonl" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_empty_log_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="empty log"):
        load_run(tmp_path / "run")


def test_unsupported_output_format_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(_write_run(tmp_path / "ok")), "--out", str(tmp_path / "fig.txt")])
    assert exc.value.code == 2
    assert "name a .png, .pdf or .svg file" in capsys.readouterr().err


def test_runs_are_coloured_by_their_safeguard(tmp_path):
    """Blue shades with the SDPO safeguard, red without (the demo figure's meaning); the cycle when unknown."""
    from sdpo.plot.curves import PLAIN_COLOURS, SAFEGUARD_COLOURS, run_colours

    runs = []
    for name, on in (("dpo", False), ("dpo_sdpo", True), ("dmpo", False)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run_config.json").write_text(json.dumps({"use_winner_preserving": on}))
        runs.append(tmp_path / name)
    assert run_colours(runs, ["c0", "c1", "c2"]) == [PLAIN_COLOURS[0], SAFEGUARD_COLOURS[0], PLAIN_COLOURS[1]]
    (tmp_path / "old").mkdir()
    assert run_colours([*runs, tmp_path / "old"], ["c0", "c1"]) == ["c0", "c1", "c0", "c1"]
