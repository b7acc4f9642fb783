"""Installable the way the field's libraries are: pins in step, console commands, shipped models found from the package."""

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_pyproject_pins_the_same_versions_as_requirements_txt():
    project = PYPROJECT["project"]
    declared = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    assert sorted(declared) == sorted(_requirements())
    assert all("==" in d for d in declared)  # pinned: pip install . gives the versions the tests ran on


def test_every_package_of_the_library_is_installed():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "workbench").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert PYPROJECT["project"]["scripts"] == {"workbench-app": "workbench.cli:app", "workbench-probe": "workbench_probes.__main__:main"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`pip install .` into a throwaway folder (no dependencies: they are this venv's).

    Built from a copy of the working tree without build outputs: setuptools reuses an existing
    build/ folder, so files deleted since an earlier build would otherwise be installed too.
    """
    source = tmp_path_factory.mktemp("source") / "workbench"
    outputs = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "out", "runs", "screenshots", ".pytest_cache")
    shutil.copytree(ROOT, source, ignore=outputs)
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(source)],
        check=True,
        capture_output=True,
    )
    return target


def _env(target: Path) -> dict:
    return os.environ | {"PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_every_shipped_model_file_is_installed(installed):
    shipped = {p.relative_to(ROOT / "models") for p in (ROOT / "models").rglob("*") if p.is_file()}
    copied = {p.relative_to(installed / "workbench" / "models") for p in (installed / "workbench" / "models").rglob("*") if p.is_file()}
    assert shipped and shipped == copied


@pytest.mark.slow
def test_the_probe_command_runs_from_another_folder_on_the_installed_models(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = [str(installed / "bin" / "workbench-probe"), "heads", "--model", "circuits", "--prompt", "apple river stone apple river"]
    done = subprocess.run(
        [*command, "--out", "out", "--formats", "html"], cwd=elsewhere, env=_env(installed), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((elsewhere / "out" / "manifest.json").read_text())
    assert manifest["status"] == "done"
    assert Path(manifest["model"]["source"]).resolve().is_relative_to(installed / "workbench" / "models")  # not the checkout's


@pytest.mark.slow
def test_the_app_command_serves_the_installed_pages_from_another_folder(installed, tmp_path):
    printed = subprocess.run(
        [str(installed / "bin" / "workbench-app"), "--print"], cwd=tmp_path, env=_env(installed), capture_output=True, text=True
    )
    assert printed.returncode == 0, printed.stderr
    app = installed / "workbench_app" / "app.py"
    assert str(app) in printed.stdout and "--server.address 127.0.0.1" in printed.stdout
    assert sorted(p.name for p in (app.parent / "pages").glob("*.py")) == sorted(p.name for p in (ROOT / "pages").glob("*.py"))
    check = (
        "import sys, workbench\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"assert workbench.__file__.startswith({str(installed)!r}), workbench.__file__\n"
        f"for page in ({str(app)!r}, {str(app.parent / 'pages' / '1_Attention.py')!r}):\n"
        "    at = AppTest.from_file(page, default_timeout=120)\n"
        "    at.session_state['wb.model'] = 'circuits'\n"
        "    at.run()\n"
        "    assert not at.exception and not at.error and at.get('plotly_chart'), (page, at.exception, at.error)\n"
    )
    done = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=_env(installed), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def _imports(path: Path) -> set[str]:
    """The top-level names of every module a file imports (relative imports as '.')."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." if node.level else node.module)
    return names


def _runs_the_model(path: Path) -> bool:
    """Whether a file imports the model or a function of the run layer (its result types are fine: figures draw them)."""
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "workbench.model":
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "workbench.runs" and any(a.name[0].islower() for a in node.names):
            return True
    return False


def test_the_house_keeps_its_one_way_flow():
    library = sorted((ROOT / "workbench").rglob("*.py"))
    streamlit = {p.parent.name for p in library if any(n.split(".")[0] == "streamlit" for n in _imports(p))}
    assert streamlit == {"ui"}  # only the glue (workbench/ui/) imports streamlit
    figures = [p for p in library if p.parent.name == "figures"]
    analyses = [p for p in library if p.parent.name == "workbench" and p.name not in ("export.py", "cli.py")]
    assert not [p.name for p in analyses if any(n.split(".")[0] == "plotly" for n in _imports(p))]  # an analysis never draws
    assert not [p.name for p in figures if _runs_the_model(p)]  # figures draw results; they never reach the model
    pages = [ROOT / "app.py", *(ROOT / "pages").glob("*.py")]
    assert not [p.name for p in pages if "torch" in _imports(p)]  # pages call the library, they do not compute on tensors
