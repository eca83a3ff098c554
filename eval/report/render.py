"""The page itself: one Jinja2 template with autoescaping on (every prompt, label and path is escaped by the
template engine, not by hand), the stylesheet and script inlined, the gallery data in a JSON block.

Why inline: the page must open from a file:// URL and from a copied folder, with no server, network or
build step; only thumbnails and videos live beside it (``report_files/``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from markupsafe import Markup

from eval.report import media

HERE = Path(__file__).resolve().parent


def script_json(data: object) -> Markup:
    """JSON that is safe inside ``<script type="application/json">``: ``<``, ``>`` and ``&`` escaped as
    ``\\u003c``..., so a prompt holding ``</script>`` cannot close the block (JSON.parse reads them back)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _pval(p: float) -> str:
    return f"{p:.3g}"


def environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["f4"] = _fmt
    env.filters["pval"] = _pval
    return env


def fill_thumbnails(context: dict, uris: dict[str, str]) -> None:
    """Thumbnail URLs: data URIs when embedded, else paths under ``report_files/``."""
    for ri, run in enumerate(context["data"]["runs"]):
        if uris:
            run["thumbs"] = [uris[f"r{ri}/{i}.jpg"] for i in range(run["n"])]
    gen = context.get("geneval")
    for model in gen["models"] if gen else []:
        for _, cases in model["failing"]:
            for case in cases:
                if "thumb" in case:
                    case["src"] = uris.get(case["thumb"]) or f"{media.FILES}/{case['thumb']}"


def render(context: dict, uris: dict[str, str]) -> str:
    fill_thumbnails(context, uris)
    return (
        environment()
        .get_template("report.html")
        .render(
            **context,
            data_json=script_json(context["data"]),
            css=Markup((HERE / "static" / "report.css").read_text(encoding="utf-8")),
            js=Markup((HERE / "static" / "report.js").read_text(encoding="utf-8")),
        )
    )
