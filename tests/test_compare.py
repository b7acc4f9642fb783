from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest
from transformers import AutoModelForCausalLM

from workbench import compare
from workbench.model import MODELS_DIR
from workbench.runs import encode
from workbench.tokens import token_labels

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "5_Compare.py")
A = "The cat sat on the mat. The cat sat on the"
B = "The cat sat on the bed. The cat sat on the"


def test_each_side_is_its_own_prompts_run(english):
    """Both sides against plain transformers, so that a comparison reading one run twice would fail."""
    hf = AutoModelForCausalLM.from_pretrained(MODELS_DIR / "english", attn_implementation="eager").eval()
    d = compare.pattern_diff(english, A, B)
    ld = compare.lens_diff(english, A, B)
    for prompt, pattern, top in ((A, d.a, ld.top_a), (B, d.b, ld.top_b)):
        ids = encode(english, prompt)[0]
        with torch.no_grad():
            out = hf(ids[None], output_attentions=True)
        assert torch.allclose(pattern, torch.stack(out.attentions)[:, 0], atol=1e-5)
        assert top[-1] == token_labels(english.tokenizer, out.logits[0].argmax(-1).tolist())  # the last point is the output
    assert d.diff.abs().max() > 1e-3


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
