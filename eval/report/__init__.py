"""One self-contained HTML page per evaluation and per comparison: ``python -m eval.report`` (see ``cli``).

The console tools end in tables; an image model's change is judged by looking. The page puts the
numbers of ``eval/summary.py`` and ``eval/winrate.py`` (computed by their own functions) beside a
gallery of the images, sortable by any metric's difference, so the prompts a model wins or loses
are one click away. Modules:

- :mod:`eval.report.inputs` reads manifests, score files and GenEval results, grouped into models;
- :mod:`eval.report.tables` the summary, win-rate and GenEval numbers, and the gallery's row alignment;
- :mod:`eval.report.media`  thumbnails, video posters and copies, GenEval detections drawn;
- :mod:`eval.report.page`   the page's data (static tables, gallery JSON);
- :mod:`eval.report.render` the Jinja2 template (autoescaped), CSS and script inlined;
- :mod:`eval.report.cli`    the command line (also ``__main__``).
"""
