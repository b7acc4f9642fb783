"""Response fidelity (workbench/train/jacobian.py): the real MLP's response against finite differences of the bridge's own
MLP on every family the tests build, the transcoder's against finite differences of the transcoder with its TopK set
unchanged, and the Jacobian-matching term against hand-computed cases."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from workbench import engine, families
from workbench.model import load_model
from workbench.runs import run_tokens
from workbench.train import jacobian
from workbench.train import transcoders as train
from workbench.transcoder import Transcoder, capture_names, mlp_io


@pytest.fixture(scope="module", params=families.FAMILIES)
def family(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    families.build(request.param, folder)
    return load_model(str(folder))


EPS = 1e-4  # small enough that few ReLU kinks (OPT) lie within ±εv, large enough for float32's rounding


def test_the_mlp_and_its_response_are_the_real_mlps(family):
    """jacobian.mlp on the engine's MLP input is the bridge's hook_mlp_out, and mlp_jvp (forward-mode AD) is the
    bridge's own MLP differentiated by central finite differences: its input (mlp.hook_in) moved by ±εv."""
    ids = torch.tensor([[0, 5, 3, 9, 2, 7, 1, 4]])
    w = engine.weights_of(family)
    captured = engine.forward(w, ids, capture=capture_names(w)).captured
    for layer in range(family.info.n_layers):
        x, y = mlp_io(w, captured, layer)  # (1, pos, d_model)
        assert torch.allclose(jacobian.mlp(w.layers[layer], x), y, atol=1e-5)
        v = jacobian.directions(x[0], torch.Generator().manual_seed(layer))[None]  # (1, pos, d_model)

        def moved(sign: float, layer=layer, v=v) -> torch.Tensor:
            def shift(act, hook):
                return act + sign * EPS * v

            hooks = [(f"blocks.{layer}.mlp.hook_in", shift)]
            return run_tokens(family, ids, [f"blocks.{layer}.hook_mlp_out"], hooks)[1][f"blocks.{layer}.hook_mlp_out"]

        finite = (moved(1) - moved(-1)) / (2 * EPS)
        exact = jacobian.mlp_jvp(w.layers[layer], x, v)
        assert (exact - finite).norm() <= 5e-3 * exact.norm(), (layer, float((exact - finite).norm() / exact.norm()))


def test_the_transcoders_response_holds_its_topk_set():
    """tc_jvp (and training's tc_jvp_topk) is the transcoder's own output differentiated by central finite differences
    (float64, ε small enough that no feature enters or leaves the TopK set: checked), and not the response of a
    dense ReLU that would let inactive features move."""
    tc = Transcoder.random(0, 16, 64, 6, skip=True, seed=3)
    tc = dataclasses.replace(tc, **{n: getattr(tc, n).double() for n in ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip")})
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 16, generator=gen, dtype=torch.float64)
    v = jacobian.directions(x, gen)
    eps = 1e-7
    assert torch.equal(tc.encode(x + eps * v) > 0, tc.encode(x) > 0) and torch.equal(tc.encode(x - eps * v) > 0, tc.encode(x) > 0)
    finite = (tc(x + eps * v) - tc(x - eps * v)) / (2 * eps)
    exact = jacobian.tc_jvp(tc.W_enc, tc.W_dec, tc.W_skip, jacobian.active(tc, x), v)
    assert torch.allclose(exact, finite, atol=1e-6)
    top = tc.pre(x).topk(tc.k, dim=-1)
    assert torch.allclose(jacobian.tc_jvp_topk(tc.W_enc, tc.W_dec, tc.W_skip, top, v), exact, atol=1e-12)
    dense = ((v @ tc.W_enc) * (tc.pre(x) > 0)) @ tc.W_dec + v @ tc.W_skip  # every positive pre-activation: not the graph's
    assert not torch.allclose(dense, exact, atol=1e-3)


def test_response_explained_by_hand():
    """ResponseSums: 1 - Σ|a - b|² / Σ|a - mean a|², summed over chunks as over one batch."""
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(40, 5, generator=gen), torch.randn(40, 5, generator=gen)
    sums = jacobian.ResponseSums()
    sums.add(a[:15], b[:15])
    sums.add(a[15:], b[15:])
    hand = 1 - float(((a - b) ** 2).sum() / ((a - a.mean(0)) ** 2).sum())
    assert sums.explained() == pytest.approx(hand, rel=1e-6)
    whole = jacobian.ResponseSums()
    whole.add(a, a)
    assert whole.explained() == 1


def _linear_mlp(d: int, d_mlp: int, gen: torch.Generator) -> tuple[engine.Layer, torch.Tensor]:
    """(a block whose MLP is linear, its Jacobian W_in W_out (d, d)): the transcoder's skip path can be it exactly."""
    W_in, W_out = torch.randn(d, d_mlp, generator=gen) / d**0.5, torch.randn(d_mlp, d, generator=gen) / d_mlp**0.5
    L = engine.Layer(  # no attention and no norms: jacobian.mlp reads only the MLP's weights
        ln1=None, ln2=None, W_qkv=torch.zeros(d, 3 * d), b_qkv=None, W_O=torch.zeros(d, d), b_O=None,
        W_in=W_in, b_in=torch.randn(d_mlp, generator=gen), W_gate=None, W_out=W_out, b_out=None, act=lambda h: h, scale=1.0,
    )  # fmt: skip
    return L, W_in @ W_out


def test_the_jacobian_term_is_zero_for_the_mlps_linearisation_and_quarter_at_half_of_it():
    """A linear MLP: a transcoder whose features read nothing (W_enc 0) and whose skip path is W_in W_out responds
    exactly as the MLP: the term is 0; with half that skip path it is |½ J v|² / var(J v) = ¼ mean|J v|² / var, by hand
    (v drawn from the trainer's own generator, whose state is read before the step)."""
    gen = torch.Generator().manual_seed(0)
    d = 12
    L, M = _linear_mlp(d, 20, gen)
    x, y = torch.randn(256, d, generator=gen), torch.randn(256, d, generator=gen)
    cfg = dataclasses.replace(train.CONFIG, width=32, k=4, jacobian=1.0, batch=256)
    for share, expected in ((1.0, 0.0), (0.5, None)):
        t = train.Trainer(0, x, y, cfg, torch.Generator().manual_seed(0), L)
        with torch.no_grad():
            t.W_enc.zero_()
            t.W_skip.copy_(share * M)
        state = t.directions.get_state()
        record = t.step(x, y, lr=0.0)
        v = jacobian.directions(x, torch.Generator().set_state(state))
        hand = float((((1 - share) * (v @ M)) ** 2).sum(-1).mean()) / t.jacobian_scale
        assert record["jacobian"] == pytest.approx(hand, rel=1e-5, abs=1e-9)
        if expected is not None:
            assert record["jacobian"] == pytest.approx(expected, abs=1e-9)
        else:
            assert hand > 0.1


def test_the_term_is_off_by_default_and_needs_the_mlp():
    x, y = torch.randn(64, 8), torch.randn(64, 8)
    cfg = dataclasses.replace(train.CONFIG, width=16, k=2)
    assert train.CONFIG.jacobian == 0 and "jacobian" not in train.Trainer(0, x, y, cfg, torch.Generator()).step(x, y, 1e-3)
    with pytest.raises(ValueError, match="MLP"):
        train.Trainer(0, x, y, dataclasses.replace(cfg, jacobian=0.1), torch.Generator())
