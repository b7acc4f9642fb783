"""The forward engine's edits against the same edits written by hand as hooks on the bridge."""

import pytest
import torch

from workbench import engine, families
from workbench.model import load_model
from workbench.runs import encode, run_edited, run_tokens

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


@pytest.mark.parametrize("site", ["resid_pre", "resid_mid"])
def test_adding_a_vector_at_one_position_equals_a_hook(model, site):
    """resid_mid too: transformer-lens 4's hook there feeds the MLP's input only (not the skip path); the engine matches."""
    ids = _prompt(model)
    vector = torch.randn(model.info.d_model, generator=torch.Generator().manual_seed(0))  # (d_model,)

    def add(resid, hook):
        resid = resid.clone()
        resid[:, 3] += vector
        return resid

    want, _ = run_tokens(model, ids, hooks=[(f"blocks.1.{engine.SITE_HOOKS[site]}", add)])
    with torch.no_grad():
        got = engine.forward(engine.weights_of(model), ids, edits=[engine.Edit("add", site, 1, position=3, value=vector)]).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, run_tokens(model, ids)[0], atol=1e-3)
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


def test_a_map_edit_equals_the_same_function_as_a_hook(model):
    ids = _prompt(model)

    def halve(x):  # (..., d_model)
        return 0.5 * x

    def hook(resid, hook):
        resid = resid.clone()
        resid[:, 2:4] = halve(resid[:, 2:4])
        return resid

    want, _ = run_tokens(model, ids, hooks=[("blocks.1.hook_resid_pre", hook)])
    with torch.no_grad():
        got = engine.forward(
            engine.weights_of(model), ids.expand(2, -1), edits=[engine.Edit("map", "resid_pre", 1, position=2, fn=halve)]
        ).logits
    assert not torch.allclose(got, run_tokens(model, ids)[0], atol=1e-3)
    edited, _ = run_edited(
        model, ids, [engine.Edit("map", "resid_pre", 1, position=2, fn=halve), engine.Edit("map", "resid_pre", 1, position=3, fn=halve)]
    )
    assert torch.allclose(edited, want, atol=1e-5)
    assert torch.allclose(got[:1, :2], want[:, :2], atol=1e-4)  # before the edited position nothing changes


def _hf(model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model.info.source, use_safetensors=True, attn_implementation="eager").eval()


def _mlp_output_projection(hf, layer: int):
    """The plain transformers module whose input is layer's neurons (batch, pos, d_mlp): GPT-2's c_proj, Llama's down_proj."""
    if hasattr(hf, "transformer"):
        return hf.transformer.h[layer].mlp.c_proj
    return hf.model.layers[layer].mlp.down_proj


def test_ablating_one_neuron_at_mlp_post_equals_plain_transformers(model):
    """One neuron zeroed by the engine (a map edit on mlp_post, as interventions compile it) against plain transformers
    with that neuron's input column of the MLP's output projection zeroed by a forward pre-hook."""
    ids = _prompt(model)
    hf = _hf(model)
    seen = {}
    handle = _mlp_output_projection(hf, 0).register_forward_pre_hook(lambda m, args: seen.setdefault("post", args[0].detach()))
    with torch.no_grad():
        plain = hf(ids).logits
    handle.remove()
    neuron = int(seen["post"][0].abs().sum(0).argmax())  # the busiest neuron, so that zeroing it shows

    def zero_neuron(module, args):
        (x,) = args
        x = x.clone()
        x[..., neuron] = 0.0
        return (x,)

    handle = _mlp_output_projection(hf, 0).register_forward_pre_hook(zero_neuron)
    with torch.no_grad():
        want = hf(ids).logits
    handle.remove()

    def zero(post: torch.Tensor) -> torch.Tensor:
        return post.index_fill(-1, torch.tensor([neuron]), 0.0)

    with torch.no_grad():
        out = engine.forward(
            engine.weights_of(model), ids, edits=[engine.Edit("map", "mlp_post", 0, fn=zero)], capture=["blocks.0.mlp.hook_post"]
        )
        ours = engine.forward(engine.weights_of(model), ids, capture=["blocks.0.mlp.hook_post"]).captured["blocks.0.mlp.hook_post"]
    assert torch.allclose(out.logits, want, atol=1e-4)
    assert (want - plain).abs().max() > 1e-3  # the neuron mattered, so the comparison can fail
    assert torch.allclose(ours, seen["post"], atol=1e-4)  # the site is the plain model's neurons
    captured = out.captured["blocks.0.mlp.hook_post"]
    assert (
        float(captured[..., neuron].abs().max()) == 0.0
        and torch.equal(  # only that neuron changed
            torch.cat([captured[..., :neuron], captured[..., neuron + 1 :]], -1),
            torch.cat([ours[..., :neuron], ours[..., neuron + 1 :]], -1),
        )
    )


def test_ablating_mlp_post_zeroes_every_neuron_as_plain_transformers_does(model):
    """An ablate edit without a head on mlp_post zeroes the whole layer of neurons: plain transformers with the output
    projection's whole input zeroed (only its bias is left)."""
    ids = _prompt(model)
    hf = _hf(model)
    handle = _mlp_output_projection(hf, 0).register_forward_pre_hook(lambda m, args: (torch.zeros_like(args[0]),))
    with torch.no_grad():
        want = hf(ids).logits
    handle.remove()
    with torch.no_grad():
        out = engine.forward(engine.weights_of(model), ids, edits=[engine.Edit("ablate", "mlp_post", 0)])
    assert torch.allclose(out.logits, want, atol=1e-4)


def test_run_edited_leaves_no_hook_behind(model):
    ids = _prompt(model)
    before = model.attached_hooks()
    plain, _ = run_edited(model, ids)
    edited, _ = run_edited(model, ids, [engine.Edit("ablate", "z", 0, head=0)])
    again, _ = run_tokens(model, ids)
    assert model.attached_hooks() == before
    assert torch.equal(plain, again) and not torch.allclose(edited, plain, atol=1e-4)


def test_a_map_edit_needs_a_function():
    with pytest.raises(ValueError, match="function"):
        engine.Edit("map", "resid_pre", 0)


def test_site_gradients_block_by_block_equal_one_backward_pass(model):
    ids = _prompt(model)
    w = engine.weights_of(model)
    names = [
        f"blocks.{layer}.{engine.SITE_HOOKS[s]}"
        for layer in range(model.info.n_layers)
        for s in ("resid_pre", "q", "pattern", "z", "mlp_out")
    ]
    answer, wrong = 3, 7

    def value(logits):  # (batch, d_vocab) -> (batch,)
        return logits[:, answer] - logits[:, wrong]

    acts, (grads,) = engine.site_gradients(w, ids, names, value)
    with torch.enable_grad():
        out = engine.forward(w, ids, capture=names)
        whole = [out.captured[n] for n in names]
        want = torch.autograd.grad(value(out.logits[:, -1]).sum(), whole)
    for n, a, g in zip(names, whole, want, strict=True):
        assert torch.allclose(acts[n], a.detach(), atol=1e-5), n
        assert torch.allclose(grads[n], g, atol=1e-5, rtol=1e-4), n
    assert any(float(g.abs().max()) > 0 for g in grads.values())


def test_graddrop_streams_block_by_block_equal_methods_whole_graph_gradients(circuits):
    from workbench import methods, tasks

    clean = "apple river stone cloud tiger apple river stone"
    ids = [circuits.tokenizer(" " + x)["input_ids"][0] for x in ("cloud", "lemon")]
    pair = methods.prepare(circuits, tasks.Pair(clean, clean.replace("cloud", "lemon"), *ids))
    w = pair.weights
    names = methods.site_names(w, "resid_pre", "q", "k", "v", "pattern", "z", "attn_out", "resid_mid", "mlp_post", "mlp_out", "resid_post")
    base, want, passes = methods.metric_gradients(pair, names, graddrop=True)
    acts, got = engine.site_gradients(w, pair.base_tokens[None], names, pair.metric, graddrop=True)
    assert len(got) == passes == w.n_layers + 1
    for stream, (g_want, g_got) in enumerate(zip(want, got, strict=True)):
        for n in names:
            assert torch.allclose(g_got[n][0], g_want[n], atol=1e-5, rtol=1e-4), (stream, n)
    for n in names:
        assert torch.allclose(acts[n][0], base[n], atol=1e-5), n
    assert any(float(g.abs().max()) > 0 for stream in got[1:] for g in stream.values())


def test_the_engine_is_checked_once_per_set_of_weights_and_a_wrong_one_is_refused(circuits):
    """checked_weights compares the engine's logits with the model's once; a changed engine (embeddings × 2) is checked
    again and refused; an option that acts only on long prompts (a sliding window) is refused without a run."""
    import dataclasses

    w = engine.checked_weights(circuits)
    check = circuits.state.checked
    assert check[0] is w and check[1] <= engine.CHECK_TOLERANCE
    assert engine.checked_weights(circuits) is w and circuits.state.checked is check  # not run again
    wrong = dataclasses.replace(w, embed_scale=2.0)
    config = circuits.bridge.original_model.config
    try:
        circuits.state.weights = wrong
        with pytest.raises(engine.Unsupported, match="differ from the model's"):
            engine.checked_weights(circuits)
        circuits.state.weights = w
        config.sliding_window = 4
        circuits.state.checked = None
        with pytest.raises(engine.Unsupported, match="sliding-window"):
            engine.checked_weights(circuits)
    finally:
        circuits.state.weights = w
        del config.sliding_window
        circuits.state.checked = None
    assert engine.checked_weights(circuits) is w
