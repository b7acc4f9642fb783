"""Edges: the receivers' arithmetic against the bridge; exact edge patching, EAP and EAP-IG with several steps against
hooks and autograd on plain transformers (no function of workbench.edges in the reference); EAP as the derivative of
exact edge patching; EAP-IG with one step equal to EAP; circuits from empty (base run) to full (source run)."""

import pytest
import torch

from workbench import edges, engine, methods, tasks
from workbench.runs import run_prompt


@pytest.fixture(scope="module", params=["circuits", "answer_key"])
def case(request):
    model = request.getfixturevalue(request.param)
    return model, methods.prepare_all(model, tasks.induction_pairs(model, 2))


def _bridge_cache(model, prompt, w):
    cache = run_prompt(model, prompt, edges.capture_names(w)).cache
    return {n: a[None] for n, a in cache.items()}


def test_edges_respect_the_order_of_reading_and_writing(circuits):
    w = engine.weights_of(circuits)
    es = edges.edges_of(w)
    assert all(e.sender.writes < e.receiver.reads(w.parallel) for e in es)
    labels = {e.label for e in es}
    assert "L0H0 → L0 MLP" in labels and "L1H0 → L0H1.q" not in labels and "embed → logits" in labels
    senders, receivers = len(edges.senders_of(w)), len(edges.receivers_of(w))
    assert len(es) < senders * receivers


def test_receivers_recompute_the_bridges_activations(case):
    model, pairs = case
    w = pairs[0].weights
    cache = _bridge_cache(model, pairs[0].pair.clean, w)
    for r in edges.receivers_of(w):
        ours = edges.receive(w, r, edges.receiver_input(w, r, cache))
        torch.testing.assert_close(ours, edges.receiver_activation(w, r, cache), atol=1e-5, rtol=1e-4)


def test_eap_is_the_derivative_of_exact_edge_patching(circuits):
    """EAP's largest edges against the slope of exact edge patching, by central differences on plain transformers."""
    from tests.references import hf_model

    hf = hf_model(circuits)
    pair = methods.prepare_all(circuits, tasks.induction_pairs(circuits, 1))[0]
    eap = edges.eap(circuits, [pair])
    base, source = _hf_sender_outputs(hf, pair.base_tokens), _hf_sender_outputs(hf, pair.source_tokens)
    h = 1e-2
    for i in eap.magnitude.argsort(descending=True)[:6].tolist():  # the edges that matter, and their receivers of each kind
        e = eap.edges[i]
        change = source[_key(e.sender)] - base[_key(e.sender)]
        with torch.no_grad():
            up, down = (float(_hf_metric(hf, pair, sign * h * change, e.receiver)[0]) for sign in (1, -1))
        assert float(eap.effect[i]) == pytest.approx((up - down) / (2 * h) / pair.span, rel=2e-2, abs=2e-3), e.label


def test_eap_ig_with_one_step_is_eap(case):
    model, pairs = case
    torch.testing.assert_close(edges.eap_ig(model, pairs, 1).effect, edges.eap(model, pairs).effect, atol=1e-6, rtol=1e-5)


def test_empty_circuit_is_the_base_run_and_every_edge_the_source_run(case):
    _model, pairs = case
    w = pairs[0].weights
    es = edges.edges_of(w)
    keep = torch.stack([torch.zeros(len(es), dtype=torch.bool), torch.ones(len(es), dtype=torch.bool)])
    for pair in pairs:
        empty, full = edges.circuit_faithfulness(pair, es, keep).tolist()
        assert empty == pytest.approx(0.0, abs=1e-4) and full == pytest.approx(1.0, abs=1e-4)


# ---- against plain transformers: exact edges, EAP and EAP-IG with several steps, by hand ---------------------


def _hf_receiver_hooks(hf, r, extra: torch.Tensor) -> list:
    """Hooks on plain transformers' GPT-2 that add `extra` (pos, d_model) to receiver r's input and to nothing else:
    a head's q, k or v recomputed from ln_1(resid_pre + extra) in its slice of c_attn's output, an MLP recomputed from
    ln_2(resid_mid + extra), the logits read from ln_f(resid_post + extra)."""
    if r.kind == "logits":
        return [hf.transformer.ln_f.register_forward_pre_hook(lambda m, args: (args[0] + extra,))]
    block = hf.transformer.h[r.layer]
    d = hf.config.n_embd
    E = d // hf.config.n_head
    stash = {}
    if r.kind == "mlp":
        mlp = block.mlp

        def keep_mid(m, args):
            stash["x"] = args[0]

        def mlp_out(m, args, out):
            return mlp.c_proj(mlp.act(mlp.c_fc(block.ln_2(stash["x"] + extra))))

        return [block.ln_2.register_forward_pre_hook(keep_mid), mlp.register_forward_hook(mlp_out)]
    start = {"q": 0, "k": d, "v": 2 * d}[r.kind] + r.head * E
    conv = block.attn.c_attn

    def keep_pre(m, args):
        stash["x"] = args[0]

    def qkv(m, args, out):
        new = block.ln_1(stash["x"] + extra) @ conv.weight[:, start : start + E] + conv.bias[start : start + E]
        out = out.clone()
        out[..., start : start + E] = new
        return out

    return [block.ln_1.register_forward_pre_hook(keep_pre), conv.register_forward_hook(qkv)]


def _hf_metric(hf, pair, extra=None, r=None, embeds=None) -> torch.Tensor:
    """(batch,) the pair's logit difference on plain transformers: the base tokens, or input embeddings (batch, pos, d)."""
    hooks = [] if r is None else _hf_receiver_hooks(hf, r, extra)
    try:
        logits = (hf(pair.base_tokens[None]) if embeds is None else hf(inputs_embeds=embeds)).logits[:, -1]
    finally:
        for h in hooks:
            h.remove()
    return logits[:, pair.measure.answer] - logits[:, pair.measure.wrong]


@torch.no_grad()
def _hf_sender_outputs(hf, ids: torch.Tensor) -> dict:
    """{(kind, layer, head): (pos, d_model)} what each sender adds to the residual stream, from hooks on plain
    transformers: the embeddings, each head's slice of c_proj's input times its rows of c_proj's weight, each MLP's
    output (transformer-lens centres these writes and folds the value bias into b_O: both cancel in a change)."""
    d, H = hf.config.n_embd, hf.config.n_head
    E = d // H
    seen, hooks = {}, []
    for i, b in enumerate(hf.transformer.h):
        hooks.append(b.attn.c_proj.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(("z", i), a[0][0])))
        hooks.append(b.mlp.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(("mlp", i), out[0])))
    try:
        out = hf(ids[None], output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    senders = {("embed", -1, None): out.hidden_states[0][0]}
    for i, b in enumerate(hf.transformer.h):
        for h in range(H):
            senders[("head", i, h)] = seen[("z", i)][:, h * E : (h + 1) * E] @ b.attn.c_proj.weight[h * E : (h + 1) * E]
        senders[("mlp", i, None)] = seen[("mlp", i)]
    return senders


def _key(s) -> tuple:
    return (s.kind, s.layer, s.head)


def _hf_edges(hf, pair, es, steps: int | None):
    """(exact (edge,), attribution (edge,)) normalised effects on plain transformers: each edge patched on its own by
    hooks; EAP (steps None) or EAP-IG as a Riemann sum, written out, of autograd gradients at the receiver's input over
    input embeddings from the source prompt's to the base prompt's (α = 1 − k/steps, k = 1..steps)."""
    source_ids = pair.source_tokens
    base, source = _hf_sender_outputs(hf, pair.base_tokens), _hf_sender_outputs(hf, source_ids)
    with torch.no_grad():
        base_value = float(_hf_metric(hf, pair)[0])
        source_logits = hf(source_ids[None]).logits[0, -1]
        source_value = float(source_logits[pair.measure.answer] - source_logits[pair.measure.wrong])
    span = source_value - base_value
    wte = hf.transformer.wte.weight
    if steps is not None:
        alpha = 1 - torch.arange(1, steps + 1, dtype=wte.dtype) / steps  # (step,)
        a, b = wte[source_ids].detach(), wte[pair.base_tokens].detach()  # (pos, d) (the positions' embeddings are shared)
        embeds = b + alpha[:, None, None] * (a - b)  # (step, pos, d)
    gradients = {}
    for r in {e.receiver for e in es}:
        delta = torch.zeros_like(base[("embed", -1, None)], requires_grad=True)  # (pos, d_model)
        value = _hf_metric(hf, pair, delta, r, None if steps is None else embeds).mean()
        (gradients[r],) = torch.autograd.grad(value, delta)
    exact, estimate = [], []
    for e in es:
        change = source[_key(e.sender)] - base[_key(e.sender)]  # (pos, d_model)
        with torch.no_grad():
            exact.append((float(_hf_metric(hf, pair, change, e.receiver)[0]) - base_value) / span)
        estimate.append(float((change * gradients[e.receiver]).sum()) / span)
    return torch.tensor(exact), torch.tensor(estimate)


@pytest.mark.parametrize("steps", [None, 3, 5])
def test_exact_edges_eap_and_eap_ig_equal_plain_transformers_by_hand(case, steps):
    """exact_edges, EAP and EAP-IG with several steps against hooks and autograd on plain transformers, no function
    of workbench.edges in the reference."""
    from tests.references import hf_model

    model, pairs = case
    hf = hf_model(model)
    for p in hf.parameters():
        p.requires_grad_(False)
    exact = edges.exact_edges(model, pairs)
    estimate = edges.eap(model, pairs) if steps is None else edges.eap_ig(model, pairs, steps)
    assert estimate.edges == exact.edges
    refs = [_hf_edges(hf, pair, list(exact.edges), steps) for pair in pairs]
    ref_exact, ref_estimate = (torch.stack(x).mean(0) for x in zip(*refs, strict=True))
    torch.testing.assert_close(exact.effect, ref_exact, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(estimate.effect, ref_estimate, atol=2e-5, rtol=1e-4)
    assert ref_exact.abs().max() > 0.3 and ref_estimate.abs().max() > 0.3  # edges that matter: the comparison can fail


@torch.no_grad()
def _hf_circuit(hf, pair, es, keep: torch.Tensor) -> float:
    """The normalised metric of one circuit (keep: (edge,) bool), MIB-style, written out on plain transformers' GPT-2:
    in one run of the base tokens every receiver reads the base run's input plus, for each kept sender, that sender's
    output in this run minus its base output (the embeddings' being the source prompt's); a head's q, k or v is
    recomputed in its slice of c_attn's output, an MLP from ln_2 of its input, the logits from ln_f of theirs."""
    blocks = hf.transformer.h
    d, H = hf.config.n_embd, hf.config.n_head
    E = d // H
    base, source = _hf_sender_outputs(hf, pair.base_tokens), _hf_sender_outputs(hf, pair.source_tokens)
    inputs, grab = {}, []  # the base run's residual stream where each kind of receiver reads it
    for i, b in enumerate(blocks):
        grab.append(b.ln_1.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(("pre", i), a[0][0])))
        grab.append(b.ln_2.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(("mid", i), a[0][0])))
    grab.append(hf.transformer.ln_f.register_forward_pre_hook(lambda m, a: inputs.__setitem__("final", a[0][0])))
    try:
        base_value = float(_hf_metric(hf, pair)[0])
    finally:
        for h in grab:
            h.remove()
    source_logits = hf(pair.source_tokens[None]).logits[0, -1]
    source_value = float(source_logits[pair.measure.answer] - source_logits[pair.measure.wrong])
    kept: dict = {}
    for e, k in zip(es, keep.tolist(), strict=True):
        if k:
            kept.setdefault((e.receiver.kind, e.receiver.layer, e.receiver.head), []).append(_key(e.sender))
    current = {("embed", -1, None): source[("embed", -1, None)]}

    def read(receiver, resid):  # (pos, d_model): the base input plus the kept senders' changes, as they are now
        return resid + sum((current[s] - base[s] for s in kept.get(receiver, ())), torch.zeros_like(resid))

    hooks = []
    for i, b in enumerate(blocks):

        def qkv(m, a, out, i=i, b=b):
            out = out.clone()
            for kind, offset in (("q", 0), ("k", d), ("v", 2 * d)):
                for h in range(H):
                    cols = slice(offset + h * E, offset + (h + 1) * E)
                    out[0, :, cols] = b.ln_1(read((kind, i, h), inputs[("pre", i)])) @ m.weight[:, cols] + m.bias[cols]
            return out

        def heads_out(m, a, i=i):
            for h in range(H):
                current[("head", i, h)] = a[0][0, :, h * E : (h + 1) * E] @ m.weight[h * E : (h + 1) * E]

        def mlp(m, a, out, i=i, b=b):
            y = m.c_proj(m.act(m.c_fc(b.ln_2(read(("mlp", i, None), inputs[("mid", i)])))))[None]
            current[("mlp", i, None)] = y[0]
            return y

        hooks += [b.attn.c_attn.register_forward_hook(qkv), b.attn.c_proj.register_forward_pre_hook(heads_out)]
        hooks.append(b.mlp.register_forward_hook(mlp))
    hooks.append(hf.transformer.ln_f.register_forward_pre_hook(lambda m, a: (read(("logits", len(blocks), None), inputs["final"])[None],)))
    try:
        value = float(_hf_metric(hf, pair)[0])
    finally:
        for h in hooks:
            h.remove()
    return (value - base_value) / (source_value - base_value)


def test_circuit_faithfulness_of_partial_circuits_equals_plain_transformers_by_hand(case):
    """Circuits between empty and full (random halves and fifths of the edges, the EAP-IG top 10 and 30), where the
    answer is neither 0 nor 1 by construction, against the MIB definition written out on plain transformers."""
    from tests.references import hf_model

    model, pairs = case
    hf = hf_model(model)
    w = pairs[0].weights
    es = edges.edges_of(w)
    gen = torch.Generator().manual_seed(0)
    order = edges.eap_ig(model, pairs, 5).magnitude.argsort(descending=True)
    top = [torch.zeros(len(es), dtype=torch.bool).index_fill(0, order[:k], True) for k in (10, 30)]
    keep = torch.stack([torch.rand(len(es), generator=gen) < 0.5, torch.rand(len(es), generator=gen) < 0.2, *top])
    for pair in pairs:
        ours = edges.circuit_faithfulness(pair, es, keep)
        want = torch.tensor([_hf_circuit(hf, pair, es, row) for row in keep])
        torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-3)
        if model.info.name == "circuits":  # trained: partial circuits keep part of the metric (the answer key's is all or nothing)
            assert ((want > 0.02) & (want < 0.98)).any(), want
