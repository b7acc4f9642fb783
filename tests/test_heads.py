import torch

from tests.references import constructed_heads, hf_model, hf_patterns, repeat_scores_by_hand
from workbench import heads


def _perfect_patterns(n):
    """(2, 1, pos, pos): a perfect previous-token head and a perfect induction head, built by hand."""
    pos = 1 + 2 * n
    prev = torch.zeros(pos, pos)
    prev[0, 0] = 1
    prev[torch.arange(1, pos), torch.arange(0, pos - 1)] = 1
    ind = torch.zeros(pos, pos)
    for q in range(pos):
        target = q - n + 1 if q > n else 0
        ind[q, target] = 1
    return torch.stack([prev, ind])[:, None]


def test_scores_of_hand_built_heads():
    n = 7
    p = _perfect_patterns(n)
    ind = heads.induction_score(p, n)
    prev = heads.previous_token_score(p)
    assert torch.allclose(ind[:, 0], torch.tensor([0.0, 1.0]))
    assert prev[0, 0] == 1.0 and prev[1, 0] < 0.2


def test_uniform_attention_scores_low():
    n, pos = 10, 21
    uniform = torch.tril(torch.ones(pos, pos))
    uniform = (uniform / uniform.sum(-1, keepdim=True))[None, None]
    assert heads.induction_score(uniform, n).item() < 0.1


def test_repeated_tokens_are_distinct_when_possible():
    gen = torch.Generator().manual_seed(0)
    seq = heads.repeated_tokens(torch.arange(5, 100), 50, 0, gen)
    assert seq[0] == 0 and torch.equal(seq[1:51], seq[51:]) and len(set(seq[1:51].tolist())) == 50


def test_the_answer_key_scores_as_plain_transformers_and_its_construction_say(answer_key):
    """The scores against the definitions computed by hand from plain transformers' attentions on the same sequences, and
    the strongest heads against the construction (the only heads with query weights: L0 previous token, L1 induction)."""
    hf = hf_model(answer_key)
    (previous_head, induction_head) = constructed_heads(hf)
    assert previous_head[0] == 0 and induction_head[0] == 1  # the construction: layer 0 feeds layer 1
    for n, seed in ((50, 0), (20, 0), (50, 3)):
        s = heads.repeat_scores(answer_key, n=n, seqs=8, seed=seed, keep_patterns=True)
        assert torch.equal(s.tokens[:, 1 : n + 1], s.tokens[:, n + 1 :]) and (s.tokens[:, 0] == answer_key.bos_id).all()  # BOS, x, x
        ref = repeat_scores_by_hand(hf_patterns(hf, s.tokens).mean(0), n)
        assert torch.allclose(s.induction, ref["induction"], atol=1e-4) and torch.allclose(
            s.previous_token, ref["previous token"], atol=1e-4
        )
        assert s.strongest_induction_head() == induction_head
        layer, head = divmod(int(s.previous_token.argmax()), s.previous_token.shape[1])
        assert (layer, head) == previous_head
        assert s.induction[induction_head] >= 0.99 and s.previous_token[previous_head] >= 0.99  # sharp by construction
