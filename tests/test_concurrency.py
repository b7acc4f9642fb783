"""Many users on one server: 8 threads share one loaded model (the English one, whose MLPs are not
zero), each running a different view on its own prompt, twice; every round must equal the view run alone."""

import threading

import torch

from workbench import attention, attribution, compare, generate, heads, lens, patching, tasks
from workbench.runs import run_prompt

STARTS = ["The", "A", "My", "His", "Her", "One", "That", "This"]


def _pair(i: int) -> tuple[str, str]:
    start = STARTS[i]
    return f"{start} cat sat on the mat. The cat sat on the", f"{start} cat sat on the bed. The cat sat on the"


def _views(model, i: int) -> list[torch.Tensor]:
    """Session i's view (one of four kinds) on its own prompt; returns tensors to compare."""
    clean, corrupted = _pair(i)
    tok = model.tokenizer
    kind = i % 4
    if kind == 0:
        p = attention.patterns(model, clean)
        types = attention.head_types(
            model, run_prompt(model, clean, [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.info.n_layers)])
        )
        repeats = heads.repeat_scores(model, n=10, seqs=2, seed=i)
        return [p.pattern, types.scores["induction"], repeats.induction, repeats.previous_token]
    if kind == 1:
        logit = lens.lens(model, clean, k=3, tracked=[tok(" mat")["input_ids"][0]])
        tuned = lens.lens(model, clean, k=3, tuned=lens.load_tuned_lens(model))
        d = compare.lens_diff(model, clean, corrupted)
        return [
            logit.top_probs,
            logit.kl_to_final,
            logit.tracked_ranks.float(),
            tuned.top_probs,
            d.js,
            compare.pattern_diff(model, clean, corrupted).diff,
        ]
    if kind == 2:
        s = tasks.Pair(clean, corrupted, tok(" mat")["input_ids"][0], tok(" bed")["input_ids"][0])
        return [patching.sweep(model, s, "z").raw, patching.attribution_sweep(model, s, "resid_pre").raw]
    answer = attribution.Answer((tok(" mat")["input_ids"][0],))
    a = attribution.input_attribution(model, clean, answer, steps=8)
    c = attribution.component_attribution(model, clean, answer.tokens[0])
    g = generate.generate(model, clean, generate.Sampling(max_new_tokens=3, greedy=False, seed=i))
    return [
        a.scores,
        c.component_values,
        c.heads,
        torch.tensor([s.chosen_id for s in g.steps]),
        torch.tensor([s.chosen_prob for s in g.steps]),
    ]


def test_eight_sessions_get_what_they_would_get_alone(english):
    alone = {i: _views(english, i) for i in range(8)}
    english.run_cache.clear()  # the concurrent sessions compute afresh
    rounds: dict[tuple[int, int], list] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def session(i):
        try:
            barrier.wait()
            for r in range(2):
                rounds[i, r] = _views(english, i)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert len(rounds) == 16
    for (i, r), got in rounds.items():
        for a, b in zip(got, alone[i], strict=True):
            assert torch.allclose(a.float(), b.float(), atol=1e-5, equal_nan=True), (i, r)
    assert english.attached_hooks() == []
