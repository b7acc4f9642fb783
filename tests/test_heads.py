import json

import torch

from workbench import heads
from workbench.model import MODELS_DIR


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


def test_the_answer_key_has_the_induction_head_its_card_names(answer_key):
    circuits = answer_key
    card = json.loads((MODELS_DIR / "answer-key" / "card.json").read_text())["measured"]["head_scores"]
    for n in (50, 20):
        s = heads.repeat_scores(circuits, n=n, seqs=8, seed=0)
        assert list(s.strongest_induction_head()) == card[str(n)]["strongest_induction_head"]
        assert s.induction.max() >= 0.9
    # the mechanism: a previous-token head in layer 0 feeds the induction head in layer 1
    s = heads.repeat_scores(circuits, n=50, seqs=8, seed=3)
    assert s.strongest_induction_head()[0] == 1
    assert s.previous_token[0].max() >= 0.5
