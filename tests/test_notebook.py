"""Figures in notebooks, offline: the mimebundle holds the figure as data and as HTML that fetches nothing."""

import ast
import json
import re

import numpy as np
import pytest

from workbench import intervention_sweeps as ivs
from workbench import interventions as iv
from workbench import notebook
from workbench.figures import intervene as draw
from workbench.runs import hook_names, run_prompt


@pytest.fixture(scope="module")
def fig(circuits):
    metric = iv.Metric("log-probability", circuits.tokenizer(" stone")["input_ids"][0])
    return draw.head_ablation(ivs.ablation_sweep(circuits, "apple river stone cloud apple river", metric, "zero"))


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


# ---- docs/notebook.ipynb: the facade's walk through the induction story, run in a real kernel ----------------


def _array(value):
    """A plotly array from a figure's JSON: a list, or plotly 6+'s base64 {"dtype", "bdata", "shape"}."""
    import base64

    import numpy as np

    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        return flat.reshape([int(n) for n in str(value.get("shape", len(flat))).split(",")])
    return np.array([[np.nan if v is None else v for v in row] for row in value], dtype=float)


@pytest.fixture(scope="module")
def executed():
    """The notebook, executed top to bottom in a fresh kernel from the checkout's root (offline: the kernel inherits HF_HUB_OFFLINE)."""
    from pathlib import Path

    import nbformat
    from nbclient import NotebookClient

    root = Path(__file__).resolve().parents[1]
    nb = nbformat.read(root / "docs" / "notebook.ipynb", as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")  # committed without outputs
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(root)}}).execute()
    return nb


def _cell(nb, text: str):
    return next(c for c in nb.cells if c.cell_type == "code" and text in c.source)


def _figure(cell) -> dict:
    (out,) = [o for o in cell.outputs if o.output_type in ("execute_result", "display_data") and notebook.PLOTLY_MIME in o.data]
    return out.data[notebook.PLOTLY_MIME]


def test_the_notebook_runs_without_errors_and_shows_its_figures_offline(executed):
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if o.output_type in ("execute_result", "display_data") and notebook.PLOTLY_MIME in o.data]
    assert len(figures) == 9  # head types, pattern, lens, tracked, two patching sweeps, intervention, graph, read-back
    # a Result adds HTML that fetches nothing (classic notebook, nbviewer); a bare figure() is plotly's own JSON bundle
    results = [o for o in figures if "text/html" in o.data]
    assert len(results) == 6 and not [o for o in results if _external(o.data["text/html"])]
    assert "Plotly.newPlot" in results[0].data["text/html"] and len(results[0].data["text/html"]) > 1_000_000  # plotly.js, inlined once


def test_the_notebooks_numbers_are_the_analyses(executed, circuits):
    from workbench import attention, patching, tasks

    clean = "apple river stone cloud tiger piano candle garden apple river stone"
    corrupted = "apple river stone lemon tiger piano candle garden apple river stone"
    best = attention.head_types(circuits, run_prompt(circuits, clean, hook_names(circuits, "attn.hook_pattern"))).ranked("induction", 1)[0]
    # the induction head's pattern, as the notebook drew it: each row sums to 1, and it is the model's
    z = _array(_figure(_cell(executed, "pattern = wb.attention"))["data"][0]["z"])  # (query, key), the future masked
    assert np.allclose(np.nansum(z, -1), 1.0, atol=1e-5)
    assert np.allclose(np.nan_to_num(z), attention.patterns(circuits, clean).head(best["layer"], best["head"]).numpy(), atol=1e-6)
    assert "'␣cloud'" in _cell(executed, "row = pattern.pattern").outputs[0].data["text/plain"]  # the last query looks at " cloud"
    # the one-line patching figure is the sweep computed here
    answer, wrong = (circuits.tokenizer(t)["input_ids"][0] for t in (" cloud", " lemon"))
    sweep = patching.sweep(circuits, tasks.Pair(clean, corrupted, answer, wrong), "resid_pre")
    z = _array(_figure(_cell(executed, 'wb.patch(m, clean, corrupted, answer=" cloud", wrong=" lemon").figure()'))["data"][0]["z"])
    assert np.allclose(z, sweep.values.numpy(), atol=1e-6)
    # ablating the head inside wb.edits left no hook, and lowered p( cloud)
    hooks, (p_before, p_after) = ast.literal_eval(_cell(executed, "with wb.edits").outputs[0].data["text/plain"])  # a tuple's repr
    assert hooks == [] and p_after < p_before
