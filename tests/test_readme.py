"""The README's "Adding a view" example runs as written: four new files and one registry line make a view."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import probes.__main__ as registry

ROOT = Path(__file__).resolve().parents[1]


def _files() -> dict[str, str]:
    """The README's code blocks that start with `# file: PATH`, by path."""
    blocks = re.findall(r"```python\n# file: (\S+)\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return {path: code for path, code in blocks}


@pytest.fixture()
def new_view(tmp_path, monkeypatch):
    """The example's files written out, its two library modules and its probe importable under their real names."""
    files = _files()
    for path, code in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(code)
    for name, path in (("workbench.neurons", "workbench/neurons.py"), ("workbench.figures.neurons", "workbench/figures/neurons.py")):
        spec = importlib.util.spec_from_file_location(name, tmp_path / path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
    spec = importlib.util.spec_from_file_location("probes.neurons", tmp_path / "probes/neurons.py")
    probe = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "probes.neurons", probe)
    spec.loader.exec_module(probe)
    monkeypatch.setitem(registry.PROBES, "neurons", probe)  # the one line the README adds to the registry
    return tmp_path


def test_the_example_is_four_files_in_the_four_places():
    assert sorted(_files()) == ["pages/7_Neurons.py", "probes/neurons.py", "workbench/figures/neurons.py", "workbench/neurons.py"]
    assert not any((ROOT / path).exists() for path in _files())  # an example, not a shipped view


def test_the_example_analysis_and_figure_agree_with_the_run(new_view, circuits):
    neurons = sys.modules["workbench.neurons"]
    draw = sys.modules["workbench.figures.neurons"]
    a = neurons.neuron_activations(circuits, "apple river stone apple river", 1, 3)
    assert a.values.shape == (6,) and len(a.rows()) == 6
    assert a.provenance["model"] == "circuits" and a.provenance["settings"] == {"view": "neurons", "layer": 1, "neuron": 3}
    trace = draw.activation_strip(a).data[0]
    assert trace.z[0] == a.values.tolist() and trace.zmid == 0 and trace.zmin == -trace.zmax


def test_the_example_page_and_probe_run(new_view, tmp_path):
    at = AppTest.from_file(str(new_view / "pages/7_Neurons.py"), default_timeout=120)
    at.session_state["wb.model"] = "circuits"
    at.query_params["neuron"] = "5"
    at.run()
    assert not at.exception and not at.error and at.get("plotly_chart")
    assert at.number_input(key="w.neuron").value == 5 and at.query_params["neuron"] in ("5", ["5"])
    out = tmp_path / "out"
    assert registry.main(["neurons", "--model", "circuits", "--prompt", "apple river", "--out", str(out), "--formats", "html"]) == 0
    assert json.loads((out / "manifest.json").read_text())["status"] == "done" and (out / "neuron.csv").exists()
