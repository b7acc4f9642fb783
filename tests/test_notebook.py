"""Figures in notebooks, offline: the mimebundle holds the figure as data and as HTML that fetches nothing."""

import json
import re

import pytest

from workbench import interventions as iv
from workbench import notebook
from workbench.figures import intervene as draw


@pytest.fixture(scope="module")
def fig(circuits):
    metric = iv.Metric("log-probability", circuits.tokenizer(" stone")["input_ids"][0])
    return draw.head_ablation(iv.ablation_sweep(circuits, "apple river stone cloud apple river", metric, "zero"))


def _external(html: str) -> list[str]:
    """Scripts or styles the HTML loads from elsewhere."""
    return re.findall(r"<(?:script|link)[^>]*(?:src|href)=[\"']?(https?:)?//[^\"'> ]+", html)


def test_the_bundle_holds_the_figure_as_data_and_as_offline_html(fig):
    notebook._session["plotly_js_sent"] = False
    first = notebook.bundle(fig)
    data = first[notebook.PLOTLY_MIME]
    assert data["data"] == json.loads(fig.to_json())["data"] and data["layout"] == json.loads(fig.to_json())["layout"]
    html = first["text/html"]
    assert len(html) > 1_000_000 and "Plotly.newPlot" in html  # plotly.js itself, inlined
    assert not _external(html)  # (plotly.js mentions its CDN in code it never runs for these figures)
    second = notebook.bundle(fig)["text/html"]  # the session's later figures use the Plotly object already there
    assert len(second) < 200_000 and "Plotly.newPlot" in second and not _external(second)
    assert "https://" not in json.dumps(data)  # nothing in the figure itself points elsewhere


def test_inline_displays_through_the_bundle(fig):
    shown = notebook.inline(fig)._repr_mimebundle_(include=[notebook.PLOTLY_MIME])
    assert list(shown) == [notebook.PLOTLY_MIME]


@pytest.mark.parametrize("renderer", ["vscode", "jupyterlab", "plotly_mimetype"])
def test_plotlys_renderers_for_vs_code_and_jupyter_carry_the_figure_as_data(fig, renderer):
    """The renderer plotly picks in VS Code ("vscode") and in a Jupyter kernel ("plotly_mimetype") is the figure's JSON, which
    those front ends draw with plotly.js they ship (offline): the same entry as our bundle's."""
    import plotly.io as pio

    out = pio.renderers[renderer].to_mimebundle(fig.to_dict())
    assert list(out) == [notebook.PLOTLY_MIME]
    assert out[notebook.PLOTLY_MIME]["data"] == notebook.bundle(fig, include_plotlyjs=False)[notebook.PLOTLY_MIME]["data"]
