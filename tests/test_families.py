"""Every view on every architecture family, on tiny random-weight models built from `transformers` configs.

Each family is checked against references that do not share the workbench's code: the plain
`transformers` model (logits, `output_attentions`), forward hooks on its own modules (every
patching site, patched by hand), transformer-lens's patching functions (the pattern site) and
the mathematics itself (DLA sums to the logit, integrated gradients' completeness, the lens's
last point is the output). BLOOM stands for a family the forward engine does not know: its
sweeps must fall back to the bridge's hooks, say so, and every one of its sites is checked against the same
hand-built hooks on the plain model.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import transformer_lens.patching as tlp
from transformers import AutoModelForCausalLM

from workbench import attention, attribution, compare, engine, families, generate, lens, patching, tasks
from workbench.errors import InputError
from workbench.metrics import Metric
from workbench.model import load_model
from workbench.patch_sites import SITES
from workbench.runs import encode, hook_names, run_prompt

CLEAN = "The cat sat on the mat. The cat sat on the"
CORRUPTED = "The cat sat on the bed. The cat sat on the"
ALL = (*families.FAMILIES, "bloom")


@pytest.fixture(scope="module", params=ALL)
def family(request, tmp_path_factory):
    """(family name, loaded model, the plain transformers model from the same folder)."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "bloom":
        families.build_bloom(folder)
    else:
        families.build(request.param, folder)
    plain = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    return request.param, load_model(str(folder)), plain


def _setup(model) -> tasks.Pair:
    tok = model.tokenizer
    return tasks.Pair(CLEAN, CORRUPTED, tok(" mat")["input_ids"][0], tok(" bed")["input_ids"][0])


def test_logits_and_patterns_equal_plain_transformers(family):
    _name, model, plain = family
    run = run_prompt(model, CLEAN, hook_names(model, "attn.hook_pattern"))
    with torch.no_grad():
        ref = plain(run.tokens[None], output_attentions=True)
    assert torch.allclose(run.logits, ref.logits[0], atol=1e-4)
    assert torch.allclose(run.stack("attn.hook_pattern"), torch.stack(ref.attentions)[:, 0], atol=1e-5)


def test_the_lens_last_point_is_the_output_and_points_follow_the_blocks(family):
    name, model, _ = family
    r = lens.lens(model, CLEAN, k=3)
    run = run_prompt(model, CLEAN, [name for _, name in lens.lens_points(model)])
    # the lens takes the model's logits as its last point's reading: the lens's own readout of the final residual equals them
    final = lens.readout(model, lens.residuals(run, model)[-1])  # (pos, d_vocab)
    assert torch.allclose(final.log_softmax(-1), run.logits.log_softmax(-1), atol=1e-5)
    assert torch.allclose(r.top_probs[-1, :, 0], run.logits.softmax(-1).max(-1).values, atol=1e-5)
    assert torch.equal(r.top_ids[-1, :, 0], run.logits.argmax(-1))
    parallel = name in ("gpt_neox", "phi", "gptj")
    assert len(r.points) == 1 + model.info.n_layers * (1 if parallel else 2)


def test_engine_equals_the_bridge_or_says_it_does_not_know(family):
    name, model, _ = family
    ids = encode(model, CLEAN)[0]
    if name == "bloom":
        with pytest.raises(engine.Unsupported, match="bloom"):
            engine.weights_of(model)
        return
    names = [f"blocks.1.{h}" for h in engine.SITE_HOOKS.values() if f"blocks.1.{h}" in model.bridge.hook_dict]
    run = run_prompt(model, CLEAN, names)
    with torch.no_grad():
        out = engine.forward(engine.weights_of(model), ids[None], capture=names)
    assert torch.allclose(out.logits[0], run.logits, atol=1e-4)
    for n in names:
        assert torch.allclose(out.captured[n][0], run[n], atol=1e-5), n


def test_block_weights_equal_transformer_lens_and_rebuild_the_blocks_outputs(family):
    """engine.block_weights (the engine's copy, or the bridge's on BLOOM) against transformer-lens's own weight properties,
    and against the run: the heads' z · W_O + b_O is the attention output, the neurons · W_out + b_out the MLP's."""
    _name, model, _ = family
    run = run_prompt(model, CLEAN, hook_names(model, "attn.hook_z", "hook_attn_out", "mlp.hook_post", "hook_mlp_out"))
    held = model.state.weights
    model.state.weights = None  # a view that never needed the engine: the bridge's block
    try:
        from_bridge = [engine.block_weights(model, layer) for layer in range(model.info.n_layers)]
    finally:
        model.state.weights = held
    with contextlib.suppress(engine.Unsupported):
        engine.weights_of(model)  # the engine's copy, where it reads the model (not BLOOM)
    for layer in range(model.info.n_layers):
        w, block = engine.block_weights(model, layer), model.bridge.blocks[layer]
        for name in ("W_O", "b_O", "W_out", "b_out"):
            mine, theirs = getattr(w, name), getattr(from_bridge[layer], name)
            assert (mine is None and theirs is None) or torch.equal(mine, theirs), (layer, name)  # both sources agree
        assert w.W_O.device.type == "cpu" and w.W_O.dtype == torch.float32
        assert torch.equal(w.W_O, block.attn.W_O.detach().float()) and torch.equal(w.W_out, block.mlp.W_out.detach().float())
        for mine, theirs in ((w.b_O, engine.weight_or_none(block.attn, "b_O")), (w.b_out, engine.weight_or_none(block.mlp, "b_out"))):
            assert (mine is None) == (theirs is None) and (mine is None or torch.equal(mine, theirs.detach().float()))
        b = f"blocks.{layer}."
        attn_out = torch.einsum("phe,hed->pd", run[b + "attn.hook_z"], w.W_O) + (0 if w.b_O is None else w.b_O)
        mlp_out = run[b + "mlp.hook_post"] @ w.W_out + (0 if w.b_out is None else w.b_out)
        assert torch.allclose(attn_out, run[b + "hook_attn_out"], atol=1e-4)
        assert torch.allclose(mlp_out, run[b + "hook_mlp_out"], atol=1e-4)


# ---- every patching site, patched by hand with forward hooks on the plain model ------------------


def _modules(name: str, plain, layer: int) -> dict[str, object]:
    """The plain model's modules that carry each site's activation in block `layer`."""
    if name in ("gpt2", "gptj", "bloom"):
        block = plain.transformer.h[layer]
    elif name == "gpt_neox":
        block = plain.gpt_neox.layers[layer]
    elif name == "opt":
        block = plain.model.decoder.layers[layer]
    else:
        block = plain.model.layers[layer]
    attn = getattr(block, "attn", None) or getattr(block, "self_attn", None) or getattr(block, "self_attention", None) or block.attention
    out_proj = next(getattr(attn, n) for n in ("o_proj", "c_proj", "dense", "out_proj") if hasattr(attn, n))
    mlp = block.fc2 if name == "opt" else block.mlp
    if name == "bloom":  # BLOOM's attention and MLP modules add the residual to their output: read their last projection
        return dict(block=block, attn=attn, out_proj=out_proj, attn_out=out_proj, mlp=mlp.dense_4h_to_h)
    return dict(block=block, attn=attn, out_proj=out_proj, attn_out=attn, mlp=mlp)


def _qkv_slice(name: str, plain, which: str, head: int, kv_heads: int):
    """(module whose output holds q/k/v, fn(output) -> a view of `head`'s slice (batch, pos, d_head))."""
    cfg = plain.config
    n_heads = cfg.num_attention_heads
    d_head = cfg.hidden_size // n_heads
    j = "qkv".index(which)

    def sep(module):
        def view(out):
            return out.view(*out.shape[:2], -1, d_head)[:, :, head]

        return module, view

    def pick(attn_module):
        if name == "gpt2":

            def view(out):  # c_attn: [q | k | v], each (head, d_head)
                return out.view(*out.shape[:2], 3, n_heads, d_head)[:, :, j, head]

            return attn_module.c_attn, view
        if name in ("gpt_neox", "bloom"):

            def view(out):  # query_key_value: (head, q/k/v, d_head)
                return out.view(*out.shape[:2], n_heads, 3, d_head)[:, :, head, j]

            return attn_module.query_key_value, view
        return sep(getattr(attn_module, f"{which}_proj"))

    return pick


def _hand_patched(name, plain, clean_ids, corrupted_ids, metric, install) -> float:
    """Metric of the corrupted run with `install(store, patch)` hooks: capture on clean, patch on corrupted."""
    store: dict = {}
    handles = install(store, False)
    with torch.no_grad():
        plain(clean_ids[None])
    for h in handles:
        h.remove()
    handles = install(store, True)
    with torch.no_grad():
        logits = plain(corrupted_ids[None]).logits[:, -1]
    for h in handles:
        h.remove()
    return float(metric(logits))


def _reference(name, plain, model, site: str, cell: tuple[int, ...], setup) -> float:
    clean_ids, corrupted_ids = encode(model, CLEAN)[0], encode(model, CORRUPTED)[0]
    layer = cell[0]
    m = _modules(name, plain, layer)
    s = SITES[site]
    head = cell[s.axes.index("head")] if "head" in s.axes else None
    position = cell[s.axes.index("position")] if "position" in s.axes else None

    def install(store, patch):
        if site == "resid_pre":

            def pre(module, args, kwargs):
                h = (kwargs.get("hidden_states") if "hidden_states" in kwargs else args[0]).clone()
                if patch:
                    h[:, position] = store["x"][:, position]
                else:
                    store["x"] = h
                if "hidden_states" in kwargs:
                    return args, kwargs | {"hidden_states": h}
                return (h, *args[1:]), kwargs

            return [m["block"].register_forward_pre_hook(pre, with_kwargs=True)]
        if site in ("attn_out", "mlp_out"):
            module = m["attn_out"] if site == "attn_out" else m["mlp"]

            def out_hook(module, args, out):
                t = out[0] if isinstance(out, tuple) else out
                shape = t.shape
                t = t.clone().view(1, -1, shape[-1])  # OPT runs its MLP on (batch · pos, d_model)
                if patch:
                    t[:, position] = store["x"][:, position]
                else:
                    store["x"] = t
                t = t.view(shape)
                return (t, *out[1:]) if isinstance(out, tuple) else t

            return [module.register_forward_hook(out_hook)]
        if site in ("z", "z_pos"):
            d_head = model.info.d_head

            def z_hook(module, args):
                z = args[0].clone().view(*args[0].shape[:2], -1, d_head)  # (batch, pos, head, d_head)
                sl = (slice(None), slice(None) if position is None else position, head)
                if patch:
                    z[sl] = store["x"][sl]
                else:
                    store["x"] = z
                return (z.view(*args[0].shape), *args[1:])

            return [m["out_proj"].register_forward_pre_hook(z_hook)]
        module, view = _qkv_slice(name, plain, s.engine_site, head, model.info.n_kv_heads)(m["attn"])
        at = slice(None) if position is None else position

        def qkv_hook(module, args, out):
            out = out.clone()
            if patch:
                view(out)[:, at] = store["x"][:, at]
            else:
                store["x"] = view(out).clone()
            return out

        return [module.register_forward_hook(qkv_hook)]

    return _hand_patched(name, plain, clean_ids, corrupted_ids, Metric("logit difference", setup.answer, setup.wrong).value, install)


@pytest.mark.parametrize("site", [s for s in SITES if s != "pattern"])  # pattern: against transformer-lens below
def test_every_patching_site_equals_forward_hooks_on_the_plain_model(family, site):
    """Every site of every family, BLOOM's bridge-hook fallback included, against the plain model patched by hand."""
    name, model, plain = family
    setup = _setup(model)
    r = patching.sweep(model, setup, site)
    assert r.backend == ("bridge hooks" if name == "bloom" else "engine"), r.note
    cells = [c for c in SITES[site].cells(model, len(r.labels))]
    if site.endswith("_pos"):
        cells = cells[:: max(1, len(cells) // 12)]  # a spread of cells: every one costs two plain forward passes
    for cell in cells:
        ref = _reference(name, plain, model, site, cell, setup)
        assert float(r.raw[cell]) == pytest.approx(ref, abs=1e-4 * max(1.0, abs(ref))), (site, cell)


def test_pattern_site_and_the_bridge_fallback_equal_transformer_lens(family):
    name, model, _ = family
    setup = _setup(model)
    clean_ids, corrupted_ids = encode(model, CLEAN)[0][None], encode(model, CORRUPTED)[0][None]

    def metric(logits):
        return logits[0, -1, setup.answer] - logits[0, -1, setup.wrong]

    with torch.no_grad():
        _, clean_cache = model.bridge.run_with_cache(clean_ids)
        theirs = {"resid_pre": tlp.get_act_patch_resid_pre(model.bridge, corrupted_ids, clean_cache, metric)}
        if name in ("opt", "gptj"):
            theirs["pattern"] = _pattern_through_z(model, clean_ids, corrupted_ids, metric)
        else:
            theirs["pattern"] = tlp.get_act_patch_attn_head_pattern_all_pos(model.bridge, corrupted_ids, clean_cache, metric)
    for site, ref in theirs.items():
        r = patching.sweep(model, setup, site)
        assert r.backend == ("bridge hooks" if name == "bloom" else "engine")
        assert torch.allclose(r.raw, ref, atol=1e-4), (site, (r.raw - ref).abs().max())
    if name == "bloom":
        assert "does not know the 'bloom' architecture" in r.note and "own hooks" in r.note


def _pattern_through_z(model, clean_ids, corrupted_ids, metric) -> torch.Tensor:
    """(layer, head) pattern patching done by hand: z = clean pattern · corrupted values, through the bridge's hook_z.

    transformer-lens 4.3's OPT and GPT-J attention bridges compute their output without reading
    an edited hook_pattern (transformer-lens's own pattern sweep returns the unpatched metric for
    every head there), so the reference is built one step later.
    """
    L, H = model.info.n_layers, model.info.n_heads
    _, clean = model.bridge.run_with_cache(clean_ids)
    _, corrupted = model.bridge.run_with_cache(corrupted_ids)
    out = torch.empty(L, H)
    for layer in range(L):
        v = corrupted[f"blocks.{layer}.attn.hook_v"][0]  # (pos, head, d_head)
        for head in range(H):
            z_head = clean[f"blocks.{layer}.attn.hook_pattern"][0, head] @ v[:, head]  # (pos, d_head)

            def swap(z, hook, head=head, z_head=z_head):
                z = z.clone()
                z[0, :, head] = z_head
                return z

            out[layer, head] = metric(model.bridge.run_with_hooks(corrupted_ids, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", swap)]))
    return out


def test_attribution_patching_equals_a_gradient_taken_with_plain_transformers(family):
    """(clean − corrupted residual) · ∂metric/∂residual at each block's input, by autograd on the plain model."""
    name, model, plain = family
    setup = _setup(model)
    estimate = patching.attribution_sweep(model, setup, "resid_pre")
    assert estimate.method == "attribution patching" and estimate.site == "resid_pre"
    blocks = [_modules(name, plain, layer)["block"] for layer in range(model.info.n_layers)] if name != "bloom" else plain.transformer.h
    captured: list[torch.Tensor] = []

    def grab(module, args, kwargs):
        h = kwargs.get("hidden_states", args[0] if args else None)
        captured.append(h)

    handles = [b.register_forward_pre_hook(grab, with_kwargs=True) for b in blocks]
    with torch.no_grad():
        plain(encode(model, CLEAN)[0][None])
    clean_h = [h.detach() for h in captured]
    captured.clear()
    embeds = plain.get_input_embeddings()(encode(model, CORRUPTED)[0][None]).detach().requires_grad_(True)
    logits = plain(inputs_embeds=embeds).logits[:, -1]
    for h in captured:
        h.retain_grad()
    Metric("logit difference", setup.answer, setup.wrong).value(logits).sum().backward()
    for handle in handles:
        handle.remove()
    ref = torch.stack([((c - h.detach()) * h.grad)[0].sum(-1) for c, h in zip(clean_h, captured, strict=True)])  # (layer, pos)
    assert torch.allclose(estimate.raw - estimate.corrupted_value, ref, atol=1e-4 * max(1.0, float(ref.abs().max())))


# ---- the other views ----------------------------------------------------------------------------


def test_dla_sums_to_the_logit_and_heads_add_up(family):
    _name, model, _ = family
    setup = _setup(model)
    c = attribution.component_attribution(model, CLEAN, setup.answer, setup.wrong)
    assert float(c.component_values.sum()) == pytest.approx(c.logit, abs=1e-3 * max(1.0, abs(c.logit)))
    assert float(c.heads.sum()) + c.head_remainder == pytest.approx(c.logit, abs=1e-3 * max(1.0, abs(c.logit)))
    assert float(c.cumulative[-1]) == pytest.approx(c.logit, abs=1e-3 * max(1.0, abs(c.logit)))  # the last point is the output
    assert c.provenance["model"] == model.info.name and c.provenance["prompts"] == [CLEAN]


def test_integrated_gradients_are_complete(family):
    _name, model, _ = family
    # random weights this large make the path integral bumpy: enough steps for the Riemann sum to converge
    a = attribution.input_attribution(model, CLEAN, attribution.Answer((_setup(model).answer,)), steps=1024)
    assert a.completeness_gap() < 0.05 * max(1.0, float((a.metric - a.metric_baseline).abs().max()))


def test_head_anatomy_reproduces_the_models_pattern_or_refuses(family):
    name, model, _ = family
    if name == "bloom":
        with pytest.raises(InputError, match="cannot be shown"):
            attention.head_anatomy(model, CLEAN, 1, 1, 5)
        return
    for layer, head in ((0, 0), (1, model.info.n_heads - 1)):
        a = attention.head_anatomy(model, CLEAN, layer, head, 6)
        assert torch.allclose(a.weights, a.model_pattern_row, atol=1e-5)
        assert torch.allclose(a.output, a.model_output, atol=1e-4)


def test_head_types_generation_and_compare_run(family):
    _name, model, plain = family
    run = run_prompt(model, CLEAN, hook_names(model, "attn.hook_pattern"))
    types = attention.head_types(model, run)
    assert set(types.scores) >= {"previous token", "induction"}
    g = generate.generate(model, "The cat", generate.Sampling(max_new_tokens=4))
    ids = encode(model, "The cat")[0]
    greedy = []
    with torch.no_grad():
        for _ in g.steps:  # greedy decoding with the plain model, one full forward pass per token
            greedy.append(int(plain(torch.cat([ids, torch.tensor(greedy, dtype=torch.long)])[None]).logits[0, -1].argmax()))
    assert [s.chosen_id for s in g.steps] == greedy
    d = compare.lens_diff(model, CLEAN, CORRUPTED)
    first = d.alignment.differ[0]
    assert d.js[:, :first].abs().max() < 1e-6  # before the first different token the runs are identical


def test_a_site_whose_hook_does_not_reach_the_output_is_refused(family):
    """Without the engine, OPT's and GPT-J's pattern site would silently patch nothing: it is refused instead."""
    name, model, _ = family
    if name not in ("opt", "gptj"):
        pytest.skip("the refusal concerns the bridges whose hook_pattern edits are ignored")
    saved = model.state.weights
    model.state.weights = engine.Unsupported("the engine is switched off for this test")
    try:
        with pytest.raises(InputError, match="cannot be patched on this model"):
            patching.sweep(model, _setup(model), "pattern")
        r = patching.sweep(model, _setup(model), "z")  # the heads' output still patches through the hooks
        assert r.backend == "bridge hooks" and "switched off" in r.note
    finally:
        model.state.weights = saved


def test_an_architecture_transformer_lens_cannot_wrap_is_refused_at_load_naming_it(tmp_path):
    from transformers import AutoTokenizer, CTRLConfig, CTRLLMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(families.TOKENIZER)
    CTRLLMHeadModel(CTRLConfig(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, dff=64)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(InputError, match=r"transformer-lens cannot wrap the model in .* \(ctrl\)") as err:
        load_model(str(tmp_path))
    assert "\n" not in str(err.value)


def test_site_gradients_equal_the_bridges_backward_pass_and_graddrop_leaves_later_layers_alone(family):
    """engine.site_gradients (block by block) against autograd through the bridge: the gradient of a zero added at each hook."""
    name, model, _ = family
    if name == "bloom":
        return  # the engine does not know it (tested above)
    from workbench.runs import run_tokens

    ids = encode(model, CLEAN)[0][None]  # (1, pos)
    sites = ("resid_pre", "q", "k", "v", "z", "attn_out", "mlp_post", "mlp_out", "resid_post")
    if name not in ("opt", "gptj"):  # their bridges do not route hook_pattern into the output (see the graph's tests)
        sites += ("pattern",)
    names = [f"blocks.{layer}.{engine.SITE_HOOKS[s]}" for layer in range(model.info.n_layers) for s in sites]
    answer, wrong = 5, 9

    def value(logits):  # (batch, d_vocab) -> (batch,)
        return logits[:, answer] - logits[:, wrong]

    _, shapes = run_tokens(model, ids, names)
    zeros = [torch.zeros_like(shapes[n], requires_grad=True) for n in names]
    hooks = [(n, lambda act, hook, z=z: act + z) for n, z in zip(names, zeros, strict=True)]
    logits, _ = run_tokens(model, ids, hooks=hooks, grad=True)
    theirs = torch.autograd.grad(value(logits[:, -1].float()).sum(), zeros)
    acts, grads = engine.site_gradients(engine.weights_of(model), ids, names, value, graddrop=True)
    scale = max(float(g.abs().max()) for g in theirs)
    for n, g in zip(names, theirs, strict=True):
        assert torch.allclose(acts[n], shapes[n], atol=1e-4), n
        assert torch.allclose(grads[0][n], g, atol=1e-4 * scale), n
    for dropped in range(model.info.n_layers):  # dropping layer ℓ's outputs changes no gradient above ℓ, and some below
        later = [n for n in names if int(n.split(".")[1]) > dropped]
        assert all(torch.equal(grads[1 + dropped][n], grads[0][n]) for n in later)
    assert not all(torch.equal(grads[1][n], grads[0][n]) for n in names if n.startswith("blocks.0."))
