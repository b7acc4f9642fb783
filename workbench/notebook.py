"""Figures inline in notebooks, offline: Jupyter (Lab, Notebook 7, classic) and VS Code.

Every figure of the workbench is a plotly Figure, which a notebook shows by its mimebundle. Which
entries it holds is plotly's renderer setting; this module makes the bundle explicit, without
touching plotly's global setting, so that each notebook front end finds one it draws offline:

- `application/vnd.plotly.v1+json`: the figure as data. JupyterLab and Notebook 7 draw it with the
  jupyterlab-plotly extension that the plotly package installs; VS Code draws it with its own
  notebook renderers (plotly's "vscode" renderer is this one). Neither fetches anything.
- `text/html`: the figure as HTML with plotly.js inlined (no CDN): the classic notebook, nbviewer
  and exported HTML draw it. plotly.js (~4.6 MB) goes into the first figure of a kernel session
  only; later figures use the Plotly object it defined (plotly's own "notebook" renderer does the
  same).

`inline(fig)` wraps a figure for display (the last line of a cell), `bundle(fig)` is the mapping.
"""

from __future__ import annotations

import json

PLOTLY_MIME = "application/vnd.plotly.v1+json"
CONFIG = {"displaylogo": False, "responsive": True}
_session = {"plotly_js_sent": False}  # this kernel's first figure carries plotly.js


def bundle(fig, include_plotlyjs: bool | None = None) -> dict[str, object]:
    """{mimetype: content} of a plotly figure: its JSON, and HTML that needs no network.

    `include_plotlyjs`: inline plotly.js in the HTML (None: only in this session's first figure).
    """
    first = not _session["plotly_js_sent"] if include_plotlyjs is None else include_plotlyjs
    html = fig.to_html(include_plotlyjs=bool(first), full_html=False, config=CONFIG)
    _session["plotly_js_sent"] = _session["plotly_js_sent"] or bool(first)
    return {PLOTLY_MIME: {**json.loads(fig.to_json()), "config": CONFIG}, "text/html": html}


class Inline:
    """A figure that a notebook displays through `bundle` (return it as a cell's last value)."""

    def __init__(self, fig):
        self.fig = fig

    def _repr_mimebundle_(self, include=None, exclude=None):
        out = bundle(self.fig)
        return {k: v for k, v in out.items() if (not include or k in include) and not (exclude and k in exclude)}


def inline(fig) -> Inline:
    return Inline(fig)
