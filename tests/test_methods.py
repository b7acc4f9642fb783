"""AtP, AtP* and exact node patching, each checked against the model's own hooks (the bridge), not the engine."""

import pytest
import torch

from workbench import engine, families, methods, tasks
from workbench.errors import InputError
from workbench.model import MODELS_DIR, load_model
from workbench.runs import run_edited, run_prompt, run_tokens


@pytest.fixture(scope="module")
def pairs(circuits):
    return methods.prepare_all(circuits, tasks.induction_pairs(circuits, 2))


@pytest.fixture(scope="module")
def one_head(tmp_path_factory):
    """One layer, one head (word tokenizer: a random-word pair keeps its token count). Large weights: a saturated softmax."""
    folder = families.build(
        "gpt2", tmp_path_factory.mktemp("one_head"), layers=1, heads=1, kv_heads=1, width=32, init=1.0, tokenizer=MODELS_DIR / "circuits"
    )
    return load_model(str(folder))


def _bridge_source(model, pair, names):
    """The source run's activations from the bridge's own cache, batch first."""
    prompt = pair.pair.clean if pair.direction == "denoising" else pair.pair.corrupted
    cache = run_prompt(model, prompt, names).cache
    return {n: cache[n][None] for n in names}


def test_nodes_cover_every_head_and_mlp(circuits):
    w = engine.weights_of(circuits)
    nodes = methods.nodes_of(w)
    assert len(nodes) == w.n_layers * (w.n_heads + 2 * w.n_kv_heads + 1)
    assert len({n.label for n in nodes}) == len(nodes)


def test_exact_nodes_equal_one_bridge_run_per_node(circuits, pairs):
    exact = methods.exact_nodes(circuits, pairs)
    w = pairs[0].weights
    names = methods.site_names(w, "q", "k", "v", "mlp_out")
    brute = []
    for pair in pairs:
        source = _bridge_source(circuits, pair, names)
        row = []
        for node in exact.nodes:
            logits, _ = run_edited(circuits, pair.base_tokens[None], [methods.node_edit(node, source)], last_only=True)
            row.append((float(pair.metric(logits[:, -1])) - pair.base_value) / pair.span)
        brute.append(row)
    torch.testing.assert_close(exact.effect, torch.tensor(brute).mean(0), atol=2e-5, rtol=1e-4)
    assert exact.magnitude.max() > 0.5  # the copying task moves the metric: some node restores most of it


def test_atp_is_the_bridge_gradient_times_the_activation_change(circuits, pairs):
    atp = methods.atp(circuits, pairs)
    w = pairs[0].weights
    names = methods.site_names(w, "q", "k", "v", "mlp_out")
    expected = []
    for pair in pairs:
        source = _bridge_source(circuits, pair, names)
        # the gradient at each activation, read as the gradient of a zero added there through the bridge's hooks
        zeros = {n: torch.zeros_like(source[n], requires_grad=True) for n in names}
        hooks = [(n, lambda act, hook, z=zeros[n]: act + z) for n in names]
        logits, cache = run_tokens(circuits, pair.base_tokens[None], names, hooks=hooks, last_only=True, grad=True)
        g = dict(zip(names, torch.autograd.grad(pair.metric(logits[:, -1]).sum(), [zeros[n] for n in names]), strict=True))
        row = []
        for node in atp.nodes:
            change = (source[node.hook] - cache[node.hook]).detach()
            if node.kind != "mlp":
                change, grad = change[:, :, node.head], g[node.hook][:, :, node.head]
            else:
                grad = g[node.hook]
            row.append(float((change * grad).sum()) / pair.span)
        expected.append(row)
    torch.testing.assert_close(atp.effect, torch.tensor(expected).mean(0), atol=1e-4, rtol=1e-3)
    assert (atp.forward, atp.backward) == (2, 1)


def test_qk_fix_pattern_is_the_exact_patched_pattern(one_head):
    """A single attention-score change: the pair differs in one token, so in a one-layer model only that position's key
    changes, i.e. one column of scores. The QK fix's pattern equals the pattern of the exactly patched run (bridge hooks)."""
    words = "apple river stone cloud tiger piano candle apple river stone"
    prompt_pair = tasks.Pair(words, words.replace("cloud", "lemon"), " cloud", " lemon")
    pair = methods.prepare(one_head, prompt_pair)
    w = pair.weights
    names = ["blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_pattern"]
    source = _bridge_source(one_head, pair, names)
    base = run_prompt(one_head, prompt_pair.corrupted, names).cache
    changed = (source["blocks.0.attn.hook_k"][0] - base["blocks.0.attn.hook_k"]).abs().amax((1, 2))  # (pos,)
    assert int((changed > 0).sum()) == 1  # one key changed: one column of scores
    fixed = methods.attention_pattern(w, 0, base["blocks.0.attn.hook_q"], source["blocks.0.attn.hook_k"][0])
    edit = engine.Edit("replace", "k", 0, value=source["blocks.0.attn.hook_k"])
    _, cache = run_edited(one_head, pair.base_tokens[None], [edit], ["blocks.0.attn.hook_pattern"])
    torch.testing.assert_close(fixed, cache["blocks.0.attn.hook_pattern"][0], atol=1e-6, rtol=1e-5)
    # and AtP*'s estimate for that key is exactly Σ ∂metric/∂pattern · (exact pattern − base pattern)
    zero = torch.zeros_like(cache["blocks.0.attn.hook_pattern"], requires_grad=True)
    hooks = [("blocks.0.attn.hook_pattern", lambda act, hook: act + zero)]
    logits, _ = run_tokens(one_head, pair.base_tokens[None], hooks=hooks, last_only=True, grad=True)
    (g,) = torch.autograd.grad(pair.metric(logits[:, -1]).sum(), zero)
    pattern = base["blocks.0.attn.hook_pattern"][None]
    expected = float(((cache["blocks.0.attn.hook_pattern"] - pattern) * g).sum()) / pair.span
    star = methods.atp_star(one_head, [pair])
    k_node = next(i for i, n in enumerate(star.nodes) if n.kind == "k")
    assert float(star.effect[k_node]) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_graddrop_and_the_pass_count(circuits, pairs):
    star = methods.atp_star(circuits, pairs)
    fixed = methods.attribution_nodes(circuits, pairs, qk_fix=True)
    layers = pairs[0].weights.n_layers
    assert (star.forward, star.backward) == (2, layers + 1)  # ≤ layers + 2 forward-and-backward passes per pair
    torch.testing.assert_close(star.effect, fixed.effect)  # GradDrop changes the ranking magnitude, not the signed estimate
    assert bool((star.magnitude >= fixed.magnitude - 1e-7).all())
    # a last-layer node: every GradDrop pass but its own layer's keeps its whole gradient, so GradDrop adds nothing
    last = [i for i, n in enumerate(star.nodes) if n.layer == layers - 1]
    torch.testing.assert_close(star.magnitude[last], fixed.magnitude[last])


def test_exact_check_lists_the_top_k_with_their_exact_effect(circuits, pairs):
    exact = methods.exact_nodes(circuits, pairs)
    rows = methods.exact_check(circuits, methods.atp_star(circuits, pairs), pairs, k=3)
    assert len(rows) == 3
    for row in rows:
        i = [n.label for n in exact.nodes].index(row["node"])
        assert row["exact effect"] == pytest.approx(float(exact.effect[i]))


def test_bad_pairs_are_one_message(circuits):
    with pytest.raises(InputError, match="same number of tokens"):
        methods.prepare(circuits, tasks.Pair("apple river", "apple river stone", 5, 6))
    with pytest.raises(InputError, match="direction"):
        methods.prepare(circuits, tasks.Pair("apple river", "apple stone", 5, 6), "sideways")
    with pytest.raises(InputError, match="no prompt pairs"):
        methods.prepare_all(circuits, [])
