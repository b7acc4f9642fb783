"""A transcoder feature's top contexts, against the same rows read through the bridge's own hooks (not the engine's io_of)."""

import pytest
import torch

from workbench import transcoder_contexts
from workbench.attribution_graph import transcoder_set
from workbench.errors import InputError
from workbench.model import load_model
from workbench.runs import run_tokens
from workbench.tokens import token_labels
from workbench.train.transcoders import heldout


@pytest.fixture(scope="module")
def stories():
    model = load_model("stories")
    if not transcoder_set(model):
        pytest.skip("stories has no transcoders")
    return model


def test_top_contexts_are_the_strongest_activations_of_the_held_out_rows(stories):
    tc = transcoder_set(stories)[0]
    _, rows, _ = heldout(stories)
    rows = rows[:64]
    _, cache = run_tokens(stories, rows, [tc.hook_name])  # the bridge's hooks: the MLP's input
    with torch.no_grad():
        acts = tc.encode(cache[tc.hook_name].float())[:, 1:].cpu()  # (row, pos - 1, d_sae), BOS left out
    density = (acts > 0).float().mean((0, 1))  # (d_sae,)
    feature = int(density.argmax())  # the most often active: it has a full list of contexts
    found = transcoder_contexts.top_contexts(stories, 0, feature, k=5)
    values = acts[..., feature].flatten()
    top = values.topk(5)
    assert found.density == pytest.approx(float(density[feature]), abs=1e-6)
    assert [a for _, _, a in found.top] == pytest.approx(top.values.tolist(), rel=1e-4, abs=1e-5)
    width = rows.shape[1] - 1
    r, p = divmod(int(top.indices[0]), width)
    assert found.top[0][1] == token_labels(stories.tokenizer, [int(rows[r, p + 1])])[0]  # the token it sits on
    assert found.rows()[0]["activation"] == found.top[0][2]


def test_a_feature_outside_the_transcoder_is_one_line(stories):
    with pytest.raises(InputError) as err:
        transcoder_contexts.top_contexts(stories, 0, 10**6)
    assert "\n" not in str(err.value)
