"""The house's layers, read from the source with `ast`: which package may import which, no private name (`_x`)
reached across modules, and no import cycle at import time.

The layers, as the code is built today (STYLE.md's one-way flow):

    core (workbench/*.py)  <-  train (workbench/train)
                           <-  figures (workbench/figures)  <-  pages (pages/, app.py), probes, benchmarks
                           <-  ui (workbench/ui/)           <-  pages, benchmarks
                           <-  facade (workbench/__init__.py, api.py, results.py: `import workbench as wb`),
                               which may draw figures; nothing in the house imports it

Only ui, pages and benchmarks (which time the pages) import streamlit. Every import is counted,
also those inside a function: a lazy import is still an arrow. The few modules that a lower layer
may read upward are listed in UPWARD with the reason; a listed one that nothing uses any more
fails the test too, so that the list only shrinks.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer -> the layers it may import (its own included)
LAYER_MAP = {
    "core": {"core"},
    "train": {"core", "train"},
    "figures": {"core", "figures"},
    "ui": {"core", "ui"},
    "facade": {"core", "figures", "facade"},
    "pages": {"core", "figures", "ui", "pages"},
    "probes": {"core", "figures", "probes"},
    "benchmarks": {"core", "figures", "train", "ui", "benchmarks"},
}
STREAMLIT = {"ui", "pages", "benchmarks"}
FACADE = ("workbench/__init__.py", "workbench/api.py", "workbench/results.py")

# (layer, module of a higher layer) -> why that layer may read it; each must still be used
UPWARD = {
    ("core", "workbench.train.stories"): "the stories model organism's world (names, templates, stories) is the data "
    "its task pairs and held-out text are made of: tasks.py and sae_quality.py read it rather than copy it",
    ("core", "workbench.train.transcoders"): "the attribution graph's quality check reads held-out activations the way "
    "the transcoders were trained on them (heldout, io_of)",
}

# (file, module.name) -> why a private name crosses; each must still exist
PRIVATE_CROSSINGS: dict[tuple[str, str], str] = {}


def _sources() -> list[Path]:
    files = [ROOT / "app.py"]
    for folder in ("workbench", "pages", "probes", "benchmarks"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def _modules() -> set[str]:
    names = set()
    for path in _sources():
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of_file(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    if "/".join(parts) in FACADE:
        return "facade"
    if parts[0] == "workbench":
        return parts[1] if parts[1] in ("figures", "train", "ui") else "core"
    return "pages" if parts[0] == "app.py" else parts[0]


def layer_of_module(name: str) -> str | None:
    """The layer of an imported module, None for a third-party one (streamlit is 'streamlit')."""
    parts = name.split(".")
    if name in ("workbench", *(f.removesuffix(".py").replace("/", ".") for f in FACADE)):
        return "facade"  # the bare package is the facade (`import workbench as wb`)
    if parts[0] == "workbench":
        return parts[1] if len(parts) > 1 and parts[1] in ("figures", "train", "ui") else "core"
    if parts[0] in ("pages", "probes", "benchmarks", "streamlit"):
        return parts[0]
    return None


def imports_of(path: Path, source: str | None = None) -> list[str]:
    """Every module a file imports, anywhere in it; `from workbench.ui import cache` counts as workbench.ui.cache."""
    modules = _modules()
    own = _module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: only probes use it, for their own package
                base = own.rsplit(".", node.level)[0]
                found.append(f"{base}.{node.module}" if node.module else base)
                continue
            sub = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
            found += sub or [node.module]
    return found


def private_uses(path: Path, source: str | None = None) -> list[str]:
    """`module._name` for every private name of another project module that a file uses."""
    modules = _modules()
    own = _module_name(path)
    tree = ast.parse(path.read_text() if source is None else source)
    aliases: dict[str, str] = {}  # local name -> project module
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in modules:
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in modules:
                    aliases[a.asname or a.name] = full
                elif node.module in modules and node.module != own and _private(a.name):
                    found.append(full)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            module = aliases[node.value.id]
            if module != own and _private(node.attr):
                found.append(f"{module}.{node.attr}")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_the_layer_map_covers_every_layer_and_only_the_named_layers_import_streamlit():
    found = {layer_of_file(p) for p in _sources()}
    assert found <= set(LAYER_MAP) and set(LAYER_MAP) - found <= {"facade"}, found
    wrong = [
        f"{p.relative_to(ROOT)} imports {m}"
        for p in _sources()
        for m in imports_of(p)
        if layer_of_module(m) == "streamlit" and layer_of_file(p) not in STREAMLIT
    ]
    assert not wrong


def test_every_import_follows_the_layer_map():
    wrong, seen = [], set()
    for path in _sources():
        here = layer_of_file(path)
        for module in imports_of(path):
            there = layer_of_module(module)
            if there in (None, "streamlit") or there in LAYER_MAP[here]:
                continue
            if (here, module) in UPWARD:
                seen.add((here, module))
            else:
                wrong.append(f"{path.relative_to(ROOT)} ({here}) imports {module} ({there})")
    assert not wrong, "imports against the layer map (fix them, or list them in UPWARD with why):\n" + "\n".join(wrong)
    assert not set(UPWARD) - seen, f"listed in UPWARD but no longer imported (remove them): {set(UPWARD) - seen}"


def test_no_private_name_is_used_across_modules():
    wrong, seen = [], set()
    for path in _sources():
        for name in private_uses(path):
            key = (str(path.relative_to(ROOT)), name)
            if key in PRIVATE_CROSSINGS:
                seen.add(key)
            else:
                wrong.append(f"{key[0]} uses {name}")
    assert not wrong, "private names used across modules (make them public with a clear name):\n" + "\n".join(wrong)
    assert not set(PRIVATE_CROSSINGS) - seen, f"listed ones that are gone (remove them): {set(PRIVATE_CROSSINGS) - seen}"


@pytest.mark.parametrize(
    "source, bad",
    [
        ("from workbench import ui\n", "workbench.ui"),
        ("from workbench.ui.widgets import guard\n", "workbench.ui.widgets"),
        ("def f():\n    from workbench.figures import common\n", "workbench.figures.common"),
        ("import streamlit as st\n", "streamlit"),
    ],
)
def test_the_reader_sees_an_arrow_against_the_map_in_a_core_module(source, bad):
    """The checker itself: a core module importing the ui, a figure (even lazily) or streamlit is caught."""
    fake = ROOT / "workbench" / "made_up.py"
    assert layer_of_file(fake) == "core"
    assert bad in imports_of(fake, source) and layer_of_module(bad) not in LAYER_MAP["core"]


def test_the_reader_sees_a_private_name_in_both_spellings():
    source = "from workbench import patching\nfrom workbench.engine import _hidden\nx = patching._secret\ny = patching.public\n"
    found = private_uses(ROOT / "workbench" / "made_up.py", source)
    assert sorted(found) == ["workbench.engine._hidden", "workbench.patching._secret"]


# the files that read the bridge's blocks: the engine's extraction and its one accessor (engine.block_weights), the loader
BLOCK_READERS = ("workbench/engine.py", "workbench/model.py")


def bridge_block_reads(source: str) -> list[str]:
    """Every `<...>bridge.blocks` in a source, also through a name the bridge was put in (`b = model.bridge; b.blocks`)."""
    tree = ast.parse(source)
    aliases = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and ast.unparse(node.value).endswith("bridge")
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    return [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr == "blocks"
        and (ast.unparse(node.value).endswith("bridge") or (isinstance(node.value, ast.Name) and node.value.id in aliases))
    ]


def test_block_weights_are_read_in_one_place():
    """Analyses read a block's weights through engine.block_weights (the engine's copy, or the bridge's where the engine
    cannot run the model), never from the bridge's blocks themselves: one source of weights (issue 25)."""
    wrong = [
        f"{path.relative_to(ROOT)}: {read}"
        for path in _sources()
        if str(path.relative_to(ROOT)) not in BLOCK_READERS
        for read in bridge_block_reads(path.read_text())
    ]
    assert not wrong, "read these through engine.block_weights(model, layer):\n" + "\n".join(wrong)


def test_the_reader_sees_a_block_read_in_both_spellings():
    source = "w = model.bridge.blocks[0].attn.W_O\nb = model.bridge\nx = b.blocks[1].mlp.W_out\ny = layout.blocks\n"
    assert bridge_block_reads(source) == ["model.bridge.blocks", "b.blocks"]


def _top_level_imports(path: Path) -> set[str]:
    """The project modules a file imports when it is imported (module level, not inside functions)."""
    modules = _modules()
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            found |= subs or ({node.module} & modules)
    return found - {_module_name(path)}


def test_the_library_has_no_import_cycle_at_import_time():
    """Lazy imports inside functions may point back (the nnsight backend, a model's loader); what runs at import does not."""
    library = {_module_name(p): p for p in sorted((ROOT / "workbench").rglob("*.py"))}
    graph = {name: _top_level_imports(path) & set(library) for name, path in library.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for other in sorted(graph[name]):
            if state.get(other) == 1:
                cycles.append([*trail[trail.index(other) :], other])
            elif other not in state:
                visit(other, [*trail, other])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)
