"""SAE training: deterministic for a seed, decoder rows unit-norm, AuxK reaches the dead latents, streamed activations."""

import dataclasses

import numpy as np
import torch

from workbench import sae_quality
from workbench.runs import run_tokens
from workbench.train import sae as train_sae

TINY = dataclasses.replace(
    train_sae.CONFIG, hooks=("blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"), width=64, k=4, tokens=256 * 6, batch=256,
    windows=2, buffer=512, dead_after=256, warmup=2,
)  # fmt: skip


def _ids(english) -> np.ndarray:
    return np.asarray(english.tokenizer(sae_quality.heldout_text(english)[1][:20000])["input_ids"], dtype=np.int64)


def test_training_is_deterministic_and_keeps_the_decoder_unit_norm(english):
    ids = _ids(english)
    first, rec = train_sae.train(english, ids, TINY, log=lambda *_: None)
    again, _ = train_sae.train(english, ids, TINY, log=lambda *_: None)
    other, _ = train_sae.train(english, ids, dataclasses.replace(TINY, seed=1), log=lambda *_: None)
    for hook in TINY.hooks:
        assert torch.equal(first[hook].W_enc, again[hook].W_enc) and torch.equal(first[hook].b_dec, again[hook].b_dec)
        assert not torch.equal(first[hook].W_enc, other[hook].W_enc)
        assert torch.allclose(first[hook].W_dec.norm(dim=1), torch.ones(TINY.width), atol=1e-5)
        assert first[hook].k == TINY.k and first[hook].hook_name == hook
        log = rec[hook]["log"]
        assert log[-1]["fvu"] < log[0]["fvu"]  # it learns
        assert rec[hook]["tokens"] == TINY.tokens


def test_the_stream_reads_the_model_and_leaves_bos_out(english):
    ids = _ids(english)
    cfg = dataclasses.replace(TINY, buffer=0)
    batch = next(train_sae.activation_stream(english, ids, cfg.hooks, cfg))
    _, cache = run_tokens(english, torch.from_numpy(ids[: english.info.n_ctx])[None], names=list(cfg.hooks))
    bos = cache["blocks.1.hook_resid_post"][0, 0]
    for hook in cfg.hooks:
        assert batch[hook].shape == (cfg.batch, english.info.d_model)
    # every BOS position carries the same vector (it sees only itself): none of them is in the stream
    windows = torch.from_numpy(ids[: 4 * english.info.n_ctx]).view(4, -1)
    windows[:, 0] = english.bos_id
    _, c2 = run_tokens(english, windows, names=["blocks.1.hook_resid_post"])
    assert torch.allclose(c2["blocks.1.hook_resid_post"][:, 0], c2["blocks.1.hook_resid_post"][:1, 0].expand(4, -1), atol=1e-5)
    assert not torch.isclose(batch["blocks.1.hook_resid_post"], c2["blocks.1.hook_resid_post"][0, 0], atol=1e-4).all(-1).any()
    assert bos.shape == (english.info.d_model,)


def test_auxk_trains_the_dead_latents():
    """Latents outside every top-k get no gradient from the MSE; with AuxK on, the dead ones do."""
    torch.manual_seed(0)
    x = torch.randn(1, 16) + 1e-3 * torch.randn(64, 16)  # nearly one input: the same few latents win every row
    grads = {}
    for coef in (0.0, 1.0):
        cfg = dataclasses.replace(TINY, width=32, k=4, aux_k=8, dead_after=1, aux_coef=coef)
        t = train_sae.Trainer("blocks.0.hook_resid_pre", torch.randn(64, 16), cfg, torch.Generator().manual_seed(0))
        t.since_fired[:] = 10  # every latent has been silent: all but this step's winners count as dead
        pre = (x - t.b_dec) @ t.W_enc + t.b_enc
        live = pre.topk(cfg.k, dim=-1).indices.unique()
        record = t.step(x, 0.0)  # lr 0: the gradients only
        assert record["dead"] == cfg.width - len(live)
        dead = torch.ones(cfg.width, dtype=torch.bool)
        dead[live] = False
        grads[coef] = t.W_enc.grad.abs().sum(0)[dead]  # (dead,)
    assert len(grads[1.0]) > 0
    assert torch.equal(grads[0.0], torch.zeros_like(grads[0.0]))
    assert (grads[1.0] > 0).any()


def test_geometric_median_minimises_the_sum_of_distances():
    x = torch.cat([torch.randn(50, 3), torch.full((5, 3), 40.0)])  # an outlying cluster pulls the mean, not the median
    m = train_sae.geometric_median(x)
    cost = lambda c: float((x - c).norm(dim=1).sum())  # noqa: E731
    assert cost(m) < cost(x.mean(0))
    for _ in range(20):
        assert cost(m) <= cost(m + 0.05 * torch.randn(3)) + 1e-4
