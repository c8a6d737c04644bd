"""The WeightsLab UI: web pages over a store (``weightslab ui``; ``pip install 'weightslab[ui]'``).

Served by :func:`weightslab.ui.server.serve`, built by :func:`weightslab.ui.app.create_app`
(Starlette; pages rendered by Jinja2, parts swapped by htmx, charts drawn by ECharts, both
vendored under ``static/vendor``). It reads the store through its read-only API only:

- ``state.py``: what routes read through (the store, kept logs, audits, thumbnails);
  ``routes.py``: a function per page or fragment; ``security.py``: the token, the headers;
- what the pages show, each from the store's public API: ``experiments.py`` (the runs),
  ``curves.py`` (points per branch, markers; a log's branches are
  :mod:`weightslab.history.branches`, as TensorBoard's runs), ``lineage.py`` (the tree, a diff),
  ``timeline.py`` (the events, audit badges), ``neurons.py`` (trigger-rate history, flags,
  widths), ``samples.py`` and ``sample_filter.py`` (paged ``sample_stats``, the
  ``deny_samples_where`` language in SQL), ``thumbnails.py`` (the only one that imports torch);
- ``logs.py``, ``audits.py``, ``memo.py``: what is kept between requests; ``values.py``.

Importing this package imports no web library and no torch.
"""
