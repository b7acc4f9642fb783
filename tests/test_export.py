import json
import math
from dataclasses import dataclass

import plotly.graph_objects as go
import pytest
import torch

from workbench import export
from workbench.errors import InputError


def _fig():
    return go.Figure(go.Heatmap(z=[[0.1, 0.9], [0.5, 0.5]], x=["␣the", "雪"], y=["a", "b"]))


def test_html_needs_no_browser_and_is_standalone():
    html = export.figure_bytes(_fig(), "html").decode()
    assert "<html>" in html[:100] and "Plotly.newPlot" in html and '<script src="https://cdn.plot.ly' not in html and len(html) > 1_000_000


@pytest.mark.skipif(export.browser() is None, reason="needs Chromium (apt-get install chromium)")
def test_png_and_svg_are_real_images():
    png = export.figure_bytes(_fig(), "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    svg = export.figure_bytes(_fig(), "svg").decode()
    assert "<svg" in svg[:500]


def test_missing_browser_is_one_clear_message(monkeypatch):
    monkeypatch.setattr(export, "browser", lambda: None)
    with pytest.raises(InputError, match="apt-get install chromium"):
        export.figure_bytes(_fig(), "png")
    with pytest.raises(InputError, match="unknown figure format"):
        export.figure_bytes(_fig(), "gif")


def test_names_are_sanitised():
    assert export.safe_name("../../etc/passwd") == "etc-passwd"
    assert export.safe_name("pattern L0H1 ☃") == "pattern-L0H1"
    assert export.safe_name("///") == "figure"


def test_results_become_plain_json_and_csv():
    @dataclass(frozen=True)
    class R:
        scores: torch.Tensor
        label: str
        gap: float

    text = export.to_json(R(torch.tensor([[1.0, float("nan")]]), "雪", math.inf))
    assert json.loads(text) == {"scores": [[1.0, None]], "label": "雪", "gap": None}
    csv = export.to_csv([dict(layer=0, head=1, score=0.5), dict(layer=1, head=0, score=0.25)])
    assert csv.splitlines() == ["layer,head,score", "0,1,0.5", "1,0,0.25"]
