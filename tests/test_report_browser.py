"""The report in a real browser (headless Debian Chromium through Playwright): it renders with no console
error, sorts by a metric's difference in the order the score files give, filters and pages, shows a
``<script>`` prompt as text, keeps its tables with JavaScript off, and plays video clips.

Skipped, with the reason, only where Chromium or Playwright cannot be installed (.ci/run installs both)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_helpers import scored_manifest, video_manifest

from eval.report import browser
from eval.report.cli import main as report_main

pytestmark = pytest.mark.skipif(browser.unavailable() is not None, reason=f"no browser: {browser.unavailable()}")

EVIL = "</script><script>alert('x')</script><img src=x onerror=alert(1)>"
PROMPTS = [f"a photo of thing {i}" for i in range(11)] + [EVIL]


@pytest.fixture(scope="module")
def ab_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    a = scored_manifest(tmp / "sdpo", PROMPTS, seed=1)
    b = scored_manifest(tmp / "dpo", PROMPTS, seed=2)
    report_main([str(a), str(b), "--out", str(tmp / "rep"), "--n_boot", "100", "--page_size", "5", "--quiet"])
    return tmp / "rep" / "report.html", a, b


def _pickscore_diffs(a: Path, b: Path) -> np.ndarray:
    """A - B per prompt, from the score files, at the 6 significant digits the page keeps."""
    sa, sb = (json.loads((m.parent / f"{m.stem}.scores.json").read_text())["entries"] for m in (a, b))
    return np.array([float(f"{x['scores']['pickscore']:.6g}") - float(f"{y['scores']['pickscore']:.6g}")
                     for x, y in zip(sa, sb)])  # fmt: skip


def _rows(page) -> list[int]:
    return page.eval_on_selector_all(".row[data-row]", "els => els.map(e => +e.dataset.row)")


def test_sort_filter_page_and_screenshot(ab_report):
    path, a, b = ab_report
    diffs = _pickscore_diffs(a, b)
    with browser.open_report(path) as (page, problems):
        assert _rows(page) == [0, 1, 2, 3, 4]  # manifest order, 5 per page
        page.select_option("#f-sort", "diff:pickscore")  # what a user does: pick a difference to sort by
        shown = _rows(page)
        assert shown == list(np.argsort(-diffs, kind="stable")[:5])  # largest A - B first
        values = page.eval_on_selector_all(".row td.diff[data-metric=pickscore]", "els => els.map(e => +e.dataset.v)")
        assert values == sorted(values, reverse=True) and values[0] == pytest.approx(diffs.max(), abs=1e-9)
        page.click("#f-dir")
        assert _rows(page) == list(np.argsort(diffs, kind="stable")[:5])
        page.click("#f-next")
        assert _rows(page) == list(np.argsort(diffs, kind="stable")[5:10])
        assert page.text_content("#f-status").startswith("rows 6\u201310 of 12")
        page.fill("#f-text", "thing 1")  # "thing 1" and "thing 10"
        page.wait_for_function("document.getElementById('f-status').textContent.includes('of 2 (of 12)')")
        assert sorted(_rows(page)) == [1, 10]
        page.wait_for_load_state("networkidle")
        png = page.screenshot(full_page=True)
    assert problems == []
    with Image.open(io.BytesIO(png)) as im:
        pixels = np.asarray(im.convert("L"))
    assert im.width >= 1000 and pixels.std() > 10  # a real picture, not a blank page


def test_a_script_prompt_renders_as_text(ab_report):
    path, _, _ = ab_report
    with browser.open_report(path) as (page, problems):
        page.fill("#f-text", "script")
        page.wait_for_function("document.querySelectorAll('.row[data-row]').length === 1")
        assert page.text_content(".row[data-row] .text") == EVIL
        assert page.evaluate("document.querySelectorAll('script').length") == 2
        assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert problems == []  # no alert dialog, no error


def test_tables_read_without_javascript(ab_report):
    path, _, _ = ab_report
    with browser.open_report(path, javascript=False) as (page, problems):
        assert page.is_visible("table.summary") and page.is_visible("table.winrate")
        assert len(page.query_selector_all("table.summary tbody tr")) == 2
        assert page.is_hidden("#controls") and page.query_selector_all(".row") == []
        assert "need JavaScript" in page.inner_text("#gallery")
    assert problems == []


def test_video_clips_play_muted_and_looped(tmp_path):
    a = video_manifest(tmp_path / "wan_sipo", ["a cat", "a dog"], seed=1)
    b = video_manifest(tmp_path / "wan_dpo", ["a cat", "a dog"], seed=2)
    report_main([str(a), str(b), "--out", str(tmp_path / "rep"), "--n_boot", "50", "--quiet"])
    with browser.open_report(tmp_path / "rep" / "report.html") as (page, problems):
        assert len(page.query_selector_all("video")) == 4
        page.wait_for_function("[...document.querySelectorAll('video')].every(v => v.readyState >= 2)", timeout=15000)
        state = page.evaluate("[...document.querySelectorAll('video')].map(v => [v.muted, v.loop, !v.error])")
    assert state == [[True, True, True]] * 4 and problems == []
