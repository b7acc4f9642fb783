"""Many users on one server: 8 threads share one loaded model, each running a different view on its own prompt."""

import threading

import torch

from workbench import attention, attribution, lens, patching
from workbench.runs import run_prompt

WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "candle", "garden", "lemon", "violin"]


def _views(model, i: int):
    """Session i's view (one of four kinds) on its own prompt; returns tensors to compare."""
    words = WORDS[i % 5 :] + WORDS[: i % 5]
    prompt = " ".join(words[:6] + words[:3])
    kind = i % 4
    if kind == 0:
        p = attention.patterns(model, prompt)
        return [
            p.pattern,
            attention.head_types(model, run_prompt(model, prompt, [f"blocks.{layer}.attn.hook_pattern" for layer in range(2)])).scores[
                "induction"
            ],
        ]
    if kind == 1:
        r = lens.lens(model, prompt, k=3, targets=[5])
        return [r.top_probs, r.kl_to_final, r.target_ranks.float()]
    if kind == 2:
        corrupted = " ".join([*words[:3], WORDS[(i + 7) % 10], *words[4:6], *words[:3]])
        s = patching.PatchingSetup(
            prompt, corrupted, model.tokenizer(" " + words[3])["input_ids"][0], model.tokenizer(" " + WORDS[(i + 7) % 10])["input_ids"][0]
        )
        return [patching.sweep(model, s, "z").raw, patching.attribution_sweep(model, s, "resid_pre").raw]
    target = attribution.Target((model.tokenizer(" " + words[3])["input_ids"][0],))
    a = attribution.input_attribution(model, prompt, target, steps=8)
    c = attribution.component_attribution(model, prompt, target.tokens[0])
    return [a.scores, c.component_values, c.heads]


def test_eight_sessions_get_what_they_would_get_alone(circuits):
    alone = {i: _views(circuits, i) for i in range(8)}
    circuits.run_cache.clear()  # the concurrent sessions compute afresh
    together: dict[int, list] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def session(i):
        try:
            barrier.wait()
            for _ in range(2):
                together[i] = _views(circuits, i)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    for i in range(8):
        for got, want in zip(together[i], alone[i], strict=True):
            assert torch.allclose(got, want, atol=1e-5, equal_nan=True), i
    assert circuits.attached_hooks() == []
