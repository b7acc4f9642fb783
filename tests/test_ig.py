"""ig: adaptive Gauss-Legendre integrated gradients, checked by hand and against captum."""

import math

import pytest
import torch
from captum.attr import IntegratedGradients

from workbench import attribution, ig
from workbench.attribution import Answer, baseline_embeddings, embed_forward, token_embeddings
from workbench.runs import encode

PROMPT = "Once upon a time there was a little girl who lived in a"


@pytest.mark.parametrize("n", [1, 3, 8, 16])
def test_gauss_legendre_is_exact_up_to_degree_2n_minus_1(n):
    nodes, weights = ig.gauss_legendre(n)
    assert math.isclose(float(weights.sum()), 1.0, rel_tol=1e-12) and nodes.min() > 0 and nodes.max() < 1
    for degree in range(2 * n):
        assert math.isclose(float((weights * nodes**degree).sum()), 1 / (degree + 1), rel_tol=1e-10)


def test_separable_function_gets_its_exact_attributions():
    # f(x) = Σ sin(3 x_i): the path integral of each coordinate is exact, sin(3 x_i) − sin(3 b_i)
    def f(x):
        return torch.sin(3 * x).flatten(1).sum(-1)

    x = torch.linspace(-1, 2, 12, dtype=torch.float64).reshape(1, 3, 4)
    b = torch.zeros_like(x)
    r = ig.integrated_gradients(f, x, b, tolerance=1e-9)
    assert torch.allclose(r.attributions, torch.sin(3 * x) - torch.sin(3 * b), atol=1e-9)
    assert r.relative_error <= 1e-9 and r.levels[-1][1] <= 1e-9
    assert all(err > 1e-9 for _, err in r.levels[:-1])  # it stopped at the first rule that was good enough


def test_batches_do_not_change_the_result(english):
    ids, _ = encode(english, PROMPT)
    f = embed_forward(english, ids, 5, None)
    x = token_embeddings(english, ids)
    b = torch.zeros_like(x)
    whole = ig.integrated_gradients(f, x, b, batch=64)
    chunked = ig.integrated_gradients(f, x, b, batch=3)
    assert whole.points == chunked.points
    assert torch.allclose(whole.attributions, chunked.attributions, atol=1e-5)


def test_adaptive_ig_matches_captum_and_reaches_one_percent(english):
    ids, _ = encode(english, PROMPT)
    with torch.no_grad():
        answer = int(english.bridge(ids[None])[0, -1].argmax())
    f = embed_forward(english, ids, answer, None)
    x = token_embeddings(english, ids)
    b = baseline_embeddings(english, x, None)
    r = ig.integrated_gradients(f, x, b, tolerance=0.01)
    assert r.relative_error <= 0.01 and r.points < 50  # fewer gradient evaluations than captum's default
    reference, _ = IntegratedGradients(f).attribute(x, baselines=b, n_steps=300, return_convergence_delta=True)
    ours, theirs = r.attributions[0].sum(-1), reference[0].sum(-1).detach()  # (pos,)
    assert (ours - theirs).abs().max() <= 0.02 * theirs.abs().max()


def test_input_attribution_adaptive_adds_up(english):
    ids, _ = encode(english, PROMPT)
    a = attribution.input_attribution(english, PROMPT, Answer((int(ids[3]),)), method="integrated gradients (adaptive)", steps=64)
    gap = float(a.metric[0] - a.metric_baseline[0])
    assert abs(float(a.scores.nansum(-1)[0]) - gap) <= 0.01 * abs(gap) + 1e-6
    assert 8 <= a.steps <= 64 + 32


def test_bad_tolerance_is_refused():
    with pytest.raises(ValueError, match="tolerance"):
        ig.integrated_gradients(lambda x: x.sum(-1), torch.ones(1, 2), torch.zeros(1, 2), tolerance=0)
