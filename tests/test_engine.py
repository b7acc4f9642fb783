"""The forward engine's edits against the same edits written by hand as hooks on the bridge."""

import pytest
import torch

from workbench import engine, families
from workbench.model import load_model
from workbench.runs import encode, run_tokens

PROMPT = "The cat sat on the mat. The cat sat on the"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return load_model(str(families.build("llama", tmp_path_factory.mktemp("llama"))))


@pytest.fixture(scope="module", params=["circuits", "llama"])
def model(request, circuits, llama):
    return {"circuits": circuits, "llama": llama}[request.param]


def _prompt(model) -> torch.Tensor:
    text = PROMPT if model.info.name != "circuits" else "apple river stone cloud apple river stone"
    return encode(model, text)[0][None]  # (1, pos)


def test_ablating_a_head_equals_zeroing_it_with_a_hook(model):
    ids = _prompt(model)
    plain = run_tokens(model, ids)[0]
    changed = 0
    for layer in range(model.info.n_layers):
        for head in range(model.info.n_heads):

            def zero_head(z, hook, head=head):
                z = z.clone()
                z[:, :, head] = 0.0
                return z

            want, _ = run_tokens(model, ids, hooks=[(f"blocks.{layer}.attn.hook_z", zero_head)])
            with torch.no_grad():
                got = engine.forward(engine.weights_of(model), ids, edits=[engine.Edit("ablate", "z", layer, head=head)]).logits
            assert torch.allclose(got, want, atol=1e-4), (layer, head)
            changed += not torch.allclose(got, plain, atol=1e-3)
    assert changed > 0  # the edits did something


def test_adding_a_vector_at_one_position_equals_a_hook(model):
    ids = _prompt(model)
    vector = torch.randn(model.info.d_model, generator=torch.Generator().manual_seed(0))  # (d_model,)

    def add(resid, hook):
        resid = resid.clone()
        resid[:, 3] += vector
        return resid

    want, _ = run_tokens(model, ids, hooks=[("blocks.1.hook_resid_pre", add)])
    with torch.no_grad():
        got = engine.forward(engine.weights_of(model), ids, edits=[engine.Edit("add", "resid_pre", 1, position=3, value=vector)]).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.allclose(got[:, :3], run_tokens(model, ids)[0][:, :3], atol=1e-5)  # causality: earlier positions unchanged


def test_replacing_per_batch_row_patches_each_row_on_its_own(model):
    ids = _prompt(model)
    w = engine.weights_of(model)
    with torch.no_grad():
        clean = engine.forward(w, ids, capture=["blocks.0.hook_mlp_out"])
        source = clean.captured["blocks.0.hook_mlp_out"][0]  # (pos, d_model)
        rows = torch.tensor([1, 4])
        batch = engine.forward(
            w, ids.expand(2, -1), edits=[engine.Edit("replace", "mlp_out", 0, position=rows, value=-source[rows])]
        ).logits
        for i, p in enumerate(rows.tolist()):
            one = engine.forward(w, ids, edits=[engine.Edit("replace", "mlp_out", 0, position=p, value=-source[p])]).logits
            assert torch.allclose(batch[i], one[0], atol=1e-5)


def test_bad_edits_say_what_is_wrong():
    with pytest.raises(ValueError, match="unknown edit kind"):
        engine.Edit("steer", "z", 0, value=torch.zeros(1))
    with pytest.raises(ValueError, match="unknown site"):
        engine.Edit("ablate", "resid_middle", 0)
    with pytest.raises(ValueError, match="needs a value"):
        engine.Edit("add", "resid_pre", 0)
