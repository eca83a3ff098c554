"""Open a report in headless Chromium: for the browser tests, the size bench and screenshots.

    python -m eval.report.browser REPORT.html --screenshot shot.png [--sort diff:pickscore] [--width 1400]

Drives Debian's Chromium (``apt-get install chromium``) through Playwright (``pip install playwright``;
no browser download: the system's binary is used). The flags are the ones that work on a machine with
no network: no background networking, component updates or sync, and a fresh profile per launch
(Playwright makes one). Everything the page reports as a problem is collected: console errors, uncaught
exceptions, failed requests (a missing thumbnail) and dialogs (an ``alert`` from an unescaped prompt).
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sdpo.errors import UserError, cli_main

FLAGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str | None:
    """``$SDPO_CHROMIUM``, else Debian's ``chromium`` (or ``chromium-browser``) on the PATH."""
    return os.environ.get("SDPO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def unavailable() -> str | None:
    """Why a browser cannot be driven here (``None`` when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -r requirements-dev.txt)"
    if chromium() is None:
        return "Chromium is not installed (apt-get install chromium, as .ci/run does)"
    return None


@contextmanager
def open_report(path: str | Path, width: int = 1400, height: int = 1000, javascript: bool = True) -> Iterator[tuple]:
    """``(page, problems)``: the report loaded (load event fired) in a fresh headless Chromium."""
    reason = unavailable()
    if reason:
        raise UserError(f"cannot open a browser: {reason}")
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=FLAGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": height}, java_script_enabled=javascript)
            page = context.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))

            def dialog(d) -> None:
                problems.append(f"dialog {d.type}: {d.message}")
                d.dismiss()

            page.on("dialog", dialog)
            page.goto(Path(path).resolve().as_uri(), wait_until="load")
            yield page, problems
        finally:
            browser.close()


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m eval.report.browser", description=__doc__.split("\n\n")[0])
    ap.add_argument("report", help="a report.html written by python -m eval.report")
    ap.add_argument("--screenshot", required=True, help="PNG to write")
    ap.add_argument("--sort", default=None, help="a sort key of the gallery first, e.g. diff:pickscore")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1000)
    ap.add_argument("--full_page", action="store_true", help="the whole page, not the first screen")
    a = ap.parse_args(argv)
    if not Path(a.report).is_file():
        raise UserError(f"{a.report}: no such file")
    with open_report(a.report, a.width, a.height) as (page, problems):
        if a.sort:
            page.select_option("#f-sort", a.sort)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=a.screenshot, full_page=a.full_page)
    for p in problems:
        print(p)
    print(f"screenshot: {a.screenshot}")


if __name__ == "__main__":
    main()
