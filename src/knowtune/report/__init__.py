"""The study report: :mod:`.plots` (matplotlib figures as PNG bytes), :mod:`.html` (one
self-contained page) and :mod:`.build` (``knowtune report``: gathers, plots, writes
``index.html``, PNGs and ``results.json``). See docs/study.md.
"""
