from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest

from workbench import compare

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "5_Compare.py")
A = "The cat sat on the mat. The cat sat on the"
B = "The cat sat on the bed. The cat sat on the"


def test_identical_prompts_differ_nowhere(english):
    d = compare.pattern_diff(english, A, A)
    assert d.alignment.differ == [] and d.diff.abs().max() == 0 and d.change.max() == 0
    ld = compare.lens_diff(english, A, A)
    assert ld.js.max() < 1e-6 and ld.top_a == ld.top_b


def test_nothing_changes_before_the_first_different_token(english):
    d = compare.pattern_diff(english, A, B)
    first = d.alignment.differ[0]
    assert d.alignment.same_length and d.alignment.differ == [first]
    assert d.diff[:, :, :first].abs().max() < 1e-6  # queries before the change see identical prompts
    assert d.diff[:, :, first:].abs().max() > 1e-3
    assert torch.allclose(d.a.sum(-1), torch.ones_like(d.a.sum(-1)), atol=1e-5)
    ld = compare.lens_diff(english, A, B)
    assert ld.js[:, :first].max() < 1e-5 and ld.js[:, first:].max() > 1e-3
    assert (ld.js >= 0).all() and (ld.js <= torch.log(torch.tensor(2.0)) + 1e-5).all()


def test_different_lengths_compare_the_shared_prefix(english):
    d = compare.pattern_diff(english, "The whale", "The whale swam away")
    assert not d.alignment.same_length and d.alignment.n == len(d.alignment.labels_a)


def test_compare_page():
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["wb.model"] = "english"
    at.session_state["wb.prompt"], at.session_state["wb.prompt_b"] = A, B
    at.run()
    assert not at.exception, at.exception
    assert not at.error and len(at.get("plotly_chart")) == 3
