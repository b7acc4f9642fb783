"""Every skip and xfail in tests/ is named in tests/QUARANTINE.md with why, and every name there still exists.

Read with `ast`, so that a skip cannot hide in a test that never runs here: calls of `pytest.skip`,
`pytest.xfail` and `pytest.importorskip`, and the marks `pytest.mark.skip`, `skipif` and `xfail`
(as a decorator or a module's `pytestmark`), each keyed by the function that holds it.
"""

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
LISTED = re.compile(r"^- `(tests/[\w./]+)::([\w<>]+)` \(([\w.]+)\): \S")
CALLS = {"skip", "xfail", "importorskip"}
MARKS = {"skip", "skipif", "xfail"}


def found_in(path: Path, source: str | None = None) -> set[tuple[str, str, str]]:
    """(file, enclosing function or '<module>', kind) for every skip or xfail in a test file."""
    tree = ast.parse(path.read_text() if source is None else source)
    name = f"tests/{path.name}"
    found = set()

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            here = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else where
            if isinstance(child, ast.Attribute) and child.attr in MARKS and _is(child.value, "pytest", "mark"):
                found.add((name, here, f"mark.{child.attr}"))
            call = isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
            if call and child.func.attr in CALLS and _is(child.func.value, "pytest"):
                found.add((name, here, child.func.attr))
            visit(child, here)

    visit(tree, "<module>")
    return found


def _is(node: ast.AST, *dotted: str) -> bool:
    """Whether node spells the dotted name, e.g. _is(x, "pytest", "mark") for `pytest.mark`."""
    if len(dotted) == 1:
        return isinstance(node, ast.Name) and node.id == dotted[0]
    return isinstance(node, ast.Attribute) and node.attr == dotted[-1] and _is(node.value, *dotted[:-1])


def listed() -> set[tuple[str, str, str]]:
    rows = set()
    for line in (TESTS / "QUARANTINE.md").read_text().splitlines():
        if line.startswith("- `tests/"):
            match = LISTED.match(line)
            assert match, f"QUARANTINE.md: cannot read {line!r} (- `file::function` (kind): why)"
            rows.add(match.groups())
    return rows


def test_every_skip_and_xfail_is_listed_with_why_and_every_listed_one_exists():
    found = set().union(*(found_in(p) for p in sorted(TESTS.glob("*.py"))))
    rows = listed()
    assert not found - rows, "skips/xfails missing from tests/QUARANTINE.md (add them with why):\n" + "\n".join(
        f"- `{f}::{fn}` ({kind})" for f, fn, kind in sorted(found - rows)
    )
    assert not rows - found, f"listed in tests/QUARANTINE.md but gone (remove them): {sorted(rows - found)}"


def test_the_reader_finds_each_spelling():
    source = (
        "import pytest\n"
        "pytestmark = pytest.mark.skipif(True, reason='x')\n"
        "@pytest.mark.xfail(reason='y')\n"
        "def test_a():\n"
        "    pytest.importorskip('jsonschema')\n"
        "def helper():\n"
        "    if True:\n"
        "        pytest.skip('z')\n"
        "def test_b():\n"
        "    pytest.approx(1)\n"
    )
    assert found_in(TESTS / "test_made_up.py", source) == {
        ("tests/test_made_up.py", "<module>", "mark.skipif"),
        ("tests/test_made_up.py", "test_a", "mark.xfail"),
        ("tests/test_made_up.py", "test_a", "importorskip"),
        ("tests/test_made_up.py", "helper", "skip"),
    }
